"""Any identity-folder face data set (VGGFace2-style) as a Task B table, for notebooks 02 and 03.

Accepted layouts (only image files directly inside an identity folder are read; sub-folders of
an identity, such as FACECOM's ``distortion/``, are ignored)::

    <root>/<identity>/*.jpg                        split here, seeded (`split_by`)
    <root>/{train,val,test}/<identity>/*.jpg       the user's split, used as it is

The result has the columns of `common.data.read_task_b` (path, split, identity, distortion,
source), so `task_b`, `splits.make_splits` and `evaluation.retrieval_table` work unchanged.
Such data sets have no distorted copies, but the evaluation queries distorted images of the
gallery identities, so every clean image gets the seven FACECOM distortions of
`common.distortions`, seeded per file, written once under
``data/cache/identity_views/<key>/`` (never into the user's folder) and listed as rows with
``distortion=<name>`` and ``source=<clean path>``.

Identities with a single image cannot give a gallery photo plus a different query photo, so a
generated split keeps them for training only (`summarize` counts them); in a split the user made
they stay where they are and, as in FACECOM, are queried only by their own distorted views.
"""
from __future__ import annotations

import json
import os
import shutil
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import pandas as pd
from tqdm.auto import tqdm

from common import data, experiment, listing, splits, workspace
from common.cache import ImageReadError, cpu_count, file_list_key, load_image
from common.discovery import list_images, list_subdirs, split_roots
from common.distortions import DISTORTIONS, apply_distortion

__all__ = ["SPLIT_BY", "VIEWS_VERSION", "MAX_VIEW_SIDE",
           "read_identity_folders", "summarize", "read_splits"]

SPLIT_BY = ("identity", "image")
VIEWS_VERSION = 1  # bump when view generation changes, so old views are not reused
MAX_VIEW_SIDE = 512  # views of larger photos are downscaled first (training decodes <= 224 px)
_STAMP = "views.json"
_JPEG_QUALITY = 90
_COLUMNS = ["path", "split", "identity", "distortion", "source"]


def _relative(path: str, root: Path) -> str:
    """`path` relative to `root` (a prefix of it, as `list_images` lists), by string slicing."""
    return path[len(str(root)) + 1:]


def _views_key(root: Path, clean: list[str], seed: int) -> str:
    """`cache.file_list_key` of the clean files plus the generator settings: a changed file
    or setting gives a new views folder instead of stale views."""
    return file_list_key(clean, {"version": VIEWS_VERSION, "seed": seed,
                                 "max_side": MAX_VIEW_SIDE, "distortions": list(DISTORTIONS),
                                 "root": str(root)})[:16]


def _view_name(clean_rel: str, distortion: str) -> str:
    """``<identity>/<file name>_<distortion>.jpg`` (the full name keeps a.jpg / a.png apart)."""
    return f"{clean_rel}_{distortion}.jpg"


def _view_seed(seed: int, clean_rel: str, distortion: str) -> int:
    return zlib.crc32(f"{seed}:{clean_rel}:{distortion}".encode("utf-8", "surrogateescape"))


