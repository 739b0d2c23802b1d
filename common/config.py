"""Run-wide settings that depend on the machine: device, memory layout, hardware profile,
threads, seeding.

Resolved here once, so notebooks only pass literals and the rest of `common` never guesses.
Where files go is `common.workspace`; where the data is, `common.discovery`.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

__all__ = [
    "PROFILES", "Profile", "seed_everything", "seed_worker", "make_generator", "resolve_device",
    "memory_format", "place", "resolve_profile", "cpu_count", "configure_threads",
    "seedable_transforms", "process_context", "rng_state", "set_rng_state", "rng_state_kept",
]


@dataclass(frozen=True)
class Profile:
    """Hardware profile: the sizes that make a default recipe fit the machine.

    The CPU numbers were chosen so that every training notebook finishes on the real FACECOM
    train split within 30 minutes on a 2-core CPU (see benchmarks/); the GPU ones follow the
    hackathon entries.
    """

    name: str
    image_size: int
    batch_size: int
    num_workers: int
    amp: bool


PROFILES = {
    "cpu": Profile("cpu", image_size=112, batch_size=64, num_workers=2, amp=False),
    "gpu": Profile("gpu", image_size=224, batch_size=64, num_workers=4, amp=True),
}


def seed_everything(seed: int, deterministic: bool = True) -> None:
    """Seed Python, NumPy and torch, and ask torch for deterministic kernels or, with
    ``deterministic=False``, for the fastest ones (cuDNN autotuning).

    Two CPU runs with the same seed then give identical metrics (tests/test_train.py).
    Deterministic mode would also fill every new tensor with NaN before use (torch's
    ``fill_uninitialized_memory``, a debugging aid that changes no result of a correct
    kernel); on an allocation-bound CPU that writing is a large share of a training step, so
    it is turned off (benchmarks/throughput.py --kernels).
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    os.environ["PYTHONHASHSEED"] = str(seed)
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = False


def rng_state() -> dict:
    """Python, NumPy, torch (and CUDA) RNG states as tensors and plain types, which
    ``torch.load(weights_only=True)`` reads back (`train.fit`'s resume states)."""
    name, key, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": (name, torch.from_numpy(key.astype(np.int64)), int(pos), int(has_gauss),
                       float(gauss)),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` returned."""
    random.setstate(state["python"])
    name, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def rng_state_kept() -> Iterator[None]:
    """Run a block that may draw from the global random streams (building a network before its
    weights are loaded draws its initial weights) and leave them as they were: work done only
    when a cache is cold must not change what a run draws after it."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def seedable_transforms(obj: object, depth: int = 4) -> list:
    """Transforms with `set_random_seed` reachable from a dataset (through Subset/wrappers)."""
    found = []
    if depth < 0 or obj is None:
        return found
    transform = getattr(obj, "transform", None)
    if hasattr(transform, "set_random_seed"):
        found.append(transform)
    for value in vars(obj).values() if hasattr(obj, "__dict__") else ():
        if isinstance(value, torch.utils.data.Dataset):
            found += seedable_transforms(value, depth - 1)
    return found


def seed_worker(worker_id: int) -> None:
    """DataLoader `worker_init_fn`: derive NumPy/random seeds from torch's per-worker seed.

    albumentations keeps its own generators, copied as-is into forked workers, so they are
    re-seeded too; otherwise every worker would repeat the same augmentations.
    """
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)
    info = torch.utils.data.get_worker_info()
    if info is not None:
        for transform in seedable_transforms(info.dataset):
            transform.set_random_seed(worker_seed)


def make_generator(seed: int) -> torch.Generator:
    """A seeded generator for DataLoader shuffling, independent of the global RNG."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    return generator


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` picks CUDA when present, else CPU; an explicit `cuda` without a GPU is an error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={device!r} was requested but CUDA is not available; "
                           "use device='auto' or 'cpu'.")
    return torch.device(device)


def memory_format(device: torch.device | str) -> torch.memory_format:
    """The layout of convolution weights (and so of their activations) on `device`: NHWC on CPU,
    where oneDNN's convolutions take their fast path with it (`benchmarks/throughput.py
    --memory-formats`); torch's default elsewhere, which is the path the GPU runs were timed on."""
    return torch.channels_last if torch.device(device).type == "cpu" else torch.contiguous_format


def place(model: torch.nn.Module, device: torch.device | str) -> torch.nn.Module:
    """`model` moved to `device` in its `memory_format` (in place, returned for chaining): the
    one way a network reaches the device it trains or runs on. Inputs need no conversion, a
    convolution follows its weights' layout."""
    return model.to(device, memory_format=memory_format(device))


def resolve_profile(profile: str = "auto", device: torch.device | None = None) -> Profile:
    """`auto` is `gpu` when the run's `device` is CUDA (without one: when CUDA is present), else
    `cpu`: ``device="cpu"`` on a GPU machine must not get the GPU recipe's sizes."""
    if profile == "auto":
        on_gpu = device.type == "cuda" if device is not None else torch.cuda.is_available()
        profile = "gpu" if on_gpu else "cpu"
    if profile not in PROFILES:
        raise ValueError(f"Unknown profile {profile!r}; choose one of {sorted(PROFILES)} or 'auto'.")
    return PROFILES[profile]


def cpu_count() -> int:
    """CPUs this process may use (the affinity mask in containers, else os.cpu_count())."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def configure_threads(device: torch.device) -> int:
    """On CPU use every core for intra-op work (torch's default can be 1 inside containers),
    shared out between the processes of a launched run (``LOCAL_WORLD_SIZE``, set by
    accelerate's launchers), which would otherwise each start one thread per core."""
    if device.type == "cpu":
        processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        torch.set_num_threads(max(1, cpu_count() // processes))
    return torch.get_num_threads()


_fork_server_owner: int | None = None  # the process that started the fork server
_preloaded: list[str] = []  # the modules the fork server imports before it forks


def process_context(preload: str) -> multiprocessing.context.BaseContext:
    """How `common` starts helper processes: where the platform has it, a fork server that
    imported `preload` (and the modules asked for before it started) once, so each process
    starts in milliseconds, not in the seconds a new Python takes to import torch. Not a plain
    fork: DataLoader workers and threads may hold SQLite or Pillow locks, which a fork copies
    locked. Elsewhere (Windows), and in a process forked from the server's owner (a launched
    training process: multiprocessing would wait on a server that is not its child and fail),
    a spawned process. As with any start but fork, a script (not a notebook) that starts them
    must guard its entry point with ``if __name__ == "__main__":``.

    Args:
        preload: the module whose functions the processes run.
    """
    global _fork_server_owner
    if ("forkserver" not in multiprocessing.get_all_start_methods()
            or _fork_server_owner not in (None, os.getpid())):
        return multiprocessing.get_context("spawn")
    _fork_server_owner = os.getpid()
    if preload not in _preloaded:
        _preloaded.append(preload)
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(_preloaded))
    return context
