"""Benchmark the input pipeline: JPEG decode + resize into the array cache, then DataLoader reads.

Measures images/s on the real FACECOM Task_B train images for
(a) `common.data.load_image_array` decoding and resizing from JPEG into a fresh cache
    (clean images, which include the up-to-1024 px studio shots, and the 224 px distorted ones),
    plus reopening the cached memmap;
(b) iterating a DataLoader over the cached memmap (`ImageArrayDataset`) with the train transform,
    the eval transform and no transform.
Prints a markdown table to stdout.

    python benchmarks/loader.py                                   # from the project root
    python benchmarks/loader.py /path/to/facecom --image-size 112 --batch-size 64 --workers 2
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import data, transforms  # noqa: E402  (import after making the project importable)
from common.config import make_generator, seed_worker  # noqa: E402

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "facecom"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _rate(count: int, seconds: float) -> str:
    return f"{count / seconds:,.0f}"


def _loader_pass(images, labels, transform, batch_size: int, workers: int) -> tuple[int, float]:
    """One epoch through a DataLoader; returns (images seen, seconds incl. worker start-up)."""
    dataset = data.ImageArrayDataset(images, labels, transform)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                        worker_init_fn=seed_worker, generator=make_generator(0),
                        persistent_workers=False)
    start = time.perf_counter()
    seen = 0
    for batch, _ in loader:
        seen += batch.shape[0]
    return seen, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", nargs="?", default=str(DEFAULT_DATA_DIR),
                        help="FACECOM root holding Task_B/train (default ../shared/data/facecom)")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--decode-threads", type=int, default=None,
                        help="threads for load_image_array (default: number of CPUs)")
    args = parser.parse_args()

    torch.set_num_threads(1)  # match DataLoader workers, which each use one thread
    table = data.read_task_b(args.data_dir, "train")
    clean = table[table["distortion"] == "clean"]
    distorted = table[table["distortion"] != "clean"]
    size = args.image_size
    rows = []
    with tempfile.TemporaryDirectory() as cache_dir:
        arrays = {}
        for name, part in (("clean (250 px LFW + up to 1024 px studio)", clean),
                           ("distorted (224 px)", distorted)):
            start = time.perf_counter()
            arrays[name] = data.load_image_array(part["path"].tolist(), size, cache_dir=cache_dir,
                                                 workers=args.decode_threads, progress=False)
            seconds = time.perf_counter() - start
            rows.append((f"(a) decode + resize JPEG -> cache, {name}", len(part), seconds))
        start = time.perf_counter()
        images = data.load_image_array(distorted["path"].tolist(), size, cache_dir=cache_dir)
        labels = distorted["identity"].astype("category").cat.codes.to_numpy()
        rows.append(("(a) reopen cached memmap (cache hit), distorted", len(distorted),
                     time.perf_counter() - start))
        pipelines = (("train transform", transforms.create_train_transform(
                          size, IMAGENET_MEAN, IMAGENET_STD, seed=0)),
                     ("eval transform", transforms.create_eval_transform(
                          size, IMAGENET_MEAN, IMAGENET_STD)),
                     ("no transform", None))
        for name, transform in pipelines:
            seen, seconds = _loader_pass(images, labels, transform, args.batch_size, args.workers)
            rows.append((f"(b) memmap + {name}, DataLoader batch {args.batch_size}, "
                         f"{args.workers} workers", seen, seconds))
        cache_mb = sum(os.path.getsize(p) for p in Path(cache_dir).iterdir()) / 2**20

    cpus = len(os.sched_getaffinity(0))
    load = os.getloadavg()[0]
    print(f"\nLoader benchmark: {args.data_dir}, {size} px, {cpus} CPUs (1-min load {load:.1f}: "
          f"other processes slow every row), cache {cache_mb:,.0f} MB\n")
    print("| stage | images | seconds | images/s |")
    print("|---|---:|---:|---:|")
    for name, count, seconds in rows:
        print(f"| {name} | {count:,} | {seconds:.2f} | {_rate(count, seconds)} |")


if __name__ == "__main__":
    main()