def _write_views_of(source: str, clean_rel: str, target: Path, seed: int) -> str | None:
    """Write the seven views of one clean image; return the read error instead of raising."""
    try:
        image = load_image(source)
    except ImageReadError as error:
        return error.reason
    scale = MAX_VIEW_SIDE / max(image.shape[:2])
    if scale < 1.0:
        image = cv2.resize(image, (max(1, round(image.shape[1] * scale)),
                                   max(1, round(image.shape[0] * scale))),
                           interpolation=cv2.INTER_AREA)
    (target / clean_rel).parent.mkdir(parents=True, exist_ok=True)
    for name in DISTORTIONS:
        view = apply_distortion(image, name, seed=_view_seed(seed, clean_rel, name))
        ok, buffer = cv2.imencode(".jpg", cv2.cvtColor(view, cv2.COLOR_RGB2BGR),
                                  [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
        if not ok:
            raise RuntimeError(f"OpenCV could not JPEG-encode a view of {source}; check cv2")
        (target / _view_name(clean_rel, name)).write_bytes(buffer.tobytes())
    return None


def _ensure_views(root: Path, clean: list[str], seed: int, cache_dir: Path, progress: bool,
                  workers: int | None) -> tuple[Path, dict[str, str]]:
    """The views folder of `clean` (generated when missing) and ``{relative path: read error}``
    of the clean files that could not be decoded."""
    folder = cache_dir / _views_key(root, clean, seed)
    stamp = folder / _STAMP
    if stamp.exists():
        return folder, json.loads(stamp.read_text())["unreadable"]
    tmp = cache_dir / f".{folder.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    rels = [_relative(path, root) for path in clean]
    try:
        with ThreadPoolExecutor(max(1, min(workers or cpu_count(), cpu_count()))) as pool:
            errors = list(tqdm(pool.map(lambda pr: _write_views_of(pr[0], pr[1], tmp, seed),
                                        zip(clean, rels)),
                               total=len(clean), desc="distorted views", disable=not progress))
        unreadable = {rel: error for rel, error in zip(rels, errors) if error is not None}
        (tmp / _STAMP).write_text(json.dumps({
            "version": VIEWS_VERSION, "root": str(root), "seed": seed,
            "distortions": list(DISTORTIONS), "clean_images": len(clean),
            "unreadable": unreadable}, indent=1) + "\n")
        try:
            os.replace(tmp, folder)
        except OSError:  # another process finished the same views first: use those
            if not stamp.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder, unreadable


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
                          cache_dir: str | os.PathLike | None = None, progress: bool = True,
                          workers: int | None = None) -> pd.DataFrame:
    """Task B table of an identity-folder data set, distorted views included.

    Args:
        root: ``<identity>/*`` folders, or ``train/``, ``val/``, ``test/`` holding them.
        split_by: without a user split: "identity" (default; `eval_fraction` of the identities
            with >= 2 images become "holdout", never trained on: open-set, like FACECOM) or
            "image" (`eval_fraction` of each such identity's images become "val": closed set).
            Ignored when the root is already split.
        eval_fraction: share of identities or images held out for evaluation.
        seed: fixes the split and the distortions.
        cache_dir: where views are written; None = data/cache/identity_views.
        progress, workers: progress bar and threads for writing the views.

    Returns:
        DataFrame ``path, split, identity, distortion, source`` (clean rows first per identity);
        `split` is "train" / "holdout" / "val" when generated, else the sub-root's name.
        Unreadable images are left out with a warning and listed in ``attrs["unreadable"]``,
        hidden files and folders (never read) in ``attrs["skipped"]``.

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
    cache_dir = Path(cache_dir).resolve() if cache_dir is not None else workspace.cache_dir() / "identity_views"
    if cache_dir == root or root in cache_dir.parents:
        raise ValueError(f"cache_dir {cache_dir} lies inside the data folder {root}, which is "
                         "never written to; choose a cache_dir outside it.")
    roots = split_roots(root)
    folders = [(split or "train", identity.name, list_images(identity))
               for split, folder in roots.items() for identity in list_subdirs(folder)]
    clean = [image for *_, images in folders for image in images]
    if not clean:
        raise data.DatasetLayoutError(
            f"{root}: no images in <identity>/ folders. Expected <root>/<identity>/*.jpg or "
            "<root>/train/<identity>/*.jpg (+ val/, test/).")
    views, unreadable = _ensure_views(root, clean, seed, cache_dir, progress, workers)
    if unreadable:
        warnings.warn(f"{len(unreadable)} unreadable images left out, e.g. "
                      f"{next(iter(unreadable.items()))}", stacklevel=2)
    skipped = listing.walk_files(root).skipped
    if skipped:
        warnings.warn(f"{len(skipped)} hidden files or folders skipped, e.g. "
                      f"{listing.printable(skipped[0][0])}", stacklevel=2)
    rows, views = [], str(views)
    for split, identity, images in folders:
        readable = [(image, _relative(image, root)) for image in images]
        readable = [(image, rel) for image, rel in readable if rel not in unreadable]
        rows += [(image, split, identity, "clean", image) for image, _ in readable]
        rows += [(f"{views}/{_view_name(rel, name)}", split, identity, name, image)
                 for image, rel in readable for name in DISTORTIONS]
    table = pd.DataFrame(rows, columns=_COLUMNS)
    if "" in roots and split_by == "identity":
        table["split"] = _split_by_identity(table, eval_fraction, seed)
    elif "" in roots:
        kept, held = splits.split_images(table, eval_fraction, seed)
        table = pd.concat([kept, held.assign(split="val")], ignore_index=True)
    table.attrs["unreadable"] = [str(root / rel) for rel in unreadable]
    table.attrs["skipped"] = [path for path, _ in skipped]
    return table


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
    summary = pd.DataFrame(rows).set_index("split")
    summary.attrs["unreadable"] = len(table.attrs.get("unreadable", []))
    return summary


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
    present = set(table["split"])
    eval_name = next((n for n in ("holdout", "val", "test") if n in present), None)
    if eval_name is None:
        raise data.DatasetLayoutError(f"{cfg.data_dir}/train has no val/ or test/ beside it: "
                                      "add one, or put the identities directly in the root.")
    train, evaluated = table[table["split"] == "train"], table[table["split"] == eval_name]
    if split_by == "image" and "" in split_roots(Path(cfg.data_dir)):
        return splits.make_image_splits(train, evaluated, eval_name, cfg)
    made = splits.make_splits(train, evaluated, cfg, stratify=None)
    made.eval_name = eval_name
    return made
