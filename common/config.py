"""Run-wide settings: project paths, device and profile resolution, data-root discovery, seeding.

Everything that depends on the machine (CUDA or not, Kaggle or not, where the data lives) is
resolved here once, so notebooks only pass literals and the rest of `common` never guesses.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from common import listing

__all__ = [
    "PROJECT_ROOT", "DATA_DIR", "WEIGHTS_DIR", "RUNS_DIR", "CACHE_DIR", "KAGGLE_INPUT",
    "KAGGLE_DATASET_ENV", "PROFILES", "Profile", "DataNotFoundError", "seed_everything",
    "seed_worker", "make_generator", "resolve_device", "resolve_profile", "resolve_data_dir",
    "is_facecom_root", "configure_threads", "LAYOUTS", "seedable_transforms",
]

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DATA_DIR = PROJECT_ROOT / "data"
WEIGHTS_DIR = PROJECT_ROOT / "weights"
RUNS_DIR = PROJECT_ROOT / "runs"
CACHE_DIR = DATA_DIR / "cache"
KAGGLE_INPUT = Path("/kaggle/input")
# `owner/slug` of a Kaggle copy of the hackathon release, for data_dir="kaggle". Copies are
# published by different users, so the project names none; set FACECOM_KAGGLE_DATASET.
KAGGLE_DATASET_ENV = "FACECOM_KAGGLE_DATASET"
LAYOUTS = ("facecom", "identity_folders")  # the notebooks' `data_format` values


class DataNotFoundError(FileNotFoundError):
    """No FACECOM-layout data set could be found or fetched; the message says how to provide one."""


@dataclass(frozen=True)
class Profile:
    """Hardware profile: the sizes that make a default recipe fit the machine.

    The CPU numbers were chosen so that every training notebook finishes on the real FACECOM
    train split within 30 minutes on a 2-core CPU (see benchmarks/); the GPU ones follow the
    hackathon entries.
    """

    name: str
    image_size: int
    batch_size: int
    num_workers: int
    channels_last: bool
    amp: bool


PROFILES = {
    "cpu": Profile("cpu", image_size=112, batch_size=64, num_workers=2, channels_last=False,
                   amp=False),
    "gpu": Profile("gpu", image_size=224, batch_size=64, num_workers=4, channels_last=True,
                   amp=True),
}


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch; optionally ask torch for deterministic kernels.

    Two CPU runs with the same seed then give identical metrics (tests/test_train.py).
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def seedable_transforms(obj: object, depth: int = 4) -> list:
    """Transforms with `set_random_seed` reachable from a dataset (through Subset/wrappers)."""
    found = []
    if depth < 0 or obj is None:
        return found
    transform = getattr(obj, "transform", None)
    if hasattr(transform, "set_random_seed"):
        found.append(transform)
    for value in vars(obj).values() if hasattr(obj, "__dict__") else ():
        if isinstance(value, torch.utils.data.Dataset):
            found += seedable_transforms(value, depth - 1)
    return found


def seed_worker(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: derive NumPy/random seeds from torch's per-worker seed.

    albumentations keeps its own generators, copied as-is into forked workers, so they are
    re-seeded too; otherwise every worker would repeat the same augmentations.
    """
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)
    info = torch.utils.data.get_worker_info()
    if info is not None:
        for transform in seedable_transforms(info.dataset):
            transform.set_random_seed(worker_seed)


