"""One training loop for every notebook: epochs, dev selection, early stopping, checkpoint, resume,
on one device or one process per device through Hugging Face accelerate.

The loop knows nothing about tasks. A notebook hands it three callables:
- ``make_loader(epoch)`` returns that epoch's DataLoader (seeded by epoch, so a resumed run sees
  the same batches, and Siamese pairs can be re-sampled every epoch); it is always called with
  the model holding its weights from the start of that epoch, so it may embed with it;
- ``compute_loss(model, batch)`` returns the scalar loss of one batch;
- ``evaluate(model)`` returns the dev metrics used for checkpoint selection.

Resume state (model, optimiser, scheduler, AMP scaler, RNG states, epoch, step within the epoch,
best metric, history, the caller's fingerprint) is written atomically at every epoch end and when
the run stops on an exception, Ctrl-C or SIGTERM. It always describes the last consistent point
(after a whole optimiser step or a whole epoch end), wherever the run stopped: in `evaluate`,
in the loader, in the replay. A resumed run replays the interrupted epoch's loader up to the
saved step without computing, so on CPU it ends with exactly the weights of an uninterrupted run.

Several processes (`accelerate.notebook_launcher`, ``accelerate launch``) each run `fit` on
their shard of every training loader; the model and the caller's loss are wrapped in one module
whose ``forward`` is the loss, so DDP synchronises every gradient however the model computes it
(``model.loss(...)``, ``embed_learned``). `predict_batches` splits its rows between the
processes and gathers the outputs, so `evaluate` sees the whole dev split, each row once, on every
process, and they all take the same selection and early-stopping decisions. Only the main process
writes the resume state and the best weights.
"""
from __future__ import annotations

import math
import os
import socket
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from accelerate import (Accelerator, DistributedDataParallelKwargs, PartialState,
                        notebook_launcher)
from accelerate.data_loader import BatchSamplerShard
from accelerate.utils import gather_object
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from common.config import place, rng_state, set_rng_state
from common.resume import (RESUME_MODES, Interruptions, ResumeStateError, check_fingerprint,
                           load_resume_state)

__all__ = ["FitResult", "TrainingInterrupted", "fit", "move_to", "predict_batches",
           "atomic_save", "mixed_precision", "create_accelerator", "is_main_process",
           "free_port"]

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


def mixed_precision(device: torch.device | str, amp: bool) -> str:
    """accelerate's mixed-precision mode: "bf16" on a GPU that has it (no loss scaling needed),
    "fp16" on one that has not (T4), "no" on CPU or without `amp`."""
    if not amp or torch.device(device).type != "cuda":
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def create_accelerator(device: torch.device | str = "cpu", amp: bool = False) -> Accelerator:
    """The `Accelerator` `fit` trains with: this process's device (one per process when launched
    with several), `mixed_precision`, and DDP told to look for unused parameters, since a loss
    may skip part of a model (a backbone's pooling head behind a spatial head)."""
    return Accelerator(cpu=torch.device(device).type == "cpu",
                       mixed_precision=mixed_precision(device, amp),
                       kwargs_handlers=[DistributedDataParallelKwargs(
                           find_unused_parameters=True)])


def is_main_process() -> bool:
    """Whether this process writes the run's files (always, without a process group)."""
    return not _distributed() or PartialState().is_main_process


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class _TrainingStep(nn.Module):
    """The model and the caller's loss as one module whose ``forward`` is the loss: DDP only
    synchronises gradients of computations that run inside the wrapped module's ``forward``."""

    def __init__(self, model: nn.Module, compute_loss: Callable[[nn.Module, Batch], torch.Tensor]
                 ) -> None:
        super().__init__()
        self.model = model
        self.compute_loss = compute_loss

    def forward(self, batch: Batch) -> torch.Tensor:
        """The scalar loss of one batch (already on the device)."""
        return self.compute_loss(self.model, batch)


def _cpu_copy(model: nn.Module) -> dict[str, torch.Tensor]:
    return {key: value.detach().to("cpu", copy=True) for key, value in model.state_dict().items()}


def _improved(value: float, best: float, mode: str) -> bool:
    return value > best if mode == "max" else value < best


