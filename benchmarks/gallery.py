"""Benchmark `common.gallery.GalleryIndex` on synthetic galleries of 10 k to 1 M images.

Each identity is a random unit direction in 512-d; its images lie around it (cosine about 0.7
to the direction, 0.5 between two images of one identity, as face embeddings of one person
do), and each query is a gallery image moved to cosine about 0.85 of it, like a distorted copy.
Images are generated in seeded chunks, once to draw the queries and again to build the index,
so the vectors are never held twice: the index is the only copy.

Per gallery size: build time (training the inverted file included, generating vectors not),
query throughput of top-1 identity search for all queries in one call, resident memory once
built (the index plus this script's identity directions and queries), peak RSS of the process
and recall@1: how often the index's best identity is the best one by exact search, computed
chunk by chunk with numpy during generation for the first `--recall-queries` queries (brute
force over 1 M images costs 1 GFLOP per query). Every size runs in its own
process (this script re-invoked with ``--worker``), so each peak RSS is its own.

    python benchmarks/gallery.py            # 10 k, 100 k and 1 M images, 10 k queries
    python benchmarks/gallery.py --quick    # 10 k and 100 k images, 1 k queries (a minute)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "gallery.md"
DIM = 512
SIZES = ((10_000, 1_000), (100_000, 10_000), (1_000_000, 100_000))  # (images, identities)
NPROBES = (8, 16, 32, 64)
CHUNK = 50_000  # gallery images generated and added at a time
IMAGE_NOISE, QUERY_NOISE = 1.0, 0.6  # noise norm relative to the unit identity / image vector


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _noise(rng: np.random.Generator, n: int, scale: float) -> np.ndarray:
    return rng.standard_normal((n, DIM), dtype=np.float32) * np.float32(scale / DIM ** 0.5)


def _chunks(n_images: int, directions: np.ndarray):
    """(first index, identities, unit images) of each chunk, the same on every call: each
    chunk has its own seed, so a second pass regenerates instead of keeping a copy."""
    for lo in range(0, n_images, CHUNK):
        rng = np.random.default_rng([1, lo])
        identities = rng.integers(0, len(directions), min(CHUNK, n_images - lo))
        yield lo, identities, _unit(directions[identities] + _noise(rng, len(identities),
                                                                    IMAGE_NOISE))


def _worker(n_images: int, n_identities: int, n_queries: int, n_recall: int) -> dict:
    """Build, search and score one gallery size in this process; returns the row."""
    sys.path.insert(0, str(ROOT))
    from common.gallery import EXACT_LIMIT, GalleryIndex

    rng = np.random.default_rng(0)
    directions = _unit(rng.standard_normal((n_identities, DIM), dtype=np.float32))
    query_source = rng.choice(n_images, n_queries, replace=False)
    queries = np.empty((n_queries, DIM), np.float32)
    for lo, identities, images in _chunks(n_images, directions):  # first pass: the queries
        here = (query_source >= lo) & (query_source < lo + len(images))
        queries[here] = _unit(images[query_source[here] - lo]
                              + _noise(rng, int(here.sum()), QUERY_NOISE))
    exact_score = np.full(n_recall, -np.inf, np.float32)
    exact_identity = np.zeros(n_recall, np.int64)
    index = GalleryIndex(DIM, kind="auto" if n_images <= EXACT_LIMIT else "ivf",
                         nlist=int(np.sqrt(n_images)) if n_images > EXACT_LIMIT else None)
    build = 0.0
    for _, identities, images in _chunks(n_images, directions):  # the same chunks again
        start = time.perf_counter()
        index.add(images, identities.astype(str))
        build += time.perf_counter() - start
        for q in range(0, n_recall, 1024):  # exact best image so far, query block by block
            sim = queries[q:min(q + 1024, n_recall)] @ images.T
            best = sim.argmax(axis=1)
            score = sim[np.arange(len(best)), best]
            better = score > exact_score[q:q + 1024]
            exact_score[q:q + 1024][better] = score[better]
            exact_identity[q:q + 1024][better] = identities[best[better]]
    names = np.asarray(index.names).astype(np.int64)
    images = sim = None  # only the index, directions and queries stay
    row = {"images": n_images, "identities": n_identities, "queries": n_queries,
           "recall_queries": n_recall, "rss_built_gib": _rss_gib(),
           "index": f"IVF, {index.nlist} cells" if index.is_ivf else "exact",
           "build_s": round(build, 1), "searches": []}
    for nprobe in NPROBES if index.is_ivf else (None,):
        if nprobe:
            index.nprobe = nprobe
        start = time.perf_counter()
        found = index.search(queries, k=1)
        elapsed = time.perf_counter() - start
        row["searches"].append({
            "nprobe": nprobe, "queries_per_s": round(n_queries / elapsed),
            "recall_at_1": float((names[found.codes[:n_recall, 0]] == exact_identity).mean())})
    row["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 2)
    return row


def _rss_gib() -> float:
    """Resident memory now (peak RSS includes transient copies made while appending)."""
    status = Path("/proc/self/status").read_text()
    return round(int(status.split("VmRSS:")[1].split()[0]) / 2 ** 20, 2)


def _table(rows: list[dict]) -> str:
    lines = ["| gallery images | identities | index | build (s) | nprobe | queries/s | "
             "recall@1 vs exact | RSS built (GiB) | peak RSS (GiB) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        for search in row["searches"]:
            lines.append(f"| {row['images']:,} | {row['identities']:,} | {row['index']} | "
                         f"{row['build_s']} | {search['nprobe'] or '-'} | "
                         f"{search['queries_per_s']:,} | {search['recall_at_1']:.4f} | "
                         f"{row['rss_built_gib']} | {row['peak_rss_gib']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run every size in its own process, print the table and write the results file."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10 k and 100 k images, 1 k queries")
    parser.add_argument("--queries", type=int, default=10_000, help="queries searched")
    parser.add_argument("--recall-queries", type=int, default=2_000,
                        help="of which scored against exact search")
    parser.add_argument("--worker", nargs=4, type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(*args.worker)))
        return 0
    sizes, n_queries = (SIZES[:2], 1_000) if args.quick else (SIZES, args.queries)
    n_recall = min(n_queries, args.recall_queries)
    rows = []
    for n_images, n_identities in sizes:
        done = subprocess.run([sys.executable, __file__, "--worker", str(n_images),
                               str(n_identities), str(n_queries), str(n_recall)],
                              capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"the {n_images:,}-image run failed:\n{done.stderr}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
        print(_table(rows[-1:]).splitlines()[-1], flush=True)
    table = _table(rows)
    print(table)
    if not args.quick:
        command = " ".join(["python benchmarks/gallery.py",
                            *(argv if argv is not None else sys.argv[1:])])
        RESULTS.write_text(
            f"# Gallery search (`common.gallery.GalleryIndex`)\n\n`{command}` on "
            f"{platform.machine()}, {os.cpu_count()} CPU cores (shared), faiss "
            f"{_faiss_version()}; synthetic 512-d unit vectors as the script's docstring "
            f"describes, top-1 identity search (`aggregate=\"max\"`) of {n_queries:,} queries "
            f"in one call, recall@1 over the first {n_recall:,}.\n\n{table}\n")
    return 0


def _faiss_version() -> str:
    import faiss

    return faiss.__version__


if __name__ == "__main__":
    sys.exit(main())
