"""Benchmark train and inference images/s of every backbone the notebooks use, on this machine,
with one process and with several (one per GPU, or CPU processes sharing the cores).

Train is one full optimisation step through accelerate, as `common.train.fit` takes it (forward,
cross-entropy on a linear head, backward with DDP's gradient all-reduce when there are several
processes, AdamW; mixed precision on GPU); inference is a forward pass under
``torch.inference_mode`` (autocast on GPU). Every process works on its own batch, so the images/s
of a run are the sum over its processes. Several processes start through
`accelerate.notebook_launcher`, the notebooks' launcher. Weights are random
(``pretrained=False``): speed does not depend on them. Prints a markdown table and writes
``benchmarks/results/throughput.md``; on CPU these numbers set the profile's image size and batch.

    python benchmarks/throughput.py                               # all backbones at 112 px
    python benchmarks/throughput.py --processes 1 2 --backbones efficientfr convnext_atto
    python benchmarks/throughput.py --sizes 112 224 --batch 32 --backbones efficientfr
    python benchmarks/throughput.py --memory-formats contiguous channels_last  # the layout lever
    python benchmarks/throughput.py --kernels fast deterministic deterministic_fill

Throughput is the median over timed batches, so a burst of load from other processes on a shared
machine skews it less than a mean would; it still only ever makes numbers lower.

``--memory-formats`` compares the layouts of the weights (and so of every activation): NCHW
(``contiguous``) against NHWC (``channels_last``), which `common.config.memory_format` picks.
``--kernels`` compares torch's kernel modes: ``fast`` (no determinism asked), ``deterministic``
as `common.config.seed_everything` sets it on CPU, and ``deterministic_fill``, torch's own
deterministic mode, which also fills every new tensor before use.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from accelerate import notebook_launcher
from accelerate.utils import gather_object
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common.config import configure_threads  # noqa: E402  (needs the sys.path line above)
from common.models import create_backbone  # noqa: E402
from common.train import create_accelerator, free_port  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "throughput.md"
BACKBONES = ("efficientnet_lite0", "convnext_atto", "efficientnet_b3", "efficientnet_b4",
             "inception_resnet_v1", "efficientfr")
MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
KERNELS = {"fast": (False, False), "deterministic": (True, False),
           "deterministic_fill": (True, True)}  # (deterministic algorithms, fill new memory)


def with_layers_as(network: torch.nn.Module, layer: type, plain: type) -> torch.nn.Module:
    """A copy of `network` whose `layer` modules are the `plain` class they replace, for timing
    a project lever against what torch does without it."""
    copied = copy.deepcopy(network)
    for module in copied.modules():
        if type(module) is layer:
            module.__class__ = plain
    return copied


def training_step(network: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor
                  ) -> Callable[[], None]:
    """One step of `network` (train mode) on fixed `inputs`: cross-entropy, backward, AdamW."""
    network.train()
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)

    def step() -> None:
        loss = torch.nn.functional.cross_entropy(network(inputs), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def alternating_medians(steps: dict[str, Callable[[], None]], iters: int, rounds: int
                        ) -> dict[str, float]:
    """Median seconds per step of each variant, the variants alternating `rounds` times (one
    warm-up and `iters` timed steps each), so a burst of load hits them alike."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(rounds):
        for name, step in steps.items():
            times[name] += _step_seconds(step, iters, warmup=1)
    return {name: _median(t) for name, t in times.items()}


def median_seconds(step: Callable[[], None], iters: int, warmup: int) -> float:
    return _median(_step_seconds(step, iters, warmup))