def _plain(value: Any) -> Any:
    """NumPy scalars (a NumPy-computed learning rate, a dev metric) as the Python numbers they
    equal exactly, so the resume state loads with ``weights_only=True``."""
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(item) for item in value)
    if isinstance(value, np.generic):
        return value.item()
    return value


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
    resume: bool | str = False,
    fingerprint: dict | None = None,
    progress: bool = True,
    gradient_accumulation_steps: int = 1,
    num_processes: int = 1,
) -> FitResult:
    """Train `model`, keep the best dev checkpoint, stop early, and survive interruption.

    Args:
        make_loader: epoch -> DataLoader for that epoch (seed it with the epoch for resumability);
            each process of a launched run iterates its own shard of it.
        compute_loss: (model, batch already on device) -> scalar loss; it receives `model`
            itself, never the DDP wrapper, and runs inside the wrapper's ``forward``.
        evaluate: model -> dev metrics dict; must contain `monitor`. Runs under `torch.no_grad`
            on every process (use `predict_batches`, which covers each dev row once in all).
        scheduler_interval: "epoch" (ReduceLROnPlateau gets the monitored value) or "step".
        patience: epochs without improvement before stopping; None disables early stopping.
        device, amp: the device and mixed precision of the run (`create_accelerator`).
        resume: True continues from `resume_path` when it exists (else starts fresh) and only
            when it was written with the same `fingerprint`; "force" continues even when not.
        fingerprint: nested dict of plain values saying what the run is (settings, data
            hashes); stored in the resume state and compared on resume.
        gradient_accumulation_steps: batches per optimiser step (a larger effective batch);
            an epoch's last group may be shorter and still steps.
        num_processes: above 1, `fit` launches itself on that many processes with
            `accelerate.notebook_launcher` (forked: the callables and data are inherited, not
            pickled) and hands back the main process's result and best weights; inside an
            already launched run it trains this process's share.

    Returns:
        FitResult; the best weights are in `best_path` (state dict only, deployable) and the
        model is left holding them (its last weights, with a warning, when no epoch's dev
        metric was a number better than the start).

    Raises:
        TrainingInterrupted: after saving the resume state on Ctrl-C / SIGTERM.
        ResumeMismatchError: `resume=True` and the state was written by another run.
        ResumeStateError: a state saved mid-epoch by another number of processes (its step
            counts another shard).
        Any exception of the callables, after saving the resume state.
    """
    if resume not in RESUME_MODES:
        raise ValueError(f"resume={resume!r}; choose False, True or 'force'.")
    if num_processes > 1 and not _launched():
        arguments = {name: value for name, value in locals().items() if name != "model"}
        return _fit_on_processes(model, arguments)
    if gradient_accumulation_steps < 1:
        raise ValueError(f"gradient_accumulation_steps={gradient_accumulation_steps}; use a "
                         "whole number of batches >= 1.")
    accelerator = create_accelerator(device, amp)
    device = accelerator.device
    place(model, device)
    main = accelerator.is_main_process
    result = FitResult()
    global_step, epochs_without_improvement = 0, 0
    resume_path, best_path = Path(resume_path), Path(best_path)
    best_metric = -math.inf if mode == "max" else math.inf
    running = {"loss": 0.0, "batches": 0}  # this epoch's loss so far, kept across a resume
    # The last consistent point: batches done in `epoch` at the last optimiser step, the RNG
    # states right then, and (mid-epoch) the weights and RNG states the epoch started with.
    point = {"epoch": 0, "step_in_epoch": 0, "rng": rng_state(), "epoch_start": None}

    state = load_resume_state(resume_path) if resume else None
    if state is not None:
        check_fingerprint(state.get("fingerprint"), fingerprint, resume_path,
                          force=resume == "force")
        if state["best_epoch"] > 0 and not best_path.exists():
            raise ResumeStateError(f"{resume_path} records a best epoch {state['best_epoch']} "
                                   f"but its weights {best_path} are gone; run with "
                                   "resume=False.")
        saved_processes = state.get("num_processes", 1)
        if state["step_in_epoch"] and saved_processes != accelerator.num_processes:
            raise ResumeStateError(
                f"{resume_path} stopped mid-epoch with {saved_processes} process(es); resume "
                f"it with as many (now {accelerator.num_processes}), or run with resume=False.")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        if accelerator.scaler is not None and state["scaler"]:
            accelerator.scaler.load_state_dict(state["scaler"])
        point.update(epoch=state["epoch"], step_in_epoch=state["step_in_epoch"],
                     rng=state["rng"], epoch_start=state["epoch_start"])
        global_step = state["global_step"]
        best_metric = state["best_metric"]
        epochs_without_improvement = state["epochs_without_improvement"]
        result.history = state["history"]
        result.best_epoch = state["best_epoch"]
        result.resumed_from_epoch = point["epoch"]
        running.update(state["running"])
        print(f"Resuming from {resume_path}: epoch {point['epoch'] + 1}, "
              f"step {point['step_in_epoch']}")
    else:
        if resume:
            print(f"resume={resume!r} but no resume state at {resume_path}: starting afresh")
        if main:
            best_path.unlink(missing_ok=True)  # an earlier run's best weights are not this run's

    def save_resume() -> None:
        if not main:
            return
        atomic_save(_plain({
            "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "scaler": accelerator.scaler.state_dict() if accelerator.scaler is not None else {},
            "global_step": global_step, "best_metric": best_metric,
            "best_epoch": result.best_epoch,
            "epochs_without_improvement": epochs_without_improvement,
            "history": result.history, "running": dict(running),
            "num_processes": accelerator.num_processes, "fingerprint": fingerprint, **point,
        }), resume_path)

    started = time.perf_counter()
    step_scheduler = scheduler if scheduler_interval == "step" else None
    # An epoch scheduler stays outside: accelerate steps a prepared one once per process.
    training, optimizer, step_scheduler = accelerator.prepare(
        _TrainingStep(model, compute_loss), optimizer, step_scheduler)
    interruptions = Interruptions()
    pending_rng = point["rng"]  # restored once the replay is over, before the next real step
    with interruptions.installed():
        try:
            for epoch in range(point["epoch"], epochs):
                skip_steps = point["step_in_epoch"]
                if skip_steps:  # the loader is built from the epoch's starting weights
                    mid_epoch = _cpu_copy(model)
                    model.load_state_dict(point["epoch_start"]["model"])
                    set_rng_state(point["epoch_start"]["rng"])
                else:
                    if pending_rng is not None:
                        set_rng_state(pending_rng)
                        pending_rng = None
                    running.update(loss=0.0, batches=0)
                loader = _shard(make_loader(epoch), accelerator)
                if skip_steps:
                    model.load_state_dict(mid_epoch)
                else:
                    point["epoch_start"] = {"model": _cpu_copy(model), "rng": point["rng"]}
                training.train()
                bar = tqdm(loader, desc=f"epoch {epoch + 1}/{epochs}",
                           disable=not (progress and main), leave=False)
                group, group_loss = 0, 0.0  # batches whose gradients wait for the step
                optimizer.zero_grad(set_to_none=True)
                for step, batch in enumerate(bar):
                    if step < skip_steps:  # replay the loader up to where the run stopped
                        continue
                    if pending_rng is not None:
                        set_rng_state(pending_rng)
                        pending_rng = None
                    batch = move_to(batch, device)
                    # The last batch of a group steps (and, with DDP, synchronises gradients).
                    group += 1
                    sync = (group == gradient_accumulation_steps
                            or gradient_accumulation_steps > 1 and step + 1 == len(loader))
                    with nullcontext() if sync else accelerator.no_sync(training):
                        loss = training(batch)
                        if not torch.isfinite(loss):
                            raise FloatingPointError(
                                f"Non-finite loss {loss.item()} at epoch {epoch + 1}, step "
                                f"{step}; lower the learning rate or disable AMP.")
                        accelerator.backward(loss / gradient_accumulation_steps)
                    group_loss += accelerator.reduce(loss.detach(), "mean").item()
                    if sync:
                        if grad_clip is not None:
                            accelerator.clip_grad_norm_(model.parameters(), grad_clip)
                        with interruptions.deferred():
                            optimizer.step()
                            for _ in range(group if step_scheduler is not None else 0):
                                step_scheduler.step()  # counts batches, as it was built to
                            optimizer.zero_grad(set_to_none=True)
                            running["loss"] += group_loss
                            running["batches"] += group
                            group, group_loss = 0, 0.0
                            global_step += 1
                            point.update(epoch=epoch, step_in_epoch=step + 1, rng=rng_state())
                        bar.set_postfix(loss=f"{running['loss'] / running['batches']:.4f}")
                if pending_rng is not None:  # the whole epoch was replayed
                    set_rng_state(pending_rng)
                    pending_rng = None

                model.eval()
                with torch.no_grad():
                    metrics = evaluate(model)
                if monitor not in metrics:
                    raise KeyError(f"evaluate() returned {sorted(metrics)} but monitor={monitor!r}")
                value = float(metrics[monitor])
                with interruptions.deferred():
                    if scheduler is not None and scheduler_interval == "epoch":
                        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                            scheduler.step(value)
                        else:
                            scheduler.step()
                    result.history.append({
                        "epoch": epoch + 1,
                        "train_loss": running["loss"] / max(running["batches"], 1),
                        "lr": optimizer.param_groups[0]["lr"],
                        **{f"dev_{key}": val for key, val in metrics.items()
                           if isinstance(val, (int, float))}})
                    if _improved(value, best_metric, mode):
                        best_metric, result.best_epoch = value, epoch + 1
                        epochs_without_improvement = 0
                        if main:
                            atomic_save(model.state_dict(), best_path)
                    else:
                        epochs_without_improvement += 1
                    point.update(epoch=epoch + 1, step_in_epoch=0, rng=rng_state(),
                                 epoch_start=None)
                    save_resume()
                if main:
                    print(f"epoch {epoch + 1}/{epochs}  loss "
                          f"{result.history[-1]['train_loss']:.4f}  dev {monitor} {value:.4f}  "
                          f"best {best_metric:.4f} (epoch {result.best_epoch})")
                if patience is not None and epochs_without_improvement >= patience:
                    result.stopped_early = True
                    accelerator.print(f"Early stopping: no dev {monitor} improvement for "
                                      f"{patience} epochs")
                    break
        except BaseException as error:
            interruptions.ignore()
            if interruptions.broken:
                error.add_note(f"It stopped an update half-way, so {resume_path} was not "
                               "written and keeps what it held.")
                raise
            save_resume()
            where = f"epoch {point['epoch'] + 1}, step {point['step_in_epoch']}"
            if isinstance(error, KeyboardInterrupt):
                raise TrainingInterrupted(
                    f"Training interrupted ({error}); state after {where} saved to "
                    f"{resume_path}. Re-run with resume=True to continue.") from error
            error.add_note(f"Resume state after {where} saved to {resume_path}; fix the cause "
                           "and re-run with resume=True to continue.")
            raise

    result.best_metric = best_metric
    result.wall_time_s = time.perf_counter() - started
    accelerator.wait_for_everyone()  # the main process has written the best weights
    if result.best_epoch > 0:
        model.load_state_dict(torch.load(best_path, map_location="cpu", weights_only=True))
    else:
        print(f"WARNING: no epoch improved dev {monitor} (values "
              f"{[row.get(f'dev_{monitor}') for row in result.history]}); the model keeps its "
              "last weights.")
    return result


