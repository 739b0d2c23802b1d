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

from common import (cache, data, evaluation, identity_folders, losses, metrics, models,
                    transforms)
from common.experiment import (ExperimentConfig, Splits, create_optimizer, create_scheduler,
                               make_loader, make_splits)
from common.train import FitResult, fit, predict_batches

__all__ = ["BACKBONES", "SIAMESE_BACKBONES", "EPOCHS", "TaskBData", "prepare_data",
           "backbone_for", "create_embedder", "EmbeddingClassifier", "PairDataset", "embed",
           "train_arcface", "train_pairs", "model_card", "MIN_PAIRS_PER_EPOCH"]

BACKBONES = {"cpu": "efficientnet_lite0", "gpu": "efficientnet_b4"}
SIAMESE_BACKBONES = {"cpu": "efficientnet_lite0", "gpu": "convnext_atto"}
EPOCHS = {"cpu": 6, "gpu": 30}
MIN_PAIRS_PER_EPOCH = 2000  # quick runs on the sample: 350 pairs/epoch left pair AUC at 0.63


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
    """Read Task B (or identity folders when the notebook's `data_format` says so), split by
    identity, decode (cached) every image once."""
    root = Path(cfg.data_dir)
    if cfg.params.get("data_format", "facecom") == "identity_folders":
        return _decode(identity_folders.read_splits(cfg), cfg)
    if not (root / "Task_B" / "train").is_dir():
        raise data.DatasetLayoutError(
            f"{root}/Task_B/train not found: Task B needs <root>/Task_B/train/<identity>/*.jpg "
            "(+ <identity>/distortion/*). Point data_dir at the FACECOM root.")
    train = data.read_task_b(root, "train")
    val = data.read_task_b(root, "val") if (root / "Task_B" / "val").is_dir() else None
    return _decode(make_splits(train, val, cfg, stratify=None), cfg)


def _decode(splits: Splits, cfg: ExperimentConfig) -> TaskBData:
    images = {name: cache.load_image_array(frame["path"].tolist(), cfg.image_size)
              for name, frame in (("train", splits.train), ("dev", splits.dev),
                                  ("eval", splits.eval))}
    identities = sorted(splits.train["identity"].unique())
    return TaskBData(splits, images, {name: i for i, name in enumerate(identities)})


def backbone_for(model: str, backbone: str) -> str:
    """The backbone a Task B model kind implies: `facenet` and `efficientfr` fix their own."""
    fixed = {"facenet": "inception_resnet_v1", "efficientfr": "efficientfr"}
    if model not in ("embedding", *fixed):
        raise ValueError(f"Unknown model={model!r}; choose embedding, facenet or efficientfr.")
    return fixed.get(model, backbone)


def create_embedder(model: str, cfg: ExperimentConfig, embedding_dim: int = 512) -> nn.Module:
    """The embedding network of a Task B model kind (see `backbone_for`)."""
    if model == "facenet":
        return models.create_model("facenet", embedding_dim=embedding_dim,
                                   pretrained=cfg.pretrained, weights=cfg.weights or None)
    return models.create_model("embedding", backbone_name=backbone_for(model, cfg.backbone),
                               embedding_dim=embedding_dim, pretrained=cfg.pretrained,
                               weights=cfg.weights or None)


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


def embed(model: nn.Module, images: np.ndarray, image_size: int, mean, std,
          device: torch.device | str = "cpu", batch_size: int = 128, flip_tta: bool = False,
          progress: bool = False) -> np.ndarray:
    """(N, D) L2-normalised embeddings; with `flip_tta` the mean of image and mirror, renormalised."""
    transform = transforms.create_eval_transform(image_size, mean, std)
    labels = np.zeros(len(images), dtype=np.int64)
    views = [images, np.ascontiguousarray(images[:, :, ::-1])] if flip_tta else [images]
    total = sum(predict_batches(model, make_loader(cache.ImageArrayDataset(view, labels, transform),
                                                   batch_size), device, progress=progress,
                                desc="embed") for view in views)
    return nn.functional.normalize(total, dim=1).numpy()


