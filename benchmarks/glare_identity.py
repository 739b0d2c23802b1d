"""Identity through glare: the whole-image network fine-tuned on the train identities (issue 20).

Glare erases the face of most sunny copies, so the copy-or-identity switch of notebooks 02 and 03
rarely recognises a person there when the gallery holds another photo of them. This fine-tunes
Task A's whole-image backbone (ImageNet EfficientNet-Lite0) with ArcFace over the train
identities on their clean photos and sunny copies (`common.glare_identity`; the notebooks'
splits, seed 0), the epoch with the best dev top-1 of the sunny copies with their own photo
removed kept; then, for each Task B checkpoint, the switch whose identity channel carries a share
of the tuned network's features in the gallery and in the queries without a found face
(`copy_switch.print_whole_image_shares`, fitted on dev for each share).

    python benchmarks/glare_identity.py --data-dir ../shared/data/facecom --work-root W \\
        --checkpoints W/weights/task_b_embedding_efficientnet_lite0.pt

The work root is the one the checkpoints were trained in (its caches). The tuned weights are
saved as ``W/weights/glare_identity.pt``; ``--weights`` reads them instead of training.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.copy_switch import measure  # noqa: E402
from common import data, experiment, glare_identity, models, task_b, whole_image  # noqa: E402
from common.config import configure_threads  # noqa: E402


def tune(data_dir: Path, work_root: Path, seed: int, epochs: int, frozen_blocks: int) -> Path:
    """Fine-tune the network on the notebooks' train split; prints its dev curve, returns the
    saved weights."""
    cfg = experiment.ExperimentConfig.resolve(
        task_b.ArcFaceSettings, data_dir=str(data_dir), work_root=str(work_root), seed=seed,
        output_dir=str(work_root / "runs_glare_identity"))
    splits = task_b.make_splits(data.read_task_b(data_dir, "train"), None, cfg, stratify=None)
    started = time.time()
    network, history = glare_identity.train_network(
        splits.train, splits.dev, dataclasses.replace(glare_identity.TUNING, epochs=epochs),
        seed, frozen_blocks=frozen_blocks)
    path = work_root / "weights" / "glare_identity.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), path)
    train = splits.train[glare_identity.tuning_rows(splits.train)]
    print(f"fine-tuned on {len(train)} train images ({train['identity'].nunique()} identities) "
          f"in {time.time() - started:.0f} s; dev top-1 of the {glare_identity.GLARE} copies, "
          "own photo removed, per epoch: "
          + ", ".join(f"{row['dev_glare_top1_hard']:.4f}" for row in history))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--work-root", type=Path, required=True)
    parser.add_argument("--checkpoints", type=Path, nargs="+", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=glare_identity.TUNING.epochs)
    parser.add_argument("--frozen-blocks", type=int, default=glare_identity.FROZEN_BLOCKS,
                        help="backbone blocks, stem first, kept at ImageNet weights")
    parser.add_argument("--weights", type=Path, help="tuned weights saved by an earlier run")
    args = parser.parse_args()
    configure_threads(torch.device("cpu"))
    path = args.weights or tune(args.data_dir, args.work_root, args.seed, args.epochs,
                                  args.frozen_blocks)
    network = models.whole_image_network(glare_identity.BACKBONE)
    network.load_state_dict(torch.load(path, map_location="cpu"))
    tuned = whole_image.Tuned(network.eval(), hashlib.sha256(path.read_bytes()).hexdigest())
    for checkpoint in args.checkpoints:
        measure(checkpoint, args.data_dir, args.work_root, args.seed, whole=True,
                whole_tuned=tuned)


if __name__ == "__main__":
    main()
