"""Run folders, metrics.json with provenance, and model cards beside checkpoints.

Every number a notebook reports lands in `metrics.json` together with what produced it: git
commit, parameters, data fingerprint, package versions, device, weight sources and wall time.

Each saved model is its own pair `weights/<name>-<timestamp>.pt` + `.json`, the model card from
which `load_model` rebuilds the network and its preprocessing; the card carries the weights'
SHA-256, so a card is never used with weights from another save. `weights/<name>.latest.json`
points at the newest pair of a name, and `weights/<name>.pt` means that pair wherever a
checkpoint is asked for.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import io
import json
import math
import os
import pickle
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
from common.models import create_model
from common.train import atomic_save

__all__ = ["MissingModelCardError", "CheckpointError", "create_run_dir", "git_commit",
           "package_versions", "provenance", "to_jsonable", "write_json", "write_metrics",
           "check_run_name", "save_model", "resolve_checkpoint", "load_model_card",
           "find_model_cards", "load_model", "resolve_weights_dir", "LATEST_SUFFIX"]

PACKAGES = ("torch", "torchvision", "timm", "albumentations", "facenet-pytorch", "numpy",
            "scikit-learn", "opencv-python-headless", "papermill")
_STARTED = time.time()
LATEST_SUFFIX = ".latest.json"
_RUN_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


class MissingModelCardError(FileNotFoundError):
    """A checkpoint without the JSON model card that says how to rebuild and preprocess it."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: damaged, or not the weights its model card describes."""


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


def _new_run_id(weights_dir: Path, name: str) -> str:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_id, suffix = f"{name}-{stamp}", 2
    while (weights_dir / f"{run_id}.pt").exists() or (weights_dir / f"{run_id}.json").exists():
        run_id, suffix = f"{name}-{stamp}-{suffix}", suffix + 1
    return run_id


def save_model(model: torch.nn.Module, weights_dir: Path, name: str, card: dict) -> Path:
    """Save the deployable state dict as this run's own `<name>-<timestamp>.pt` with its model
    card `<name>-<timestamp>.json`, then point `<name>.latest.json` at them.

    Earlier runs' checkpoints are kept. The card records the weights' SHA-256, which
    `load_model` checks, and the pointer is written last: a save interrupted half-way leaves
    the previous pair as the latest, never new weights read with an old card's threshold.

    The card must say how to rebuild the model (`kind`, `model_kwargs`) and preprocess its input
    (`image_size`, `mean`, `std`, `aligned`); `load_model` relies on those keys.

    Returns:
        The path of the new checkpoint.

    Raises:
        ValueError: `name` is not a plain file name (`check_run_name`), or the card lacks keys.
    """
    check_run_name(name)
    required = {"task", "kind", "model_kwargs", "image_size", "mean", "std"}
    missing = required - set(card)
    if missing:
        raise ValueError(f"Model card for {name} is missing {sorted(missing)}")
    weights_dir = Path(weights_dir)
    weights_dir.mkdir(parents=True, exist_ok=True)
    run_id = _new_run_id(weights_dir, name)
    path = weights_dir / f"{run_id}.pt"
    atomic_save(model.state_dict(), path)
    write_json({**card, "name": name, "run_id": run_id, "weights_file": path.name,
                "weights_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "git_commit": git_commit(), "fallbacks": fallbacks.recorded(),
                "saved": _dt.datetime.now().isoformat(timespec="seconds")},
               path.with_suffix(".json"))
    write_json({"name": name, "checkpoint": path.name}, weights_dir / f"{name}{LATEST_SUFFIX}")
    return path


