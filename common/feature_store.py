"""Per-image caches: what one step computed for one image, kept by the image's content.

A step that works image by image (decoding at a size, MTCNN boxes, dlib chips, face
descriptors, perceptual hashes) looks each image up here before computing it, so no image is
processed twice by the same step: not when another notebook asks for it in another list or
order, not when `common.predict` meets it again, not when a run is repeated or interrupted
(results are stored in chunks as they come).

- An image is known by the SHA-256 of its bytes (`content_keys`): FACECOM's Task A photos are
  byte-identical to Task B's clean photos, so the two share every entry, and a file edited in
  place gets a new key. Hashing reads each file once; the hash is remembered per absolute path,
  size and modification time, so an unchanged file is not read again.
- A step's settings (image size, front end, version) name its table, so other settings never
  see these results.
- Storage is SQLite under ``<work root>/data/cache/features/``: one file per step, safe for
  several processes, nothing to install.
"""
from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from common import config, views, workspace

__all__ = ["Field", "FeatureStore", "content_keys", "store_folder"]

Field = tuple[tuple[int, ...], str]  # (shape of one image's value, numpy dtype)
_TIMEOUT_S = 120.0  # how long a writer waits for another process's write to finish
_CHUNK = 256  # images computed and stored at a time


def store_folder() -> Path:
    """``<work root>/data/cache/features``."""
    return workspace.cache_dir() / "features"


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(path, timeout=_TIMEOUT_S)
    connection.execute("PRAGMA journal_mode=WAL")  # readers never wait for a writer
    return connection


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def content_keys(paths: Sequence[str | os.PathLike], folder: Path | None = None) -> list[str]:
    """The SHA-256 of each file's bytes, remembered per (absolute path, size, mtime); distorted
    views among `paths` are rendered first (`views.ensure`).

    Raises:
        FileNotFoundError: a path does not exist.
    """
    views.ensure(paths)
    stamps = []
    for path in paths:
        absolute = os.path.abspath(os.fspath(path))
        stat = os.stat(absolute)
        stamps.append((os.fsencode(absolute), stat.st_size, stat.st_mtime_ns, absolute))
    connection = _connect((folder or store_folder()) / "files.sqlite")
    with connection:
        connection.execute("CREATE TABLE IF NOT EXISTS files (path BLOB, size INTEGER, "
                           "mtime INTEGER, sha256 TEXT, PRIMARY KEY (path, size, mtime))")
    known = {}
    for start in range(0, len(stamps), 300):  # 900 bound values: within SQLite's oldest limit
        chunk = stamps[start:start + 300]
        query = " OR ".join(["(path = ? AND size = ? AND mtime = ?)"] * len(chunk))
        rows = connection.execute(f"SELECT path, size, mtime, sha256 FROM files WHERE {query}",
                                  [value for stamp in chunk for value in stamp[:3]])
        known.update({(path, size, mtime): sha for path, size, mtime, sha in rows})
    new = [(stamp[:3], _file_sha256(stamp[3])) for stamp in stamps if stamp[:3] not in known]
    if new:
        with connection:
            connection.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?)",
                                   [(*stamp, sha) for stamp, sha in new])
        known.update(dict(new))
    connection.close()
    return [known[stamp[:3]] for stamp in stamps]


class FeatureStore:
    """The per-image results of one step with fixed settings.

    Args:
        step: the step's name (``"descriptors_robust"``), the start of its file name.
        settings: everything that changes the results; hashed into the file name.
        fields: ``{name: (shape, dtype)}`` of one image's values, e.g.
            ``{"vectors": ((128,), "float32"), "found": ((), "bool")}``.
        folder: where the file goes (default `store_folder`).
    """

    def __init__(self, step: str, settings: dict, fields: dict[str, Field],
                 folder: Path | None = None) -> None:
        self.fields = {name: (tuple(shape), np.dtype(dtype)) for name, (shape, dtype)
                       in fields.items()}
        described = json.dumps({"settings": settings, "fields": {
            name: [list(shape), dtype.str] for name, (shape, dtype) in self.fields.items()}},
            sort_keys=True)
        digest = hashlib.sha256(described.encode()).hexdigest()[:16]
        self.path = (folder or store_folder()) / f"{step}_{digest}.sqlite"
        columns = ", ".join(f'"{name}" BLOB' for name in self.fields)
        connection = _connect(self.path)
        with connection:
            connection.execute(f"CREATE TABLE IF NOT EXISTS items (key TEXT PRIMARY KEY, "
                               f"{columns})")
        connection.close()

    def _fill(self, out: dict[str, np.ndarray], indices: list[int], row: Sequence) -> None:
        for blob, (name, (shape, dtype)) in zip(row, self.fields.items()):
            out[name][indices] = np.frombuffer(blob, dtype).reshape(shape)

    def fetch(self, keys: Sequence[str],
              compute: Callable[[list[int]], dict[str, np.ndarray]],
              progress: bool = False, desc: str = "",
              out: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
        """The values of every key, computing only the missing ones.

        Args:
            keys: one key per item (`content_keys`, or a combination of them).
            compute: item indices -> ``{field: array with one row per index}``; called on
                chunks of the missing items, each stored before the next is computed, with the
                global random streams kept (`config.rng_state_kept`): a cold cache must not
                change the weights a run trains next.
            out: arrays to fill (a memmap, say) instead of new ones in memory.

        Returns:
            ``{field: array of shape (len(keys), *shape)}`` in the order of `keys`.
        """
        out = out if out is not None else {
            name: np.zeros((len(keys), *shape), dtype) for name, (shape, dtype)
            in self.fields.items()}
        positions: dict[str, list[int]] = {}
        for index, key in enumerate(keys):
            positions.setdefault(key, []).append(index)
        names = ", ".join(f'"{name}"' for name in self.fields)
        connection = _connect(self.path)
        try:
            unique = list(positions)
            for start in range(0, len(unique), 900):
                chunk = unique[start:start + 900]
                rows = connection.execute(f"SELECT key, {names} FROM items WHERE key IN "
                                          f"({', '.join('?' * len(chunk))})", chunk)
                for key, *row in rows:
                    self._fill(out, positions.pop(key), row)
            missing = list(positions)  # what is left, in order of first appearance
            insert = (f"INSERT OR REPLACE INTO items VALUES "
                      f"({', '.join('?' * (len(self.fields) + 1))})")
            with tqdm(total=len(missing), desc=desc or self.path.stem,
                      disable=not progress or not missing) as bar:
                for start in range(0, len(missing), _CHUNK):
                    chunk = missing[start:start + _CHUNK]
                    with config.rng_state_kept():
                        values = compute([positions[key][0] for key in chunk])
                    rows = [[key, *(np.ascontiguousarray(values[name][i], dtype).tobytes()
                                    for name, (_, dtype) in self.fields.items())]
                            for i, key in enumerate(chunk)]
                    with connection:
                        connection.executemany(insert, rows)
                    for key, *row in rows:
                        self._fill(out, positions[key], row)
                    bar.update(len(chunk))
        finally:
            connection.close()
        return out
