"""Finding the data: a FACECOM root or a folder of identity folders, and saying what was found.

`resolve_data_dir` turns a notebook's ``data_dir`` into a folder. Left empty it looks for
FACECOM where people keep it (a Kaggle input, Colab's mounted Drive, an earlier ``kaggle``
download under the work root) and otherwise falls back to the embedded synthetic sample, with a
banner that cannot be missed: numbers on the sample say nothing about faces. `describe_data`
names the kind of data for `metrics.json` and `summary.md`.
"""
from __future__ import annotations

import os
from pathlib import Path

from common import data, listing, sample, workspace

__all__ = ["LAYOUTS", "SPLIT_NAMES", "KAGGLE_DATASET_ENV", "COLAB_ROOT_ENV", "SYNTHETIC",
           "DataNotFoundError", "is_facecom_root", "is_identity_folders_root", "split_roots",
           "list_subdirs", "list_images", "scan_images", "find_facecom", "resolve_data_dir",
           "describe_data"]

LAYOUTS = ("facecom", "identity_folders")  # the notebooks' `data_format` values
SPLIT_NAMES = ("train", "val", "test")  # sub-roots of an already split identity-folder set
# `owner/slug` of a Kaggle copy of the hackathon release, for data_dir="kaggle". Copies are
# published by different users, so the project names none; set FACECOM_KAGGLE_DATASET.
KAGGLE_DATASET_ENV = "FACECOM_KAGGLE_DATASET"
COLAB_ROOT_ENV = "FACECOM_COLAB_ROOT"  # Colab's /content, moved by tests
SYNTHETIC = "synthetic sample"
_SEARCH_DEPTH = 3  # folders below an input / Drive root searched for Task_A


class DataNotFoundError(FileNotFoundError):
    """No data set could be found or fetched; the message says how to provide one."""


def is_facecom_root(path: Path) -> bool:
    """A FACECOM root holds `Task_A/` and/or `Task_B/`, each with a `train` or `val` split."""
    return any((Path(path) / task / split).is_dir()
               for task in ("Task_A", "Task_B") for split in ("train", "val"))


def list_subdirs(folder: Path) -> list[Path]:
    """Visible sub-folders of `folder`, sorted."""
    return sorted(Path(e.path) for e in os.scandir(folder)
                  if e.is_dir() and not listing.is_hidden(e.name))


def list_images(folder: str | os.PathLike) -> list[str]:
    """Paths of the image files directly inside `folder`, sorted (hidden files and other types
    left out). Strings, not `Path`: a million-image data set is listed in seconds, not minutes."""
    return scan_images(folder)[0]


def scan_images(folder: str | os.PathLike) -> tuple[list[str], list[str]]:
    """(`list_images` of `folder`, its hidden files and folders, which no reader reads), sorted,
    from one listing of the folder."""
    images, hidden = [], []
    with os.scandir(folder) as entries:
        for entry in entries:
            if listing.is_hidden(entry.name):
                hidden.append(entry.path)
            elif entry.is_file() and listing.is_image_name(entry.name):
                images.append(entry.path)
    return sorted(images), sorted(hidden)


def split_roots(root: Path) -> dict[str, Path]:
    """``{split: folder}`` for a pre-split identity-folder root, ``{"": root}`` for a flat one.

    Raises:
        DatasetLayoutError: some but not all top-level folders are split names (ambiguous).
    """
    names = [d.name for d in list_subdirs(root)]
    split_named = [n for n in names if n in SPLIT_NAMES]
    if not split_named:
        return {"": root}
    if len(split_named) != len(names) or "train" not in split_named:
        raise data.DatasetLayoutError(
            f"{root} mixes split folders {split_named} with other folders "
            f"{sorted(set(names) - set(split_named))[:5]}: use either <root>/<identity>/* or "
            "<root>/train/<identity>/* (+ val/, test/), with a train/ folder.")
    return {n: root / n for n in SPLIT_NAMES if n in split_named}


def is_identity_folders_root(path: str | os.PathLike) -> bool:
    """True when `path` holds ``<identity>/`` image folders, directly or in ``train/`` etc."""
    path = Path(path)
    if not path.is_dir():
        return False
    try:
        folders = split_roots(path).values()
    except data.DatasetLayoutError:
        return False
    return any(list_images(identity) for folder in folders for identity in list_subdirs(folder))


