"""Tests for common/transforms.py: tensor contract, normalisation, determinism, distortions."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from common.transforms import FacecomDistortion, create_eval_transform, create_train_transform

MEAN, STD = (0.5, 0.4, 0.3), (0.25, 0.2, 0.1)


def _image(height: int = 112, width: int = 112, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_eval_normalises_exactly():
    image = np.zeros((64, 64, 3), np.uint8)
    image[..., 0], image[..., 1], image[..., 2] = 255, 102, 0
    out = create_eval_transform(64, MEAN, STD)(image=image)["image"]
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert tuple(out.shape) == (3, 64, 64)
    # (1.0-0.5)/0.25 = 2.0 ; (0.4-0.4)/0.2 = 0.0 ; (0.0-0.3)/0.1 = -3.0
    expected = torch.tensor([2.0, 0.0, -3.0]).view(3, 1, 1).expand(3, 64, 64)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_eval_is_deterministic_and_keeps_sized_input():
    image = _image()
    transform = create_eval_transform(112, MEAN, STD)
    first = transform(image=image)["image"]
    torch.testing.assert_close(first, transform(image=image)["image"], atol=0, rtol=0)
    back = first.permute(1, 2, 0).numpy() * np.array(STD) + np.array(MEAN)
    np.testing.assert_allclose(back * 255, image, atol=1e-3)  # no resampling when already S x S


@pytest.mark.parametrize("shape", [(250, 250, 3), (300, 200, 3), (80, 120, 3)])
def test_resizes_other_sizes(shape):
    for transform in (create_eval_transform(112, MEAN, STD),
                      create_train_transform(112, MEAN, STD, seed=0)):
        assert tuple(transform(image=_image(*shape[:2]))["image"].shape) == (3, 112, 112)


def test_train_with_distortion_changes_image_and_is_seeded():
    image = _image()
    outs = [create_train_transform(112, MEAN, STD, distortion_p=p, seed=3)(image=image)["image"]
            for p in (1.0, 1.0, 0.0)]
    torch.testing.assert_close(outs[0], outs[1], atol=0, rtol=0)
    assert (outs[0] - outs[2]).abs().mean() > 0.1  # same geometry/colour draws, plus distortion


def test_distortion_transform_always_changes_textured_image():
    transform = FacecomDistortion(p=1.0)
    transform.set_random_seed(0)
    image = _image(64, 64)
    assert all(not np.array_equal(transform(image=image)["image"], image) for _ in range(20))


def test_distortion_transform_rejects_unknown_names():
    with pytest.raises(ValueError, match="valid names"):
        FacecomDistortion(names=("snowy",))


def test_train_transform_pickles_for_workers():
    transform = pickle.loads(pickle.dumps(create_train_transform(64, MEAN, STD, 1.0, seed=1)))
    assert tuple(transform(image=_image(64, 64))["image"].shape) == (3, 64, 64)
