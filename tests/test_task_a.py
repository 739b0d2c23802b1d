"""common.task_a: distortion-aware views, per-epoch balancing, and the dual-stream recipe."""
from __future__ import annotations

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score, f1_score

from common import (checkpoints, config, experiment, fallbacks, gender_tuning, models, parameters,
                    predict, task_a, whole_image, whole_image_tuning)
from common import splits as splits_module
from common.distortions import DISTORTIONS


def _views(n_male: int, n_female: int) -> pd.DataFrame:
    """A Task A view table: each clean image with its 7 distorted copies."""
    rows = []
    for index in range(n_male + n_female):
        label = int(index >= n_male)
        source = f"/img{index}.jpg"
        rows.append((source, f"id{index}", label, "clean", source))
        rows += [(f"/img{index}_{d}.jpg", f"id{index}", label, d, source) for d in DISTORTIONS]
    return pd.DataFrame(rows, columns=["path", "identity", "label", "distortion", "source"])


def test_evaluate_views_intervals_resample_identities():
    """80 men and 20 women, each with 7 distorted copies. Clean: one woman missed (accuracy
    0.99, female recall 0.95). Distorted: every copy of 30 people wrong (0.7); clusters of 7
    copies that move together make that interval 100 people's worth, 0.7 +- 1.96 sqrt(0.7 *
    0.3 / 100) = [0.610, 0.790], not 700 copies' (+-0.034)."""
    frame = _views(80, 20)
    labels = frame["label"].to_numpy()
    wrong = ((frame["path"] == "/img99.jpg")
             | ((frame["distortion"] != "clean") & frame["identity"].isin(
                 [f"id{i}" for i in range(50, 80)]))).to_numpy()
    probs = np.where(wrong, 1 - labels, labels).astype(float)
    result = task_a.evaluate_views(frame, probs, 0.5)
    assert (result["accuracy"], result["recall_female"], result["accuracy_distorted"]) == (
        pytest.approx(0.99), pytest.approx(0.95), pytest.approx(0.7))
    low, high = result["accuracy_ci95"]
    assert low < 0.99 <= high == 1.0
    low, high = result["recall_female_ci95"]
    assert low < 0.95 <= high == 1.0
    assert result["accuracy_distorted_ci95"] == pytest.approx([0.610, 0.790], abs=0.02)


def test_epoch_indices_views_and_balancing():
    frame = _views(8, 2)
    plain = task_a.epoch_indices(frame, epoch=0, seed=0, views_per_epoch=2, imbalance="none")
    assert len(plain) == 10 * 3  # each clean image + 2 of its distorted copies
    chosen = frame.iloc[plain]
    assert (chosen.groupby("source").size() == 3).all()
    assert (chosen["distortion"] == "clean").sum() == 10
    balanced = task_a.epoch_indices(frame, 0, 0, 2, "weighted_sampler")
    assert len(balanced) == 30 and (frame["label"].to_numpy()[balanced] == 1).sum() == 15
    under = task_a.epoch_indices(frame, 0, 0, 2, "undersample")
    assert np.bincount(frame["label"].to_numpy()[under]).tolist() == [6, 6]
    again = task_a.epoch_indices(frame, 0, 0, 2, "weighted_sampler")
    assert np.array_equal(balanced, again)  # seeded by (seed, epoch): a resume replays it
    assert not np.array_equal(balanced, task_a.epoch_indices(frame, 1, 0, 2, "weighted_sampler"))
    with pytest.raises(ValueError, match="imbalance"):
        task_a.epoch_indices(frame, 0, 0, 2, "oversample-ish")


def test_load_views_joins_distorted_copies(sample_root):
    views = task_a.load_views(sample_root, "train")
    clean = views[views["distortion"] == "clean"]
    distorted = views[views["distortion"] != "clean"]
    assert len(distorted) == 7 * len(clean)  # every Task A image has its 7 FACECOM copies
    by_path = clean.set_index("path")
    assert (distorted["label"].to_numpy() == by_path.loc[distorted["source"], "label"]
            .to_numpy()).all()
    assert task_a.load_views(sample_root, "test") is None