def make_generator(seed: int) -> torch.Generator:
    """A seeded generator for DataLoader shuffling, independent of the global RNG."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` picks CUDA when present, else CPU; an explicit `cuda` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} was requested but CUDA is not available; "
                           "use device='auto' or 'cpu'.")
    return torch.device(device)


def resolve_profile(profile: str = "auto") -> Profile:
    """`auto` is `gpu` when CUDA is present, else `cpu`."""
    if profile == "auto":
        profile = "gpu" if torch.cuda.is_available() else "cpu"
    if profile not in PROFILES:
        raise ValueError(f"Unknown profile {profile!r}; choose one of {sorted(PROFILES)} or 'auto'.")
    return PROFILES[profile]


def configure_threads(device: torch.device) -> int:
    """On CPU use every core for intra-op work (torch's default can be 1 inside containers)."""
    if device.type == "cpu":
        threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        torch.set_num_threads(max(1, threads or 1))
    return torch.get_num_threads()


def is_facecom_root(path: Path) -> bool:
    """A FACECOM root holds `Task_A/` and/or `Task_B/`, each with a `train` or `val` split."""
    return any((path / task / split).is_dir()
               for task in ("Task_A", "Task_B") for split in ("train", "val"))


def _resolve_identity_folders(data_dir: str) -> Path:
    from common import identity_folders, sample  # late imports: both import this module

    if data_dir in ("", "auto", "sample"):
        return sample.ensure_sample() / "Task_B"
    path = Path(data_dir).expanduser().resolve()
    if not identity_folders.is_identity_folders_root(path):
        found = (", ".join(f"{ext or '(no extension)'} x{n}"
                           for ext, n in listing.count_extensions(path).most_common(10))
                 if path.is_dir() else "the folder does not exist") or "no files"
        raise DataNotFoundError(
            f"{path} is not a folder of identity folders with images: expected "
            f"{path}/<identity>/<image>, or {path}/train/<identity>/<image> (+ val/, test/). "
            f"Found: {found}. Images are recognised by the extensions Pillow reads: "
            f"{' '.join(listing.IMAGE_EXTENSIONS)}. Point data_dir at that folder, or convert "
            "the images to one of those formats.")
    return path


def _find_kaggle_input() -> Path | None:
    if not KAGGLE_INPUT.is_dir():
        return None
    for candidate in sorted(KAGGLE_INPUT.glob("**/Task_A"))[:20]:
        if is_facecom_root(candidate.parent):
            return candidate.parent
    return None


def _download_from_kaggle(target: Path) -> Path:
    """Download the FACECOM data set with the `kaggle` package when credentials exist."""
    has_credentials = (Path.home() / ".kaggle" / "kaggle.json").exists() or (
        "KAGGLE_USERNAME" in os.environ and "KAGGLE_KEY" in os.environ)
    if not has_credentials:
        raise DataNotFoundError(
            "data_dir='kaggle' needs Kaggle API credentials: put kaggle.json in ~/.kaggle/ or set "
            "KAGGLE_USERNAME and KAGGLE_KEY (https://www.kaggle.com/settings -> Create New Token). "
            "Alternatively pass --data-dir pointing at a folder that contains Task_A and Task_B.")
    dataset = os.environ.get(KAGGLE_DATASET_ENV, "")
    if not dataset:
        raise DataNotFoundError(
            f"data_dir='kaggle' needs the data set to download: set {KAGGLE_DATASET_ENV}=owner/slug "
            "of a Kaggle copy of the FACECOM release (as shown in its URL).")
    from kaggle.api.kaggle_api_extended import KaggleApi  # imported late: it reads credentials

    api = KaggleApi()
    api.authenticate()
    target.mkdir(parents=True, exist_ok=True)
    api.dataset_download_files(dataset, path=str(target), unzip=True, quiet=False)
    for candidate in [target, *sorted(target.glob("**/Task_A"))]:
        root = candidate if candidate == target else candidate.parent
        if is_facecom_root(root):
            return root
    raise DataNotFoundError(f"Downloaded {dataset} into {target} but found no Task_A/Task_B "
                            f"folders in it; set {KAGGLE_DATASET_ENV} to the right data set.")


def resolve_data_dir(data_dir: str | os.PathLike = "", layout: str = "facecom") -> Path:
    """Find the data root.

    - a path: used as given (must exist and have the FACECOM layout);
    - ``""``: a FACECOM copy under /kaggle/input when on Kaggle, else the embedded sample in
      ``data/sample`` (generated when missing);
    - ``"sample"``: the embedded sample;
    - ``"kaggle"``: download the data set with the `kaggle` package into ``data/facecom``.

    With ``layout="identity_folders"`` (notebook parameter `data_format`) a path must hold
    ``<identity>/`` image folders (see `common.identity_folders`), and ``""`` / ``"sample"``
    mean the sample's ``Task_B`` folder, whose ``train/`` and ``val/`` are such folders.
    """
    from common.sample import ensure_sample  # late import: sample imports distortions (albumentations)

    data_dir = str(data_dir)
    if layout not in LAYOUTS:
        raise ValueError(f"Unknown data layout {layout!r}; choose one of {LAYOUTS}.")
    if layout == "identity_folders":
        return _resolve_identity_folders(data_dir)
    if data_dir in ("", "auto"):
        found = _find_kaggle_input()
        return found if found is not None else ensure_sample()
    if data_dir == "sample":
        return ensure_sample()
    if data_dir == "kaggle":
        local = DATA_DIR / "facecom"
        return local if is_facecom_root(local) else _download_from_kaggle(local)
    path = Path(data_dir).expanduser().resolve()
    if not path.exists():
        raise DataNotFoundError(
            f"Data directory {path} does not exist. Pass --data-dir (or data_dir=) pointing at the "
            "folder that contains Task_A/ and Task_B/, 'kaggle' to download it, or '' for the "
            "embedded sample.")
    if not is_facecom_root(path):
        raise DataNotFoundError(
            f"{path} does not have the FACECOM layout: expected {path}/Task_A/{{train,val}}/"
            f"{{male,female}}/ and/or {path}/Task_B/{{train,val}}/<identity>/. Point --data-dir at "
            "the folder that contains Task_A and Task_B.")
    return path
