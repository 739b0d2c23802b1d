"""Benchmark train and inference images/s of every backbone the notebooks use, on this machine.

Train is one full optimisation step (forward, cross-entropy on a linear head, backward, AdamW);
inference is a forward pass under ``torch.inference_mode``. Weights are random
(``pretrained=False``): speed does not depend on them. Prints a markdown table and writes
``benchmarks/results/throughput.md``; these numbers set the CPU profile's image size and batch.

    python benchmarks/throughput.py                               # all backbones at 112 px
    python benchmarks/throughput.py --sizes 112 224 --batch 32 --backbones efficientfr convnext_atto

Throughput is the median over timed batches, so a burst of load from other processes on a shared
machine skews it less than a mean would; it still only ever makes numbers lower.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.models import create_backbone  # noqa: E402  (needs the sys.path line above)

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "throughput.md"
BACKBONES = ("efficientnet_lite0", "convnext_atto", "efficientnet_b3", "efficientnet_b4",
             "inception_resnet_v1", "efficientfr")


def _median_seconds(step: Callable[[], None], iters: int, warmup: int) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def compute_throughput(name: str, size: int, batch: int, iters: int,
                       warmup: int) -> dict[str, float]:
    """Train and inference images/s of backbone ``name`` at ``size`` px with batch ``batch``."""
    torch.manual_seed(0)
    model, num_features = create_backbone(name, pretrained=False)
    head = torch.nn.Linear(num_features, 2)
    images = torch.randn(batch, 3, size, size)
    labels = torch.randint(0, 2, (batch,))
    optimizer = torch.optim.AdamW(list(model.parameters()) + list(head.parameters()), lr=1e-4)

    def train_step() -> None:
        loss = torch.nn.functional.cross_entropy(head(model(images)), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def infer_step() -> None:
        with torch.inference_mode():
            head(model(images))

    model.train()
    train_s = _median_seconds(train_step, iters, warmup)
    model.eval()
    infer_s = _median_seconds(infer_step, iters, warmup)
    params = sum(p.numel() for p in model.parameters())
    return {"params_m": params / 1e6, "features": num_features,
            "train_images_per_s": batch / train_s, "infer_images_per_s": batch / infer_s}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[112], help="image sizes, px")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    parser.add_argument("--iters", type=int, default=3, help="timed batches per measurement")
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args(argv)

    malloc_env = " ".join(f"{k}={v}" for k, v in sorted(os.environ.items())
                          if k.startswith("MALLOC_") or k == "OMP_WAIT_POLICY") or "none"
    lines = [f"# Backbone throughput on CPU ({torch.get_num_threads()} threads, "
             f"{os.cpu_count()} cores)", "",
             f"Batch {args.batch}, median of {args.iters} batches after {args.warmup} warm-up; "
             f"torch {torch.__version__}; malloc/OpenMP env: {malloc_env}. The machine was "
             "shared with other processes, so treat the numbers as lower bounds.", "",
             "| backbone | params (M) | features | size | train img/s | infer img/s |",
             "|---|---|---|---|---|---|"]
    configs = [(name, size) for size in args.sizes for name in args.backbones]
    for name, size in tqdm(configs, desc="throughput"):
        result = compute_throughput(name, size, args.batch, args.iters, args.warmup)
        lines.append(f"| {name} | {result['params_m']:.1f} | {result['features']} | {size} | "
                     f"{result['train_images_per_s']:.1f} | "
                     f"{result['infer_images_per_s']:.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
