"""What lets `train.fit` survive an interruption: signal handling and the resume-state file
with the fingerprint of the run that wrote it.

A resume state is only worth having when it describes one consistent point of the run: the
weights after exactly N optimiser steps together with the RNG states of that moment. Signals are
therefore held back while the weights change (`Interruptions.deferred`), and RNG states are
kept as tensors and plain types (`config.rng_state`) so the file loads with
``torch.load(weights_only=True)``: a shared weights folder must not be able to run code on
``resume=True``.
"""
from __future__ import annotations

import contextlib
import pickle
import signal
from pathlib import Path
from typing import Any, Iterator

import torch

__all__ = ["ResumeMismatchError", "ResumeStateError", "Interruptions",
           "load_resume_state", "check_fingerprint", "RESUME_MODES"]

RESUME_MODES = (False, True, "force")
_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_MAX_DIFFERENCES = 8


class ResumeMismatchError(ValueError):
    """The resume state was written by a run with other settings or other data."""


class ResumeStateError(ValueError):
    """The resume-state file cannot be used (unreadable, foreign, or missing its best weights)."""


class Interruptions:
    """Ctrl-C and SIGTERM (Kaggle and batch schedulers stop jobs with it) as KeyboardInterrupt,
    held back while `deferred()` is active so an interruption never lands mid-update."""

    def __init__(self) -> None:
        self._critical = False
        self._pending: int | None = None
        self.broken = False  # an exception escaped a `deferred()` block: state is half-updated

    def _handle(self, signum: int, frame: Any) -> None:  # noqa: ARG002 - signal API
        if self._critical:
            self._pending = signum
            return
        raise KeyboardInterrupt(f"signal {signum}")

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Route SIGINT and SIGTERM here for the duration (outside the main thread, signals
        cannot be handled, so they are left alone)."""
        try:
            previous = {sig: signal.signal(sig, self._handle) for sig in _SIGNALS}
        except ValueError:
            yield
            return
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        """A signal arriving inside the block is raised as KeyboardInterrupt when it ends."""
        self._critical = True
        try:
            yield
        except BaseException:
            self.broken = True
            raise
        finally:
            self._critical = False
        signum, self._pending = self._pending, None
        if signum is not None:
            raise KeyboardInterrupt(f"signal {signum}")

    def ignore(self) -> None:
        """Hold every later signal back for good: the run is already stopping and saving."""
        self._critical = True


def load_resume_state(path: Path) -> dict | None:
    """The saved resume state, or None when there is none to resume from.

    Raises:
        ResumeStateError: the file does not load with ``weights_only=True`` (written by an older
            version of this code, damaged, or not a resume state).
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [""]
        reason = next((line for line in lines if "WeightsUnpickler" in line), lines[0])
        raise ResumeStateError(
            f"{path} is not a resume state loadable with weights_only=True ({reason}). It was "
            "written by an older version, by something else, or is damaged; delete it, or run "
            "with resume=False (which overwrites it).") from error


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): value}


def check_fingerprint(saved: dict | None, current: dict | None, path: Path,
                      force: bool = False) -> None:
    """Refuse to continue another run: compare the fingerprint stored in the resume state with
    the current one, key by key, and name what differs.

    Args:
        saved / current: nested dicts of plain values (settings, data hashes); None when the
            caller passed no fingerprint, which is never compared.
        force: only print the differences (``resume="force"``).

    Raises:
        ResumeMismatchError: the fingerprints differ and ``force`` is False.
    """
    if current is None:
        return
    before, now = _flatten(saved or {}), _flatten(current)
    differences = [f"{key}: saved {before.get(key)!r}, now {now.get(key)!r}"
                   for key in sorted(set(before) | set(now)) if before.get(key) != now.get(key)]
    if not differences:
        return
    more = len(differences) - _MAX_DIFFERENCES
    listed = "; ".join(differences[:_MAX_DIFFERENCES]) + (f"; and {more} more" if more > 0 else "")
    if force:
        print(f"WARNING (resume='force'): {path} was saved by another run ({listed})")
        return
    raise ResumeMismatchError(
        f"{path} was saved by a run with other settings or data ({listed}). Run with "
        "resume=False to start afresh (the state is overwritten), or resume='force' to "
        "continue it anyway.")
