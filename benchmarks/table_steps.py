"""The O(files) steps between the identity folders and the first batch, timed at one commit or
several, with their outputs compared: listing the folders and building the Task B table
(`identity_folders.read_identity_folders`; no view is rendered), the resume
fingerprint (`cache.compute_fingerprint` of the paths) and the source/view pairs
(`task_b.source_view_pairs`).

The identity folders are empty ``.jpg`` files under ``--root`` (never in the project): these
steps read names, not pixels. Each commit runs in its own process on a `git archive` of its
``common/``; a digest of every output shows whether the commits agree (the views folder's name,
which changed with 8187cb7, is replaced by ``VIEWS`` first). Prints a markdown table.

    python benchmarks/table_steps.py --images 100000 --commits 3dea2f6 HEAD
"""
from __future__ import annotations

import argparse
import hashlib
import inspect
import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.at_commit import PROJECT, run_commit  # noqa: E402

STEPS = ("listing and table", "resume fingerprint", "source/view pairs")


def write_empty_folders(root: Path, images: int, per_identity: int) -> None:
    """``id<k>/<n>.jpg`` empty files, `per_identity` to a folder (kept between runs)."""
    stamp = root / f".done-{images}-{per_identity}"
    if stamp.exists():
        return
    for index in range(images):
        folder = root / "faces" / f"id{index // per_identity:05d}"
        if index % per_identity == 0:
            folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{index:07d}.jpg").touch()
    stamp.touch()


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:12]


def measure(root: Path, repeats: int) -> dict:
    """Best-of-`repeats` seconds and an output digest per step, with `common` as imported."""
    from common import cache, identity_folders, task_b

    read = identity_folders.read_identity_folders
    options = {"cache_dir": root / "cache"}
    if "progress" in inspect.signature(read).parameters:  # commits that wrote views up front
        def views_as_written(_root, _clean, _seed, cache_dir, _progress, _workers):
            return Path(cache_dir) / "views", {}

        identity_folders._ensure_views = views_as_written
        options["progress"] = False
    views = re.compile(re.escape(str(root / "cache")) + r"/[^/]+/")
    # commits since `TrainRows` pair its images; before, the table's rows
    rows_of = task_b.TrainRows.of_table if hasattr(task_b, "TrainRows") else (lambda t: t)

    def same_views(text: str) -> str:
        return views.sub("VIEWS/", text)

    steps = {
        STEPS[0]: lambda: read(root / "faces", **options),
        STEPS[1]: lambda: cache.compute_fingerprint(paths, sizes=False),
        STEPS[2]: lambda: task_b.source_view_pairs(rows_of(table), 1, seed=7919),
    }
    result, table, paths = {}, None, None
    for name, step in steps.items():
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            output = step()
            times.append(time.perf_counter() - start)
        if table is None:
            table = output
            paths = [same_views(path) for path in table["path"]]
        text = output if isinstance(output, str) else output.to_csv()
        result[name] = {"seconds": min(times), "digest": _digest(same_views(text))}
    result["rows"] = len(table)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("/tmp/facecom_table_steps"))
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--per-identity", type=int, default=100)
    parser.add_argument("--commits", nargs="+", default=["HEAD"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a tree holding common/: JSON out
    args = parser.parse_args()
    if args.root.resolve().is_relative_to(PROJECT):
        parser.error("--root must lie outside the project")
    if args.one:
        sys.path.insert(0, args.one)
        print(json.dumps(measure(args.root, args.repeats)))
        return
    write_empty_folders(args.root, args.images, args.per_identity)
    options = ["--root", str(args.root), "--repeats", str(args.repeats)]
    results = {commit: run_commit(commit, __file__, options) for commit in args.commits}
    rows = next(iter(results.values()))["rows"]
    print(f"{args.images:,} images in folders of {args.per_identity}, {rows:,} table rows "
          f"(views included); best of {args.repeats}, seconds (output digest)\n")
    print("| step | " + " | ".join(results) + " |")
    print("|---|" + "---|" * len(results))
    for step in STEPS:
        cells = [f"{r[step]['seconds']:.2f} ({r[step]['digest']})" for r in results.values()]
        print(f"| {step} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