def test_dual_stream_trains_and_predicts_on_aligned_faces(sample_root, tmp_path):
    """Raw + MTCNN-aligned streams with SE fusion, end to end through a checkpoint and the CLI."""
    cfg = experiment.ExperimentConfig.resolve(
        task_a.Settings, data_dir=str(sample_root),
        output_dir=str(tmp_path / "run"), weights_dir=str(tmp_path / "weights"), quick=True,
        epochs=1, image_size=64, backbone="resnet10t", pretrained=False, seed=0)
    task_data = task_a.prepare_data(cfg, dual_stream=True)
    assert task_data.aligned["train"].shape == task_data.images["train"].shape
    net = task_a.create_classifier(cfg, "dual_se")
    criterion = task_a.create_loss("ce", task_data.splits.train["label"].to_numpy(), "none")
    result = task_a.train_classifier(net, task_data, cfg, criterion, "dual", views_per_epoch=1)
    assert len(result.history) == 1
    threshold, dev, evaluated, eval_probs = task_a.evaluate_model(net, task_data, cfg)
    assert 0.0 <= evaluated["accuracy"] <= 1.0
    # The t-SNE's features are what the last layer reads: it turns them into the same P(female).
    rows, features = task_a.classifier_features(net, task_data, cfg)["classifier"]
    assert list(rows) == list(range(len(task_data.splits.eval)))
    assert features.shape == (len(task_data.splits.eval), net.classifier.in_features)
    with torch.no_grad():
        logits = net.classifier(torch.as_tensor(features))
    np.testing.assert_allclose(torch.softmax(logits, 1)[:, 1].numpy(), eval_probs, atol=1e-5)
    card = task_a.model_card(cfg, net, "dual_se", threshold, dev, task_data.splits, "test")
    assert card.aligned is True and card.kind == "dual_se"
    weights = checkpoints.save_model(net, cfg.weights_dir, "dual", card)
    folder = sample_root / "Task_A" / "val" / "female"
    table = predict.predict_gender(sorted(folder.glob("*.jpg"))[:4], weights, progress=False)
    assert (table["error"] == "").all() and table["probability"].between(0, 1).all()
    assert Path(weights).with_suffix(".json").exists()


def test_head_from_prior_needs_the_face_prior_backbone(sample_root, tmp_path):
    cfg = experiment.ExperimentConfig.resolve(
        task_a.Settings, data_dir=str(sample_root),
        output_dir=str(tmp_path / "run"), weights_dir=str(tmp_path / "weights"), quick=True,
        backbone="resnet10t", pretrained=False)
    with pytest.raises(ValueError, match="dlib_gender"):
        task_a.create_classifier(cfg, "single", head_from_prior=True)


def test_recipe_overlay_choice(monkeypatch):
    def overlay(**values):
        return task_a.Settings.overlay({"recipe": "auto", "backbone": "", "model": "single",
                                        **values})

    monkeypatch.setattr(task_a.face_descriptor, "is_available", lambda front_end: True)
    assert overlay() == ("probe", {**task_a.PROBE_RECIPE, "recipe": "probe"})
    monkeypatch.setattr(task_a.face_descriptor, "is_available", lambda front_end: False)
    monkeypatch.setattr(task_a.face_priors, "is_available", lambda: True)
    with pytest.warns(fallbacks.FallbackWarning, match="using recipe=face_prior"):
        assert overlay()[0] == "face_prior"
    assert overlay(backbone="convnext_atto") == ("parameters", {"recipe": "parameters"})
    assert overlay(model="dual_se") == ("parameters", {"recipe": "parameters"})
    monkeypatch.setattr(task_a.face_priors, "is_available", lambda: False)
    with pytest.warns(fallbacks.FallbackWarning, match="not installed"):
        assert overlay()[0] == "parameters"
    # Both fall-backs are on record for metrics.json and the model card.
    for recipe in ("face_prior", "parameters"):
        assert any(f"using recipe={recipe}" in m for m in fallbacks.recorded())
    with pytest.raises(ValueError, match="recipe"):
        overlay(recipe="best")


