"""common.runs: run folders are never reused, JSON is written atomically and JSON-safe, metrics
carry their provenance, and model cards rebuild exactly the network that was saved."""
from __future__ import annotations

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
