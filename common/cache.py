"""Decoded images: one reader for a file, a memmap cache for a list, streaming, a Dataset.

Every image the project reads goes through `load_image` (or its resized twin used by
`load_image_array`): files are read by `views.read_image_bytes` (which renders a distorted view
of an identity folder on its first read) and decoded by `image_decode.decode_image`, so mode
conversion and corruption handling are decided once (see `common.image_decode`).

`load_image_array` turns a file list into one array at a fixed size, kept as ``.npy`` in a cache
folder and opened as a read-only memmap; its key is `file_list_key` (paths in order, size,
modification time, settings). The rows come from a per-image store (`common.feature_store`), so
an image is decoded once per size whatever list it appears in; `ImageFiles` streams instead.
Images become square in one of two ways (`FITS`): ``"crop"`` scales the shorter side to S and
keeps the centre square; ``"stretch"`` resizes the whole image to S x S, aspect ratio not kept,
which is how FACECOM made its 224 x 224 distorted copies of the 683 x 1024 studio portraits, so
a copy and its photo line up only when stretched.
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from common import feature_store, views, workspace
from common.config import cpu_count
from common.image_decode import decode_image, to_rgb

__all__ = [
    "open_image", "load_image", "compute_fingerprint", "load_image_array",
    "ImageArrayDataset", "CACHE_VERSION", "load_resized", "resize_square",
    "file_list_key", "FITS", "check_fit", "to_rgb_array", "write_npz", "read_npz",
    "ImageFiles", "IMAGE_CACHES", "STREAM_ABOVE_BYTES", "check_image_cache",
    "choose_image_cache",
]

# Bump when decoding or resizing changes, so stale caches are not reused.
CACHE_VERSION = 1
_TASK_DIRS = ("Task_A", "Task_B")
FITS = ("crop", "stretch")
IMAGE_CACHES = ("auto", "memmap", "stream")  # the notebooks' `image_cache` values
# `auto` streams above this many decoded bytes (2 GiB: about 57,000 images at 112 px, which
# decode in well under a minute here), or when the array would take over half the free disk.
STREAM_ABOVE_BYTES = 2 * 2**30


def open_image(path: str | os.PathLike, draft_size: int | None = None) -> Image.Image:
    """One file read and strictly decoded (`image_decode.decode_image`; `draft_size` lets
    libjpeg decode at a reduced scale that keeps both sides >= it).

    Raises:
        ImageReadError: unreadable, zero-byte, non-image, corrupt or truncated file.
    """
    return decode_image(path, views.read_image_bytes(path), draft_size)


def load_image(path: str | os.PathLike) -> np.ndarray:
    """Read one image as an RGB uint8 ``(H, W, 3)`` array, whatever its mode on disk.

    Raises:
        ImageReadError: zero-byte, non-image, corrupt or truncated file.
    """
    return np.asarray(to_rgb(open_image(path)), dtype=np.uint8)


def _one_of(name: str, value: str, choices: tuple[str, ...]) -> str:
    """`value` itself when it is one of `choices`, else a `ValueError` naming them."""
    if value not in choices:
        raise ValueError(f"{name}={value!r}; choose one of {choices}")
    return value


def check_fit(fit: str) -> str:
    """`fit` itself when it is one of `FITS` (else `ValueError`)."""
    return _one_of("fit", fit, FITS)


def _decode_resized(path: str, image_size: int, fit: str = "crop") -> np.ndarray:
    """Decode ``path`` and make it an ``image_size`` square as ``fit`` says (see `FITS`)."""
    return _square(to_rgb(open_image(path, draft_size=image_size)), image_size, fit)


def load_resized(path: str | os.PathLike, image_size: int, fit: str = "crop") -> np.ndarray:
    """One file decoded like the cache rows, without touching the cache; for inference on user
    folders, one file at a time."""
    return _decode_resized(str(path), image_size, fit)


def resize_square(image: np.ndarray | Image.Image, image_size: int,
                  fit: str = "crop") -> np.ndarray:
    """An in-memory image (array or PIL, any mode) prepared exactly like the cached ones."""
    return _square(Image.fromarray(to_rgb_array(image)), image_size, fit)


def to_rgb_array(image: np.ndarray | Image.Image) -> np.ndarray:
    """An in-memory image (array or PIL, any mode) as a full-size RGB uint8 array."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.ascontiguousarray(image))
    return np.asarray(to_rgb(image), dtype=np.uint8)