def _step_seconds(step: Callable[[], None], iters: int, warmup: int) -> list[float]:
    """Seconds of each of `iters` timed calls of `step`, after `warmup` untimed ones."""
    for _ in range(warmup):
        step()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def _median(times: list[float]) -> float:
    return sorted(times)[len(times) // 2]


def compute_throughput(name: str, size: int, batch: int, iters: int, warmup: int,
                       memory_format: str = "contiguous", kernels: str = "fast"
                       ) -> dict[str, float]:
    """Train and inference images/s of backbone ``name`` at ``size`` px with batch ``batch`` per
    process, summed over the processes of this run (one when not launched), its weights in
    `memory_format` (a key of `MEMORY_FORMATS`), torch's kernels in mode `kernels` (`KERNELS`)."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    configure_threads(device)
    deterministic, fill = KERNELS[kernels]
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = fill
    accelerator = create_accelerator(device, amp=True)
    torch.manual_seed(accelerator.process_index)
    model, num_features = create_backbone(name, pretrained=False)
    network = torch.nn.Sequential(model, torch.nn.Linear(num_features, 2)).to(
        memory_format=MEMORY_FORMATS[memory_format])
    optimizer = torch.optim.AdamW(network.parameters(), lr=1e-4)
    training, optimizer = accelerator.prepare(network, optimizer)
    images = torch.randn(batch, 3, size, size, device=accelerator.device)
    labels = torch.randint(0, 2, (batch,), device=accelerator.device)

    def train_step() -> None:
        loss = torch.nn.functional.cross_entropy(training(images), labels)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    def infer_step() -> None:
        with torch.inference_mode(), accelerator.autocast():
            network(images)
        if device.type == "cuda":
            torch.cuda.synchronize()

    training.train()
    train_s = max(gather_object([median_seconds(train_step, iters, warmup)]))
    network.eval()
    infer_s = gather_object([median_seconds(infer_step, iters, warmup)])
    params = sum(p.numel() for p in model.parameters())
    return {"params_m": params / 1e6, "features": num_features, "device": device.type,
            "processes": accelerator.num_processes,
            "train_images_per_s": batch * accelerator.num_processes / train_s,
            "infer_images_per_s": sum(batch / seconds for seconds in infer_s)}


def _launched(args: tuple, output: str) -> None:
    """One process of a launched measurement; the main one writes the result to `output`."""
    result = compute_throughput(*args)
    if int(os.environ.get("RANK", "0")) == 0:
        Path(output).write_text(json.dumps(result))


def _measure(processes: int, args: tuple) -> dict[str, float]:
    """`compute_throughput(*args)` here, or on `processes` launched processes."""
    if processes == 1:
        return compute_throughput(*args)
    with tempfile.TemporaryDirectory() as folder:
        output = str(Path(folder) / "result.json")
        notebook_launcher(_launched, args=(args, output), num_processes=processes,
                          use_port=str(free_port()))
        return json.loads(Path(output).read_text())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[112], help="image sizes, px")
    parser.add_argument("--batch", type=int, default=32, help="images per process and step")
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES))
    parser.add_argument("--processes", type=int, nargs="+",
                        default=[1, max(1, torch.cuda.device_count())],
                        help="process counts to compare (default: 1 and one per GPU)")
    parser.add_argument("--iters", type=int, default=3, help="timed batches per measurement")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--memory-formats", nargs="+", default=["contiguous"],
                        choices=list(MEMORY_FORMATS), help="weight layouts to compare")
    parser.add_argument("--kernels", nargs="+", default=["fast"], choices=list(KERNELS),
                        help="torch kernel modes to compare")
    args = parser.parse_args(argv)

    malloc_env = " ".join(f"{k}={v}" for k, v in sorted(os.environ.items())
                          if k.startswith("MALLOC_") or k == "OMP_WAIT_POLICY") or "none"
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    command = " ".join(["python benchmarks/throughput.py", *(argv or sys.argv[1:])])
    lines = [f"# Backbone throughput on {device} ({os.cpu_count()} cores)", "",
             f"`{command}`", "",
             f"Batch {args.batch} per process, median of {args.iters} batches after "
             f"{args.warmup} warm-up; torch {torch.__version__}; malloc/OpenMP env: {malloc_env}. "
             "Images/s are summed over the processes; CPU processes share the cores (threads "
             "per process = cores / processes). The machine was shared with other processes, "
             "so treat the numbers as lower bounds.", "",
             "| backbone | params (M) | features | size | layout | kernels | processes | "
             "train img/s | infer img/s |", "|---|---|---|---|---|---|---|---|---|"]
    # A launch needs a parent that has not made an Accelerator yet: one process runs last.
    counts = sorted(set(args.processes), reverse=True)
    configs = [(processes, name, size, layout, kernels) for processes in counts
               for size in args.sizes for name in args.backbones
               for layout in args.memory_formats for kernels in args.kernels]
    rows = {}
    for processes, name, size, layout, kernels in tqdm(configs, desc="throughput"):
        rows[name, size, processes, layout, kernels] = _measure(
            processes, (name, size, args.batch, args.iters, args.warmup, layout, kernels))
    for name, size, processes, layout, kernels in sorted(rows, key=lambda key: (
            key[1], args.backbones.index(key[0]), key[2], args.memory_formats.index(key[3]),
            args.kernels.index(key[4]))):
        result = rows[name, size, processes, layout, kernels]
        lines.append(f"| {name} | {result['params_m']:.1f} | {result['features']} | {size} | "
                     f"{layout} | {kernels} | {processes} | {result['train_images_per_s']:.1f} | "
                     f"{result['infer_images_per_s']:.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text)


if __name__ == "__main__":
    main()
