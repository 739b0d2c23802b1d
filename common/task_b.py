"""Task B, identity under distortion: data, embedding training (ArcFace, contrastive, Siamese
pairs) and the gallery-retrieval evaluation shared by notebooks 02, 03 and 04.

The official protocol is identity-disjoint retrieval: the gallery holds the clean images of the
evaluated identities, the queries are their distorted images, and a query is right when the most
similar gallery identity is its own. Nothing from the evaluated identities is trained on.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from common import cache, data, losses, metrics, transforms
from common.experiment import (ExperimentConfig, Splits, create_optimizer, create_scheduler,
                               make_loader, make_splits)
from common.train import FitResult, fit, predict_batches

__all__ = ["BACKBONES", "EPOCHS", "TaskBData", "prepare_data", "EmbeddingClassifier",
           "PairDataset", "embed", "evaluate_gallery", "pair_list", "verification_metrics",
           "train_arcface", "train_pairs"]

BACKBONES = {"cpu": "efficientnet_lite0", "gpu": "efficientnet_b4"}
EPOCHS = {"cpu": 6, "gpu": 30}


@dataclass
class TaskBData:
    """Identity-disjoint splits of the Task B table and their decoded images (rows aligned)."""

    splits: Splits
    images: dict[str, np.ndarray]
    identity_index: dict[str, int]

    def train_labels(self) -> np.ndarray:
        """Integer class of each row of the train split (ArcFace targets)."""
        return self.splits.train["identity"].map(self.identity_index).to_numpy()


def prepare_data(cfg: ExperimentConfig) -> TaskBData:
    """Read Task B, split by identity, decode (cached) every image once."""
    root = Path(cfg.data_dir)
    if not (root / "Task_B" / "train").is_dir():
        raise data.DatasetLayoutError(
            f"{root}/Task_B/train not found: Task B needs <root>/Task_B/train/<identity>/*.jpg "
            "(+ <identity>/distortion/*). Point data_dir at the FACECOM root.")
    train = data.read_task_b(root, "train")
    val = data.read_task_b(root, "val") if (root / "Task_B" / "val").is_dir() else None
    splits = make_splits(train, val, cfg, stratify=None)
    images = {name: cache.load_image_array(frame["path"].tolist(), cfg.image_size)
              for name, frame in (("train", splits.train), ("dev", splits.dev),
                                  ("eval", splits.eval))}
    identities = sorted(splits.train["identity"].unique())
    return TaskBData(splits, images, {name: i for i, name in enumerate(identities)})


class EmbeddingClassifier(nn.Module):
    """An embedding network plus an ArcFace head, trained together; only `embedder` is deployed."""

    def __init__(self, embedder: nn.Module, num_classes: int, embedding_dim: int = 512,
                 s: float = 30.0, m: float = 0.5) -> None:
        super().__init__()
        self.embedder = embedder
        self.head = losses.ArcMarginProduct(embedding_dim, num_classes, s=s, m=m)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, D) L2-normalised embeddings."""
        return self.embedder(images)

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """ArcFace cross-entropy of one batch."""
        return nn.functional.cross_entropy(self.head(self.embedder(images), labels), labels)


class PairDataset(Dataset):
    """((image_a, image_b), same) items for the rows listed in a pair table (columns i, j, same)."""

    def __init__(self, images: np.ndarray, pairs: pd.DataFrame, transform) -> None:
        self.images = cache.ImageArrayDataset(images, np.zeros(len(images), dtype=np.int64),
                                              transform)
        self.pairs = pairs[["i", "j", "same"]].to_numpy()

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        i, j, same = self.pairs[index]
        return (self.images[int(i)][0], self.images[int(j)][0]), float(same)