def _fit_embedding(model: nn.Module, cfg: ExperimentConfig, name: str, make_epoch_loader,
                   compute_loss, task_data: TaskBData, mean, std, monitor: str, epochs: int,
                   schedule: str, lr: float, stop_after_steps: int | None) -> FitResult:
    """Shared by every Task B recipe: dev retrieval + dev pair verification, best by `monitor`."""
    dev = task_data.splits.dev
    dev_pairs = evaluation.make_pair_list(dev, min(2000, 4 * len(dev)), seed=cfg.seed)
    first, second = dev_pairs["i"].to_numpy(), dev_pairs["j"].to_numpy()

    def evaluate(trained: nn.Module) -> dict:
        embeddings = embed(trained, task_data.images["dev"], cfg.image_size, mean, std,
                           cfg.device, cfg.batch_size * 2)
        retrieval = metrics.summarize_retrieval(evaluation.retrieval_table(dev, embeddings))
        similarity = (embeddings[first] * embeddings[second]).sum(axis=1)
        verification = metrics.compute_verification_metrics(similarity, dev_pairs["same"])
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
               best_path=cfg.weights_dir / f"{name}.best_state.pt",
               stop_after_steps=stop_after_steps)


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
    # As many images as an ArcFace epoch, but enough pairs for small data sets to learn from.
    n_pairs = pairs_per_epoch or max(len(train) // 2, MIN_PAIRS_PER_EPOCH)

    def make_epoch_loader(epoch: int):
        hard_from = None
        if hard_negatives and epoch > 0:
            hard_from = embed(model, task_data.images["train"], cfg.image_size, mean, std,
                              cfg.device, cfg.batch_size * 2)
        pairs = evaluation.make_pair_list(train, n_pairs, seed=cfg.seed * 7919 + epoch,
                                          hard_negatives_from=hard_from)
        return make_loader(PairDataset(task_data.images["train"], pairs, transform),
                           cfg.batch_size, shuffle=True, seed=cfg.seed, epoch=epoch,
                           num_workers=cfg.num_workers, drop_last=n_pairs > cfg.batch_size)

    def compute_loss(trained: nn.Module, batch) -> torch.Tensor:
        (first, second), same = batch
        return criterion(trained(first), trained(second), same.float())

    return _fit_embedding(model, cfg, name, make_epoch_loader, compute_loss, task_data, mean,
                          std, monitor, epochs, "cosine", lr, stop_after_steps)


def model_card(cfg: ExperimentConfig, embedder: nn.Module, model: str,
               report: evaluation.GalleryReport, splits: Splits, fingerprint: str,
               pair_threshold: float | None = None) -> dict:
    """What `runs.save_model` stores beside a Task B embedder (enough to rebuild and use it)."""
    if model == "facenet":
        kind, kwargs = "facenet", {"embedding_dim": embedder.embedding_dim}
    elif model == "siamese":
        kind, kwargs = "siamese", {"backbone_name": cfg.backbone}
    else:
        kind, kwargs = "embedding", {"backbone_name": cfg.backbone,
                                     "embedding_dim": embedder.embedding_dim}
    source = embedder.weights_source
    return {
        "task": "task_b", "kind": kind, "model": model, "model_kwargs": kwargs,
        "backbone": cfg.backbone, "image_size": cfg.image_size,
        "mean": list(embedder.data_config["mean"]), "std": list(embedder.data_config["std"]),
        "aligned": False, "similarity_threshold": report.verification["threshold"],
        "pair_distance_threshold": pair_threshold, "data_fingerprint": fingerprint,
        "dev_metrics": {"top1": report.dev["top1"], "f1_macro": report.dev["f1_macro"]},
        "weights_source": str(source), "pretrained": bool(getattr(source, "pretrained", False)),
        "holdout_identities": (sorted(splits.eval["identity"].unique())
                               if splits.eval_name == "holdout" else None),
        "config": cfg.summary(),
    }
