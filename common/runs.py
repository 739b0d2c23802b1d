"""Run folders, metrics.json with provenance, and the names and folder of saved weights.

Every number a notebook reports lands in `metrics.json` together with what produced it: git
commit, parameters, data fingerprint, package versions, device, weight sources and wall time.
Checkpoints and their model cards are `common.checkpoints`.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import re
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common import discovery, fallbacks, workspace

__all__ = ["create_run_dir", "git_commit", "package_versions", "provenance", "to_jsonable",
           "write_json", "write_metrics", "check_run_name", "resolve_weights_dir"]

PACKAGES = ("torch", "torchvision", "timm", "albumentations", "facenet-pytorch", "numpy",
            "scikit-learn", "opencv-python-headless", "papermill")
_STARTED = time.time()
_RUN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


def create_run_dir(output_dir: str | os.PathLike = "", name: str = "run") -> Path:
    """`output_dir` when given, else a fresh `runs/<timestamp>/<name>`; never reuses a folder.

    An explicit folder that already holds a metrics.json is refused, so a second run cannot
    overwrite the first one's results.
    """
    if str(output_dir):
        run_dir = Path(output_dir).expanduser().resolve()
        if (run_dir / "metrics.json").exists():
            raise FileExistsError(f"{run_dir} already holds a finished run (metrics.json); "
                                  "choose a new output_dir or delete that folder.")
    else:
        stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        run_dir = workspace.runs_dir() / stamp / name
        suffix = 1
        while run_dir.exists():
            run_dir = workspace.runs_dir() / f"{stamp}-{suffix}" / name
            suffix += 1
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def resolve_weights_dir(weights_dir: str | os.PathLike = "") -> Path:
    """`""` means `weights/` under the work root (`common.workspace`)."""
    path = Path(weights_dir).expanduser().resolve() if str(weights_dir) else workspace.weights_dir()
    path.mkdir(parents=True, exist_ok=True)
    return path


def git_commit() -> str:
    """The project's commit (with `+dirty` when the tree has changes), or "unknown".

    ``--no-optional-locks`` keeps `git status` from refreshing the index: the project may sit
    in a read-only input.
    """
    try:
        root = workspace.project_root()
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "--no-optional-locks", "status", "--porcelain",
                                "--untracked-files=no"], cwd=root, capture_output=True, text=True,
                               timeout=10).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed versions of the packages that decide the numbers."""
    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def provenance(params: dict | None = None, **extra: Any) -> dict:
    """Everything needed to reproduce a number: commit, parameters, versions, device, time."""
    return {
        "git_commit": git_commit(),
        "project_root": str(workspace.project_root()),
        "work_root": str(workspace.work_root()),
        "parameters": params or {},
        "packages": package_versions(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(),
        "created": _dt.datetime.now().isoformat(timespec="seconds"),
        "wall_time_s": round(time.time() - _STARTED, 1),
        **extra,
    }


def to_jsonable(value: Any) -> Any:
    """NumPy/torch scalars and arrays, Paths and NaN made JSON-safe (NaN becomes null)."""
    if isinstance(value, dict):
        return {str(key): to_jsonable(val) for key, val in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(item) for item in value]
    if isinstance(value, (np.ndarray, torch.Tensor)):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(data: dict, path: Path) -> Path:
    """Atomic JSON write (temp file + rename); a full disk fails loudly, never half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(json.dumps(to_jsonable(data), indent=2, sort_keys=False) + "\n")
        os.replace(tmp, path)
    except OSError as error:
        raise OSError(f"Could not write {path}: {error}. Free space in {path.parent} "
                      "or choose another output_dir.") from error
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_metrics(run_dir: Path, metrics: dict, params: dict | None = None, *,
                  data_dir: str | os.PathLike, **extra: Any) -> dict:
    """Write `run_dir/metrics.json`: the metrics plus a `provenance` block; returns what was written.

    ``data`` says what the run was fed (``"synthetic sample"`` must never pass for FACECOM) and
    ``fallbacks`` which default recipes lost an optional package (`common.fallbacks`).
    """
    payload = {**metrics, "data": discovery.describe_data(data_dir),
               "fallbacks": fallbacks.recorded(),
               "provenance": provenance(params, data_dir=str(data_dir), **extra)}
    write_json(payload, Path(run_dir) / "metrics.json")
    return to_jsonable(payload)


def check_run_name(name: str) -> str:
    """`name`, checked to be a plain file name: run names are joined to the weights folder, so
    `../x` or `a/b` would write outside it.

    Raises:
        ValueError: naming the bad name and the allowed characters.
    """
    if not isinstance(name, str) or not _RUN_NAME.fullmatch(name):
        raise ValueError(f"run_name {name!r} is not allowed: use letters, digits, '_', '-' and "
                         "'.' (not first), e.g. 'task_a_single_convnext_atto'.")
    return name
