"""common.parameters: a notebook's parameters are its parameters cell's names, numbers in YAML are
numbers, and a batch hands each notebook only what it declares."""
from __future__ import annotations

import json

import pandas as pd
import pytest

from common import parameters, runs
from common.parameters import ParameterError


def test_defaults_are_read_from_the_parameters_cell():
    defaults = parameters.read_defaults("01_task_a_gender")
    assert defaults["model"] == "single" and defaults["lr"] == 1e-3 and defaults["quick"] is False
    assert parameters.read_defaults("02_task_b_arcface")["model"] == "embedding"
    assert "work_root" in defaults and "runs_root" not in defaults


def test_collect_takes_only_the_cells_names_so_interactive_reruns_work():
    # A kernel after running the notebook once and the parameters cell again: DataFrames,
    # modules and derived values sit in globals beside the parameters.
    namespace = dict(parameters.read_defaults("04_evaluation"), board=pd.DataFrame({"a": [1]}),
                     params={"old": 1}, pd=pd, split="train")
    collected = parameters.collect(namespace, "04_evaluation")
    assert set(collected) == set(parameters.read_defaults("04_evaluation"))
    assert collected["split"] == "train"
    json.dumps(runs.to_jsonable(collected))  # what write_metrics does with them


@pytest.mark.parametrize(("text", "expected"), [
    ("3e-4", 3e-4), ("1E3", 1000.0), ("-2.5e-2", -0.025), ("0.5", 0.5), ("10", 10),
    ("true", True), ("convnext_atto", "convnext_atto"), ("''", ""),
])
def test_values_parse_as_yaml_with_exponent_floats(text, expected):
    value = parameters.parse_value(text)
    assert value == expected and type(value) is type(expected)


def test_yaml_file_has_shared_keys_and_notebook_sections(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("lr: 3e-4\nseed: 2\n01_task_a_gender:\n  model: dual_se\n"
                    "02_task_b_arcface:\n  model: facenet\n  arcface_m: 4e-1\n")
    shared, sections = parameters.load_yaml(path)
    assert shared == {"lr": 3e-4, "seed": 2} and type(shared["lr"]) is float
    assert sections == {"01_task_a_gender": {"model": "dual_se"},
                        "02_task_b_arcface": {"model": "facenet", "arcface_m": 0.4}}
    routed = parameters.route(shared, sections, ("00_preprocess", "01_task_a_gender",
                                                 "02_task_b_arcface"))
    assert routed["00_preprocess"] == {"seed": 2}  # 00 has no lr and no model
    assert routed["01_task_a_gender"] == {"lr": 3e-4, "seed": 2, "model": "dual_se"}
    assert routed["02_task_b_arcface"]["model"] == "facenet"


def test_a_name_meaning_different_things_must_be_given_per_notebook():
    with pytest.raises(ParameterError, match=r"'model' means different things in "
                       r"01_task_a_gender \(default 'single'\), 02_task_b_arcface "
                       r"\(default 'embedding'\).*-p 01_task_a_gender.model VALUE"):
        parameters.route({"model": "dual_se"}, {}, ("01_task_a_gender", "02_task_b_arcface"))
    # One notebook alone: no ambiguity.
    assert parameters.route({"model": "dual_se"}, {}, ("01_task_a_gender",)) == {
        "01_task_a_gender": {"model": "dual_se"}}


def test_unknown_names_are_refused_with_the_valid_ones():
    with pytest.raises(ParameterError, match="No notebook .* has a parameter 'epoch'"):
        parameters.route({"epoch": 3}, {}, ("01_task_a_gender",))
    with pytest.raises(ParameterError, match=r"Notebook 00_preprocess has no parameter \['lr'\]"):
        parameters.route({}, {"00_preprocess": {"lr": 1.0}}, ("00_preprocess",))
    with pytest.raises(ParameterError, match="Unknown notebook '07_x'"):
        parameters.split_overrides([("07_x.lr", "1")])


def test_dotted_overrides_go_to_one_notebook():
    shared, sections = parameters.split_overrides([("lr", "3e-4"),
                                                   ("01_task_a_gender.model", "dual_se")])
    assert shared == {"lr": 3e-4} and sections == {"01_task_a_gender": {"model": "dual_se"}}


@pytest.mark.parametrize("name", parameters.NOTEBOOKS)
def test_papermill_reads_every_parameter_of_the_cell(name):
    """papermill's own reading of the parameters cell (`papermill --help-notebook`, and its
    warnings in every run) drops a line with a second '=', e.g. in its comment."""
    import nbformat
    from papermill.translators import PythonTranslator

    notebook = nbformat.read(parameters.notebook_path(name), as_version=4)
    cell = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    read = {parameter.name for parameter in PythonTranslator.inspect(cell)}
    assert read == set(parameters.read_defaults(name))
