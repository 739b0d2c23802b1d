"""Benchmark the input pipeline: JPEG decode + resize into the array cache, then DataLoader reads.

Measures images/s on the real FACECOM Task_B train images for
(a) `common.data.load_image_array` decoding and resizing from JPEG into a fresh cache
    (clean images, which include the up-to-1024 px studio shots, and the 224 px distorted ones),
    plus reopening the cached memmap;
(b) iterating a DataLoader over the cached memmap (`ImageArrayDataset`) with the train transform,
    the eval transform and no transform;
(c) the model's own forward+backward throughput at the same size and batch (random tensors), the
    loader/model ratio (goal >= 3: the loader is never the bottleneck) and whole training steps
    (DataLoader with the train transform feeding the model), so loader overhead is visible;
(d) the same for streaming (``image_cache="stream"``: `cache.ImageFiles` decodes each JPEG in
    the loader workers as it is read): time to the first batch, one epoch with the train
    transform, whole training steps, and the streamed loader/model ratio.
Prints a markdown table to stdout.

    python benchmarks/loader.py                                   # from the project root
    python benchmarks/loader.py /path/to/facecom --image-size 112 --batch-size 64 --workers 2
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.throughput import compute_throughput  # noqa: E402
from common import cache, data, transforms  # noqa: E402  (import after making the project importable)
from common.models import create_backbone  # noqa: E402
from common.config import make_generator, seed_worker  # noqa: E402

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "facecom"
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def _rate(count: int, seconds: float) -> str:
    return f"{count / seconds:,.0f}"


def _first_batch(images, labels, transform, batch_size: int, workers: int) -> float:
    """Seconds from building a DataLoader to holding its first batch (workers started)."""
    dataset = data.ImageArrayDataset(images, labels, transform)
    start = time.perf_counter()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                        worker_init_fn=seed_worker, generator=make_generator(0))
    next(iter(loader))
    return time.perf_counter() - start


def _loader_pass(images, labels, transform, batch_size: int, workers: int) -> tuple[int, float]:
    """One epoch through a DataLoader; returns (images seen, seconds incl. worker start-up)."""
    dataset = data.ImageArrayDataset(images, labels, transform)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                        worker_init_fn=seed_worker, generator=make_generator(0),
                        persistent_workers=False)
    start = time.perf_counter()
    seen = 0
    for batch, _ in loader:
        seen += batch.shape[0]
    return seen, time.perf_counter() - start


def _training_steps(images, labels, transform, backbone: str, batch_size: int, workers: int,
                    steps: int) -> tuple[int, float]:
    """`steps` real training steps fed by the DataLoader (after one warm-up step)."""
    model, num_features = create_backbone(backbone, pretrained=False)
    head = torch.nn.Linear(num_features, int(labels.max()) + 1)
    optimizer = torch.optim.AdamW(list(model.parameters()) + list(head.parameters()), lr=1e-4)
    dataset = data.ImageArrayDataset(images, labels, transform)
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                        worker_init_fn=seed_worker, generator=make_generator(0))
    seen, start = 0, None
    for step, (batch, target) in enumerate(loader):
        if step == 1:
            start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(head(model(batch)), target.long())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += batch.shape[0] if step >= 1 else 0
        if step == steps:
            break
    return seen, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data_dir", nargs="?", default=str(DEFAULT_DATA_DIR),
                        help="FACECOM root holding Task_B/train (default ../shared/data/facecom)")
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    parser.add_argument("--decode-threads", type=int, default=None,
                        help="threads for load_image_array (default: number of CPUs)")
    parser.add_argument("--backbone", default="efficientnet_lite0",
                        help="model whose training throughput the loader is compared with")
    parser.add_argument("--steps", type=int, default=10, help="whole training steps to time")
    args = parser.parse_args()

    torch.set_num_threads(1)  # match DataLoader workers, which each use one thread
    table = data.read_task_b(args.data_dir, "train")
    clean = table[table["distortion"] == "clean"]
    distorted = table[table["distortion"] != "clean"]
    size = args.image_size
    rows = []
    with tempfile.TemporaryDirectory() as cache_dir:
        arrays = {}
        for name, part in (("clean (250 px LFW + up to 1024 px studio)", clean),
                           ("distorted (224 px)", distorted)):
            start = time.perf_counter()
            arrays[name] = data.load_image_array(part["path"].tolist(), size, cache_dir=cache_dir,
                                                 workers=args.decode_threads, progress=False)
            seconds = time.perf_counter() - start
            rows.append((f"(a) decode + resize JPEG -> cache, {name}", len(part), seconds))
        start = time.perf_counter()
        images = data.load_image_array(distorted["path"].tolist(), size, cache_dir=cache_dir)
        labels = distorted["identity"].astype("category").cat.codes.to_numpy()
        rows.append(("(a) reopen cached memmap (cache hit), distorted", len(distorted),
                     time.perf_counter() - start))
        pipelines = (("train transform", transforms.create_train_transform(
                          size, IMAGENET_MEAN, IMAGENET_STD, seed=0)),
                     ("eval transform", transforms.create_eval_transform(
                          size, IMAGENET_MEAN, IMAGENET_STD)),
                     ("no transform", None))
        for name, transform in pipelines:
            seen, seconds = _loader_pass(images, labels, transform, args.batch_size, args.workers)
            rows.append((f"(b) memmap + {name}, DataLoader batch {args.batch_size}, "
                         f"{args.workers} workers", seen, seconds))
        loader_rate = rows[-3][1] / rows[-3][2]  # memmap + train transform
        torch.set_num_threads(len(os.sched_getaffinity(0)))
        model_rate = compute_throughput(args.backbone, size, args.batch_size, iters=5,
                                        warmup=1)["train_images_per_s"]
        rows.append((f"(c) {args.backbone} forward+backward alone, batch {args.batch_size}",
                     args.batch_size, args.batch_size / model_rate))
        seen, seconds = _training_steps(images, labels, pipelines[0][1], args.backbone,
                                        args.batch_size, args.workers, args.steps)
        rows.append((f"(c) whole training step: DataLoader (train transform, {args.workers} "
                     f"workers) + {args.backbone}", seen, seconds))
        streamed = cache.ImageFiles(distorted["path"].tolist(), size)
        train_transform = pipelines[0][1]
        rows.append((f"(d) streamed: first batch of {args.batch_size} ({args.workers} workers "
                     "started)", args.batch_size,
                     _first_batch(streamed, labels, train_transform, args.batch_size,
                                  args.workers)))
        seen, seconds = _loader_pass(streamed, labels, train_transform, args.batch_size,
                                     args.workers)
        rows.append((f"(d) streamed files + train transform, DataLoader batch {args.batch_size}, "
                     f"{args.workers} workers", seen, seconds))
        stream_rate = seen / seconds
        seen, seconds = _training_steps(streamed, labels, train_transform, args.backbone,
                                        args.batch_size, args.workers, args.steps)
        rows.append((f"(d) whole training step, streamed: DataLoader ({args.workers} workers) + "
                     f"{args.backbone}", seen, seconds))
        cache_mb = sum(os.path.getsize(p) for p in Path(cache_dir).iterdir()) / 2**20

    cpus = len(os.sched_getaffinity(0))
    load = os.getloadavg()[0]
    print(f"\nLoader benchmark: {args.data_dir}, {size} px, {cpus} CPUs (1-min load {load:.1f}: "
          f"other processes slow every row), cache {cache_mb:,.0f} MB\n")
    print("| stage | images | seconds | images/s |")
    print("|---|---:|---:|---:|")
    for name, count, seconds in rows:
        print(f"| {name} | {count:,} | {seconds:.2f} | {_rate(count, seconds)} |")
    print(f"\nloader (train transform) / model training throughput: "
          f"{loader_rate / model_rate:.1f}x cached, {stream_rate / model_rate:.1f}x streamed "
          "(goal >= 3)")


if __name__ == "__main__":
    main()
