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
(`common.views`), so listing them reads no image. Only the evaluated splits hold the views as
rows (`read_splits`); train keeps one row per photo and training reads the views by index
(`views.ViewPaths`), since eight rows per photo cost most of the first minute at millions.

Identities with a single image cannot give a gallery photo plus a different query photo, so a
generated split keeps them for training only (`summarize` counts them); in a split the user made
they stay where they are and, as in FACECOM, are queried only by their own distorted views.
"""
from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from common import data, experiment, listing, splits, views, workspace
from common.discovery import list_subdirs, scan_images, split_roots
from common.distortions import DISTORTIONS

__all__ = ["SPLIT_BY", "read_identity_folders", "read_identity_photos", "with_views",
           "summarize", "read_splits"]

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
    """Task B table of an identity-folder data set, distorted views included: `with_views` of
    `read_identity_photos` (same arguments), with its ``attrs["skipped"]``."""
    photos, photo_views = read_identity_photos(root, split_by, eval_fraction, seed, cache_dir)
    table = with_views(photos, photo_views)
    table.attrs["skipped"] = photos.attrs["skipped"]
    return table


def read_identity_photos(root: str | os.PathLike, split_by: str = "identity",
                         eval_fraction: float = 0.15, seed: int = 0,
                         cache_dir: str | os.PathLike | None = None
                         ) -> tuple[pd.DataFrame, views.PhotoViews]:
    """The photos of an identity-folder data set, one row each, and where their views are.

    Reads the folder listing only, no image, so it stays quick on millions of photos; the
    views (`with_views`) are rows only where they are queried, and training draws them by
    index (`views.ViewPaths`).

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
        (DataFrame ``path, split, identity, distortion, source`` with distortion "clean" and
        source = path, in folder order; `split` is "train" / "holdout" / "val" when generated,
        else the sub-root's name. Hidden files and folders of the root, its split folders and
        the identity folders (never read) are listed in ``attrs["skipped"]``. An unreadable
        photo stays listed: reading it or one of its views raises
        `image_decode.ImageReadError` naming the photo), and the photos' `views.PhotoViews`.

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
    table = _photo_table(folders)
    if "" in roots and split_by == "identity":
        table["split"] = _split_by_identity(table, eval_fraction, seed)
    elif "" in roots:
        kept, held = splits.split_images(table, eval_fraction, seed)
        table = pd.concat([kept, held.assign(split="val")], ignore_index=True)
    table.attrs["skipped"] = skipped
    return table, views.PhotoViews(str(root), str(views.views_folder(cache_dir, root, seed)))


def _hidden(root: Path, roots: dict[str, Path]) -> list[str]:
    """Hidden entries of the root and of its split folders (the identity folders' own are
    found as they are listed)."""
    hidden = []
    for folder in {root, *roots.values()}:
        with os.scandir(folder) as entries:
            hidden += [entry.path for entry in entries if listing.is_hidden(entry.name)]
    return hidden


def _photo_table(folders: list[tuple[str, str, list[str]]]) -> pd.DataFrame:
    """One row per photo of `folders` ((split, identity, photos) each), in their order."""
    counts = [len(images) for *_, images in folders]
    paths = np.array([image for *_, images in folders for image in images], dtype=object)
    return pd.DataFrame({
        "path": paths,
        "split": np.repeat(np.array([split for split, *_ in folders], dtype=object), counts),
        "identity": np.repeat(np.array([identity for _, identity, _ in folders], dtype=object),
                              counts),
        "distortion": np.full(len(paths), "clean", dtype=object),
        "source": paths,
    }, columns=_COLUMNS)


def with_views(photos: pd.DataFrame, photo_views: views.PhotoViews) -> pd.DataFrame:
    """`photos` (rows of `read_identity_photos`) with the views of each photo as rows: after
    each run of one split's identity, the run's photos, then each photo's views in
    `DISTORTIONS` order. Built column by column, since at millions of photos a Python tuple per
    row costs more than the rest of the start."""
    path = photos["path"].to_numpy(object)
    split, identity = photos["split"].to_numpy(object), photos["identity"].to_numpy(object)
    changed = np.r_[True, (split[1:] != split[:-1]) | (identity[1:] != identity[:-1])]
    run = np.cumsum(changed) - 1
    per_photo = len(DISTORTIONS)
    order = np.argsort(np.concatenate([2 * run, 2 * np.repeat(run, per_photo) + 1]),
                       kind="stable")
    columns = {
        "path": np.concatenate([path, np.array(photo_views.view_paths(path), dtype=object)]),
        "split": np.concatenate([split, np.repeat(split, per_photo)]),
        "identity": np.concatenate([identity, np.repeat(identity, per_photo)]),
        "distortion": np.concatenate([photos["distortion"].to_numpy(object),
                                      np.tile(np.array(DISTORTIONS, dtype=object), len(path))]),
        "source": np.concatenate([photos["source"].to_numpy(object),
                                  np.repeat(path, per_photo)]),
    }
    return pd.DataFrame({name: columns[name][order] for name in _COLUMNS})


def summarize(photos: pd.DataFrame) -> pd.DataFrame:
    """Identities, photos, distorted views (seven per photo) and single-image identities per
    split of `read_identity_photos`' table.

    In a generated identity split the train row's `single_image_identities` are the people kept
    out of evaluation (one photo cannot be both gallery and a different query).
    """
    rows = []
    for split, frame in photos.groupby("split", sort=False):
        clean = frame.groupby("identity").size()
        rows.append({"split": split, "identities": len(clean), "clean": len(frame),
                     "distorted": len(frame) * len(DISTORTIONS),
                     "single_image_identities": int((clean == 1).sum())})
    return pd.DataFrame(rows).set_index("split")


def read_splits(cfg: experiment.ExperimentConfig) -> tuple[splits.Splits, views.PhotoViews]:
    """Train / dev / evaluated splits of ``cfg.data_dir`` for `task_b.prepare_data`, and where
    the photos' views are.

    Uses the notebook parameter ``split_by`` (default "identity"): identity-disjoint dev and
    evaluation through `splits.make_splits`; with "image" dev and evaluation are other photos
    of the train identities (`splits.make_image_splits`). The evaluated split is the generated
    one, else ``val``, else ``test``. Dev and the evaluated split get their photos' views as
    rows (`with_views`: they are the queries); train keeps one row per photo, and training
    reads each photo's views by index (`views.ViewPaths`). Prints `summarize` of the photos.
    """
    split_by = cfg.task.split_by
    photos, photo_views = read_identity_photos(cfg.data_dir, split_by, cfg.holdout_fraction,
                                               cfg.seed)
    print(summarize(photos).to_string())
    present = set(photos["split"].unique())
    eval_name = next((n for n in ("holdout", "val", "test") if n in present), None)
    if eval_name is None:
        raise data.DatasetLayoutError(f"{cfg.data_dir}/train has no val/ or test/ beside it: "
                                      "add one, or put the identities directly in the root.")
    train, evaluated = photos[photos["split"] == "train"], photos[photos["split"] == eval_name]
    expand = functools.partial(with_views, photo_views=photo_views)
    if split_by == "image" and "" in split_roots(Path(cfg.data_dir)):
        made = splits.make_image_splits(train, evaluated, eval_name, cfg, expand=expand)
    else:
        made = splits.make_splits(train, evaluated, cfg, stratify=None, expand=expand)
        made.eval_name = eval_name
    print(f"train: {len(made.train)} photos, one row each; training reads each with its "
          f"{len(DISTORTIONS)} views ({len(made.train) * (1 + len(DISTORTIONS))} images)")
    return made, photo_views
