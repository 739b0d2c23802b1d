"""One training loop for every notebook: epochs, dev selection, early stopping, checkpoint, resume.

The loop knows nothing about tasks. A notebook hands it three callables:
- ``make_loader(epoch)`` returns that epoch's DataLoader (seeded by epoch, so a resumed run sees
  the same batches, and Siamese pairs can be re-sampled every epoch);
- ``compute_loss(model, batch)`` returns the scalar loss of one batch;
- ``evaluate(model)`` returns the dev metrics used for checkpoint selection.

Resume state (model, optimiser, scheduler, AMP scaler, RNG states, epoch, step within the epoch,
best metric, history) is written atomically at every epoch end and when the run is interrupted
(KeyboardInterrupt or SIGTERM). A resumed run replays the interrupted epoch's loader up to the
saved step without computing, so on CPU it ends with exactly the metrics of an uninterrupted run.
"""
from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

__all__ = ["FitResult", "TrainingInterrupted", "fit", "move_to", "predict_batches",
           "atomic_save", "load_resume_state"]

Batch = Any


class TrainingInterrupted(RuntimeError):
    """Raised after the resume state was saved because training was interrupted."""


@dataclass
class FitResult:
    """What `fit` returns: per-epoch history and the selected (best) epoch."""

    history: list[dict] = field(default_factory=list)
    best_metric: float = -math.inf
    best_epoch: int = -1
    stopped_early: bool = False
    resumed_from_epoch: int | None = None
    wall_time_s: float = 0.0


def atomic_save(obj: Any, path: Path) -> None:
    """`torch.save` to a temp file in the same folder, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def move_to(batch: Batch, device: torch.device) -> Batch:
    """Move tensors inside nested tuples/lists/dicts to `device`."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(item, device) for item in batch)
    if isinstance(batch, dict):
        return {key: move_to(value, device) for key, value in batch.items()}
    return batch