def _launched() -> bool:
    """Whether this process is one of a launched run (the launcher sets WORLD_SIZE)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _fit_on_processes(model: nn.Module, arguments: dict) -> FitResult:
    """`fit(model, **arguments)` on ``arguments["num_processes"]`` forked processes; the main
    one sends back its result and best weights through a file beside the resume state. Falls
    back to one process, saying so, where forking is impossible (CUDA already in use here)."""
    processes = arguments["num_processes"]
    arguments["num_processes"] = 1
    if torch.cuda.is_initialized():
        print(f"num_processes={processes}: CUDA is already initialised in this process, so it "
              "cannot fork one process per GPU; training on one process instead. Launch before "
              "anything moves to the GPU (restart the kernel) to use them all.")
        return fit(model, **arguments)
    handover = Path(arguments["resume_path"]).with_suffix(".launched.pt")
    handover.unlink(missing_ok=True)
    notebook_launcher(_fit_and_hand_over, args=(model, arguments, str(handover)),
                      num_processes=processes, use_port=str(free_port()))
    outcome = torch.load(handover, map_location="cpu", weights_only=False)
    handover.unlink()
    # The weights stay on the CPU: touching CUDA here would stop a later launch (a second
    # training stage) from forking; `predict_batches` moves the model where it predicts.
    model.load_state_dict(outcome["state"])
    return outcome["result"]


def _fit_and_hand_over(model: nn.Module, arguments: dict, handover: str) -> None:
    result = fit(model, **arguments)
    if is_main_process():
        atomic_save({"result": result, "state": _cpu_copy(model)}, Path(handover))


def free_port() -> int:
    """A TCP port nobody listens on, for the launched processes' rendezvous."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _shard(loader: Any, accelerator: Accelerator) -> Any:
    """This process's share of an epoch's batches, dealt by accelerate's `BatchSamplerShard`
    (every process draws the same epoch-seeded batches and keeps its own). One process keeps
    the caller's loader itself: accelerate's prepared loader reads a batch ahead, which would
    draw a batch's augmentation before the previous batch's dropout and change the numbers."""
    if accelerator.num_processes == 1:
        return loader
    if not isinstance(loader, DataLoader) or loader.batch_sampler is None:
        raise TypeError(f"make_loader returned a {type(loader).__name__} without a batch "
                        f"sampler; with {accelerator.num_processes} processes it must return a "
                        "batched DataLoader, which each process reads its shard of.")
    shard = BatchSamplerShard(loader.batch_sampler, num_processes=accelerator.num_processes,
                              process_index=accelerator.process_index)
    return DataLoader(loader.dataset, batch_sampler=shard, num_workers=loader.num_workers,
                      collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
                      worker_init_fn=loader.worker_init_fn, generator=loader.generator)