def test_every_value_has_one_winner(sample_root, tmp_path, monkeypatch):
    """Notebook default < recipe < the user's parameter; the profile fills 0 / "" and quick mode
    caps last; `summary` names the winner of each value."""
    defaults = parameters.read_defaults("01_task_a_gender")
    cfg = experiment.ExperimentConfig.resolve(
        task_a.Settings, data_dir=str(sample_root), output_dir=str(tmp_path / "run"),
        weights_dir=str(tmp_path / "weights"), device="cpu", profile="cpu", quick=True,
        recipe="face_prior", lr=0.02, loss=defaults["loss"])
    recipe = task_a.FACE_PRIOR_RECIPE
    assert (cfg.lr, cfg.sources["lr"]) == (0.02, "parameter")  # set by the user: beats the recipe
    # Given, but equal to the cell's default: indistinguishable from it, so the recipe wins.
    assert (cfg.task.loss, cfg.sources["loss"]) == (recipe["loss"], "recipe face_prior")
    assert (cfg.task.stream, cfg.sources["stream"]) == (recipe["stream"], "recipe face_prior")
    assert (cfg.image_size, cfg.sources["image_size"]) == (recipe["image_size"],
                                                           "recipe face_prior")
    assert (cfg.epochs, cfg.sources["epochs"]) == (experiment.QUICK["epochs"], "quick mode")
    assert cfg.sources["recipe"] == "parameter" and cfg.sources["seed"] == "notebook"
    summary = cfg.summary()
    assert summary.loc["stream", "set by"] == "recipe face_prior"
    assert summary.loc["views_per_epoch", "value"] == repr(recipe["views_per_epoch"])
    plain = experiment.ExperimentConfig.resolve(
        task_a.Settings, data_dir=str(sample_root), output_dir=str(tmp_path / "run2"),
        weights_dir=str(tmp_path / "weights"), device="cpu", profile="cpu",
        recipe="parameters")
    assert (plain.backbone, plain.sources["backbone"]) == (task_a.BACKBONES["cpu"], "profile cpu")
    assert (plain.image_size, plain.sources["image_size"]) == (
        config.PROFILES["cpu"].image_size, "profile cpu")
    with pytest.raises(ValueError, match=r"01_task_a_gender has no parameter \['epoch'\]"):
        experiment.ExperimentConfig.resolve(task_a.Settings, epoch=3)


def _probe_data(n_per_split: dict[str, int], seed: int = 0) -> task_a.TaskAData:
    """Unit 16-d "descriptors" whose gender is a noisy linear function, 4:1 male like Task A."""
    rng = np.random.default_rng(seed)
    direction = rng.normal(size=16)
    frames, images = {}, {}
    for name, n in n_per_split.items():
        labels = (rng.random(n) < 0.2).astype(int)
        x = rng.normal(size=(n, 16)) + 1.5 * np.outer(2 * labels - 1, direction / np.linalg.norm(
            direction))
        images[name] = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
        frames[name] = pd.DataFrame({"label": labels, "distortion": "clean"})
    splits = splits_module.Splits(frames["train"], frames["dev"], frames["eval"], "holdout")
    return task_a.TaskAData(splits, images, None, 0, "descriptor")


def test_probe_head_is_the_logistic_regression_and_generalises():
    from sklearn.linear_model import LogisticRegression

    data_ = _probe_data({"train": 400, "dev": 200, "eval": 400})
    net = models.create_model("descriptor_probe", in_features=16)
    result = task_a.fit_probe(net, data_)
    assert [row["candidate"] for row in result.history] == [f"C={c:g}" for c in task_a.PROBE_CS]
    chosen = task_a.PROBE_CS[result.best_epoch]
    assert result.best_metric == max(row["dev_f1_macro"] for row in result.history)
    reference = LogisticRegression(C=chosen, class_weight="balanced", max_iter=5000).fit(
        data_.images["train"], data_.splits.train["label"])
    probs = task_a.predict_probs(net, data_.images["eval"], 0)
    cfg = SimpleNamespace(image_size=0, device="cpu", batch_size=64)
    np.testing.assert_array_equal(task_a.classifier_features(net, data_, cfg)["classifier"][1],
                                  data_.images["eval"])  # the descriptors
    np.testing.assert_allclose(probs, reference.predict_proba(data_.images["eval"])[:, 1],
                               atol=1e-5)
    # Unseen rows: chance macro-F1 is about 0.5; the separable signal gives well above 0.85.
    labels = data_.splits.eval["label"].to_numpy()
    assert f1_score(labels, probs >= 0.5, average="macro") > 0.85


