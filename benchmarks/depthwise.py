"""Benchmark the CPU lever of `common.depthwise`: oneDNN's weight gradient of a depthwise
convolution against the tap sum, per layer where the kernel is larger than the map, and a whole
training step of each backbone with torch's depthwise convolutions and with `DepthwiseConv2d`.

A training step is forward, cross-entropy on a linear head, backward and AdamW, in channels-last
as `common.config.place` puts networks on a CPU. The two variants alternate `--rounds` times
and each reports the median over all its timed steps, so a burst of load on a shared machine
hits both alike. Prints markdown and writes ``benchmarks/results/depthwise.md``.

    python benchmarks/depthwise.py                                   # Lite0 and B3 at 112 px
    python benchmarks/depthwise.py --backbones convnext_atto --sizes 112 --batch 64
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.throughput import (alternating_medians, median_seconds,  # noqa: E402  (sys.path)
                                   training_step, with_layers_as)
from common.config import configure_threads  # noqa: E402
from common.depthwise import DepthwiseConv2d, tap_weight_gradient  # noqa: E402
from common.models import create_backbone  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "depthwise.md"


def layer_rows(name: str, size: int, batch: int, iters: int) -> list[str]:
    """One table row per depthwise layer of `name` at `size` px whose map is smaller than its
    kernel: milliseconds for oneDNN's weight gradient and for the tap sum, batch `batch`."""
    backbone, _ = create_backbone(name, pretrained=False)
    shapes = {}

    def record(module, inputs, _output):
        key = (tuple(inputs[0].shape[1:]), module.kernel_size, module.stride, module.padding)
        shapes[key] = shapes.get(key, 0) + 1

    hooks = [m.register_forward_hook(record) for m in backbone.modules()
             if type(m) is DepthwiseConv2d]
    with torch.no_grad():
        backbone.eval()(torch.randn(1, 3, size, size))
    for hook in hooks:
        hook.remove()
    rows = []
    for (shape, kernel, stride, padding), count in shapes.items():
        channels, height, width = shape
        if height >= kernel[0] and width >= kernel[1]:
            continue
        inputs = torch.randn(batch, *shape).contiguous(memory_format=torch.channels_last)
        weight = torch.randn(channels, 1, *kernel).contiguous(memory_format=torch.channels_last)
        grad = torch.randn_like(F.conv2d(inputs, weight, None, stride, padding, 1, channels))
        onednn = median_seconds(lambda: torch.nn.grad.conv2d_weight(
            inputs, weight.shape, grad, stride, padding, 1, channels), iters, 1)
        taps = median_seconds(lambda: tap_weight_gradient(grad, inputs, kernel, stride, padding),
                              iters, 1)
        rows.append(f"| {name} | {size} | {channels} x {height} x {width} | "
                    f"{kernel[0]} x {kernel[1]} / {stride[0]} | {count} | {onednn * 1e3:.1f} | "
                    f"{taps * 1e3:.1f} |")
    return rows


def step_images_per_s(name: str, size: int, batch: int, iters: int, rounds: int
                      ) -> tuple[float, float]:
    """Training images/s of `name` at `size` px: (torch's depthwise, `DepthwiseConv2d`)."""
    torch.manual_seed(0)
    backbone, features = create_backbone(name, pretrained=False)
    plain = with_layers_as(backbone, DepthwiseConv2d, nn.Conv2d)
    networks = [nn.Sequential(plain, nn.Linear(features, 100)),
                nn.Sequential(backbone, nn.Linear(features, 100))]
    images = torch.randn(batch, 3, size, size).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 100, (batch,))
    for network in networks:
        network.to(memory_format=torch.channels_last)
    medians = list(alternating_medians(
        {variant: training_step(network, images, labels) for variant, network
         in zip(("torch", "taps"), networks)}, iters, rounds).values())
    return batch / medians[0], batch / medians[1]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=["efficientnet_lite0",
                                                           "efficientnet_b3"])
    parser.add_argument("--sizes", type=int, nargs="+", default=[112], help="image sizes, px")
    parser.add_argument("--batch", type=int, default=128, help="images per step")
    parser.add_argument("--iters", type=int, default=4, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the variants")
    args = parser.parse_args(argv)

    configure_threads(torch.device("cpu"))
    command = " ".join(["python benchmarks/depthwise.py", *(argv or sys.argv[1:])])
    layers, steps = [], []
    for name in args.backbones:
        for size in args.sizes:
            layers += layer_rows(name, size, args.batch, args.iters * args.rounds)
            plain, fast = step_images_per_s(name, size, args.batch, args.iters, args.rounds)
            steps.append(f"| {name} | {size} | {plain:.1f} | {fast:.1f} | {fast / plain:.2f} |")
    text = "\n".join([
        f"# Depthwise weight gradients on a CPU ({os.cpu_count()} cores)", "", f"`{command}`",
        "", f"Batch {args.batch}, channels-last, torch {torch.__version__}; medians.", "",
        "Layers whose map is smaller than the kernel (ms for the weight gradient):", "",
        "| backbone | size | input (C x H x W) | kernel / stride | layers | oneDNN | taps |",
        "|---|---|---|---|---|---|---|", *layers, "",
        "A training step (images/s):", "",
        "| backbone | size | torch's depthwise | DepthwiseConv2d | ratio |",
        "|---|---|---|---|---|", *steps]) + "\n"
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