def _search(base: Path) -> Path | None:
    """The first FACECOM root at most `_SEARCH_DEPTH` folders below `base` (sorted order)."""
    if not base.is_dir():
        return None
    for depth in range(_SEARCH_DEPTH + 1):
        for candidate in sorted(base.glob("/".join(["*"] * depth + ["Task_A"]))):
            if is_facecom_root(candidate.parent):
                return candidate.parent
    return None


def find_facecom() -> Path | None:
    """FACECOM under a Kaggle input, Colab's Drive or the work root's ``data/facecom``."""
    colab = Path(os.environ.get(COLAB_ROOT_ENV, "/content"))
    for base in (workspace.kaggle_root() / "input", colab / "drive" / "MyDrive"):
        found = _search(base)
        if found is not None:
            return found
    local = workspace.data_dir() / "facecom"
    return local if is_facecom_root(local) else None


def _sample(layout: str) -> Path:
    root = sample.ensure_sample()
    print("=" * 78 + "\n" + f"  NO REAL DATA: using the {SYNTHETIC} ({root}).\n"
          "  Its numbers only show that the code runs; they say nothing about faces.\n"
          "  Attach FACECOM (a folder holding Task_A/ and Task_B/) as a Kaggle input, put it on\n"
          "  Drive, or pass data_dir=<path> (run_all.sh --data-dir <path>).\n" + "=" * 78)
    return root / "Task_B" if layout == "identity_folders" else root


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
    from kaggle.api.kaggle_api_extended import KaggleApi  # authenticates on import

    api = KaggleApi()
    api.authenticate()
    target.mkdir(parents=True, exist_ok=True)
    api.dataset_download_files(dataset, path=str(target), unzip=True, quiet=False)
    found = target if is_facecom_root(target) else _search(target)
    if found is None:
        raise DataNotFoundError(f"Downloaded {dataset} into {target} but found no Task_A/Task_B "
                                f"folders in it; set {KAGGLE_DATASET_ENV} to the right data set.")
    return found


def resolve_data_dir(data_dir: str | os.PathLike = "", layout: str = "facecom") -> Path:
    """Find the data root.

    - a path: used as given (must exist and have the layout);
    - ``""``: FACECOM found by `find_facecom`, else the embedded sample (with a banner);
    - ``"sample"``: the embedded sample;
    - ``"kaggle"``: download the data set with the `kaggle` package into the work root.

    With ``layout="identity_folders"`` (notebook parameter `data_format`) a path must hold
    ``<identity>/`` image folders, and ``""`` / ``"sample"`` mean the sample's ``Task_B``
    folder, whose ``train/`` and ``val/`` are such folders.
    """
    data_dir = str(data_dir)
    if layout not in LAYOUTS:
        raise ValueError(f"Unknown data layout {layout!r}; choose one of {LAYOUTS}.")
    if data_dir in ("", "auto") and layout == "facecom":
        found = find_facecom()
        if found is not None:
            print(f"data: {describe_data(found)} found at {found}")
            return found
    if data_dir in ("", "auto", "sample"):
        return _sample(layout)
    if data_dir == "kaggle" and layout == "facecom":
        local = workspace.data_dir() / "facecom"
        return local if is_facecom_root(local) else _download_from_kaggle(local)
    path = Path(data_dir).expanduser().resolve()
    if layout == "identity_folders":
        if not is_identity_folders_root(path):
            found = (", ".join(f"{ext or '(no extension)'} x{n}"
                               for ext, n in listing.count_extensions(path).most_common(10))
                     if path.is_dir() else "the folder does not exist") or "no files"
            raise DataNotFoundError(
                f"{path} is not a folder of identity folders with images: expected "
                f"{path}/<identity>/<image>, or {path}/train/<identity>/<image> (+ val/, test/). "
                f"Found: {found}. Images are recognised by the extensions Pillow reads: "
                f"{' '.join(listing.IMAGE_EXTENSIONS)}. Point data_dir at that folder, or "
                "convert the images to one of those formats.")
        return path
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


def describe_data(data_dir: str | os.PathLike) -> str:
    """``"synthetic sample"``, ``"FACECOM"`` or ``"identity folders"``: what a run was fed."""
    path = Path(data_dir)
    if any((folder / sample.STAMP_NAME).exists() for folder in (path, path.parent)):
        return SYNTHETIC
    return "FACECOM" if is_facecom_root(path) else "identity folders"