def embed(model: nn.Module, images: np.ndarray, cfg: ExperimentConfig, mean, std,
          flip_tta: bool = False, progress: bool = False) -> np.ndarray:
    """(N, D) L2-normalised embeddings; with `flip_tta` the mean of image and mirror, renormalised."""
    dataset = cache.ImageArrayDataset(images, np.zeros(len(images), dtype=np.int64),
                                      transforms.create_eval_transform(cfg.image_size, mean, std))
    loader = make_loader(dataset, cfg.batch_size * 2, num_workers=0)
    embeddings = predict_batches(model, loader, cfg.device, progress=progress, desc="embed")
    if flip_tta:
        flipped = cache.ImageArrayDataset(np.ascontiguousarray(images[:, :, ::-1]),
                                          np.zeros(len(images), dtype=np.int64),
                                          dataset.transform)
        embeddings = embeddings + predict_batches(
            model, make_loader(flipped, cfg.batch_size * 2), cfg.device, progress=progress,
            desc="embed (flip)")
    return nn.functional.normalize(embeddings, dim=1).numpy()


def evaluate_gallery(frame: pd.DataFrame, embeddings: np.ndarray, aggregate: str = "max",
                     exclude_own_source: bool = False) -> dict:
    """The official retrieval protocol on one split: clean rows are the gallery, distorted rows
    the queries. Returns `metrics.compute_retrieval_metrics` output."""
    is_clean = (frame["distortion"] == "clean").to_numpy()
    if not is_clean.any() or is_clean.all():
        raise ValueError("Gallery retrieval needs both clean (gallery) and distorted (query) "
                         f"images; this split has {is_clean.sum()} clean of {len(frame)}.")
    gallery, queries = frame[is_clean], frame[~is_clean]
    return metrics.compute_retrieval_metrics(
        embeddings[is_clean], gallery["identity"].to_numpy(),
        embeddings[~is_clean], queries["identity"].to_numpy(),
        query_distortions=queries["distortion"].to_numpy(),
        query_sources=queries["source"].to_numpy(), gallery_sources=gallery["path"].to_numpy(),
        aggregate=aggregate, exclude_own_source=exclude_own_source)


def pair_list(frame: pd.DataFrame, n_pairs: int, seed: int) -> pd.DataFrame:
    """A fixed, seeded, balanced list of (i, j, same) row pairs of one split."""
    return metrics.make_pairs(frame["identity"].to_numpy(), n_pairs=n_pairs, seed=seed,
                              distortions=frame["distortion"].to_numpy())


def verification_metrics(embeddings: np.ndarray, pairs: pd.DataFrame,
                         threshold: float | None = None) -> dict:
    """Pair verification on cosine similarity (threshold None = best-accuracy threshold)."""
    i, j = pairs["i"].to_numpy(), pairs["j"].to_numpy()
    scores = (embeddings[i] * embeddings[j]).sum(axis=1)
    return metrics.compute_verification_metrics(scores, pairs["same"].to_numpy().astype(bool),
                                                threshold=threshold)


def _fit_embedding(model: nn.Module, cfg: ExperimentConfig, name: str, make_epoch_loader,
                   compute_loss, task_data: TaskBData, mean, std, monitor: str, epochs: int,
                   schedule: str, lr: float, stop_after_steps: int | None) -> FitResult:
    """Shared by every Task B recipe: dev retrieval + dev pair verification, best by `monitor`."""
    dev = task_data.splits.dev
    dev_pairs = pair_list(dev, n_pairs=min(2000, 4 * len(dev)), seed=cfg.seed)

    def evaluate(trained: nn.Module) -> dict:
        embeddings = embed(trained, task_data.images["dev"], cfg, mean, std)
        retrieval = evaluate_gallery(dev, embeddings)
        verification = verification_metrics(embeddings, dev_pairs)
        return {"top1": retrieval["top1"], "top5": retrieval["top5"],
                "f1_macro": retrieval["f1_macro"], "pair_accuracy": verification["accuracy"],
                "pair_roc_auc": verification["roc_auc"]}

    optimizer = create_optimizer(model, lr, cfg.weight_decay)
    steps = max(1, len(make_epoch_loader(0)))
    scheduler, interval = create_scheduler(schedule, optimizer, epochs, steps)
    return fit(model, make_loader=make_epoch_loader, compute_loss=compute_loss, evaluate=evaluate,
               optimizer=optimizer, scheduler=scheduler, scheduler_interval=interval,
               epochs=epochs, monitor=monitor, mode="max", patience=cfg.patience,
               device=cfg.device, amp=cfg.profile.amp, resume=cfg.resume,
               resume_path=cfg.weights_dir / f"{name}.resume.pt",
               best_path=cfg.run_dir / f"{name}.best_state.pt", stop_after_steps=stop_after_steps)


