"""Distorted views of clean photos, rendered from the photo the first time they are read.

Identity-folder data sets (`common.identity_folders`) have no distorted copies, but the Task B
evaluation queries distorted images of the gallery identities, so every clean photo gets the
seven FACECOM distortions of `common.distortions`, seeded per photo and distortion. A view is a
file ``<folder>/<photo path relative to the data root>_<distortion>.jpg`` in a views folder of
the work root's cache (never in the user's folder); the folder's ``views.json`` names the data
root and the seed, and the folder's name is a hash of them and the rendering settings.

Nothing is rendered up front, which on a data set of millions of photos would take hours before
the first step: every reader of the project reads files through `read_image_bytes`, which
renders a view that is missing, in whichever process asks (DataLoader workers), and keeps it for
the next read. A view carries its photo's modification time, so a photo edited or replaced
later gets its views rendered anew. `ensure` renders a whole list at once, in threads, for the
readers that need every file before they start (the decoded-image cache, content hashes).
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import cv2
import numpy as np
from tqdm.auto import tqdm

from common.config import cpu_count
from common.distortions import DISTORTIONS, apply_distortion
from common.image_decode import ImageReadError, decode_image, read_file, to_rgb

__all__ = ["VIEWS_VERSION", "MAX_VIEW_SIDE", "STAMP", "views_folder", "view_name",
           "VIEW_SUFFIXES", "PhotoViews", "ViewPaths", "read_image_bytes", "ensure"]

VIEWS_VERSION = 1  # bump when rendering changes, so old views are not reused
MAX_VIEW_SIDE = 512  # views of larger photos are downscaled first (training decodes <= 224 px)
STAMP = "views.json"
_JPEG_QUALITY = 90


def view_name(clean_rel: str, distortion: str) -> str:
    """``<identity>/<file name>_<distortion>.jpg`` (the full name keeps a.jpg / a.png apart)."""
    return f"{clean_rel}_{distortion}.jpg"


VIEW_SUFFIXES = tuple(view_name("", name) for name in DISTORTIONS)  # "_<distortion>.jpg"


@dataclass(frozen=True)
class PhotoViews:
    """Where the views of the photos under `root` are (`folder`, from `views_folder`), and
    their names: the one place a view's path is made from its photo's."""

    root: str
    folder: str

    def _prefixes(self, photos: Sequence[str]) -> list[str]:
        """Per photo (a path under `root`), its views' common path prefix (add a
        `VIEW_SUFFIXES` entry for a view)."""
        start = len(self.root) + 1
        return [f"{self.folder}/{photo[start:]}" for photo in photos]

    def view_paths(self, photos: Sequence[str]) -> list[str]:
        """Each photo's views in `DISTORTIONS` order, photo after photo."""
        return [prefix + suffix for prefix in self._prefixes(photos) for suffix in VIEW_SUFFIXES]

    def paths(self, photos: Sequence[str]) -> "ViewPaths":
        """Each photo followed by its views in `DISTORTIONS` order, as one lazy sequence."""
        return ViewPaths(photos, self._prefixes(photos))


class ViewPaths(Sequence[str]):
    """The paths of photos and their views without a string per view: row ``i * k`` is photo
    ``i``, rows ``i * k + 1 ... i * k + 7`` its views in `DISTORTIONS` order (``k = 8``).

    What training streams a data set's train split from (`cache.ImageFiles`): at millions of
    photos, eight path strings per photo would cost gigabytes and most of the first minute.
    """

    ROW_DISTORTIONS = ("clean", *DISTORTIONS)  # what each of a photo's rows shows
    ROWS_PER_PHOTO = len(ROW_DISTORTIONS)
    _SUFFIXES = ("", *VIEW_SUFFIXES)

    def __init__(self, photos: Sequence[str], prefixes: Sequence[str]) -> None:
        self.photos, self._prefixes = list(photos), list(prefixes)

    def __len__(self) -> int:
        return len(self.photos) * self.ROWS_PER_PHOTO

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        photo, row = divmod(range(len(self))[index], self.ROWS_PER_PHOTO)
        return (self.photos[photo] if row == 0
                else self._prefixes[photo] + self._SUFFIXES[row])


def _view_seed(seed: int, clean_rel: str, distortion: str) -> int:
    return zlib.crc32(f"{seed}:{clean_rel}:{distortion}".encode("utf-8", "surrogateescape"))


