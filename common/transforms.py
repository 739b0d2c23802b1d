"""albumentations pipelines: uint8 RGB (H, W, 3) in, normalised float tensor (3, S, S) out.

mean/std come from the backbone's data config (`module.data_config`), never retyped here. The train
pipeline adds FACECOM's own distortions (common.distortions) so that a model sees blurred, foggy,
dark, noisy, rainy, low-resolution and sun-washed faces during training, as in Task B's val set.
Everything is a top-level class or albumentations transform, so pipelines pickle into DataLoader
worker processes.
"""
from __future__ import annotations

from typing import Any, Sequence

import albumentations as A
import cv2
import numpy as np
from albumentations.pytorch import ToTensorV2

from common.distortions import DISTORTIONS, apply_distortion

__all__ = ["FacecomDistortion", "create_train_transform", "create_eval_transform"]


class FacecomDistortion(A.ImageOnlyTransform):
    """Apply one FACECOM distortion, chosen uniformly from `names`, with a random strength.

    The distortion seed is drawn from the transform's own generator, which albumentations seeds
    from `Compose(seed=...)`, so augmentation is reproducible. albumentations 2.0.8 does not
    re-seed in DataLoader workers: forked workers would repeat one stream unless the worker init
    calls `dataset.transform.set_random_seed(torch.initial_seed() % 2**32)`.

    Args:
        names: distortion names to choose from (default: all of DISTORTIONS).
        strength_range: strength drawn uniformly from this range (1.0 = FACECOM-like).
        p: probability of applying a distortion at all.
    """

    def __init__(self, names: Sequence[str] | None = None,
                 strength_range: tuple[float, float] = (0.6, 1.2), p: float = 0.5):
        super().__init__(p=p)
        self.names = tuple(DISTORTIONS if names is None else names)
        unknown = sorted(set(self.names) - set(DISTORTIONS))
        if unknown or not self.names:
            raise ValueError(f"unknown or empty distortion names {unknown or list(self.names)}; "
                             f"valid names: {', '.join(DISTORTIONS)}")
        self.strength_range = (float(strength_range[0]), float(strength_range[1]))

    def get_params(self) -> dict[str, Any]:
        """Draw the distortion name, strength and seed for one image."""
        return {
            "name": self.names[int(self.random_generator.integers(len(self.names)))],
            "strength": float(self.random_generator.uniform(*self.strength_range)),
            "seed": int(self.random_generator.integers(0, 2**31 - 1)),
        }

    def apply(self, img: np.ndarray, name: str = "blurred", strength: float = 1.0,
              seed: int = 0, **params: Any) -> np.ndarray:
        """Distort one uint8 RGB image."""
        return apply_distortion(img, name, strength=strength, seed=seed)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        """Arguments albumentations records when serialising the pipeline."""
        return ("names", "strength_range")


def _fit(image_size: int) -> list[A.BasicTransform]:
    """Resize the shorter side and centre-crop, like common.data's decoded-image cache.

    Arrays from that cache are already image_size square, for which both steps are no-ops.
    """
    return [A.SmallestMaxSize(max_size=image_size, interpolation=cv2.INTER_AREA, p=1.0),
            A.CenterCrop(image_size, image_size, p=1.0)]


def _finish(mean: Sequence[float], std: Sequence[float]) -> list[A.BasicTransform]:
    """Normalise with the backbone's mean/std (on 0-1 pixels) and convert HWC uint8 to CHW."""
    return [A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0, p=1.0),
            ToTensorV2(p=1.0)]


def create_train_transform(image_size: int, mean: Sequence[float], std: Sequence[float],
                           distortion_p: float = 0.5, seed: int | None = None) -> A.Compose:
    """Training pipeline: flip, small affine, mild colour jitter, then a FACECOM distortion.

    Geometry and colour are kept mild because faces are roughly aligned and gender/identity
    cues (hair, skin tone) must survive; the distortion comes last so it is not undone by jitter.

    Args:
        image_size: output side S in pixels.
        mean, std: per-channel normalisation of the backbone (0-1 pixel scale).
        distortion_p: probability of one random FACECOM distortion per image.
        seed: seeds the pipeline's random generators (None = fresh entropy); re-seed per
            DataLoader worker with `.set_random_seed(...)`, see FacecomDistortion.

    Returns:
        A Compose mapping `image=` uint8 (H, W, 3) RGB to a float32 tensor (3, S, S).
    """
    return A.Compose([
        *_fit(image_size),
        A.HorizontalFlip(p=0.5),
        A.Affine(scale=(0.93, 1.07), translate_percent=(-0.05, 0.05), rotate=(-10, 10),
                 border_mode=cv2.BORDER_REFLECT_101, p=0.7),
        A.ColorJitter(brightness=0.15, contrast=0.15, saturation=0.15, hue=0.02, p=0.5),
        FacecomDistortion(p=distortion_p),
        *_finish(mean, std),
    ], seed=seed)


def create_eval_transform(image_size: int, mean: Sequence[float],
                          std: Sequence[float]) -> A.Compose:
    """Deterministic evaluation pipeline: fit to S x S, normalise, convert to a (3, S, S) tensor."""
    return A.Compose([*_fit(image_size), *_finish(mean, std)])
