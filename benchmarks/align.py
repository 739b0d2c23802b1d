"""Benchmark `common.faces.align_faces`: images/s (detect and cache) and MTCNN detection rates.

Runs on a seeded random sample of N clean and N distorted real FACECOM Task_B train images, each
into a fresh temporary cache, twice (first run detects, second run reads the cache), and prints
markdown tables to stdout: throughput per set, detection rate per image kind and per distortion.

    python benchmarks/align.py --n 200                     # from the project root
    python benchmarks/align.py --data-dir /path/to/facecom --image-size 160
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import faces  # noqa: E402  (import after making the project importable)

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "facecom"
DISTORTIONS = ("blurred", "foggy", "lowlight", "noisy", "rainy", "resized", "sunny")


def _sample_paths(data_dir: Path, count: int, seed: int) -> dict[str, list[Path]]:
    """Seeded random sample of `count` clean and `count` distorted Task_B train images."""
    train = data_dir / "Task_B" / "train"
    if not train.is_dir():
        raise FileNotFoundError(f"No Task_B/train under {data_dir}; pass --data-dir pointing at "
                                "the FACECOM root (the folder holding Task_A and Task_B).")
    rng = np.random.default_rng(seed)
    sets = {"clean": sorted(train.glob("*/*.jpg")),
            "distorted": sorted(train.glob("*/distortion/*.jpg"))}
    return {name: [paths[i] for i in sorted(rng.choice(len(paths), min(count, len(paths)),
                                                         replace=False))]
            for name, paths in sets.items()}


def _kind(path: Path) -> str:
    """`studio` for NNN_frontal identities, `lfw` otherwise; distorted ones add their type."""
    identity = path.parent.parent.name if path.parent.name == "distortion" else path.parent.name
    source = "studio" if identity.endswith("_frontal") else "lfw"
    if path.parent.name != "distortion":
        return source
    distortion = next((d for d in DISTORTIONS if path.stem.endswith(f"_{d}")), "unknown")
    return f"{source}/{distortion}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                        help="FACECOM root (default: ../shared/data/facecom)")
    parser.add_argument("--n", type=int, default=200, help="images per set (clean, distorted)")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    samples = _sample_paths(args.data_dir, args.n, args.seed)
    print(f"align_faces benchmark: image_size={args.image_size}, batch_size={args.batch_size}, "
          f"device={args.device}, torch threads={torch.get_num_threads()}\n")
    print("| set | images | detect s | detect img/s | cache s | cache img/s | detection rate "
          "| fallbacks | mean box px |")
    print("|---|---|---|---|---|---|---|---|---|")
    kinds: dict[str, list[bool]] = {}
    for name, paths in samples.items():
        with tempfile.TemporaryDirectory() as cache_dir:
            timings = []
            for _ in range(2):
                start = time.perf_counter()
                result = faces.align_faces(paths, image_size=args.image_size, cache_dir=cache_dir,
                                           device=args.device, batch_size=args.batch_size,
                                           progress=False)
                timings.append(time.perf_counter() - start)
        stats = faces.compute_alignment_stats(result)
        print(f"| {name} | {len(paths)} | {timings[0]:.2f} | {len(paths) / timings[0]:.1f} "
              f"| {timings[1]:.3f} | {len(paths) / timings[1]:.0f} | {stats['detection_rate']:.3f} "
              f"| {stats['n_fallback']} | {stats['mean_box_size_px']:.0f} |")
        for path, found in zip(paths, result.found):
            kinds.setdefault(_kind(path), []).append(bool(found))

    print("\n| kind | images | detection rate |")
    print("|---|---|---|")
    for kind in sorted(kinds):
        print(f"| {kind} | {len(kinds[kind])} | {np.mean(kinds[kind]):.3f} |")


if __name__ == "__main__":
    main()
