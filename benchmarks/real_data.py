"""What the benchmarks on the real FACECOM train split share: their command line (the data,
a work root whose caches they reuse, the seed) and notebook 02's identity-disjoint splits of it."""
from __future__ import annotations

import argparse
from pathlib import Path

from common import data, experiment, task_b
from common.splits import Splits, make_splits


def arguments(description: str) -> argparse.ArgumentParser:
    """``--data-dir``, ``--work-root`` and ``--seed``; a benchmark adds its own options."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--work-root", type=Path, required=True, help="its caches are reused")
    parser.add_argument("--seed", type=int, default=0)
    return parser


def task_b_splits(args: argparse.Namespace, run: str
                  ) -> tuple[experiment.ExperimentConfig, Splits]:
    """Notebook 02's settings (its CPU profile) and splits of the Task B train folders; the
    run folder is ``<work root>/<run>``."""
    cfg = experiment.ExperimentConfig.resolve(
        task_b.ArcFaceSettings, data_dir=str(args.data_dir), work_root=str(args.work_root),
        seed=args.seed, output_dir=str(args.work_root / run))
    return cfg, make_splits(data.read_task_b(Path(cfg.data_dir), "train"), None, cfg,
                            stratify=None)


def write_report(path: Path, title: str, how: str, table: str) -> None:
    """A results page: its title, how it was produced (command, data, what the columns mean)
    and the table; the table is printed too."""
    path.write_text("\n".join([f"# {title}", "", how, "", table, ""]))
    print(table)
