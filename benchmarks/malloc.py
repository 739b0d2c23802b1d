"""Benchmark malloc/OpenMP settings and cheap PyTorch options for efficientnet_lite0 on CPU.

PyTorch frees and re-allocates the same large activation buffers every batch. With glibc's
defaults those above the (dynamic) mmap threshold are mmap'd and unmapped each time, and freed heap
tops are trimmed back to the OS, so every batch pays fresh page faults. Raising
``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` keeps the memory in the heap. The
variables are read once at process start, so every configuration runs in its own subprocess
(this script re-invoked with ``--worker``); the main process prints a markdown table and writes
``benchmarks/results/malloc.md``.

    python benchmarks/malloc.py                       # full grid, ~10 min on 2 cores
    python benchmarks/malloc.py --iters 3 --repeats 1 # quicker, noisier

Throughput is the median over timed batches, best over repeats (other processes on a shared
machine only ever slow a run down).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "malloc.md"
LARGE = str(1 << 30)  # 1 GiB: above any activation buffer lite0 allocates here
ENVS = {
    "default": {},
    "mmap+trim": {"MALLOC_MMAP_THRESHOLD_": LARGE, "MALLOC_TRIM_THRESHOLD_": LARGE},
    "mmap+trim+arena2": {"MALLOC_MMAP_THRESHOLD_": LARGE, "MALLOC_TRIM_THRESHOLD_": LARGE,
                         "MALLOC_ARENA_MAX": "2"},
    # libgomp threads spin while waiting; when other processes hold the cores the spinning
    # thread starves the working one. PASSIVE makes waiting threads sleep instead.
    "mmap+trim+passive": {"MALLOC_MMAP_THRESHOLD_": LARGE, "MALLOC_TRIM_THRESHOLD_": LARGE,
                          "OMP_WAIT_POLICY": "PASSIVE"},
}
# Options on top of an environment; each is a worker flag set.
OPTIONS = {
    "": [],
    "no_grad": ["--no-grad"],
    "threads=1": ["--threads", "1"],
    "channels_last": ["--channels-last"],
    "bf16": ["--bf16"],
}


def _worker(args: argparse.Namespace) -> None:
    """Time one configuration in this process and print one JSON line."""
    import torch

    sys.path.insert(0, str(ROOT))
    from common.models import create_backbone

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, num_features = create_backbone("efficientnet_lite0", pretrained=False)
    head = torch.nn.Linear(num_features, 2)
    images = torch.randn(args.batch, 3, args.size, args.size)
    labels = torch.randint(0, 2, (args.batch,))
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    params = list(model.parameters()) + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    autocast = (torch.autocast("cpu", dtype=torch.bfloat16) if args.bf16 else nullcontext())

    def step() -> None:
        if args.mode == "train":
            model.train()
            with autocast:
                loss = torch.nn.functional.cross_entropy(head(model(images)), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        else:
            model.eval()
            grad_context = torch.no_grad() if args.no_grad else torch.inference_mode()
            with grad_context, autocast:
                head(model(images))

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.iters):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    times.sort()
    median = times[len(times) // 2]
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"images_per_s": args.batch / median, "peak_rss_mb": peak_mb,
                      "threads": torch.get_num_threads()}))


def _run(mode: str, size: int, batch: int, env_name: str, option: str,
         args: argparse.Namespace) -> dict:
    """Run one configuration in a fresh interpreter with its malloc environment."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MALLOC_") and k != "OMP_WAIT_POLICY"}
    env.update(ENVS[env_name])
    command = [sys.executable, __file__, "--worker", "--mode", mode, "--size", str(size),
               "--batch", str(batch), "--iters", str(args.iters), "--warmup",
               str(args.warmup), *OPTIONS[option]]
    result = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"worker failed ({' '.join(command)}):\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _grid(args: argparse.Namespace) -> list[tuple[str, int, int, str, str]]:
    rows = [("infer", size, batch, env, "") for size in args.sizes for batch in args.batches
            for env in ENVS]
    largest_batch = max(args.batches)
    # Options are tried at the CPU profile's size only, on top of the malloc settings.
    rows += [("infer", min(args.sizes), largest_batch, "mmap+trim+passive", option)
             for option in OPTIONS if option]
    rows += [("train", min(args.sizes), largest_batch, env, "")
             for env in ("default", "mmap+trim", "mmap+trim+passive")]
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[112, 224])
    parser.add_argument("--batches", type=int, nargs="+", default=[32, 64])
    parser.add_argument("--iters", type=int, default=5, help="timed batches per run")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=2, help="runs per configuration")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="infer", choices=("infer", "train"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=112, help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=32, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--no-grad", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--channels-last", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bf16", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        _worker(args)
        return

    from tqdm import tqdm

    grid = _grid(args)
    best: dict[tuple, dict] = {}
    # Repeats go round the whole grid, so a burst of load from other processes hits one run of
    # each configuration rather than every run of one.
    for _ in range(args.repeats):
        for config in tqdm(grid, desc="malloc benchmark"):
            result = _run(*config, args)
            if config not in best or result["images_per_s"] > best[config]["images_per_s"]:
                best[config] = result

    lines = [f"# efficientnet_lite0 CPU throughput vs malloc settings ({os.cpu_count()} cores)",
             "", f"LARGE = {LARGE}. Median of {args.iters} batches after {args.warmup} warm-up, "
             f"best of {args.repeats} runs; other processes shared the machine, so treat "
             "differences below ~10 % as noise.", "",
             "| mode | size | batch | env | option | images/s | vs default | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|"]
    for (mode, size, batch, env, option), result in best.items():
        baseline = best[(mode, size, batch, "default", "")]["images_per_s"]  # always in grid
        lines.append(f"| {mode} | {size} | {batch} | {env} | {option or '-'} | "
                     f"{result['images_per_s']:.1f} | {result['images_per_s'] / baseline:.2f}x | "
                     f"{result['peak_rss_mb']:.0f} |")
    env_lines = [f"- {name}: " + (" ".join(f"{k}={v}" for k, v in env.items()) or "(none)")
                 for name, env in ENVS.items()]
    text = "\n".join(lines + ["", "Environments:", *env_lines]) + "\n"
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
