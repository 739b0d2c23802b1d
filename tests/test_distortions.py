"""Tests for common/distortions.py: determinism, contract, and the direction of each effect."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from common.distortions import (DISTORTION_FUNCS, DISTORTIONS, apply_distortion, blurred, foggy,
                                lowlight, noisy, rainy, resized, sunny)


def _face_like(size: int = 112) -> np.ndarray:
    """A textured mid-grey test image: smooth gradient, edges and fine checker detail."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    base = 90 + 60 * np.sin(xx / 9.0) * np.cos(yy / 13.0)
    checker = 25 * (((xx // 2) + (yy // 2)) % 2)
    image = np.stack([base + checker, base * 0.9 + checker, base * 0.8 + checker], axis=2)
    cv2.circle(image, (size // 2, size // 2), size // 4, (200, 170, 150), -1)
    return np.clip(image, 0, 255).astype(np.uint8)


def _gray(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY).astype(np.float32)


def _laplacian_var(image: np.ndarray) -> float:
    return float(cv2.Laplacian(_gray(image), cv2.CV_32F).var())


def _high_freq(image: np.ndarray) -> float:
    gray = _gray(image)
    return float(np.abs(gray - cv2.GaussianBlur(gray, (0, 0), 1.0)).mean())


IMAGE = _face_like()


def test_registry_order_and_names():
    assert DISTORTIONS == ("blurred", "foggy", "lowlight", "noisy", "rainy", "resized", "sunny")
    assert tuple(DISTORTION_FUNCS) == DISTORTIONS


@pytest.mark.parametrize("name", DISTORTIONS)
@pytest.mark.parametrize("shape", [(64, 64, 3), (112, 96, 3), (1024, 768, 3)])
def test_shape_dtype_kept_and_input_untouched(name, shape):
    image = cv2.resize(IMAGE, (shape[1], shape[0]))
    before = image.copy()
    out = apply_distortion(image, name, seed=3)
    assert out.shape == shape and out.dtype == np.uint8
    np.testing.assert_array_equal(image, before)


@pytest.mark.parametrize("name", DISTORTIONS)
def test_deterministic_for_seed(name):
    first = apply_distortion(IMAGE, name, seed=7)
    np.testing.assert_array_equal(first, apply_distortion(IMAGE, name, seed=7))
    gen_a, gen_b = np.random.default_rng(5), np.random.default_rng(5)
    np.testing.assert_array_equal(DISTORTION_FUNCS[name](IMAGE, rng=gen_a),
                                  DISTORTION_FUNCS[name](IMAGE, rng=gen_b))


@pytest.mark.parametrize("name", ["foggy", "noisy", "rainy", "sunny"])
def test_random_parts_vary_with_seed(name):
    assert not np.array_equal(apply_distortion(IMAGE, name, seed=1),
                              apply_distortion(IMAGE, name, seed=2))


@pytest.mark.parametrize("name", DISTORTIONS)
def test_strength_zero_is_identity(name):
    out = apply_distortion(IMAGE, name, strength=0.0, seed=0)
    assert np.abs(out.astype(int) - IMAGE.astype(int)).max() <= 1


def test_lowlight_darkens_by_facecom_gain():
    ratio = _gray(lowlight(IMAGE, rng=0)).mean() / _gray(IMAGE).mean()
    assert 0.25 <= ratio <= 0.36  # FACECOM's fitted gain is 0.30 (+-0.03 jitter)


def test_blurred_removes_edges_more_with_strength():
    weak, strong = blurred(IMAGE, 0.5, rng=0), blurred(IMAGE, 1.0, rng=0)
    assert _laplacian_var(strong) < _laplacian_var(weak) < _laplacian_var(IMAGE)
    assert _laplacian_var(strong) < 0.3 * _laplacian_var(IMAGE)
    assert abs(_gray(strong).mean() - _gray(IMAGE).mean()) < 2


def test_noisy_adds_high_frequency_energy():
    assert _high_freq(noisy(IMAGE, rng=0)) > 1.8 * _high_freq(IMAGE)  # checker is already busy
    out = noisy(IMAGE, rng=0)
    grey_impulse = (out[..., 0] == out[..., 1]) & (out[..., 1] == out[..., 2])
    assert grey_impulse.mean() > 0.08  # FACECOM's impulses are grey, ~8-11% of the pixels


def test_sunny_brightens_and_washes_out():
    out = sunny(IMAGE, rng=0)
    assert _gray(out).mean() > 1.5 * _gray(IMAGE).mean()
    assert (_gray(out) > 240).mean() > 0.2


def test_resized_loses_detail_keeps_layout():
    out = resized(IMAGE, rng=0)
    assert _high_freq(out) < 0.8 * _high_freq(IMAGE)
    assert abs(_gray(out).mean() - _gray(IMAGE).mean()) < 2


def test_foggy_lowers_contrast_and_lifts_brightness():
    out = foggy(IMAGE, rng=0)
    assert _gray(out).std() < 0.8 * _gray(IMAGE).std()
    assert _gray(out).mean() > _gray(IMAGE).mean() + 20


def test_rainy_adds_bright_streaks():
    flat = np.full((112, 112, 3), 60, np.uint8)
    out = rainy(flat, rng=0)
    streak = _gray(out) > 120
    assert 0.01 < streak.mean() < 0.4
    assert np.median(_gray(out)) < 60  # the scene itself is dimmed


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match="valid names: blurred, foggy"):
        apply_distortion(IMAGE, "snowy")


def test_rejects_non_uint8_rgb():
    with pytest.raises(ValueError, match="uint8 RGB"):
        blurred(IMAGE.astype(np.float32))
    with pytest.raises(ValueError, match="uint8 RGB"):
        blurred(IMAGE[..., 0])
