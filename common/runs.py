"""Run folders, metrics.json with provenance, and model cards beside checkpoints.

Every number a notebook reports lands in `metrics.json` together with what produced it: git
commit, parameters, data fingerprint, package versions, device, weight sources and wall time.
A checkpoint `weights/<name>.pt` always has `weights/<name>.json` beside it, the model card from
which `load_model` rebuilds the network and its preprocessing.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import subprocess
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from common import discovery, fallbacks, workspace
from common.models import create_model
from common.train import atomic_save

__all__ = ["MissingModelCardError", "create_run_dir", "git_commit", "package_versions",
           "provenance", "to_jsonable", "write_json", "write_metrics", "save_model",
           "load_model_card", "find_model_cards", "load_model", "resolve_weights_dir"]

PACKAGES = ("torch", "torchvision", "timm", "albumentations", "facenet-pytorch", "numpy",
            "scikit-learn", "opencv-python-headless", "papermill")
_STARTED = time.time()


class MissingModelCardError(FileNotFoundError):
    """A checkpoint without the JSON model card that says how to rebuild and preprocess it."""


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


def save_model(model: torch.nn.Module, weights_dir: Path, name: str, card: dict) -> Path:
    """Save the deployable state dict `<name>.pt` and its model card `<name>.json` beside it.

    The card must say how to rebuild the model (`kind`, `model_kwargs`) and preprocess its input
    (`image_size`, `mean`, `std`, `aligned`); `load_model` relies on those keys.
    """
    required = {"task", "kind", "model_kwargs", "image_size", "mean", "std"}
    missing = required - set(card)
    if missing:
        raise ValueError(f"Model card for {name} is missing {sorted(missing)}")
    weights_dir = Path(weights_dir)
    path = weights_dir / f"{name}.pt"
    atomic_save(model.state_dict(), path)
    write_json({**card, "name": name, "weights_file": path.name, "git_commit": git_commit(),
                "fallbacks": fallbacks.recorded(),
                "saved": _dt.datetime.now().isoformat(timespec="seconds")},
               weights_dir / f"{name}.json")
    return path


def load_model_card(weights: str | os.PathLike) -> dict:
    """The card beside `weights` (`x.pt` -> `x.json`); a missing card is an error saying why."""
    weights = Path(weights)
    if not weights.exists():
        raise FileNotFoundError(f"Checkpoint {weights} does not exist; list the available ones "
                                f"with `ls {weights.parent}/*.json`.")
    card_path = weights.with_suffix(".json")
    if not card_path.exists():
        raise MissingModelCardError(
            f"{weights} has no model card {card_path.name} beside it. The card records the model "
            "kind, backbone, image size, normalisation and threshold needed to use the weights; "
            "checkpoints written by the notebooks always have one.")
    card = json.loads(card_path.read_text())
    card["weights_path"] = str(weights)
    return card


def find_model_cards(weights_dir: str | os.PathLike = "") -> list[dict]:
    """Every model card in `weights_dir` whose checkpoint exists, sorted by name."""
    weights_dir = resolve_weights_dir(weights_dir)
    cards = []
    for card_path in sorted(weights_dir.glob("*.json")):
        checkpoint = card_path.with_suffix(".pt")
        if checkpoint.exists():
            cards.append(load_model_card(checkpoint))
    return cards


def load_model(weights: str | os.PathLike, device: torch.device | str = "cpu"
               ) -> tuple[torch.nn.Module, dict]:
    """Rebuild the network described by the card beside `weights` and load the weights into it."""
    card = load_model_card(weights)
    model = create_model(card["kind"], **{**card["model_kwargs"], "pretrained": False})
    state = torch.load(card["weights_path"], map_location="cpu", weights_only=True)
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise RuntimeError(f"{weights} does not match the model its card describes "
                           f"({card['kind']}, {card['model_kwargs']}): {error}") from error
    # Rebuilt without pretrained weights, the backbones report their architecture's default
    # normalisation; the card holds the one the weights were trained with.
    for module in model.modules():
        if getattr(module, "is_facecom_backbone", False):
            module.data_config = {**module.data_config, "mean": tuple(card["mean"]),
                                  "std": tuple(card["std"])}
    return model.to(device).eval(), card
