"""Does notebook 02's step get cheaper when its frozen blocks stop following the batch?

Notebook 02 freezes Lite0's first blocks (`models.freeze_backbone`), whose batch norms still
normalise with each batch's statistics on the largest maps. This times notebook 02's real
training step (`task_b.train_arcface` on FACECOM, the notebook's defaults: pairs, source and
teacher terms, distortions rendered by the loader) with those batch norms three ways:

- ``batch``: as shipped, batch statistics in training;
- ``frozen``: timm's ``freeze`` on the frozen blocks' modules (``FrozenBatchNorm2d``: a stored
  scale and offset);
- ``eval``: the same batch norms kept in eval mode (torch's kernel with the stored statistics).

Each run is its own process, the variants alternating for ``--rounds`` rounds so that load from
other processes hits them alike; a run stops after ``--warmup`` + ``--steps`` optimiser steps and
reports the median step of the timed ones. The work root is the notebook's (its image cache and
dlib teacher descriptors warm after one run); weights go to a folder of their own in it.

    python benchmarks/frozen_norms.py --data-dir ../shared/data/facecom --work-root /tmp/W

Writes ``benchmarks/results/frozen_norms.md``. Needs the extras (the dlib teacher).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from timm.utils import freeze
from torch.optim.optimizer import register_optimizer_step_post_hook

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import experiment, models, task_b  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "frozen_norms.md"
VARIANTS = {"batch": "batch statistics (shipped)", "frozen": "timm FrozenBatchNorm2d",
            "eval": "eval-mode batch norm"}


class _Enough(Exception):
    """Raised from the optimiser hook once the timed steps are done."""


def _hold_frozen_norms(embedder: torch.nn.Module, frozen_blocks: int, variant: str) -> None:
    """Make the frozen blocks' batch norms use their stored statistics, the ``variant`` way."""
    backbone = embedder.backbone
    held = {name for block in models.backbone_blocks(backbone)[:frozen_blocks] for name in block}
    owners = sorted({name.rpartition(".")[0] for name in held} - {""})
    if variant == "frozen":
        freeze(backbone, owners)
        return
    for name, module in backbone.named_modules():
        if name in owners and isinstance(module, torch.nn.BatchNorm2d):
            module.eval()
            module.train = lambda mode=True, module=module: module  # stays in eval mode


def time_steps(data_dir: str, work_root: str, variant: str, warmup: int, steps: int) -> list[float]:
    """Seconds between optimiser steps of notebook 02's training, after ``warmup`` steps."""
    run = Path(work_root) / f"frozen_norms_{variant}"
    cfg = experiment.ExperimentConfig.resolve(
        task_b.ArcFaceSettings, data_dir=data_dir, work_root=work_root,
        weights_dir=str(run / "weights"), output_dir=str(run / "out"))
    task = cfg.task
    task_data = task_b.prepare_data(cfg)
    embedder = task_b.create_embedder(task.model, cfg, task.embedding_dim, task.standardize_input,
                                      task.head, task.frozen_blocks)
    if variant != "batch":
        _hold_frozen_norms(embedder, task.frozen_blocks, variant)
    teacher = task_b.photo_teacher(task_data.splits.train, task.teacher)
    net = task_b.EmbeddingClassifier(embedder, len(task_data.identity_index),
                                     embedder.embedding_dim, s=task.arcface_s, m=task.arcface_m,
                                     source_weight=task.source_weight,
                                     teacher_weight=task.teacher_weight)
    stamps: list[float] = []

    def stamp(*_):
        stamps.append(time.perf_counter())
        if len(stamps) > warmup + steps:
            raise _Enough

    register_optimizer_step_post_hook(stamp)
    try:
        task_b.train_arcface(net, task_data, cfg, f"frozen_norms_{variant}",
                             distortion_p=task.distortion_p, schedule=task.schedule,
                             teacher=teacher)
    except _Enough:
        pass
    else:
        raise RuntimeError(f"training ended before {warmup + steps} steps: lower --steps")
    return [later - earlier for earlier, later in zip(stamps[warmup:], stamps[warmup + 1:])]


def _cpu() -> str:
    """The CPU's model name (Linux), else what `platform` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--work-root", required=True, help="notebook 02's work root (caches)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # one child run
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(time_steps(args.data_dir, args.work_root, args.variant, args.warmup,
                                    args.steps)))
        return
    medians: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    for round_ in range(args.rounds):
        for variant in VARIANTS:
            child = subprocess.run(
                [sys.executable, __file__, "--data-dir", args.data_dir, "--work-root",
                 args.work_root, "--warmup", str(args.warmup), "--steps", str(args.steps),
                 "--variant", variant], check=True, stdout=subprocess.PIPE, text=True)
            seconds = json.loads(child.stdout.strip().splitlines()[-1])
            medians[variant].append(statistics.median(seconds))
            print(f"round {round_ + 1} {variant}: median step {medians[variant][-1]:.3f} s",
                  flush=True)
    lines = ["# Notebook 02's step with its frozen blocks' batch norms three ways", "",
             "`python benchmarks/frozen_norms.py --data-dir <FACECOM root> --work-root <W> "
             f"--warmup {args.warmup} --steps {args.steps} --rounds {args.rounds}`", "",
             f"{_cpu()}, torch {torch.__version__}; median seconds per optimiser step of "
             f"{args.steps} steps after {args.warmup}, one process per run, the variants "
             "alternating.", "",
             "| frozen blocks' batch norms | " + " | ".join(
                 f"round {i + 1}" for i in range(args.rounds)) + " | mean |",
             "|---|" + "---|" * (args.rounds + 1)]
    for variant, label in VARIANTS.items():
        lines.append(f"| {label} | " + " | ".join(f"{m:.3f}" for m in medians[variant])
                     + f" | {statistics.mean(medians[variant]):.3f} |")
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
