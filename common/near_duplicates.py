"""Near-duplicate images across splits: a perceptual hash per image and a Hamming-distance test.

The exact-duplicate guard (SHA-1 of the bytes) misses a train photo that reappears re-encoded,
resized or distorted in the evaluated split, which is how FACECOM's own distorted copies are
made (224 x 224 re-encodes of the clean photo). A perceptual hash survives those edits:

- `compute_phash` is the DCT hash of ``imagehash.phash`` with ``hash_size=16``: grey,
  64 x 64, 2-D DCT, the 16 x 16 lowest frequencies, one bit per coefficient above their
  median: 256 bits, packed as 32 bytes. The common 8 x 8 (64-bit) variant sees only the
  layout, and FACECOM's studio portraits share it: two different people then look alike.
- Two images are near duplicates when their hashes differ in at most `MAX_DISTANCE` bits;
  the threshold was chosen on the real data so that images of different identities never
  collide while resized, re-encoded, blurred and darkened copies stay well within it
  (``benchmarks/near_duplicates.py``, results in ``benchmarks/results/near_duplicates.md``).
  Fog and glare change the hash as much as another photo does: such a copy is only caught
  through the other copies of the same photo.
- Hashes are computed from a JPEG draft decode, kept per file for the process (the guards
  hash train, then train + dev against the evaluated split) and on disk per file list with
  `cache.file_list_key`, so a re-run reads them.
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from common import cache, config, feature_store
from common.image_decode import ImageReadError, to_rgb

__all__ = ["HASH_SIZE", "HASH_BYTES", "MAX_DISTANCE", "compute_phash", "load_phashes",
           "hamming_distances", "find_near_duplicates"]

HASH_SIZE = 16  # 16 x 16 DCT coefficients: 256-bit hashes
HASH_BYTES = HASH_SIZE * HASH_SIZE // 8
MAX_DISTANCE = 20  # bits of 256; see the module docstring for how it was chosen
_DCT_SIDE = 4 * HASH_SIZE  # imagehash's highfreq_factor
_CACHE_VERSION = 1


def compute_phash(image: Image.Image | np.ndarray) -> np.ndarray:
    """(HASH_BYTES,) uint8 packed DCT hash of one image (any mode; arrays RGB or grey uint8)."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(np.ascontiguousarray(image))
    grey = image.convert("L").resize((_DCT_SIDE, _DCT_SIDE), Image.Resampling.LANCZOS)
    coefficients = cv2.dct(np.asarray(grey, dtype=np.float32))[:HASH_SIZE, :HASH_SIZE]
    return np.packbits((coefficients > np.median(coefficients)).ravel())


def _file_phash(path: str) -> np.ndarray | None:
    try:
        image = to_rgb(cache.open_image(path, draft_size=_DCT_SIDE))
    except ImageReadError:
        return None
    return compute_phash(image)


def load_phashes(paths: Sequence[str | os.PathLike], cache_dir: str | os.PathLike | None = None,
                 progress: bool = False, workers: int | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """(N, HASH_BYTES) uint8 hashes of image files and an (N,) bool mask of the readable ones.

    Unreadable files (validation reports them) get zeros and ``False``, so a guard never
    crashes on them. Kept per image by its content (`common.feature_store`, in ``cache_dir``
    when given).
    """
    paths = [os.fspath(p) for p in paths]
    if not paths:
        return np.zeros((0, HASH_BYTES), np.uint8), np.zeros(0, bool)
    folder = Path(cache_dir) if cache_dir is not None else None
    store = feature_store.FeatureStore(
        "phash", {"version": _CACHE_VERSION, "hash_size": HASH_SIZE},
        {"hashes": ((HASH_BYTES,), "uint8"), "readable": ((), "bool")}, folder)

    def compute(indices: list[int]) -> dict[str, np.ndarray]:
        with ThreadPoolExecutor(max_workers=workers or config.cpu_count()) as pool:
            found = list(pool.map(_file_phash, [paths[i] for i in indices]))
        return {"hashes": np.stack([np.zeros(HASH_BYTES, np.uint8) if h is None else h
                                    for h in found]),
                "readable": np.array([h is not None for h in found])}

    values = store.fetch(feature_store.content_keys(paths, folder), compute, progress,
                         desc="perceptual hashes")
    return values["hashes"], values["readable"]


def hamming_distances(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """(N, M) int Hamming distances between two (N, HASH_BYTES) / (M, HASH_BYTES) hash arrays.

    |a xor b| = |a| + |b| - 2 a.b on the 0/1 bit vectors: one float matrix product (exact for
    these small integers) instead of N x M Python loops.
    """
    a = np.unpackbits(np.asarray(first, np.uint8), axis=1).astype(np.float32)
    b = np.unpackbits(np.asarray(second, np.uint8), axis=1).astype(np.float32)
    shared = a @ b.T
    return np.rint(a.sum(1)[:, None] + b.sum(1)[None, :] - 2 * shared).astype(np.int64)


def find_near_duplicates(train_paths: Sequence[str], eval_paths: Sequence[str],
                         max_distance: int = MAX_DISTANCE,
                         cache_dir: str | os.PathLike | None = None, progress: bool = False,
                         block: int = 2048) -> list[tuple[str, str, int]]:
    """``(train path, evaluated path, distance)`` for every pair within ``max_distance`` bits,
    closest first; unreadable files are left out (validation reports them).

    Args:
        train_paths / eval_paths: the two sides; pairs are only formed across them.
        max_distance: largest Hamming distance still called a duplicate.
        cache_dir: hash cache folder (`load_phashes`).
        progress: show a progress bar while hashing.
        block: train rows compared at a time, bounding memory to block x len(eval_paths).
    """
    train_paths, eval_paths = [str(p) for p in train_paths], [str(p) for p in eval_paths]
    train_hashes, train_ok = load_phashes(train_paths, cache_dir, progress)
    eval_hashes, eval_ok = load_phashes(eval_paths, cache_dir, progress)
    train_index, eval_index = np.flatnonzero(train_ok), np.flatnonzero(eval_ok)
    pairs = []
    for start in range(0, len(train_index), block):
        rows = train_index[start:start + block]
        distances = hamming_distances(train_hashes[rows], eval_hashes[eval_index])
        for i, j in zip(*np.nonzero(distances <= max_distance)):
            pairs.append((train_paths[rows[i]], eval_paths[eval_index[j]],
                          int(distances[i, j])))
    return sorted(pairs, key=lambda pair: (pair[2], pair[0], pair[1]))