def _square(image: Image.Image, image_size: int, fit: str = "crop") -> np.ndarray:
    if check_fit(fit) == "crop":
        width, height = image.size
        side = min(width, height)
        left, top = (width - side) // 2, (height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    return np.asarray(image.resize((image_size, image_size), Image.Resampling.BILINEAR),
                      dtype=np.uint8)


def _stable_relpath(path: str, common: str) -> str:
    """The part from ``Task_A``/``Task_B`` on when present (same on every machine), else
    relative to the list's common folder."""
    parts = path.split(os.sep)  # string operations: this runs once per file of a data set
    for index in range(len(parts) - 1, -1, -1):
        if parts[index] in _TASK_DIRS:
            return "/".join(parts[index:])
    prefix = common.rstrip(os.sep) + os.sep
    relative = path[len(prefix):] if path.startswith(prefix) else os.path.relpath(path, common)
    return relative.replace(os.sep, "/")


def _entries(paths: Sequence[str | os.PathLike], sizes: bool) -> list[str]:
    """``relative path<TAB>size`` (or the relative path alone) per path, in the given order.

    Paths are split into folder and name, and the folder's part is worked out once per folder:
    a data set has millions of files in thousands of folders."""
    split = [os.fspath(p).rpartition(os.sep) for p in paths]
    folders = {folder: os.path.abspath(folder or os.curdir)
               for folder in {folder for folder, _, _ in split}}
    common = os.path.commonpath(set(folders.values()))
    relative = {folder: _stable_relpath(absolute + os.sep, common)
                for folder, absolute in folders.items()}
    entries = [relative[folder] + name for folder, _, name in split]
    if not sizes:
        return entries
    return [f"{entry}\t{os.stat(os.path.join(folders[folder], name)).st_size}"
            for entry, (folder, _, name) in zip(entries, split)]


def compute_fingerprint(paths: Sequence[str | os.PathLike], sizes: bool = True) -> str:
    """SHA-1 over the sorted (relative path, size in bytes) pairs of ``paths``: which data a
    model was trained on, for its card, not a cache key (see `file_list_key`).

    Paths are taken relative to the FACECOM root (from ``Task_A``/``Task_B`` on) or to their
    common folder, so the same data set gives the same fingerprint on Kaggle and locally; for
    the same reason no modification time enters it, so an edit that keeps a file's size is not
    seen here (caches see it). ``sizes=False`` hashes the relative paths alone: no file is
    touched, so it costs nothing on the way to a run's first step (a `stat` per file does).

    Raises:
        FileNotFoundError: a path does not exist (with ``sizes``).
    """
    entries = sorted(_entries(paths, sizes)) if len(paths) else []
    return hashlib.sha1("\n".join(entries).encode("utf-8", "surrogateescape")).hexdigest()


