"""Measure the perceptual hash of `common.near_duplicates` on real FACECOM Task_B train images.

What it prints (markdown), to choose `near_duplicates.MAX_DISTANCE`:
- hashing time for every image (cold cache, then cached);
- Hamming distance between each clean photo and its own copies: the seven FACECOM distortions,
  plus a JPEG re-encode (quality 75), a half-size resize and a 224 x 224 stretch made here;
- how many pairs of images of *different* identities lie within each distance, and the closest
  such pairs: the threshold must stay below them.

    python benchmarks/near_duplicates.py          # from the project root
"""
from __future__ import annotations

import argparse
import io
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import cache, config, data, near_duplicates, splits  # noqa: E402 (after sys.path)

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "facecom"


def _edited_hashes(path: str) -> dict[str, np.ndarray]:
    """Hashes of three copies of one clean photo made here: what a leaked re-upload looks like."""
    image = Image.fromarray(cache.load_image(path))
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=75)
    reencoded = Image.open(io.BytesIO(buffer.getvalue()))
    half = image.resize((image.width // 2, image.height // 2), Image.Resampling.BILINEAR)
    stretched = image.resize((224, 224), Image.Resampling.BILINEAR)
    return {name: near_duplicates.compute_phash(copy) for name, copy in
            (("jpeg_q75", reencoded), ("half_size", half), ("stretch_224", stretched))}


def _cross_identity(hashes: np.ndarray, identities: np.ndarray, limit: int, block: int = 2048
                    ) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    """Pairs of different identities per distance 0..limit, and the pairs at the smallest one."""
    counts = np.zeros(limit + 1, np.int64)
    closest: list[tuple[int, int, int]] = []
    for start in range(0, len(hashes), block):
        rows = np.arange(start, min(start + block, len(hashes)))
        distances = near_duplicates.hamming_distances(hashes[rows], hashes)
        other = identities[rows][:, None] != identities[None, :]
        upper = rows[:, None] < np.arange(len(hashes))[None, :]  # each pair once
        near = distances[other & upper]
        counts += np.bincount(near[near <= limit], minlength=limit + 1)[:limit + 1]
        i, j = np.nonzero(other & upper & (distances <= limit))
        closest += [(int(distances[a, b]), int(rows[a]), int(b)) for a, b in zip(i, j)]
    return counts, sorted(closest)[:10]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                        help="FACECOM root (default: ../shared/data/facecom)")
    parser.add_argument("--limit", type=int, default=48, help="largest distance tabulated")
    args = parser.parse_args(argv)
    if not (args.data_dir / "Task_B" / "train").is_dir():
        raise SystemExit(f"No Task_B/train under {args.data_dir}; pass --data-dir pointing at the "
                         "FACECOM root (the folder holding Task_A and Task_B).")
    table = data.read_task_b(args.data_dir, "train")
    paths = table["path"].tolist()
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        hashes, readable = near_duplicates.load_phashes(paths, folder)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        near_duplicates.load_phashes(paths, folder)
        warm = time.perf_counter() - start
    print(f"{len(paths)} images ({int(readable.sum())} readable), "
          f"{table['identity'].nunique()} identities, {config.cpu_count()} CPUs: hashing "
          f"{cold:.1f} s cold, {warm:.2f} s from the cache\n")

    by_path = dict(zip(paths, hashes))
    own = [(row.distortion, int(near_duplicates.hamming_distances(
        by_path[row.source][None], by_path[row.path][None])[0, 0]))
           for row in table[table["distortion"] != "clean"].itertuples()]
    clean = table.loc[table["distortion"] == "clean", "path"].tolist()
    start = time.perf_counter()
    for path in clean:
        for name, edited in _edited_hashes(path).items():
            own.append((name, int(near_duplicates.hamming_distances(
                by_path[path][None], edited[None])[0, 0])))
    edit_seconds = time.perf_counter() - start
    frame = pd.DataFrame(own, columns=["copy", "distance"])
    summary = frame.groupby("copy")["distance"].describe(percentiles=[0.5, 0.9, 0.99])
    for limit in (16, 24, 32):
        summary[f"share <= {limit}"] = frame.groupby("copy")["distance"].apply(
            lambda d, k=limit: float((d <= k).mean()))
    print(f"Distance from each clean photo to its own copies (edited copies made in "
          f"{edit_seconds:.0f} s)\n")
    print(summary.round(3).to_markdown(), "\n")

    counts, closest = _cross_identity(hashes, table["identity"].to_numpy(), args.limit)
    print("Pairs of images of different identities within each distance (rows with pairs, and "
          "every 8th; half the 256 bits are set in every hash, so distances are even)\n")
    rows = pd.DataFrame({"distance": np.arange(args.limit + 1), "pairs at this distance": counts,
                         "pairs within": np.cumsum(counts)})
    print(rows[(rows["distance"] % 8 == 0) | (counts > 0)].to_markdown(index=False), "\n")
    print("Closest pairs of different identities\n")
    print(pd.DataFrame([(d, paths[i].split("Task_B/")[-1], paths[j].split("Task_B/")[-1])
                        for d, i, j in closest],
                       columns=["distance", "first", "second"]).to_markdown(index=False), "\n")

    train, held = splits.split_identities(table, 0.15, seed=1, stratify=None)
    with tempfile.TemporaryDirectory() as folder:
        for label in ("cold", "cached"):
            start = time.perf_counter()
            pairs = near_duplicates.find_near_duplicates(train["path"], held["path"],
                                                         cache_dir=folder)
            print(f"find_near_duplicates, {len(train)} train x {len(held)} held-out images "
                  f"({label} hashes): {time.perf_counter() - start:.1f} s, {len(pairs)} pairs "
                  f"within MAX_DISTANCE={near_duplicates.MAX_DISTANCE}")


if __name__ == "__main__":
    main()
