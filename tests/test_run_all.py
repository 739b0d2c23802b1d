"""common.run_all (run_all.sh): bad input stops before any work with exit 2 and a message saying
what to fix; a failing notebook exits 1 naming notebook and cell and keeps what was written."""
from __future__ import annotations

import json
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
import yaml

from common import run_all
from common.run_all import NotebookFailed, main

FAILURE = ("Notebook 01_task_a_gender failed in cell [8]: ValueError: boom\n"
           "The partially executed notebook is kept at /somewhere")


@pytest.fixture
def notebooks(monkeypatch) -> dict:
    """Replace notebook execution: records its arguments; `fail_after` makes it finish that
    notebook (writing its metrics.json) and then fail like papermill in the next one."""
    calls: dict = {"fail_after": None}

    def fake_run(parameters: dict, run_root: Path, only: tuple[str, ...], *args,
                 sections: dict | None = None, **kwargs):
        calls.update(parameters=parameters, run_root=run_root, only=only, sections=sections)
        for name in only:
            (run_root / name).mkdir(parents=True)
            (run_root / name / "metrics.json").write_text(
                json.dumps({"accuracy": 0.5, "data": "synthetic sample"}))
            if name == calls["fail_after"]:
                raise NotebookFailed(FAILURE)
        return [run_root / f"{name}.ipynb" for name in only]

    monkeypatch.setattr(run_all, "run_notebooks", fake_run)
    return calls


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- input checked before any work ---------------------------------------------------------

def test_missing_data_dir_names_the_path_and_the_fix(tmp_path, capsys, notebooks):
    missing = tmp_path / "no_such_facecom"
    code, _, err = _run(capsys, "--data-dir", str(missing), "--output", str(tmp_path / "run"))
    assert code == 2
    assert f"{missing} does not exist" in err and "--data-dir" in err and "Task_A" in err
    assert "parameters" not in notebooks and not (tmp_path / "run").exists()


def test_data_dir_given_as_parameter_is_checked_too(tmp_path, capsys, notebooks):
    missing = tmp_path / "elsewhere"
    code, _, err = _run(capsys, "-p", "data_dir", str(missing), "--output", str(tmp_path / "run"))
    assert code == 2 and f"{missing} does not exist" in err
    assert "parameters" not in notebooks


def test_wrong_layout_names_the_expected_one(tmp_path, capsys, notebooks):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = _run(capsys, "--data-dir", str(empty), "--output", str(tmp_path / "run"))
    assert code == 2
    assert "does not have the FACECOM layout" in err
    assert f"{empty}/Task_A/{{train,val}}/{{male,female}}/" in err
    assert f"{empty}/Task_B/{{train,val}}/<identity>/" in err
    assert "parameters" not in notebooks


def test_identity_folders_run_only_the_task_b_notebooks(tmp_path, capsys, notebooks,
                                                         sample_root):
    faces = sample_root / "Task_B" / "train"  # <identity>/* folders (plus distortion/ inside)
    code, _, err = _run(capsys, "--data-dir", str(faces), "-p", "data_format", "identity_folders",
                        "--only", "01_task_a_gender", "--output", str(tmp_path / "bad"))
    assert code == 2 and "02_task_b_arcface" in err and "parameters" not in notebooks
    code, _, _ = _run(capsys, "--data-dir", str(faces), "-p", "data_format", "identity_folders",
                      "--output", str(tmp_path / "run"))
    assert code == 0
    assert notebooks["only"] == run_all.IDENTITY_FOLDER_NOTEBOOKS
    assert notebooks["parameters"]["data_format"] == "identity_folders"


def test_params_file_must_be_a_mapping(tmp_path, capsys, notebooks):
    params = tmp_path / "params.yaml"
    params.write_text("- epochs\n- 3\n")
    code, _, err = _run(capsys, "-f", str(params))
    assert code == 2 and f"{params} must be a mapping" in err


def test_non_empty_output_is_never_overwritten(tmp_path, capsys, notebooks, sample_root):
    output = tmp_path / "earlier_run"
    output.mkdir()
    (output / "summary.md").write_text("earlier results")
    code, _, err = _run(capsys, "--data-dir", str(sample_root), "--output", str(output))
    assert code == 1
    assert f"{output} already exists and is not empty" in err and "--output" in err
    assert (output / "summary.md").read_text() == "earlier results"
    assert [p.name for p in output.iterdir()] == ["summary.md"]
    assert "parameters" not in notebooks


def test_too_little_free_disk_stops_with_one_message(tmp_path, capsys, notebooks, sample_root,
                                                     monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(2**30, 2**30 - 10 * 2**20,
                                                                 10 * 2**20))
    output = tmp_path / "run"
    code, _, err = _run(capsys, "--data-dir", str(sample_root), "--output", str(output))
    assert code != 0
    assert err.count("ERROR") == 1
    assert f"Only 10 MiB free in {output}" in err and "needs at least 500 MiB" in err
    assert "parameters" not in notebooks


# --- what a run records --------------------------------------------------------------------

