"""Exact against Barnes-Hut t-SNE at the sizes `plots.plot_tsne` draws (the 20 largest
identities of a split: a few hundred to a thousand points).

The points are 128-d clusters, 20 of them, as an embedding's t-SNE sees them; perplexity and
initialisation as `plot_tsne` sets them. Times each method once per size, in this process's
threads (`taskset -c 0` for one core, as a CI worker has).

    python benchmarks/tsne.py

Writes ``benchmarks/results/tsne.md``.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import sklearn
from sklearn.manifold import TSNE

RESULTS = Path(__file__).resolve().parent / "results" / "tsne.md"


def clusters(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, 128))
    return (centres[rng.integers(0, 20, n)] + 0.8 * rng.normal(size=(n, 128))).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[150, 300, 640, 1000])
    args = parser.parse_args()
    lines = ["# t-SNE: exact against Barnes-Hut", "",
             f"`python benchmarks/tsne.py` on {len(os.sched_getaffinity(0))} core(s), scikit-learn "
             f"{sklearn.__version__}; 20 clusters of 128-d points.", "",
             "| points | exact (s) | Barnes-Hut (s) |", "|---|---|---|"]
    for n in args.sizes:
        points, seconds = clusters(n), []
        for method in ("exact", "barnes_hut"):
            began = time.perf_counter()
            TSNE(n_components=2, perplexity=min(30.0, (n - 1) / 3), init="pca", method=method,
                 random_state=0).fit_transform(points)
            seconds.append(time.perf_counter() - began)
        lines.append(f"| {n} | {seconds[0]:.2f} | {seconds[1]:.2f} |")
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
