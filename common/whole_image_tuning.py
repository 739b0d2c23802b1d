"""The loop that fine-tunes a whole-image network end to end with a new head.

Glare saturates the face, so what is left to read is the whole image: hair, head outline,
clothes. Task A fine-tunes the whole-image network for gender (`common.gender_tuning`), Task B
for identity (`common.glare_identity`); both share this loop: AdamW with a one-cycle schedule
(the new head learns faster), each image mirrored half the time, and the epoch with the best dev
score kept, so the network is scored as `whole_image.Tuned` reads it.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from common import whole_image
from common.config import place

__all__ = ["TuneSettings", "fine_tune"]


@dataclass(frozen=True)
class TuneSettings:
    """A fine-tuning recipe, chosen on each task's dev split (`docs/results.md`): the defaults are
    Task A's gender recipe (`common.gender_tuning`); `glare_identity.TUNING` is Task B's.

    Attributes:
        epochs: passes over the train images (the best dev epoch is kept).
        lr: peak AdamW learning rate of the backbone (one-cycle schedule); the new head's is
            `head_lr_factor` times higher.
    """

    epochs: int = 6
    lr: float = 3e-4
    head_lr_factor: float = 10.0
    batch_size: int = 32
    weight_decay: float = 1e-4
    warmup: float = 0.15


def fine_tune(network: nn.Module, make_head: Callable[[nn.Module], nn.Module],
              train: np.ndarray, loss: Callable[[nn.Module, torch.Tensor, torch.Tensor],
                                                torch.Tensor],
              dev_score: Callable[[nn.Module, nn.Module], float], score_name: str,
              settings: TuneSettings, seed: int = 0, device: str = "cpu", desc: str = "tuning"
              ) -> tuple[nn.Module, list[dict]]:
    """Fine-tune `network` (a `models.create_backbone` module: pooled features of normalised
    images, their width ``num_features``) and the head `make_head` builds for it on `train`
    ((N, S, S, 3) uint8 RGB); `loss(head, features, rows)` is a batch's loss (`rows` index
    `train`), `dev_score(network, head)` an epoch's dev figure (NaN: no dev, then the last
    epoch is kept). Both end with the weights of the best dev epoch.

    Returns the head and one history row per epoch (train loss and `score_name`).
    """
    torch.manual_seed(seed)
    network = place(network, device)
    head = make_head(network).to(device)
    optimizer = torch.optim.AdamW(
        [{"params": network.parameters()}, {"params": head.parameters()}],
        lr=settings.lr, weight_decay=settings.weight_decay)
    steps = settings.epochs * -(-len(train) // settings.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=[settings.lr, settings.lr * settings.head_lr_factor],
        total_steps=steps, pct_start=settings.warmup)
    generator = torch.Generator().manual_seed(seed)
    history, best = [], None
    for epoch in range(settings.epochs):
        network.train()
        order = torch.randperm(len(train), generator=generator)
        losses = []
        for start in tqdm(range(0, len(order), settings.batch_size), leave=False,
                          desc=f"{desc} epoch {epoch + 1}/{settings.epochs}"):
            rows = order[start:start + settings.batch_size]
            batch = whole_image.normalised(train[rows.numpy()], network, device)
            mirrored = (torch.rand(len(rows), generator=generator) < 0.5).to(device)
            batch = torch.where(mirrored[:, None, None, None], batch.flip(3), batch)
            value = loss(head, network(batch), rows)
            optimizer.zero_grad()
            value.backward()
            optimizer.step()
            schedule.step()
            losses.append(value.item())
        score = dev_score(network, head)
        history.append({"epoch": epoch, "train_loss": float(np.mean(losses)), score_name: score})
        if best is None or math.isnan(score) or score > best[0]:
            best = (score, copy.deepcopy(network.state_dict()), copy.deepcopy(head.state_dict()))
    network.load_state_dict(best[1])
    head.load_state_dict(best[2])
    network.eval()
    head.eval()
    return head, history
