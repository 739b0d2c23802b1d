"""Seconds from `ExperimentConfig.resolve` to the first optimiser step of notebook 02 on identity
folders streamed from disk (``data_format="identity_folders"``, ``image_cache="stream"``), split
by phase, at several data sizes; the per-image slope of each phase, extrapolated to VGGFace2
(3.3 M images in 9,131 identity folders).

Synthetic identity folders of tiny random JPEGs are written under ``--root`` (never into the
project). The run follows notebook 02's cells (`task_b.prepare_data`, `create_embedder`,
`photo_teacher`, `train_arcface`), timing each step of the path by wrapping the function that does
it, and stops at the end of the first optimiser step. Each size gets its own work root, so every
cache starts cold: the timed run is the first run on the data set. The distorted views identity
folders get (seven per clean image) are rendered by the loader workers as they read them
(`common.views`); what that costs per view is measured separately on ``--views-sample`` photos.
After the first step, the time until the background leakage check finishes is reported too
(``--await-check``). Prints a markdown table.

    python benchmarks/first_step.py --root /tmp/first_step --sizes 20000 60000 150000
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import (cache, config, experiment, identity_folders, listing, splits,  # noqa: E402
                    task_b, views)

VGGFACE2_IMAGES, VGGFACE2_IDENTITIES = 3_300_000, 9_131
# Notebook 02's parameters cell, with a small CPU run and data in identity folders.
# Notebook 02's parameters for the run (the rest are its cell's defaults); the CPU profile's
# two loader workers decode the streamed images.
PARAMS = {"data_format": "identity_folders", "image_cache": "stream", "split_by": "identity",
          "pretrained": False, "image_size": 64, "batch_size": 32, "epochs": 1, "seed": 0,
          "device": "cpu", "profile": "cpu", "fit": "stretch", "teacher": ""}
# (phase, module, function name): the function that does each step of the path.
PHASES = [("views folder (no image read)", views, "views_folder"),
          ("hidden-file walk", listing, "walk_files"),
          ("read identity folders (listing, photo table)", identity_folders,
           "read_identity_photos"),
          ("views of dev + evaluated split as rows", identity_folders, "with_views"),
          ("splits + identity check + start content check", splits, "make_splits"),
          ("stream decision (ImageFiles)", cache, "load_image_array"),
          ("model", task_b, "create_embedder"),
          ("teacher (teacher='' here; see notes)", task_b, "photo_teacher"),
          ("resume fingerprint (paths of train + dev)", task_b, "resume_fingerprint"),
          ("source/view pairs", task_b, "source_view_pairs")]


class FirstStep(Exception):
    """Raised right after the first optimiser step: the end of what is timed."""


def write_identity_folders(root: Path, images: int, per_identity: int, seed: int = 0) -> float:
    """Random-noise JPEGs (distinct, so no check finds a duplicate); returns seconds taken."""
    start = time.perf_counter()
    rng = np.random.default_rng(seed)
    for index in range(images):
        folder = root / f"id{index // per_identity:05d}"
        if index % per_identity == 0:
            folder.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, (48, 40, 3), dtype=np.uint8)
        (folder / f"{index:07d}.jpg").write_bytes(cv2.imencode(".jpg", pixels)[1].tobytes())
    return time.perf_counter() - start


def scandir_seconds(root: Path) -> tuple[float, int]:
    """One bare os.scandir pass over the identity folders: the floor of any listing."""
    start, count = time.perf_counter(), 0
    with os.scandir(root) as identities:
        for identity in identities:
            with os.scandir(identity.path) as files:
                count += sum(1 for _ in files)
    return time.perf_counter() - start, count


def time_first_step(root: Path, work: Path, await_check: bool
                    ) -> tuple[dict[str, float], float, float]:
    """(seconds per phase, total to the first step, seconds the content check ran on after it,
    NaN unless `await_check`)."""
    spent: dict[str, float] = defaultdict(float)
    stack: list[float] = []
    originals = []

    def timed(label, function):
        def wrapper(*args, **kwargs):
            stack.append(0.0)
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                total = time.perf_counter() - start
                inner = stack.pop()
                spent[label] += total - inner  # exclusive of the timed calls inside it
                if stack:
                    stack[-1] += total
        return wrapper

    for label, module, name in PHASES:
        originals.append((module, name, getattr(module, name)))
        setattr(module, name, timed(label, getattr(module, name)))
    step = torch.optim.AdamW.step

    def first_step(self, *args, **kwargs):
        step(self, *args, **kwargs)
        raise FirstStep

    torch.optim.AdamW.step = first_step
    params = {**PARAMS, "data_dir": str(root), "work_root": str(work),
              "output_dir": str(work / "run"), "weights_dir": str(work / "weights")}
    start = time.perf_counter()
    task_data = None
    try:
        cfg = timed("resolve", experiment.ExperimentConfig.resolve)(task_b.ArcFaceSettings,
                                                                    **params)
        recipe = cfg.task
        task_data = task_b.prepare_data(cfg)
        embedder = task_b.create_embedder(recipe.model, cfg, recipe.embedding_dim,
                                          recipe.standardize_input, recipe.head)
        teacher = task_b.photo_teacher(task_data.splits.train, recipe.teacher)
        net = task_b.EmbeddingClassifier(embedder, len(task_data.identity_index),
                                         embedder.embedding_dim, s=recipe.arcface_s,
                                         m=recipe.arcface_m,
                                         source_weight=recipe.source_weight,
                                         teacher_weight=(0.0 if teacher is None
                                                         else recipe.teacher_weight))
        task_b.train_arcface(net, task_data, cfg, "first_step", recipe.distortion_p,
                             recipe.schedule, teacher)
    except FirstStep:
        pass
    finally:
        total = time.perf_counter() - start
        torch.optim.AdamW.step = step
        for module, name, function in originals:
            setattr(module, name, function)
    spent["rest (table to loader, first batch, forward/backward)"] = total - sum(spent.values())
    if not await_check:
        return dict(spent), total, float("nan")
    after = time.perf_counter()
    task_data.splits.verify()
    return dict(spent), total, time.perf_counter() - after


def view_seconds(root: Path, work: Path, images: int) -> float:
    """Seconds of rendering one distorted view when it is first read (one thread)."""
    write_identity_folders(root, images, 50, seed=1)
    table = identity_folders.read_identity_folders(root, cache_dir=work / "views")
    paths = table.loc[table["distortion"] != "clean", "path"].tolist()
    start = time.perf_counter()
    views.ensure(paths, workers=1)
    return (time.perf_counter() - start) / len(paths)


def run_size(size: int, args) -> dict:
    """One size, in its own process (so its background check ends with it)."""
    root, work = args.root / f"data_{size}", args.root / f"work_{size}"
    shutil.rmtree(work, ignore_errors=True)
    written = (write_identity_folders(root, size, args.per_identity) if not root.is_dir()
               else float("nan"))
    scan, files = scandir_seconds(root)
    spent, total, check = time_first_step(root, work, await_check=args.await_check)
    return {"size": size, "files": files, "written": written, "scan": scan, "spent": spent,
            "total": total, "check": check}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/facecom_first_step"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 60_000, 150_000])
    parser.add_argument("--per-identity", type=int, default=50,
                        help="images per identity folder (VGGFace2 has about 360)")
    parser.add_argument("--views-sample", type=int, default=500)
    parser.add_argument("--await-check", action="store_true",
                        help="also time the background content check to its end")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # one size, JSON out
    args = parser.parse_args()
    if args.root.resolve().is_relative_to(Path(__file__).resolve().parents[1]):
        parser.error("--root must lie outside the project")
    if args.one:
        print(json.dumps(run_size(args.one, args)))
        return
    rows = []
    for size in args.sizes:
        done = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--one", str(size)],
                              check=True, stdout=subprocess.PIPE, text=True)
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(f"{size} images: {rows[-1]['total']:.1f} s to the first step", file=sys.stderr,
              flush=True)
    report(rows, view_seconds(args.root / "views_sample", args.root / "views_work",
                              args.views_sample), args)


def report(rows: list[dict], view: float, args) -> None:
    """The table; with several sizes also each phase's slope and its value at VGGFace2's size
    (a straight line through the sizes measured)."""
    sizes = [row["size"] for row in rows]
    fitted = len(sizes) > 1
    print(f"`python benchmarks/first_step.py --root {args.root} --sizes "
          f"{' '.join(map(str, args.sizes))} --per-identity {args.per_identity}`; "
          f"{config.cpu_count()} CPU cores, load average {os.getloadavg()[0]:.1f} at the end.\n")
    header = " | ".join(f"{s:,} images" for s in sizes)
    extra = f" per 1 M images | at {VGGFACE2_IMAGES / 1e6:.1f} M |" if fitted else ""
    print(f"| phase (seconds) | {header} |{extra}")
    print("|---" * (len(sizes) + 1 + 2 * fitted) + "|")

    def line(name: str, values: list[float]) -> None:
        cells = " | ".join(f"{v:.2f}" for v in values)
        if not fitted:
            print(f"| {name} | {cells} |")
            return
        slope, intercept = np.polyfit(sizes, values, 1)
        print(f"| {name} | {cells} | {slope * 1e6:.1f} | "
              f"{max(0.0, intercept + slope * VGGFACE2_IMAGES):.0f} |")

    for phase in rows[0]["spent"]:
        line(phase, [row["spent"][phase] for row in rows])
    line("**total, resolve to first optimiser step**", [row["total"] for row in rows])
    line("bare os.scandir of the identity folders", [row["scan"] for row in rows])
    written = ", ".join(f"{row['written']:.0f} s" for row in rows)
    checks = ", ".join(f"{row['check']:.0f} s" for row in rows)
    print(f"\nContent check still running after the first step: {checks} (nan: not awaited, "
          f"--await-check). Writing the data: {written}. A distorted view rendered when first "
          f"read (loader workers, first epoch only): {view * 1e3:.1f} ms on one core.")


if __name__ == "__main__":
    main()
