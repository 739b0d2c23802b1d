"""Any identity-folder face data set (VGGFace2-style) as a Task B table, for notebooks 02 and 03.

Accepted layouts (only image files directly inside an identity folder are read; sub-folders of
an identity, such as FACECOM's ``distortion/``, are ignored)::

    <root>/<identity>/*.jpg                        split here, seeded (`split_by`)
    <root>/{train,val,test}/<identity>/*.jpg       the user's split, used as it is

The result has the columns of `common.data.read_task_b` (path, split, identity, distortion,
source), so `task_b`, `splits.make_splits` and `evaluation.retrieval_table` work unchanged.
Such data sets have no distorted copies, but the evaluation queries distorted images of the
gallery identities, so every clean image gets the seven FACECOM distortions, listed as rows with
``distortion=<name>`` and ``source=<clean path>``; they are files of a views folder in the work
root's cache (never in the user's folder), rendered from the photo when first read
(`common.views`), so listing them reads no image.

Identities with a single image cannot give a gallery photo plus a different query photo, so a
generated split keeps them for training only (`summarize` counts them); in a split the user made
they stay where they are and, as in FACECOM, are queried only by their own distorted views.
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from common import data, experiment, listing, splits, views, workspace
from common.discovery import list_subdirs, scan_images, split_roots
from common.distortions import DISTORTIONS

__all__ = ["SPLIT_BY", "read_identity_folders", "summarize", "read_splits"]

SPLIT_BY = ("identity", "image")
_COLUMNS = ["path", "split", "identity", "distortion", "source"]


def _split_by_identity(table: pd.DataFrame, fraction: float, seed: int) -> pd.Series:
    """`split` column: a seeded slice of the identities with >= 2 images becomes "holdout"."""
    counts = table[table["distortion"] == "clean"].groupby("identity").size()
    eligible = pd.DataFrame({"identity": counts.index[counts >= 2]})
    if len(eligible) < 2:
        raise ValueError(f"Only {len(eligible)} identities have two or more images; an "
                         "identity-disjoint evaluation needs several. Add photos, or use "
                         "split_by='image'.")
    _, held = splits.split_identities(eligible, fraction, seed=seed, stratify=None)
    if held.empty:
        held = eligible.iloc[:1]
    return table["split"].where(~table["identity"].isin(set(held["identity"])), "holdout")


def read_identity_folders(root: str | os.PathLike, split_by: str = "identity",
                          eval_fraction: float = 0.15, seed: int = 0,
                          cache_dir: str | os.PathLike | None = None) -> pd.DataFrame:
    """Task B table of an identity-folder data set, distorted views included.

    Reads the folder listing only, no image, so it stays quick on millions of photos.

    Args:
        root: ``<identity>/*`` folders, or ``train/``, ``val/``, ``test/`` holding them.
        split_by: without a user split: "identity" (default; `eval_fraction` of the identities
            with >= 2 images become "holdout", never trained on: open-set, like FACECOM) or
            "image" (`eval_fraction` of each such identity's images become "val": closed set).
            Ignored when the root is already split.
        eval_fraction: share of identities or images held out for evaluation.
        seed: fixes the split and the distortions.
        cache_dir: where the views folder goes; None = data/cache/identity_views.

    Returns:
        DataFrame ``path, split, identity, distortion, source`` (clean rows first per identity);
        `split` is "train" / "holdout" / "val" when generated, else the sub-root's name.
        Hidden files and folders of the root, its split folders and the identity folders
        (never read) are listed in ``attrs["skipped"]``. An
        unreadable photo stays listed: reading it or one of its views raises
        `image_decode.ImageReadError` naming the photo.

    Raises:
        DatasetLayoutError: no identity folder with images, or an ambiguous root.
        ValueError: bad `split_by`, or too few multi-image identities to split, or a
            `cache_dir` inside `root` (the input folder is never written to).
    """
    if split_by not in SPLIT_BY:
        raise ValueError(f"split_by={split_by!r}; choose one of {SPLIT_BY}.")
    root = Path(root).expanduser().resolve()
    if not root.is_dir():
        raise data.DatasetLayoutError(f"{root} does not exist; point data_dir at the folder that "
                                      "holds <identity>/ image folders.")
    cache_dir = (Path(cache_dir).resolve() if cache_dir is not None
                 else workspace.cache_dir() / "identity_views")
    if cache_dir == root or root in cache_dir.parents:
        raise ValueError(f"cache_dir {cache_dir} lies inside the data folder {root}, which is "
                         "never written to; choose a cache_dir outside it.")
    roots = split_roots(root)
    scans = [(split or "train", identity.name, scan_images(identity))
             for split, folder in roots.items() for identity in list_subdirs(folder)]
    folders = [(split, identity, images) for split, identity, (images, _) in scans]
    if not any(images for *_, images in folders):
        raise data.DatasetLayoutError(
            f"{root}: no images in <identity>/ folders. Expected <root>/<identity>/*.jpg or "
            "<root>/train/<identity>/*.jpg (+ val/, test/).")
    skipped = sorted([*_hidden(root, roots),
                      *(path for *_, (_, hidden) in scans for path in hidden)], key=os.fsencode)
    if skipped:
        warnings.warn(f"{len(skipped)} hidden files or folders skipped, e.g. "
                      f"{listing.printable(skipped[0])}", stacklevel=2)
    table = _table(folders, root, views.views_folder(cache_dir, root, seed))
    if "" in roots and split_by == "identity":
        table["split"] = _split_by_identity(table, eval_fraction, seed)
    elif "" in roots:
        kept, held = splits.split_images(table, eval_fraction, seed)
        table = pd.concat([kept, held.assign(split="val")], ignore_index=True)
    table.attrs["skipped"] = skipped
    return table


def _hidden(root: Path, roots: dict[str, Path]) -> list[str]:
    """Hidden entries of the root and of its split folders (the identity folders' own are
    found as they are listed)."""
    hidden = []
    for folder in {root, *roots.values()}:
        with os.scandir(folder) as entries:
            hidden += [entry.path for entry in entries if listing.is_hidden(entry.name)]
    return hidden


def _table(folders: list[tuple[str, str, list[str]]], root: Path, views_folder: Path
           ) -> pd.DataFrame:
    """The rows of `folders` ((split, identity, photos) each): per identity its clean photos,
    then the views of each photo in `DISTORTIONS` order. Built column by column, since at
    millions of photos a Python tuple per row costs more than the rest of the start."""
    counts = np.array([len(images) for *_, images in folders])
    clean = np.array([image for *_, images in folders for image in images], dtype=object)
    prefix, folder = len(str(root)) + 1, str(views_folder)
    suffixes = [views.view_name("", name) for name in DISTORTIONS]  # "_<distortion>.jpg"
    view_paths = np.array([base + suffix for base in (f"{folder}/{path[prefix:]}" for path in clean)
                           for suffix in suffixes], dtype=object)
    per_view = len(DISTORTIONS)
    split = np.repeat(np.array([split for split, *_ in folders], dtype=object), counts)
    identity = np.repeat(np.array([identity for _, identity, _ in folders], dtype=object),
                         counts)
    folder_of = np.repeat(np.arange(len(folders)), counts)
    order = np.argsort(np.concatenate([2 * folder_of, 2 * np.repeat(folder_of, per_view) + 1]),
                       kind="stable")
    columns = {
        "path": np.concatenate([clean, view_paths]),
        "split": np.concatenate([split, np.repeat(split, per_view)]),
        "identity": np.concatenate([identity, np.repeat(identity, per_view)]),
        "distortion": np.concatenate([np.full(len(clean), "clean", dtype=object),
                                      np.tile(np.array(DISTORTIONS, dtype=object), len(clean))]),
        "source": np.concatenate([clean, np.repeat(clean, per_view)]),
    }
    return pd.DataFrame({name: columns[name][order] for name in _COLUMNS})


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Identities, clean images, distorted views and single-image identities per split.

    In a generated identity split the train row's `single_image_identities` are the people kept
    out of evaluation (one photo cannot be both gallery and a different query).
    """
    rows = []
    for split, frame in table.groupby("split", sort=False):
        clean = frame[frame["distortion"] == "clean"].groupby("identity").size()
        rows.append({"split": split, "identities": frame["identity"].nunique(),
                     "clean": int(clean.sum()),
                     "distorted": int((frame["distortion"] != "clean").sum()),
                     "single_image_identities": int((clean == 1).sum())})
    return pd.DataFrame(rows).set_index("split")


def read_splits(cfg: experiment.ExperimentConfig) -> splits.Splits:
    """Train / dev / evaluated splits of ``cfg.data_dir`` for `task_b.prepare_data`.

    Uses the notebook parameter ``split_by`` (default "identity"): identity-disjoint dev and
    evaluation through `splits.make_splits`; with "image" dev and evaluation are other photos
    of the train identities (`splits.make_image_splits`). The evaluated split is the generated
    one, else ``val``, else ``test``. Prints `summarize` of the table.
    """
    split_by = cfg.task.split_by
    table = read_identity_folders(cfg.data_dir, split_by, cfg.holdout_fraction, cfg.seed)
    print(summarize(table).to_string())
    present = set(table["split"].unique())
    eval_name = next((n for n in ("holdout", "val", "test") if n in present), None)
    if eval_name is None:
        raise data.DatasetLayoutError(f"{cfg.data_dir}/train has no val/ or test/ beside it: "
                                      "add one, or put the identities directly in the root.")
    train, evaluated = table[table["split"] == "train"], table[table["split"] == eval_name]
    if split_by == "image" and "" in split_roots(Path(cfg.data_dir)):
        return splits.make_image_splits(train, evaluated, eval_name, cfg, photos_only=True)
    made = splits.make_splits(train, evaluated, cfg, stratify=None, photos_only=True)
    made.eval_name = eval_name
    return made