def train_arcface(model: EmbeddingClassifier, task_data: TaskBData, cfg: ExperimentConfig,
                  name: str, distortion_p: float = 0.5, schedule: str = "cosine",
                  stop_after_steps: int | None = None) -> FitResult:
    """ArcFace classification over the train identities (clean and distorted images alike),
    selected on dev gallery top-1."""
    mean, std = model.embedder.data_config["mean"], model.embedder.data_config["std"]
    train_set = cache.ImageArrayDataset(
        task_data.images["train"], task_data.train_labels(),
        transforms.create_train_transform(cfg.image_size, mean, std, distortion_p))

    def make_epoch_loader(epoch: int):
        return make_loader(train_set, cfg.batch_size, shuffle=True, seed=cfg.seed, epoch=epoch,
                           num_workers=cfg.num_workers, drop_last=len(train_set) > cfg.batch_size)

    def compute_loss(trained: EmbeddingClassifier, batch) -> torch.Tensor:
        images, labels = batch
        return trained.loss(images, labels)

    return _fit_embedding(model, cfg, name, make_epoch_loader, compute_loss, task_data, mean,
                          std, "top1", cfg.epochs, schedule, cfg.lr, stop_after_steps)


def train_pairs(model: nn.Module, task_data: TaskBData, cfg: ExperimentConfig, name: str,
                epochs: int, lr: float, pairs_per_epoch: int = 0, margin: float = 1.0,
                hard_negatives: bool = False, distortion_p: float = 0.5,
                monitor: str = "pair_accuracy", stop_after_steps: int | None = None
                ) -> FitResult:
    """Contrastive training on fresh, seeded, balanced pairs every epoch.

    Used for the Siamese network (monitor dev pair accuracy) and for FaceNet's stage 2 (monitor
    dev top-1). Positives include clean-distorted and distorted-distorted pairs of one identity;
    with `hard_negatives` each negative is the nearest other identity in the current embedding.
    """
    data_config = getattr(model, "data_config", None) or model.embedder.data_config
    mean, std = data_config["mean"], data_config["std"]
    train = task_data.splits.train
    transform = transforms.create_train_transform(cfg.image_size, mean, std, distortion_p)
    criterion = losses.ContrastiveLoss(margin=margin)
    n_pairs = pairs_per_epoch or 2 * len(train)

    def make_epoch_loader(epoch: int):
        hard_from = None
        if hard_negatives and epoch > 0:
            hard_from = embed(model, task_data.images["train"], cfg, mean, std)
        pairs = metrics.make_pairs(train["identity"].to_numpy(), n_pairs=n_pairs,
                                   seed=cfg.seed * 7919 + epoch,
                                   distortions=train["distortion"].to_numpy(),
                                   hard_negatives_from=hard_from)
        return make_loader(PairDataset(task_data.images["train"], pairs, transform),
                           cfg.batch_size, shuffle=True, seed=cfg.seed, epoch=epoch,
                           num_workers=cfg.num_workers, drop_last=n_pairs > cfg.batch_size)

    def compute_loss(trained: nn.Module, batch) -> torch.Tensor:
        (first, second), same = batch
        return criterion(trained(first), trained(second), same.float())

    return _fit_embedding(model, cfg, name, make_epoch_loader, compute_loss, task_data, mean,
                          std, monitor, epochs, "cosine", lr, stop_after_steps)
