"""Fine-tuning the probe's whole-image network for gender on the views where dlib finds no face.

Glare saturates the face (most sunny copies), so Task A's probe answers those views from the
whole image. Frozen ImageNet features read hair and outline only as far as ImageNet taught them
to; fine-tuned end to end on exactly those train views, the same network learns what the glare
leaves of a man or a woman (`benchmarks/results/gender_whole_tune.md`). The epoch kept is the
one with the best accuracy on dev's faceless views; each image is read as the mean of its and
its mirror's features, as it is scored (`whole_image.Tuned`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common import whole_image, whole_image_tuning
from common.whole_image_tuning import TuneSettings

__all__ = ["TunedHead", "fine_tune"]


@dataclass
class TunedHead:
    """What `fine_tune` keeps: the head's weight row and bias (P(female) = sigmoid(w.x + b) on
    `whole_image.Tuned` features) and one history row per epoch."""

    weight: np.ndarray
    bias: float
    history: list[dict]


def fine_tune(network: nn.Module, train: np.ndarray, labels: np.ndarray, dev: np.ndarray,
              dev_labels: np.ndarray, settings: TuneSettings = TuneSettings(), seed: int = 0,
              device: str = "cpu") -> TunedHead:
    """Fine-tune `network` (pooled features of normalised images) with a new linear gender head
    on `train` ((N, S, S, 3) uint8 RGB images, labels 1 = female), class-weighted, mirrored half
    the time; `network` ends with the weights of the epoch with the best `dev` accuracy at 0.5
    (the last epoch when `dev` is empty, as in a tiny sample).

    Raises:
        ValueError: the train images do not hold both classes.
    """
    if len(np.unique(labels)) < 2:
        raise ValueError(
            f"gender fine-tuning of the whole-image network needs faceless train views of both "
            f"classes; got {np.bincount(labels, minlength=2).tolist()} (male, female). Use more "
            "data, or context_epochs=0 for frozen ImageNet features.")
    targets = torch.tensor(labels, dtype=torch.float32, device=device)
    pos_weight = (targets == 0).sum() / (targets == 1).sum()

    def loss(head: nn.Module, features: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(head(features).squeeze(1),
                                                  targets[rows.to(device)],
                                                  pos_weight=pos_weight)

    def dev_accuracy(tuned: nn.Module, head: nn.Module) -> float:
        if not len(dev):
            return float("nan")
        logits = whole_image.mirror_features(tuned, dev, device) @ \
            head.weight[0].detach().cpu().numpy() + head.bias.item()
        return float(((logits >= 0) == dev_labels).mean())

    head, history = whole_image_tuning.fine_tune(
        network, lambda tuned: nn.Linear(tuned.num_features, 1), train, loss, dev_accuracy,
        "dev_faceless_accuracy", settings, seed, device, "whole-image gender")
    return TunedHead(head.weight[0].detach().cpu().numpy().copy(), head.bias.item(), history)