def test_parameters_reach_the_notebooks_typed_and_recorded(tmp_path, capsys, notebooks,
                                                           sample_root):
    output = tmp_path / "run"
    code, out, _ = _run(capsys, "--data-dir", str(sample_root), "--output", str(output),
                        "--seed", "5", "--only", "01_task_a_gender", "-p", "epochs", "3",
                        "-p", "pretrained", "false", "-p", "backbone", "convnext_atto",
                        "--weights-dir", str(tmp_path / "w"))
    assert code == 0
    expected = {"data_dir": str(sample_root), "quick": True, "seed": 5, "epochs": 3,
                "pretrained": False, "backbone": "convnext_atto",
                "weights_dir": str((tmp_path / "w").resolve())}
    assert notebooks["parameters"] == expected
    assert notebooks["only"] == ("01_task_a_gender",)
    assert yaml.safe_load((output / "parameters.yaml").read_text()) == expected
    summary = (output / "summary.md").read_text()
    assert "| 01_task_a_gender | synthetic sample | 0.5000 |" in summary
    assert "Run stopped" not in summary
    assert "Done. Summary" in out


def test_params_file_sections_and_numbers_reach_their_notebook(tmp_path, capsys, notebooks,
                                                               sample_root):
    params = tmp_path / "params.yaml"
    params.write_text("lr: 3e-4\n01_task_a_gender:\n  model: dual_se\n")
    output = tmp_path / "run"
    code, _, _ = _run(capsys, "--data-dir", str(sample_root), "--output", str(output),
                      "-f", str(params), "--only", "01_task_a_gender", "02_task_b_arcface",
                      "-p", "02_task_b_arcface.model", "facenet", "-p", "distortion_p", "2.5e-1")
    assert code == 0
    shared = notebooks["parameters"]
    assert shared["lr"] == 3e-4 and type(shared["lr"]) is float
    assert shared["distortion_p"] == 0.25 and type(shared["distortion_p"]) is float
    assert notebooks["sections"] == {"01_task_a_gender": {"model": "dual_se"},
                                     "02_task_b_arcface": {"model": "facenet"}}
    recorded = yaml.safe_load((output / "parameters.yaml").read_text())
    assert recorded["lr"] == 3e-4 and recorded["01_task_a_gender"] == {"model": "dual_se"}


def test_a_shared_name_with_two_meanings_stops_before_any_work(tmp_path, capsys, notebooks,
                                                               sample_root):
    code, _, err = _run(capsys, "--data-dir", str(sample_root), "--output", str(tmp_path / "r"),
                        "-p", "model", "dual_se")
    assert code == 2
    assert "'model' means different things" in err and "-p 01_task_a_gender.model" in err
    assert "parameters" not in notebooks and not (tmp_path / "r").exists()


def test_failure_keeps_the_summary_of_finished_notebooks(tmp_path, capsys, notebooks,
                                                         sample_root):
    notebooks["fail_after"] = "01_task_a_gender"
    output = tmp_path / "run"
    code, _, err = _run(capsys, "--data-dir", str(sample_root), "--output", str(output),
                        "--only", "00_preprocess", "01_task_a_gender", "02_task_b_arcface")
    assert code == 1
    assert "Notebook 01_task_a_gender failed in cell [8]: ValueError: boom" in err
    summary = (output / "summary.md").read_text()
    assert "**Run stopped:** Notebook 01_task_a_gender failed in cell [8]" in summary
    assert "| 00_preprocess |" in summary and "02_task_b_arcface" not in summary
    assert str(output / "summary.md") in err


@pytest.mark.notebooks
def test_failing_notebook_exits_1_naming_notebook_and_cell(tmp_path, capfd, sample_root):
    """A real papermill run of notebook 01 that fails fast on an unknown model kind (its kernel
    writes to this process's stderr: captured too, and it holds no warning of the kernel's)."""
    output = tmp_path / "run"
    code, _, err = _run(capfd, "--data-dir", str(sample_root), "--output", str(output),
                        "--weights-dir", str(tmp_path / "weights"), "--only", "01_task_a_gender",
                        "-p", "model", "nonexistent", "-p", "image_size", "32",
                        "-p", "pretrained", "false", "-p", "device", "cpu")
    assert code == 1
    assert "Notebook 01_task_a_gender failed in cell [" in err
    assert "ValueError" in err and "nonexistent" in err
    assert "WARNING" not in err  # e.g. ipykernel's about TCP without encryption
    executed = output / "01_task_a_gender.ipynb"
    assert f"partially executed notebook is kept at {executed}" in err
    cells = json.loads(executed.read_text())["cells"]
    errors = [out for cell in cells for out in cell.get("outputs", [])
              if out.get("output_type") == "error"]
    assert errors and errors[0]["ename"] == "ValueError"
    assert (output / "summary.md").exists()
    assert not list((tmp_path / "weights").glob("*.pt"))


def test_run_notebooks_creates_the_run_folder(tmp_path, monkeypatch):
    """The README's Python call names a run folder that need not exist yet; papermill writes
    the executed notebook into it and will not create it."""
    import papermill

    def execute(source, output, **kwargs):
        if not Path(output).parent.is_dir():
            raise FileNotFoundError(f"output folder {Path(output).parent} doesn't exist")
        Path(output).write_text(Path(source).read_text())

    monkeypatch.setattr(papermill, "execute_notebook", execute)
    monkeypatch.setattr(run_all, "_export_html", lambda path: None)
    run_root = tmp_path / "runs" / "my_faces"
    executed = run_all.run_notebooks({"quick": True}, run_root, ("02_task_b_arcface",),
                                     progress=False)
    assert executed == [run_root / "02_task_b_arcface.ipynb"] and executed[0].is_file()
