"""A notebook opened alone runs where people open it: on Kaggle with the repository and the data
attached as read-only inputs, on Colab from a clone under /content, and it says what to attach
when the project is nowhere. Nothing is ever written into an input."""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import papermill as pm
import pytest

from common import discovery, workspace
from common.run_all import KERNEL

pytestmark = pytest.mark.notebooks

PROJECT = workspace.project_root()


def _project_files() -> list[str]:
    """What a user uploads or clones: the tracked files (the tree as it is when not a clone)."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=PROJECT, capture_output=True)
    if listed.returncode == 0 and listed.stdout:
        return [name for name in listed.stdout.decode().split("\0")
                if name and (PROJECT / name).is_file()]
    return [str(p.relative_to(PROJECT)) for folder in ("common", "notebooks")
            for p in (PROJECT / folder).rglob("*") if p.is_file() and "__pycache__" not in p.parts
            ] + ["requirements.txt", "requirements-extras.txt"]


def _copy_project(target: Path) -> Path:
    for name in _project_files():
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(PROJECT / name, target / name)
    return target


def _make_read_only(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _listing(folder: Path) -> dict[str, tuple[int, int, int]]:
    """Every entry under `folder` with its size, mode and modification time."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mode,
                                         p.stat().st_mtime_ns)
            for p in [folder, *folder.rglob("*")]}


@pytest.fixture
def session_env(monkeypatch):
    """A clean user session: `common` is importable only from where the notebook finds it."""
    for name in ("PYTHONPATH", workspace.WORK_ROOT_ENV, "FACECOM_REPO_URL"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _run(notebook: str, folder: Path, **parameters) -> dict:
    """Execute a copy of `notebook` that sits alone in `folder`, with `folder` as working dir."""
    alone = folder / f"{notebook}.ipynb"
    shutil.copy2(PROJECT / "notebooks" / f"{notebook}.ipynb", alone)
    pm.execute_notebook(str(alone), str(folder / f"{notebook}.out.ipynb"),
                        parameters={"quick": True, "device": "cpu", **parameters},
                        kernel_name=KERNEL, cwd=str(folder), progress_bar=False)
    return json.loads((folder / f"{notebook}.out.ipynb").read_text())


def _metrics(work_root: Path, notebook: str) -> dict:
    found = sorted(work_root.glob(f"runs/*/{notebook}/metrics.json"))
    assert len(found) == 1, f"expected one run of {notebook} under {work_root}, got {found}"
    return json.loads(found[0].read_text())


def test_kaggle_notebook_alone_with_read_only_inputs(tmp_path, sample_root, session_env):
    kaggle = tmp_path / "kaggle"
    repo = _copy_project(kaggle / "input" / "facecom-repo")
    data = kaggle / "input" / "facecom-data"
    shutil.copytree(sample_root, data)
    working = kaggle / "working"
    working.mkdir()
    _make_read_only(kaggle / "input")
    inputs_before = _listing(kaggle / "input")
    session_env.setenv(workspace.KAGGLE_ROOT_ENV, str(kaggle))

    # A small training run (no face descriptors): what matters here is where it reads and writes.
    _run("01_task_a_gender", working, recipe="parameters", backbone="resnet10t",
         pretrained=False, image_size=32, epochs=1)  # data_dir="" finds the attached data set

    assert _listing(kaggle / "input") == inputs_before, "something was written into an input"
    work_root = working / "facecom"
    metrics = _metrics(work_root, "01_task_a_gender")
    assert metrics["provenance"]["project_root"] == str(repo)
    assert metrics["provenance"]["work_root"] == str(work_root)
    assert metrics["provenance"]["data_dir"] == str(data)
    assert metrics["data"] == discovery.SYNTHETIC  # the attached copy is the sample
    checkpoint = Path(metrics["checkpoint"])
    assert checkpoint.is_relative_to(work_root / "weights") and checkpoint.exists()
    assert list((work_root / "data" / "cache").iterdir())
    written = {p for p in tmp_path.rglob("*") if not p.is_relative_to(kaggle / "input")}
    assert all(p.is_relative_to(working) or p == kaggle for p in written)


def test_colab_clone_under_content(tmp_path, session_env):
    content = tmp_path / "content"
    origin = _copy_project(tmp_path / "origin")  # stands for the repository's URL
    subprocess.run(["git", "init", "-q"], cwd=origin, check=True)
    subprocess.run(["git", "add", "-A"], cwd=origin, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x"],
                   cwd=origin, check=True)
    content.mkdir()
    session_env.setenv("FACECOM_REPO_URL", str(origin))
    session_env.setenv(discovery.COLAB_ROOT_ENV, str(content))
    session_env.setenv(workspace.KAGGLE_ROOT_ENV, str(tmp_path / "no_kaggle"))

    executed = _run("00_preprocess", content)  # the cell clones into /content/facecom

    clone = content / "facecom"
    assert (clone / "common" / "bootstrap.py").exists()
    metrics = _metrics(clone, "00_preprocess")  # a writable clone is its own work root
    assert metrics["provenance"]["project_root"] == str(clone)
    assert metrics["data"] == discovery.SYNTHETIC and metrics["n_problems"] == 0
    assert (clone / "data" / "sample").is_dir()
    text = "".join("".join(out.get("text", "")) for cell in executed["cells"]
                   for out in cell.get("outputs", []))
    assert "NO REAL DATA" in text, "the synthetic-sample banner must show in the notebook"
    assert set(os.listdir(tmp_path)) == {"content", "origin"}


def test_project_nowhere_names_what_to_attach(tmp_path, session_env):
    session_env.setenv(workspace.KAGGLE_ROOT_ENV, str(tmp_path / "no_kaggle"))
    with pytest.raises(pm.PapermillExecutionError, match="attach its repository as a Kaggle "
                       "input.*FACECOM_REPO_URL"):
        _run("04_evaluation", tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["04_evaluation.ipynb", "04_evaluation.out.ipynb"]