def predict_batches(model: nn.Module | Callable, loader: DataLoader,
                    device: torch.device | str = "cpu", progress: bool = True,
                    desc: str = "predict") -> torch.Tensor:
    """Run `model` over a loader of (inputs, ...) batches and concatenate the outputs on CPU.

    The first element of each batch is the model input (a tensor or a tuple for two-stream
    models). The model moves to `device` and runs in eval mode and is handed back in the mode it came in, so a
    training loop that embeds with it (hard negatives) keeps training with dropout and
    batch-norm updates. On CUDA it runs under autocast (bf16 where supported, else fp16) and
    returns float32. In a process group (a launched run) each process predicts a contiguous
    share of the rows and every process gets all outputs, in the loader's order, each row once;
    every process must then call it, like any collective.
    """
    if _distributed():
        state = PartialState()
        with state.split_between_processes(list(range(len(loader.dataset)))) as rows:
            loader = DataLoader(Subset(loader.dataset, rows), batch_size=loader.batch_size,
                                num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                                worker_init_fn=loader.worker_init_fn,
                                pin_memory=loader.pin_memory)
        progress = progress and state.is_main_process
    outputs = []
    was_training = isinstance(model, nn.Module) and model.training
    if isinstance(model, nn.Module):
        place(model, device).eval()
    precision = mixed_precision(device, amp=True)
    half = torch.bfloat16 if precision == "bf16" else torch.float16
    try:
        with torch.no_grad(), torch.autocast("cuda", dtype=half, enabled=precision != "no"):
            for batch in tqdm(loader, desc=desc, disable=not progress, leave=False):
                inputs = move_to(batch[0], device)
                out = model(*inputs) if isinstance(inputs, (list, tuple)) else model(inputs)
                outputs.append(out.float().cpu())
    finally:
        if was_training:
            model.train()
    if _distributed():
        outputs = gather_object(outputs)  # every process's list, in process order
    return torch.cat(outputs) if outputs else torch.empty(0)
