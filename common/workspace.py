"""Where the project's code lives and where it may write: the work root and its folders.

The code can sit in a read-only place (a repository attached to a Kaggle notebook as a data set
under ``/kaggle/input``), so everything the notebooks write (decoded-image caches, the generated
sample, checkpoints, run folders) goes under one *work root* instead:

1. ``$FACECOM_WORK_ROOT`` when set (the notebooks' ``work_root`` parameter sets it);
2. the project folder itself when it is writable (a clone, Colab, this machine);
3. ``/kaggle/working/facecom`` on Kaggle (``$FACECOM_KAGGLE_ROOT`` moves ``/kaggle`` for tests);
4. ``./facecom`` in the current working folder otherwise.

Standard library only: the notebooks' bootstrap imports this before anything is installed.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = ["WORK_ROOT_ENV", "KAGGLE_ROOT_ENV", "project_root", "existing_parent",
           "is_writable", "kaggle_root", "on_kaggle", "work_root", "set_work_root", "data_dir",
           "cache_dir", "weights_dir", "runs_dir", "pretrained_dir"]

WORK_ROOT_ENV = "FACECOM_WORK_ROOT"
KAGGLE_ROOT_ENV = "FACECOM_KAGGLE_ROOT"


def project_root() -> Path:
    """The folder holding `common/`, `notebooks/` and `requirements.txt` (maybe read-only)."""
    return Path(__file__).resolve().parents[1]


def existing_parent(path: str | os.PathLike) -> Path:
    """`path` itself when it exists, else its nearest existing parent (what a new folder's
    disk and permissions are those of)."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def is_writable(path: Path) -> bool:
    """True when `path` (or its nearest existing parent) may be written to.

    Besides `os.access`, which says yes to root whatever the mode, a folder without write bits
    or on a read-only mount counts as read-only: that is how an attached Kaggle input looks.
    """
    path = existing_parent(path)
    try:
        read_only_mount = bool(os.statvfs(path).f_flag & os.ST_RDONLY)
        mode = path.stat().st_mode
    except OSError:
        return False
    return (os.access(path, os.W_OK) and not read_only_mount
            and bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)))


def kaggle_root() -> Path:
    """``/kaggle``, or ``$FACECOM_KAGGLE_ROOT`` (tests simulate a Kaggle session with it)."""
    return Path(os.environ.get(KAGGLE_ROOT_ENV, "/kaggle"))


def on_kaggle() -> bool:
    """A Kaggle notebook session: its input and working folders exist."""
    return (kaggle_root() / "input").is_dir() and (kaggle_root() / "working").is_dir()


def work_root() -> Path:
    """The one folder everything is written under (see the module docstring for the order)."""
    if os.environ.get(WORK_ROOT_ENV):
        return Path(os.environ[WORK_ROOT_ENV]).expanduser().resolve()
    if is_writable(project_root()):
        return project_root()
    if on_kaggle():
        return kaggle_root() / "working" / "facecom"
    return Path.cwd().resolve() / "facecom"


def set_work_root(path: str | os.PathLike) -> Path:
    """Make `path` the work root of this process and of the kernels it starts; "" keeps it."""
    if str(path):
        os.environ[WORK_ROOT_ENV] = str(Path(path).expanduser().resolve())
    return work_root()


def data_dir() -> Path:
    """`<work root>/data`: the generated sample and downloads."""
    return work_root() / "data"


def cache_dir() -> Path:
    """`<work root>/data/cache`: decoded images, aligned faces, descriptors, chips."""
    return data_dir() / "cache"


def weights_dir() -> Path:
    """`<work root>/weights`: checkpoints and their model cards."""
    return work_root() / "weights"


def runs_dir() -> Path:
    """`<work root>/runs`: run folders of notebooks and `run_all.sh`."""
    return work_root() / "runs"


def pretrained_dir() -> tuple[Path, ...]:
    """Where user-supplied backbone weights are looked up: the work root's, then the project's."""
    folders = (weights_dir() / "pretrained", project_root() / "weights" / "pretrained")
    return tuple(dict.fromkeys(folders))