def _rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_resume_state(path: Path) -> dict | None:
    """The saved resume state, or None when there is none to resume from."""
    path = Path(path)
    if not path.exists():
        return None
    return torch.load(path, map_location="cpu", weights_only=False)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Kaggle and batch schedulers stop jobs with SIGTERM: treat it like Ctrl-C so state is saved."""
    def handler(signum, frame):  # noqa: ARG001 - signal API
        raise KeyboardInterrupt(f"signal {signum}")

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not in the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _improved(value: float, best: float, mode: str) -> bool:
    return value > best if mode == "max" else value < best


def fit(
    model: nn.Module,
    *,
    make_loader: Callable[[int], DataLoader],
    compute_loss: Callable[[nn.Module, Batch], torch.Tensor],
    evaluate: Callable[[nn.Module], dict],
    optimizer: torch.optim.Optimizer,
    epochs: int,
    resume_path: Path,
    best_path: Path,
    scheduler: Any = None,
    scheduler_interval: str = "epoch",
    monitor: str = "f1_macro",
    mode: str = "max",
    patience: int | None = None,
    device: torch.device | str = "cpu",
    amp: bool = False,
    grad_clip: float | None = None,
    resume: bool = False,
    stop_after_steps: int | None = None,
    progress: bool = True,
) -> FitResult:
    """Train `model`, keep the best dev checkpoint, stop early, and survive interruption.

    Args:
        make_loader: epoch -> DataLoader for that epoch (seed it with the epoch for resumability).
        compute_loss: (model, batch already on device) -> scalar loss.
        evaluate: model -> dev metrics dict; must contain `monitor`. Runs under `torch.no_grad`.
        scheduler_interval: "epoch" (ReduceLROnPlateau gets the monitored value) or "step".
        patience: epochs without improvement before stopping; None disables early stopping.
        resume: continue from `resume_path` when it exists (else start fresh).
        stop_after_steps: simulate an interruption after this many optimiser steps (tests).

    Returns:
        FitResult; the best weights are in `best_path` (state dict only, deployable) and
        the model is left holding them.

    Raises:
        TrainingInterrupted: after saving the resume state on Ctrl-C / SIGTERM.
    """
    device = torch.device(device)
    use_amp = amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    result = FitResult()
    start_epoch, skip_steps, global_step = 0, 0, 0
    epochs_without_improvement = 0
    resume_path, best_path = Path(resume_path), Path(best_path)
    best_metric = -math.inf if mode == "max" else math.inf
    running = {"loss": 0.0, "batches": 0}  # this epoch's loss so far, kept across a resume

    state = load_resume_state(resume_path) if resume else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        start_epoch, skip_steps = state["epoch"], state["step_in_epoch"]
        global_step = state["global_step"]
        best_metric = state["best_metric"]
        epochs_without_improvement = state["epochs_without_improvement"]
        result.history = state["history"]
        result.best_epoch = state["best_epoch"]
        result.resumed_from_epoch = start_epoch
        running.update(state["running"])
        print(f"Resuming from {resume_path}: epoch {start_epoch + 1}, step {skip_steps}")
    elif resume:
        print(f"resume=True but no resume state at {resume_path}: starting from scratch")

    def save_resume(epoch: int, step_in_epoch: int) -> None:
        atomic_save({
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": scaler.state_dict(), "rng": _rng_state(), "epoch": epoch,
            "step_in_epoch": step_in_epoch, "global_step": global_step,
            "best_metric": best_metric, "best_epoch": result.best_epoch,
            "epochs_without_improvement": epochs_without_improvement,
            "history": result.history, "running": dict(running),
        }, resume_path)

    started = time.perf_counter()
    model.to(device)
    epoch = start_epoch
    step = skip_steps
    with _sigterm_as_interrupt():
        try:
            for epoch in range(start_epoch, epochs):
                model.train()
                loader = make_loader(epoch)
                if skip_steps == 0:
                    running.update(loss=0.0, batches=0)
                bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}", disable=not progress,
                           leave=False)
                for step, batch in enumerate(bar):
                    if step < skip_steps:  # replay the loader up to where the run stopped
                        continue
                    if stop_after_steps is not None and global_step >= stop_after_steps:
                        raise KeyboardInterrupt("stop_after_steps reached")
                    batch = move_to(batch, device)
                    optimizer.zero_grad(set_to_none=True)
                    with torch.autocast(device.type, enabled=use_amp):
                        loss = compute_loss(model, batch)
                    if not torch.isfinite(loss):
                        raise FloatingPointError(
                            f"Non-finite loss {loss.item()} at epoch {epoch + 1}, step {step}; "
                            "lower the learning rate or disable AMP.")
                    scaler.scale(loss).backward()
                    if grad_clip is not None:
                        scaler.unscale_(optimizer)
                        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                    if scheduler is not None and scheduler_interval == "step":
                        scheduler.step()
                    global_step += 1
                    running["loss"] += loss.item()
                    running["batches"] += 1
                    bar.set_postfix(loss=f"{running['loss'] / running['batches']:.4f}")
                skip_steps = 0
                step = 0

                model.eval()
                with torch.no_grad():
                    metrics = evaluate(model)
                if monitor not in metrics:
                    raise KeyError(f"evaluate() returned {sorted(metrics)} but monitor={monitor!r}")
                value = float(metrics[monitor])
                if scheduler is not None and scheduler_interval == "epoch":
                    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                        scheduler.step(value)
                    else:
                        scheduler.step()
                row = {"epoch": epoch + 1,
                       "train_loss": running["loss"] / max(running["batches"], 1),
                       "lr": optimizer.param_groups[0]["lr"],
                       **{f"dev_{key}": val for key, val in metrics.items()
                          if isinstance(val, (int, float))}}
                result.history.append(row)
                if _improved(value, best_metric, mode):
                    best_metric, result.best_epoch = value, epoch + 1
                    epochs_without_improvement = 0
                    atomic_save(model.state_dict(), best_path)
                else:
                    epochs_without_improvement += 1
                print(f"epoch {epoch + 1}/{epochs}  loss {row['train_loss']:.4f}  "
                      f"dev {monitor} {value:.4f}  best {best_metric:.4f} (epoch {result.best_epoch})")
                save_resume(epoch + 1, 0)
                if patience is not None and epochs_without_improvement >= patience:
                    result.stopped_early = True
                    print(f"Early stopping: no dev {monitor} improvement for {patience} epochs")
                    break
        except KeyboardInterrupt as interrupt:
            save_resume(epoch, step)
            raise TrainingInterrupted(
                f"Training interrupted at epoch {epoch + 1}, step {step} ({interrupt}); state saved "
                f"to {resume_path}. Re-run with resume=True to continue.") from interrupt

    result.best_metric = best_metric
    result.wall_time_s = time.perf_counter() - started
    if best_path.exists():
        model.load_state_dict(torch.load(best_path, map_location=device, weights_only=True))
    return result


def predict_batches(model: nn.Module | Callable, loader: DataLoader,
                    device: torch.device | str = "cpu", progress: bool = True,
                    desc: str = "predict") -> torch.Tensor:
    """Run `model` over a loader of (inputs, ...) batches and concatenate the outputs on CPU.

    The first element of each batch is the model input (a tensor or a tuple for two-stream models).
    """
    outputs = []
    if isinstance(model, nn.Module):
        model.eval()
    with torch.no_grad():
        for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
            inputs = move_to(batch[0], device)
            out = model(*inputs) if isinstance(inputs, (list, tuple)) else model(inputs)
            outputs.append(out.float().cpu())
    return torch.cat(outputs) if outputs else torch.empty(0)
