"""Fine-tuning the probe's whole-image network for gender on the views where dlib finds no face.

Glare saturates the face (most sunny copies), so Task A's probe answers those views from the
whole image. Frozen ImageNet features read hair and outline only as far as ImageNet taught them
to; fine-tuned end to end on exactly those train views, the same network learns what the glare
leaves of a man or a woman (`benchmarks/results/gender_whole_tune.md`). The epoch kept is the
one with the best accuracy on dev's faceless views; each image is read as the mean of its and
its mirror's features, as it is scored (`whole_image.Tuned`).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from common import whole_image
from common.config import place

__all__ = ["TuneSettings", "TunedHead", "fine_tune"]


@dataclass(frozen=True)
class TuneSettings:
    """The fine-tuning recipe; the defaults were chosen on dev (`docs/results.md`).

    Attributes:
        epochs: passes over the faceless train views (the best dev epoch is kept).
        lr: peak AdamW learning rate of the backbone (one-cycle schedule); the new head's is
            `head_lr_factor` times higher.
    """

    epochs: int = 6
    lr: float = 3e-4
    head_lr_factor: float = 10.0
    batch_size: int = 32
    weight_decay: float = 1e-4
    warmup: float = 0.15


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
    torch.manual_seed(seed)
    network = place(network, device)
    head = nn.Linear(_width(network, train[:1], device), 1).to(device)
    optimizer = torch.optim.AdamW(
        [{"params": network.parameters()}, {"params": head.parameters()}],
        lr=settings.lr, weight_decay=settings.weight_decay)
    steps = settings.epochs * -(-len(train) // settings.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[settings.lr, settings.lr * settings.head_lr_factor],
        total_steps=steps, pct_start=settings.warmup)
    targets = torch.tensor(labels, dtype=torch.float32, device=device)
    pos_weight = (targets == 0).sum() / (targets == 1).sum()
    generator = torch.Generator().manual_seed(seed)
    history, best = [], None
    for epoch in range(settings.epochs):
        network.train()
        order = torch.randperm(len(train), generator=generator)
        losses = []
        for start in tqdm(range(0, len(order), settings.batch_size), leave=False,
                          desc=f"whole-image gender epoch {epoch + 1}/{settings.epochs}"):
            rows = order[start:start + settings.batch_size]
            batch = whole_image.normalised(train[rows.numpy()], network, device)
            mirrored = (torch.rand(len(rows), generator=generator) < 0.5).to(device)
            batch = torch.where(mirrored[:, None, None, None], batch.flip(3), batch)
            loss = F.binary_cross_entropy_with_logits(head(network(batch)).squeeze(1),
                                                      targets[rows.to(device)],
                                                      pos_weight=pos_weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            losses.append(loss.item())
        accuracy = float("nan")
        if len(dev):
            dev_logits = whole_image.mirror_features(network, dev, device) @ \
                head.weight[0].detach().cpu().numpy() + head.bias.item()
            accuracy = float(((dev_logits >= 0) == dev_labels).mean())
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)),
                        "dev_faceless_accuracy": accuracy})
        if best is None or not len(dev) or accuracy > best[0]:
            best = (accuracy, copy.deepcopy(network.state_dict()),
                    head.weight[0].detach().cpu().numpy().copy(), head.bias.item())
    network.load_state_dict(best[1])
    network.eval()
    return TunedHead(best[2], float(best[3]), history)


@torch.no_grad()
def _width(network: nn.Module, image: np.ndarray, device: str) -> int:
    network.eval()
    return network(whole_image.normalised(image, network, device)).shape[1]
