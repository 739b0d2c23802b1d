"""Fine-tuning SFace on FACECOM's train identities: the identity channel that answers "who is
this?" when the gallery holds another photo of the person (issue 20).

Only `sface_net.SFaceIdentity.tail` learns, with ArcFace over the train identities' clean and
distorted images, so the frozen part runs once per crop before the first step, and an epoch
costs a pass of the tail alone: on a CPU the whole fine-tuning fits beside notebook 02's own
training. The epoch kept is the one with the best dev top-1 with the query's own photo removed,
the protocol this channel exists for.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from common import evaluation, metrics
from common.losses import ArcMarginProduct
from common.sface_net import SFaceIdentity, face_crops, frozen_features, tail_vectors
from common.train import FitResult

__all__ = ["TuneSettings", "fine_tune", "dev_top1_hard", "train_identity_channel"]


@dataclass(frozen=True)
class TuneSettings:
    """The fine-tuning recipe; the defaults were chosen on dev (`docs/results.md`).

    Attributes:
        epochs: passes over the train images (the best dev epoch is kept).
        lr: AdamW learning rate of the tail; the ArcFace centres, started at the class means,
            learn `centre_lr_factor` times faster.
    """

    epochs: int = 4
    lr: float = 1e-4
    batch_size: int = 128
    weight_decay: float = 5e-4
    arcface_s: float = 30.0
    arcface_m: float = 0.5
    centre_lr_factor: float = 10.0


def dev_top1_hard(dev: pd.DataFrame) -> Callable[[np.ndarray], float]:
    """Dev's gallery top-1 with the query's own photo removed, as a function of its vectors."""
    def score(vectors: np.ndarray) -> float:
        return metrics.summarize_retrieval(evaluation.retrieval_table(
            dev, vectors, exclude_own_source=True))["top1"]
    return score


def fine_tune(model: SFaceIdentity, train_crops: np.ndarray, labels: np.ndarray,
              dev_features: torch.Tensor, dev_score: Callable[[np.ndarray], float],
              settings: TuneSettings = TuneSettings(), seed: int = 0, device: str = "cpu",
              progress: bool = True) -> FitResult:
    """ArcFace on the tail over the train crops (class `labels`), keeping the state of the epoch
    with the best `dev_score` of the vectors of `dev_features` (`sface_net.frozen_features` of
    the dev crops; epoch 0: SFace as shipped).

    Returns the history (one row per epoch: train loss, dev score) and the epoch kept; the
    model holds that epoch's weights. The seed draws the dropout masks from a forked stream:
    the caller's torch random state is left as it was.
    """
    cuda = [torch.device(device).index or 0] if torch.device(device).type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        return _fine_tune(model, train_crops, labels, dev_features, dev_score, settings, seed,
                          device, progress)


def _fine_tune(model: SFaceIdentity, train_crops: np.ndarray, labels: np.ndarray,
               dev_features: torch.Tensor, dev_score: Callable[[np.ndarray], float],
               settings: TuneSettings, seed: int, device: str, progress: bool) -> FitResult:
    """`fine_tune` once the torch random state is seeded."""
    rng = np.random.default_rng(seed)
    labels_t = torch.as_tensor(labels, dtype=torch.long)
    features = frozen_features(model, train_crops, device, desc="SFace frozen layers, train"
                               if progress else "")
    classes = int(labels_t.max()) + 1
    arc = ArcMarginProduct(model.embedding_dim, classes, s=settings.arcface_s,
                           m=settings.arcface_m).to(device)
    start = torch.from_numpy(tail_vectors(model, features, device))
    with torch.no_grad():
        arc.weight.copy_(F.normalize(torch.zeros(classes, model.embedding_dim)
                                     .index_add_(0, labels_t, start)).to(device))
    optimizer = torch.optim.AdamW(
        [{"params": model.tail.parameters(), "lr": settings.lr},
         {"params": arc.parameters(), "lr": settings.lr * settings.centre_lr_factor}],
        weight_decay=settings.weight_decay)
    steps = settings.epochs * math.ceil(len(labels_t) / settings.batch_size)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / max(steps, 1))))
    history = [{"epoch": 0, "dev_top1_hard": dev_score(tail_vectors(model, dev_features, device))}]
    best = (history[0]["dev_top1_hard"], 0, copy.deepcopy(model.tail.state_dict()))
    for epoch in tqdm(range(1, settings.epochs + 1), desc="fine-tuning SFace",
                      disable=not progress):
        model.tail.train()
        order = rng.permutation(len(labels_t))
        total = 0.0
        for first in range(0, len(order), settings.batch_size):
            index = torch.from_numpy(order[first:first + settings.batch_size])
            batch = features[index]
            target = labels_t[index].to(device)
            loss = F.cross_entropy(arc(model.tail(batch.float().to(device)), target), target)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(index)
        history.append({"epoch": epoch, "train_loss": total / len(labels_t),
                        "dev_top1_hard": dev_score(tail_vectors(model, dev_features, device))})
        if history[-1]["dev_top1_hard"] > best[0]:
            best = (history[-1]["dev_top1_hard"], epoch, copy.deepcopy(model.tail.state_dict()))
    model.tail.load_state_dict(best[2])
    model.eval()
    return FitResult(history=history, best_metric=best[0], best_epoch=best[1])


def train_identity_channel(train_paths: Sequence[str], labels: np.ndarray,
                           frames: dict[str, pd.DataFrame], settings: TuneSettings = TuneSettings(),
                           seed: int = 0, device: str = "cpu"
                           ) -> tuple[SFaceIdentity, FitResult, dict[str, np.ndarray]]:
    """SFace fine-tuned on the train images (`labels`: their classes), chosen on
    ``frames["dev"]``; with the unit vectors of every frame's images (``"dev"``, ``"eval"``)."""
    model = SFaceIdentity()
    train_crops, _ = face_crops(train_paths, progress=True)
    features = {name: frozen_features(model, face_crops(frame["path"].tolist(), progress=True)[0],
                                      device, desc=f"SFace frozen layers, {name}")
                for name, frame in frames.items()}
    result = fine_tune(model, train_crops, labels, features["dev"], dev_top1_hard(frames["dev"]),
                       settings, seed, device)
    return model, result, {name: tail_vectors(model, value, device)
                           for name, value in features.items()}