def views_folder(cache_dir: str | os.PathLike, root: str | os.PathLike, seed: int) -> Path:
    """The views folder of the photos under `root` for `seed`, created with its stamp when new.

    Its name depends only on the root, the seed and the rendering settings, so finding it reads
    no photo; whether a view is still current is decided per view when it is read.
    """
    stamp = {"version": VIEWS_VERSION, "root": str(root), "seed": seed,
             "max_side": MAX_VIEW_SIDE, "jpeg_quality": _JPEG_QUALITY,
             "distortions": list(DISTORTIONS)}
    text = json.dumps(stamp, indent=1, sort_keys=True) + "\n"
    folder = Path(cache_dir) / hashlib.sha256(text.encode("utf-8", "surrogateescape")
                                              ).hexdigest()[:16]
    if not (folder / STAMP).is_file():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{STAMP}.tmp-{os.getpid()}"
        tmp.write_text(text, encoding="utf-8", errors="surrogateescape")
        os.replace(tmp, folder / STAMP)
    return folder


@lru_cache(maxsize=1 << 16)
def _folder_of(directory: str) -> tuple[str, str, int] | None:
    """(views folder, data root, seed) when `directory` lies in a views folder (a view's folder
    is the views folder itself, its identity or its split/identity sub-folder), else None."""
    for _ in range(3):
        stamp = os.path.join(directory, STAMP)
        if os.path.isfile(stamp):
            with open(stamp, encoding="utf-8", errors="surrogateescape") as file:
                settings = json.load(file)
            return directory, settings["root"], int(settings["seed"])
        directory = os.path.dirname(directory)
    return None


def _view_of(path: str) -> tuple[str, str, str, int] | None:
    """(photo, its path relative to the data root, distortion, seed) when `path` is a view."""
    path = os.path.abspath(path)
    found = _folder_of(os.path.dirname(path))
    if found is None:
        return None
    folder, root, seed = found
    relative = path[len(folder) + 1:]
    for distortion in DISTORTIONS:
        suffix = f"_{distortion}.jpg"
        if relative.endswith(suffix):
            clean_rel = relative[:-len(suffix)]
            return os.path.join(root, clean_rel), clean_rel, distortion, seed
    return None


def _render(image: np.ndarray, clean_rel: str, distortion: str, seed: int) -> bytes:
    """The JPEG bytes of one view of a decoded photo."""
    scale = MAX_VIEW_SIDE / max(image.shape[:2])
    if scale < 1.0:
        image = cv2.resize(image, (max(1, round(image.shape[1] * scale)),
                                   max(1, round(image.shape[0] * scale))),
                           interpolation=cv2.INTER_AREA)
    view = apply_distortion(image, distortion, seed=_view_seed(seed, clean_rel, distortion))
    ok, buffer = cv2.imencode(".jpg", cv2.cvtColor(view, cv2.COLOR_RGB2BGR),
                              [cv2.IMWRITE_JPEG_QUALITY, _JPEG_QUALITY])
    if not ok:
        raise RuntimeError(f"OpenCV could not JPEG-encode a view of {clean_rel}; check cv2")
    return buffer.tobytes()


def _make_current(path: str, view: tuple[str, str, str, int]) -> None:
    """Render the view at `path` unless it exists with its photo's modification time."""
    photo, clean_rel, distortion, seed = view
    try:
        photo_stat = os.stat(photo)
    except OSError as exc:
        raise ImageReadError(photo, "cannot open the photo the distorted view "
                             f"{os.path.basename(path)} is rendered from "
                             f"({exc.strerror or exc})") from exc
    try:
        if os.stat(path).st_mtime_ns == photo_stat.st_mtime_ns:
            return
    except FileNotFoundError:
        pass
    image = np.asarray(to_rgb(decode_image(photo, read_file(photo))), dtype=np.uint8)
    data = _render(image, clean_rel, distortion, seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}-{threading.get_ident()}"
    try:
        with open(tmp, "wb") as file:
            file.write(data)
        os.utime(tmp, ns=(photo_stat.st_atime_ns, photo_stat.st_mtime_ns))
        os.replace(tmp, path)  # atomic: a reader in another process sees no half-written view
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def read_image_bytes(path: str | os.PathLike) -> bytes:
    """The bytes of an image file; a distorted view is rendered first when it is missing or
    older than its photo.

    Raises:
        ImageReadError: the file (or the photo a view is rendered from) cannot be read.
    """
    path = os.fspath(path)
    view = _view_of(path)
    if view is not None:
        _make_current(path, view)
    return read_file(path)


def ensure(paths: Sequence[str | os.PathLike], workers: int | None = None,
           progress: bool = False) -> None:
    """Render, in threads, every view among `paths` that is missing or out of date; other paths
    are left alone. For readers that need every file on disk first (hashes, stat-based keys).

    Raises:
        ImageReadError: the photo of a view cannot be read.
    """
    views = [(os.fspath(p), view) for p in paths if (view := _view_of(os.fspath(p))) is not None]
    if not views:
        return
    with ThreadPoolExecutor(max_workers=workers or cpu_count()) as pool:
        list(tqdm(pool.map(lambda item: _make_current(*item), views), total=len(views),
                  desc="distorted views", disable=not progress))
