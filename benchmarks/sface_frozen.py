"""How much time does folding batch norms into convolutions save in SFace's frozen part?

`sface_net.frozen_features` runs every crop of a run through SFace's frozen layers (notebook 02:
the train crops, then dev and the evaluated split). It runs a copy of
`SFaceIdentity.frozen` with each batch norm folded into its convolution. This times SFace's
graph as converted against that copy on the same crops, alternating the two so that load from
other processes hits both alike, and reports the largest difference of their outputs.

    python benchmarks/sface_frozen.py --data-dir ../shared/data/facecom --images 512

Crops come from the data's Task B train images (`sface_net.face_crops`, cached by content). Writes
``benchmarks/results/sface_frozen.md``. Needs the extras of requirements-extras.txt.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.fx.experimental.optimization import fuse

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import data, sface_net  # noqa: E402
from common.config import configure_threads  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "sface_frozen.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    threads = configure_threads(torch.device("cpu"))
    paths = data.read_task_b(args.data_dir, "train")["path"].tolist()[:args.images]
    crops = sface_net.crops_to_tensor(sface_net.face_crops(paths, progress=True)[0])
    model = sface_net.SFaceIdentity()
    graphs = {"as converted": model.frozen.eval(), "batch norms folded": fuse(model.frozen)}
    seconds: dict[str, list[float]] = {name: [] for name in graphs}
    outputs = {}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for name, graph in graphs.items():
                began = time.perf_counter()
                outputs[name] = torch.cat([graph(crops[start:start + args.batch])
                                           for start in range(0, len(crops), args.batch)])
                seconds[name].append(time.perf_counter() - began)
    difference = (outputs["as converted"] - outputs["batch norms folded"]).abs().max().item()
    scale = outputs["as converted"].abs().max().item()
    lines = ["# SFace's frozen part: batch norms folded into convolutions", "",
             f"`python benchmarks/sface_frozen.py --data-dir <FACECOM root> --images "
             f"{args.images}`", "",
             f"{len(crops)} crops of the Task B train images, batch {args.batch}, {threads} "
             f"threads, torch {torch.__version__}; median of {args.rounds} rounds, the two graphs "
             "alternating.", "",
             "| frozen part | seconds | crops/s |", "|---|---|---|"]
    for name, times in seconds.items():
        median = statistics.median(times)
        lines.append(f"| {name} | {median:.1f} | {len(crops) / median:.0f} |")
    lines += ["", f"Largest output difference {difference:.2e} (outputs up to {scale:.2f})."]
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