def file_list_key(paths: Sequence[str | os.PathLike], settings: dict) -> str:
    """The one key of every cache whose rows follow ``paths`` (decoded images, aligned faces,
    face chips, descriptors, perceptual hashes).

    sha256 over the settings that change the cached values and, per path in order, its
    absolute path (so two data roots with the same relative paths never share an entry), size
    and modification time in ns (so an image edited in place, even at the same size, is
    decoded anew). File names are hashed as bytes: names that are not UTF-8 work too.

    Raises:
        FileNotFoundError: a path does not exist.
    """
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode())
    for path in paths:
        absolute = os.path.abspath(os.fspath(path))
        stat = os.stat(absolute)
        digest.update(os.fsencode(absolute) + f"\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def write_npz(path: Path, **arrays: np.ndarray) -> None:
    """Write arrays to ``path`` atomically (temp file in the same folder, then rename), so no
    reader ever sees half a cache file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as file:
            np.savez(file, **arrays)
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def read_npz(path: Path, names: Sequence[str]) -> dict[str, np.ndarray] | None:
    """The named arrays of a cache file written by `write_npz`, or None when it is missing or
    unreadable (the caller then recomputes and rewrites it)."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as arrays:
            return {name: arrays[name] for name in names}
    except (OSError, ValueError, KeyError):
        return None


def _allocate(path: Path) -> None:
    """Give the (sparse) memmap file its disk blocks before any image is written into it.

    Writing into a sparse file on a full disk kills the whole process with SIGBUS, far from
    the cause; allocating first turns that into an `OSError` that names the folder and the
    size. Filesystems without fallocate support are left sparse.
    """
    if not hasattr(os, "posix_fallocate"):  # macOS, Windows
        return
    size = path.stat().st_size
    fd = os.open(path, os.O_RDWR)
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as error:
        if error.errno in (errno.EOPNOTSUPP, errno.EINVAL):
            return
        if error.errno != errno.ENOSPC:
            raise
        free = shutil.disk_usage(path.parent).free
        raise OSError(errno.ENOSPC, (
            f"Not enough disk space for the image cache: {size / 2**20:.0f} MiB needed in "
            f"{path.parent}, {free / 2**20:.0f} MiB free. Free space there, or pass cache_dir= "
            "a folder on a larger disk")) from error
    finally:
        os.close(fd)


class ImageFiles:
    """An ``(N, S, S, 3)`` uint8 array of image files that decodes a row when it is read.

    What training streams from when the decoded array would not fit (`load_image_array`): each
    row is decoded exactly like a cached row, in whichever process reads it (DataLoader
    workers), so the first epoch starts at once on any data size. Indexing with an integer
    decodes that row; a slice, an index array or a boolean mask gives another `ImageFiles`;
    ``images[:, ...]`` applies the rest of the key to every row when it is read
    (``images[:, :, ::-1]`` mirrors them). ``np.asarray`` decodes everything.
    """

    def __init__(self, paths: Sequence[str | os.PathLike], image_size: int, fit: str = "crop",
                 row_key: tuple = ()) -> None:
        # a `views.ViewPaths` stays lazy: at millions of photos its strings would cost gigabytes
        self.paths = (paths if isinstance(paths, views.ViewPaths)
                      else [str(path) for path in paths])
        self.image_size, self.fit, self.row_key = image_size, check_fit(fit), row_key
        self.shape = (len(self.paths), image_size, image_size, 3)
        self.dtype, self.ndim = np.dtype(np.uint8), 4

    def __len__(self) -> int:
        return len(self.paths)

    def _row(self, index: int) -> np.ndarray:
        return _decode_resized(self.paths[index], self.image_size, self.fit)[self.row_key]

    def __getitem__(self, key):
        if isinstance(key, (int, np.integer)):
            return self._row(int(key))
        if isinstance(key, tuple) and key and key[0] == slice(None):
            return ImageFiles(self.paths, self.image_size, self.fit, self.row_key + key[1:])
        picked = np.arange(len(self))[key]
        return ImageFiles([self.paths[i] for i in picked], self.image_size, self.fit,
                          self.row_key)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        rows = np.stack([self._row(i) for i in range(len(self))]) if len(self) else np.zeros(
            self.shape, np.uint8)
        return rows if dtype is None else rows.astype(dtype)


def check_image_cache(image_cache: str) -> str:
    """`image_cache` itself when it is one of `IMAGE_CACHES` (else `ValueError`)."""
    return _one_of("image_cache", image_cache, IMAGE_CACHES)


def choose_image_cache(count: int, image_size: int, folder: Path, image_cache: str = "auto"
                       ) -> str:
    """``"memmap"`` or ``"stream"`` for `count` images at `image_size`: `auto` streams when
    the decoded array exceeds `STREAM_ABOVE_BYTES` or half the free disk of `folder`."""
    if check_image_cache(image_cache) != "auto":
        return image_cache
    needed = count * image_size * image_size * 3
    free = shutil.disk_usage(workspace.existing_parent(folder)).free
    return "stream" if needed > min(STREAM_ABOVE_BYTES, free / 2) else "memmap"


def load_image_array(paths: Sequence[str | os.PathLike], image_size: int,
                     cache_dir: str | os.PathLike | None = None, progress: bool = True,
                     workers: int | None = None, fit: str = "crop",
                     image_cache: str = "memmap") -> np.ndarray | ImageFiles:
    """Decode ``paths`` into one ``(N, S, S, 3)`` uint8 array, cached on disk as a memmap.

    Each image is made an ``image_size`` square as ``fit`` says (see `FITS`). The array
    is written once to ``cache_dir/images_<key>_<S>px.npy`` (temporary file, then rename, so an
    interrupted run leaves no half-written cache) and returned opened with ``mmap_mode="r"``:
    the second call neither decodes nor loads the images into RAM. Old cache files are never
    deleted; remove the folder to reclaim space.

    Args:
        paths: image files; row ``i`` of the result is ``paths[i]``.
        image_size: output side S in pixels.
        cache_dir: cache folder; ``None`` means ``workspace.cache_dir()`` (``data/cache`` of the
            work root).
        progress: show a tqdm bar while decoding.
        workers: decoding threads (Pillow releases the GIL); ``None`` = `cpu_count()`.
        fit: ``"crop"`` (shorter side, centre square) or ``"stretch"`` (whole image, squashed).
        image_cache: ``"memmap"`` (the cached array), ``"stream"`` (an `ImageFiles` that decodes
            rows as they are read; nothing is written) or ``"auto"`` (`choose_image_cache`).

    Raises:
        ImageReadError: a file cannot be decoded (validation should have excluded it).
        OSError: the cache folder's disk cannot hold the array (checked before decoding).
    """
    if not len(paths):
        return np.zeros((0, image_size, image_size, 3), dtype=np.uint8)
    folder = Path(cache_dir) if cache_dir is not None else workspace.cache_dir()
    if choose_image_cache(len(paths), image_size, folder, image_cache) == "stream":
        return ImageFiles(paths, image_size, fit)
    paths = [str(p) for p in paths]
    folder.mkdir(parents=True, exist_ok=True)
    views.ensure(paths, workers, progress)  # the key reads every file's size and time
    settings = {"version": CACHE_VERSION, "size": image_size, "fit": check_fit(fit)}
    key = file_list_key(paths, settings)
    target = folder / f"images_{key}_{image_size}px.npy"
    if target.exists():
        return np.load(target, mmap_mode="r")
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shape = (len(paths), image_size, image_size, 3)
    # Each image is decoded once per size and fit, whatever list asks for it: the array is
    # filled from the per-image store, which decodes only the images it has not seen.
    store = feature_store.FeatureStore(f"images_{image_size}px", settings,
                                       {"image": (shape[1:], "uint8")},
                                       folder / "features" if cache_dir is not None else None)
    try:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        _allocate(tmp)

        def decode(indices: list[int]) -> dict[str, np.ndarray]:
            with ThreadPoolExecutor(max_workers=workers or cpu_count()) as pool:
                try:
                    rows = list(pool.map(lambda i: _decode_resized(paths[i], image_size, fit),
                                         indices))
                except BaseException:
                    pool.shutdown(cancel_futures=True)  # do not decode the rest before raising
                    raise
            return {"image": np.stack(rows)}

        store.fetch(feature_store.content_keys(paths, store.path.parent), decode, progress,
                    desc=f"decoding images at {image_size}px", out={"image": array})
        array.flush()
        del array
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return np.load(target, mmap_mode="r")


class ImageArrayDataset(Dataset):
    """A torch Dataset over an ``(N, H, W, 3)`` uint8 array (usually the cached memmap).

    Items are ``(image, label)`` or ``(image, label, extra[i])``. ``image`` is
    ``transform(image=array)["image"]`` (an albumentations Compose ending in ``ToTensorV2``,
    see `common.transforms`), or without a transform a ``(3, H, W)`` float tensor in [0, 1].
    A memmap is pickled as its file name and reopened in the worker, so DataLoader workers
    started with spawn/forkserver do not copy the whole array.
    """

    def __init__(self, images: np.ndarray, labels: Sequence[int] | np.ndarray,
                 transform=None, extra: Sequence | np.ndarray | None = None) -> None:
        if len(images) != len(labels):
            raise ValueError(f"images has {len(images)} rows but labels has {len(labels)}; "
                             "pass one label per image, in the same order.")
        if extra is not None and len(extra) != len(images):
            raise ValueError(f"extra has {len(extra)} rows but images has {len(images)}.")
        self.images = images
        self.labels = np.asarray(labels)
        self.transform = transform
        self.extra = extra

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        image = np.array(self.images[index])  # writable copy of one memmap row
        if self.transform is not None:
            tensor = self.transform(image=image)["image"]
        else:
            tensor = torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0)
        label = self.labels[index].item()
        if self.extra is None:
            return tensor, label
        return tensor, label, self.extra[index]

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        images = self.images
        if isinstance(images, np.memmap) and images.filename is not None:
            whole = np.load(images.filename, mmap_mode="r")
            # Only a view of the whole file can be named by its file; slices are pickled as data.
            if whole.shape == images.shape and images.flags.c_contiguous:
                state["images"] = ("__memmap__", images.filename)
        return state

    def __setstate__(self, state: dict) -> None:
        images = state["images"]
        if isinstance(images, tuple) and images[0] == "__memmap__":
            state["images"] = np.load(images[1], mmap_mode="r")
        self.__dict__.update(state)