def _latest(pointer: Path) -> Path:
    """The checkpoint a `<name>.latest.json` pointer names (always in the pointer's folder)."""
    try:
        entry = json.loads(pointer.read_text())["checkpoint"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise CheckpointError(f"{pointer} is not a latest-checkpoint pointer ({error}); delete "
                              "it and pass a checkpoint file instead.") from error
    return pointer.parent / Path(entry).name


def resolve_checkpoint(weights: str | os.PathLike) -> Path:
    """The checkpoint file `weights` stands for: `weights/<name>.pt` (or `weights/<name>`) is
    the latest run of `<name>` when `<name>.latest.json` exists, else the file itself.

    Raises:
        FileNotFoundError: neither a pointer nor the file exists.
    """
    weights = Path(weights)
    name = weights.name[:-len(".pt")] if weights.name.endswith(".pt") else weights.name
    pointer = weights.parent / f"{name}{LATEST_SUFFIX}"
    if pointer.is_file():
        checkpoint = _latest(pointer)
        if not checkpoint.is_file():
            raise FileNotFoundError(f"{pointer} points to {checkpoint.name}, which does not "
                                    f"exist; pass one of `ls {weights.parent}/{name}-*.pt`.")
        return checkpoint
    if not weights.is_file():
        raise FileNotFoundError(f"Checkpoint {weights} does not exist; list the available ones "
                                f"with `ls {weights.parent}/*{LATEST_SUFFIX}`.")
    return weights


def load_model_card(weights: str | os.PathLike) -> dict:
    """The card beside the checkpoint `weights` stands for (`x.pt` -> `x.json`, see
    `resolve_checkpoint`); a missing card is an error saying why it is needed."""
    checkpoint = resolve_checkpoint(weights)
    card_path = checkpoint.with_suffix(".json")
    if not card_path.exists():
        raise MissingModelCardError(
            f"{checkpoint} has no model card {card_path.name} beside it. The card records the "
            "model kind, backbone, image size, normalisation and threshold needed to use the "
            "weights; checkpoints written by the notebooks always have one.")
    try:
        card = json.loads(card_path.read_text())
    except json.JSONDecodeError as error:
        raise CheckpointError(f"Model card {card_path} is not valid JSON ({error}); re-run the "
                              "notebook that trained the model.") from error
    card["weights_path"] = str(checkpoint)
    return card


def find_model_cards(weights_dir: str | os.PathLike = "") -> list[dict]:
    """The latest model card of each run name in `weights_dir` (what `<name>.latest.json`
    points to), sorted by name; a name whose checkpoint or card is gone is skipped.

    Earlier runs of a name stay on disk but are not listed: one row per model, as trained last.
    """
    weights_dir = resolve_weights_dir(weights_dir)
    cards = []
    for pointer in sorted(weights_dir.glob(f"*{LATEST_SUFFIX}")):
        checkpoint = _latest(pointer)
        if checkpoint.is_file() and checkpoint.with_suffix(".json").is_file():
            cards.append(load_model_card(checkpoint))
    return cards


def _read_verified(card: dict) -> dict:
    """The state dict of the card's checkpoint, after checking it is the file the card was
    saved with (SHA-256) and loading it without running code (``weights_only=True``)."""
    checkpoint = Path(card["weights_path"])
    card_name = checkpoint.with_suffix(".json").name
    expected = card.get("weights_sha256")
    if not expected:
        raise CheckpointError(
            f"Model card {card_name} records no weights_sha256 (it predates cards that carry "
            f"the weights' hash), so nothing shows {checkpoint} is the file it describes; "
            "re-run the notebook that trained it, or re-save the model with runs.save_model.")
    raw = checkpoint.read_bytes()
    actual = hashlib.sha256(raw).hexdigest()
    if actual != expected:
        raise CheckpointError(
            f"{checkpoint} is not the checkpoint its model card {card_name} was saved with "
            f"(SHA-256 {actual[:12]}..., the card says {expected[:12]}...): it is damaged, or "
            "one of the two files was replaced. Use a pair written together, or re-run the "
            "notebook that trained it.")
    try:
        return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{checkpoint} is not a weights-only state dict ({reason}); "
                              "re-run the notebook that trained it.") from error


def load_model(weights: str | os.PathLike, device: torch.device | str = "cpu"
               ) -> tuple[torch.nn.Module, dict]:
    """Rebuild the network described by the card beside `weights` and load the weights into it.

    Raises:
        FileNotFoundError / MissingModelCardError: no such checkpoint, or no card beside it.
        CheckpointError: the checkpoint is damaged or not the file its card was saved with.
        RuntimeError: the weights do not fit the network the card describes.
    """
    card = load_model_card(weights)
    state = _read_verified(card)
    model = create_model(card["kind"], **{**card["model_kwargs"], "pretrained": False})
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