def test_probe_answers_faceless_rows_by_its_whole_image_head():
    """Rows [descriptor, face found, whole-image features]: where the face was found the
    descriptor carries gender; where it was not (glare) the descriptor is noise and the 8
    whole-image features carry it. The face head learns from the clean photos, the context
    head from every view, as a standardised regression folded into the head."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(1)
    face = _probe_data({"train": 600, "dev": 300, "eval": 600}, seed=1)
    context_direction = rng.normal(size=8)
    frames, images = {}, {}
    for name in ("train", "dev", "eval"):
        frame = getattr(face.splits, name)
        labels = frame["label"].to_numpy()
        found = rng.random(len(frame)) < 0.6
        descriptors = np.where(found[:, None], face.images[name],
                               rng.normal(size=face.images[name].shape))
        context = 5 + 3 * rng.normal(size=(len(frame), 8)) + 4 * np.outer(
            2 * labels - 1, context_direction / np.linalg.norm(context_direction))
        images[name] = np.hstack([descriptors, found[:, None], context]).astype(np.float32)
        frames[name] = frame.assign(distortion=np.where(found, "clean", "sunny"))
    data_ = task_a.TaskAData(splits_module.Splits(frames["train"], frames["dev"], frames["eval"],
                                                  "holdout"), images, None, 0, "descriptor")
    net = models.create_model("descriptor_probe", in_features=16, context_features=8,
                              context_backbone="efficientnet_lite0")
    task_a.fit_probe(net, data_)
    probs = task_a.predict_probs(net, images["eval"], 0)
    labels, found = frames["eval"]["label"].to_numpy(), images["eval"][:, 16] > 0.5
    # faceless rows: chance is 0.5 balanced accuracy; the context signal gives far more
    assert balanced_accuracy_score(labels[~found], probs[~found] >= 0.5) > 0.85
    # and they are the standardised regression's probabilities, folded into the head
    train = images["train"][:, 17:]
    scaler = StandardScaler().fit(train)
    candidates = [LogisticRegression(C=c, class_weight="balanced", max_iter=5000).fit(
        scaler.transform(train), frames["train"]["label"]) for c in task_a.CONTEXT_CS]
    expected = [model.predict_proba(scaler.transform(images["eval"][~found, 17:]))[:, 1]
                for model in candidates]
    assert any(np.allclose(probs[~found], values, atol=1e-4) for values in expected)
    # the t-SNE's rows per head: the descriptors where found, the whole image elsewhere
    heads = task_a.classifier_features(net, data_, SimpleNamespace(image_size=0, device="cpu",
                                                                   batch_size=64))
    np.testing.assert_array_equal(heads["face"][0], np.flatnonzero(found))
    np.testing.assert_array_equal(heads["face"][1], images["eval"][found, :16])
    np.testing.assert_array_equal(heads["whole image"][1], images["eval"][~found, 17:])
    # rows with a face keep the face head: the same as a probe without the context head
    plain = models.create_model("descriptor_probe", in_features=16)
    task_a.fit_probe(plain, dataclasses.replace(data_, images={
        name: rows[:, :16] for name, rows in images.items()}))
    np.testing.assert_allclose(probs[found],
                               task_a.predict_probs(plain, images["eval"][found, :16], 0),
                               atol=1e-6)


def _striped_faces(count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """224 px images whose class is the direction of their stripes (1: vertical), at a random
    colour, period and phase over noise: what a network must learn, since nothing else tells
    the classes apart."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 2
    grid = np.arange(whole_image.SIZE)
    images = np.empty((count, whole_image.SIZE, whole_image.SIZE, 3), np.uint8)
    for index, label in enumerate(labels):
        period, phase = rng.uniform(12, 40), rng.uniform(0, 2 * np.pi)
        wave = np.sin(2 * np.pi * grid / period + phase) > 0
        mask = np.broadcast_to(wave[None, :] if label else wave[:, None], images.shape[1:3])
        colour = rng.integers(0, 256, size=3)
        noise = rng.integers(0, 256, size=images.shape[1:])
        images[index] = np.where(mask[..., None], colour, noise // 2)
    return images, labels


def test_whole_image_network_learns_gender_and_keeps_its_best_dev_epoch():
    """`gender_tuning.fine_tune` on 48 images: unseen images are classified far above chance
    (0.5), and the network it leaves, with its head, scores dev as its best epoch did."""
    train, labels = _striped_faces(48, 0)
    dev, dev_labels = _striped_faces(24, 1)
    test, test_labels = _striped_faces(32, 2)
    network, _ = models.create_backbone(task_a.PROBE_CONTEXT, pretrained="required")
    tuned = gender_tuning.fine_tune(network, train, labels, dev, dev_labels,
                                    whole_image_tuning.TuneSettings(epochs=3, batch_size=8))
    logits = whole_image.mirror_features(network, test, "cpu") @ tuned.weight + tuned.bias
    assert ((logits >= 0) == test_labels).mean() >= 0.85
    dev_logits = whole_image.mirror_features(network, dev, "cpu") @ tuned.weight + tuned.bias
    best = max(row["dev_faceless_accuracy"] for row in tuned.history)
    assert len(tuned.history) == 3 and ((dev_logits >= 0) == dev_labels).mean() == best
    with pytest.raises(ValueError, match="both classes"):
        gender_tuning.fine_tune(network, train[labels == 1], labels[labels == 1], dev, dev_labels)

