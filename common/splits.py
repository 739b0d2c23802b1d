"""Train / dev / evaluated splits and the guards that keep them apart: the one place where data is
split by identity (or, closed set, by photo) and checked for leakage.

- `split_identities` is the only identity split: notebooks 01-03 carve dev (and, without an
  official val, a holdout) out of train with it, and `identity_folders` its holdout.
- Leakage is checked in two parts. Shared identities are a set operation on the table, so they
  are refused at once. Shared or near-duplicate images need every file read (a content hash of
  each clean image, a perceptual hash of every image): on a data set of millions of images that
  is far longer than the minute in which the first epoch should start. So those content checks
  run in a process of their own (not a thread: DataLoader workers fork, and a thread holding a
  SQLite or Pillow lock at that moment could deadlock a worker; `config.process_context`), are
  waited for at most `CONTENT_CHECK_WAIT` seconds, which covers FACECOM-sized data, and
  otherwise run beside training (above `CONTENT_CHECK_AWAITED_IMAGES` images they could not
  finish within the wait, so they are not waited for). `Splits.verify` waits for them, and
  `Splits.guard` puts that wait in front of the dev evaluation, so no number is ever computed
  on data that may leak: a leak found late raises `LeakageError` there (or only warns with
  ``allow_leakage``). A script (not a notebook) that makes splits must guard its entry point
  with ``if __name__ == "__main__":``, since the check re-imports the script.
"""
from __future__ import annotations

import contextlib
import math
import os
import pickle
import tempfile
import threading
import time
import traceback
import weakref
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from common import config, feature_store, near_duplicates

__all__ = ["CONTENT_CHECK_WAIT", "CONTENT_CHECK_AWAITED_IMAGES", "LeakageError", "SplitSettings",
           "ContentCheck", "Splits", "split_identities", "split_images", "make_splits",
           "make_image_splits", "check_leakage"]

# Seconds the content checks may delay training (once their process has started) before they
# continue beside it: enough for a FACECOM-sized split (hashes cached by notebook 00's
# validation, or a cold start), small against the minute the first epoch must start within.
CONTENT_CHECK_WAIT = 30.0
# Above this many images the checks start beside training at once (hashing reads every file:
# far more than the wait can cover).
CONTENT_CHECK_AWAITED_IMAGES = 50_000
_FIX = "Fix the data, or pass allow_leakage=True to override."


class LeakageError(RuntimeError):
    """Training and evaluation data share identities or images."""


class SplitSettings(Protocol):
    """The settings the splits read (an `experiment.ExperimentConfig` has them)."""

    seed: int
    dev_fraction: float
    holdout_fraction: float
    allow_leakage: bool


@dataclass
class _Pair:
    """One comparison of a content check: paths, which of them are clean, and their labels."""

    train: list[str]
    train_clean: list[bool]
    evaluated: list[str]
    evaluated_clean: list[bool]
    train_name: str
    name: str

    @classmethod
    def of(cls, train: pd.DataFrame, evaluated: pd.DataFrame, train_name: str,
           name: str) -> "_Pair":
        def rows(frame: pd.DataFrame) -> tuple[list[str], list[bool]]:
            if "distortion" not in frame.columns:
                return frame["path"].astype(str).tolist(), [True] * len(frame)
            return (frame["path"].astype(str).tolist(),
                    (frame["distortion"] == "clean").to_numpy().tolist())

        return cls(*rows(train), *rows(evaluated), train_name, name)


def _content_problems(pairs: list[_Pair], near: bool, folder: Path) -> list[str]:
    """One message per pair with identical clean images or (with `near`) near duplicates.

    Identical means the same SHA-256 of the bytes (`feature_store.content_keys`, the key the
    per-image caches share, so a re-run reads no file again).
    """
    messages = []
    for pair in pairs:
        problems = []
        train_clean = [p for p, c in zip(pair.train, pair.train_clean) if c]
        eval_clean = [p for p, c in zip(pair.evaluated, pair.evaluated_clean) if c]
        train_keys = dict(zip(feature_store.content_keys(train_clean, folder), train_clean))
        eval_keys = dict(zip(feature_store.content_keys(eval_clean, folder), eval_clean))
        shared = sorted(set(train_keys) & set(eval_keys))
        if shared:
            problems.append(f"{len(shared)} identical images in both {pair.train_name} and "
                            f"{pair.name} (e.g. {train_keys[shared[0]]} == "
                            f"{eval_keys[shared[0]]})")
        found = (near_duplicates.find_near_duplicates(pair.train, pair.evaluated,
                                                      cache_dir=folder) if near else [])
        if found:
            first, second, bits = found[0]
            problems.append(f"{len(found)} near-duplicate image pairs in {pair.train_name} and "
                            f"{pair.name} (perceptual hashes within "
                            f"{near_duplicates.MAX_DISTANCE} bits; e.g. {first} ~ {second}, "
                            f"{bits} bits)")
        if problems:
            messages.append(f"Leakage between {pair.train_name} and {pair.name}: "
                            + "; ".join(problems))
    return messages


def _run_check(connection, pairs_file: str, near: bool, folder: Path) -> None:
    """Entry point of the check's process: read the pairs `ContentCheck` wrote to `pairs_file`
    (and delete it), send ``("ok", messages)`` or ``("error", text)``, then end at once: the
    interpreter's own shutdown (torch and the rest imported) would hold a CPU longer than the
    check did on small data."""
    # tqdm's default lock is a multiprocessing semaphore, whose cleanup the os._exit below
    # skips: Python then warns of a leaked semaphore when the parent exits.
    tqdm.set_lock(threading.RLock())
    try:
        connection.send(("started", None))
        with open(pairs_file, "rb") as file:
            pairs = pickle.load(file)
        os.unlink(pairs_file)
        connection.send(("ok", _content_problems(pairs, near, folder)))
    except BaseException:  # reported in the parent, which decides; never lost
        connection.send(("error", traceback.format_exc()))
    finally:
        connection.close()
    os._exit(0)


def _remove_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


class ContentCheck:
    """The content checks of some splits, running in a process of their own until `result`.

    Args:
        pairs: the comparisons to make (train side first).
        near: also compare perceptual hashes of every image, not only identical clean files.
        allow: warn instead of raising (``allow_leakage``).
        await_start: return once the process has started (so a wait for the result measures
            the check, not Python's start-up), instead of at once.
    """

    def __init__(self, pairs: list[_Pair], near: bool, allow: bool,
                 await_start: bool = True) -> None:
        self.allow = allow
        self.images = sum(len(p.train) + len(p.evaluated) for p in pairs)
        self._messages: list[str] | None = None
        context = config.process_context(__name__)
        self._connection, child = context.Pipe(duplex=False)
        # The paths go through a file: passed as arguments, they would be written into a pipe
        # the new process reads only after importing torch, and that write would wait for it.
        handle, self._pairs_file = tempfile.mkstemp(prefix="facecom-leakage-check-",
                                                    suffix=".pickle")
        with os.fdopen(handle, "wb") as file:
            pickle.dump(pairs, file, protocol=pickle.HIGHEST_PROTOCOL)
        # The process deletes the file once read; a check dropped unread (its process killed at
        # exit) must not leave it behind in the temp folder.
        self._remove_pairs_file = weakref.finalize(self, _remove_quietly, self._pairs_file)
        self._process = context.Process(target=_run_check, name="facecom-leakage-check",
                                        args=(child, self._pairs_file, near,
                                              feature_store.store_folder()),
                                        daemon=True)
        self._process.start()
        child.close()
        self._started = False
        if await_start:
            # Starting Python and importing the readers is a fixed cost, not the check's; on a
            # busy machine it can take most of the wait, so the wait starts once the check does.
            with contextlib.suppress(EOFError):  # the process died: `result` says so
                self._receive_start()

    def _receive_start(self) -> None:
        """Take the process's "started" message off the pipe (once)."""
        if not self._started:
            self._connection.recv()
            self._started = True

    def yield_cpu(self) -> None:
        """Lower the check's priority: training, which it now runs beside, comes first."""
        with contextlib.suppress(ProcessLookupError):  # it may have just finished
            os.setpriority(os.PRIO_PROCESS, self._process.pid, 10)

    def done(self, timeout: float = 0.0) -> bool:
        """Whether the result is in, waiting at most `timeout` seconds for it."""
        if self._messages is not None:
            return True
        deadline = time.monotonic() + timeout
        if not self._started:
            if not self._connection.poll(timeout):
                return False
            with contextlib.suppress(EOFError):
                self._receive_start()
        return self._connection.poll(max(0.0, deadline - time.monotonic()))

    def result(self) -> list[str]:
        """The leak messages (empty when clean), waiting for the process as long as it takes.

        Raises:
            RuntimeError: the check itself failed (its traceback is in the message), so it is
                unknown whether the data leaks.
        """
        if self._messages is None:
            try:
                self._receive_start()
                status, value = self._connection.recv()
            except EOFError:
                status, value = "error", f"the process ended with code {self._process.exitcode}"
            self._connection.close()
            self._process.join()
            self._remove_pairs_file()  # in case the process ended before reading it
            if status != "ok":
                raise RuntimeError("The leakage check of the splits failed, so it is unknown "
                                   f"whether train and evaluation share images:\n{value}")
            self._messages = value
        return self._messages

    def enforce(self) -> None:
        """Raise `LeakageError` for what `result` found (or print it under ``allow``)."""
        _report(self.result(), self.allow)


def _report(messages: list[str], allow: bool) -> None:
    if not messages:
        return
    if allow:
        for message in messages:
            print("WARNING (allow_leakage=True): " + message)
        return
    raise LeakageError(". ".join(messages) + ". " + _FIX)


@dataclass
class Splits:
    """Identity-disjoint train / dev / eval tables.

    `eval` is the official val split when the data has one, else a held-out slice of train
    identities (`eval_name` says which). Dev selects checkpoints and thresholds; eval is only
    ever scored. `checks` are the content checks still to be awaited (`verify`).
    """

    train: pd.DataFrame
    dev: pd.DataFrame
    eval: pd.DataFrame
    eval_name: str
    checks: list[ContentCheck] = field(default_factory=list, repr=False)

    def describe(self) -> pd.DataFrame:
        """Identities and images per split, for the notebook."""
        rows = [{"split": name, "identities": frame["identity"].nunique(), "images": len(frame)}
                for name, frame in (("train", self.train), ("dev", self.dev),
                                    (self.eval_name, self.eval))]
        return pd.DataFrame(rows)

    def verify(self) -> None:
        """Wait for the content checks; raise `LeakageError` if one found a leak.

        Call before computing any number on dev or eval; a no-op once they have passed.
        """
        for check in self.checks:
            check.enforce()

    def guard(self, evaluate: Callable[..., Any]) -> Callable[..., Any]:
        """`evaluate` behind `verify`: what `train.fit` gets, so its first dev evaluation
        waits for the content checks while the epoch before it did not."""
        def guarded(*args: Any, **kwargs: Any) -> Any:
            self.verify()
            return evaluate(*args, **kwargs)

        return guarded


def split_identities(df: pd.DataFrame, dev_fraction: float = 0.2, seed: int = 0,
                     stratify: str | None = "gender") -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split rows into (train, dev) so that no identity appears on both sides.

    Identities are shuffled with ``seed`` within each ``stratify`` group (when the column
    exists) and ``round(n * dev_fraction)`` of each group go to dev, so the gender ratio is
    kept. The result depends only on the set of identities, not on row order.

    Raises:
        ValueError: ``dev_fraction`` not in (0, 1) or no ``identity`` column.
    """
    if not 0.0 < dev_fraction < 1.0:
        raise ValueError(f"dev_fraction={dev_fraction} must lie strictly between 0 and 1.")
    if "identity" not in df.columns:
        raise ValueError("split_identities needs an 'identity' column (read_task_a/read_task_b "
                         f"tables have one); got columns {list(df.columns)}.")
    if stratify is not None and stratify in df.columns:
        groups = df.groupby("identity")[stratify].agg(
            lambda s: str(s.mode().iloc[0]) if s.notna().any() else "<missing>")
    else:
        groups = pd.Series("<all>", index=sorted(df["identity"].unique()))
    rng = np.random.default_rng(seed)
    dev_ids: set[str] = set()
    for _, members in sorted(groups.groupby(groups), key=lambda kv: kv[0]):
        ids = np.array(sorted(members.index))
        n_dev = math.floor(len(ids) * dev_fraction + 0.5)
        dev_ids.update(rng.permutation(ids)[:n_dev].tolist())
    in_dev = df["identity"].isin(dev_ids)
    return df[~in_dev].reset_index(drop=True), df[in_dev].reset_index(drop=True)


def split_images(table: pd.DataFrame, fraction: float, seed: int = 0
                 ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split rows into (kept, held) by clean image, so every identity with >= 2 clean images is
    on both sides (closed set); a clean image's distorted views follow it.

    Raises:
        ValueError: `fraction` not in (0, 1), or no identity has two clean images.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction={fraction} must lie strictly between 0 and 1.")
    clean = table[table["distortion"] == "clean"]
    held = set()
    for identity, paths in clean.groupby("identity")["path"]:
        if len(paths) < 2:
            continue
        # round(n * fraction) photos, at least 1 and at most n - 1, drawn with a seed that
        # depends only on the identity, so adding people never reshuffles the others.
        n_held = min(len(paths) - 1, max(1, math.floor(len(paths) * fraction + 0.5)))
        name = str(identity).encode("utf-8", "surrogateescape")  # names need not be UTF-8
        rng = np.random.default_rng([seed, zlib.crc32(name)])
        held.update(paths.iloc[rng.permutation(len(paths))[:n_held]])
    if not held:
        raise ValueError("split_by='image' needs identities with at least two images; none has. "
                         "Add photos, or use split_by='identity'.")
    in_held = table["source"].isin(held).to_numpy()
    return table[~in_held].reset_index(drop=True), table[in_held].reset_index(drop=True)


def _start_checks(pairs: list[_Pair], near: bool, allow: bool,
                  wait: float | None) -> list[ContentCheck]:
    """Start the content checks; enforce them now when they finish within `wait` seconds (when
    None: `CONTENT_CHECK_WAIT`, or 0 above `CONTENT_CHECK_AWAITED_IMAGES` images), else leave
    them to `Splits.verify`."""
    if wait is None:
        images = sum(len(p.train) + len(p.evaluated) for p in pairs)
        wait = CONTENT_CHECK_WAIT if images <= CONTENT_CHECK_AWAITED_IMAGES else 0.0
    check = ContentCheck(pairs, near, allow, await_start=wait > 0)
    if wait > 0 and check.done(wait):
        check.enforce()
        return []
    check.yield_cpu()
    print(f"Leakage check of {check.images} images continues beside training; it is awaited "
          "before the first evaluation on dev.")
    return [check]


def check_leakage(train: pd.DataFrame, evaluated: pd.DataFrame, name: str,
                  allow: bool = False, train_name: str = "train",
                  wait: float | None = None) -> list[ContentCheck]:
    """Refuse (or, with `allow`, warn about) `train` and `evaluated` sharing an identity at once;
    start the image checks (identical clean images, near duplicates of any image) as described
    in the module docstring.

    `name` and `train_name` only label the two tables in the messages.

    Returns:
        The checks still running after `wait` seconds (empty when they are done and passed),
        for `Splits.checks`.

    Raises:
        LeakageError: a shared identity, or a shared image found within the wait.
    """
    return _check_all([(train, evaluated, train_name, name)], allow, wait)


def _check_all(pairs: list[tuple[pd.DataFrame, pd.DataFrame, str, str]], allow: bool,
               wait: float | None) -> list[ContentCheck]:
    messages = []
    for train, evaluated, train_name, name in pairs:
        shared = sorted(set(train["identity"].unique()) & set(evaluated["identity"].unique()))
        if shared:
            messages.append(f"Leakage between {train_name} and {name}: {len(shared)} identities "
                            f"in both {train_name} and {name} (e.g. {shared[:3]})")
    _report(messages, allow)
    return _start_checks([_Pair.of(*pair) for pair in pairs], True,
                         allow, wait)


def _unchanged(frame: pd.DataFrame) -> pd.DataFrame:
    return frame


def make_splits(train_table: pd.DataFrame, val_table: pd.DataFrame | None,
                cfg: SplitSettings, stratify: str | None = "gender",
                wait: float | None = None,
                expand: Callable[[pd.DataFrame], pd.DataFrame] | None = None) -> Splits:
    """Carve dev (and, without an official val, a holdout) out of train by identity, then check
    train against dev, and train + dev against the evaluated split (dev picks the checkpoint and
    the threshold, so it must not see the evaluated split either); see `check_leakage`.
    `expand`: applied to dev and the evaluated split once the checks have their rows (identity
    folders: `identity_folders.with_views` adds the views rendered from the photos)."""
    stratify = stratify if stratify in train_table.columns else None
    if val_table is not None and len(val_table):
        rest, eval_table, eval_name = train_table, val_table, "val"
    else:
        rest, eval_table = split_identities(train_table, cfg.holdout_fraction,
                                            seed=cfg.seed + 1, stratify=stratify)
        eval_name = "holdout"
    fraction = cfg.dev_fraction / max(1e-9, 1.0 - (0 if eval_name == "val" else
                                                    cfg.holdout_fraction))
    train, dev = split_identities(rest, min(fraction, 0.5), seed=cfg.seed, stratify=stratify)
    train, dev = train.reset_index(drop=True), dev.reset_index(drop=True)
    eval_table = eval_table.reset_index(drop=True)
    checks = _check_all([(train, dev, "train", "dev"),
                         (pd.concat([train, dev]), eval_table, "train/dev", eval_name)],
                        cfg.allow_leakage, wait)
    expand = expand or _unchanged
    return Splits(train, expand(dev), expand(eval_table), eval_name, checks)


def make_image_splits(train: pd.DataFrame, evaluated: pd.DataFrame, eval_name: str,
                      cfg: SplitSettings, wait: float | None = None,
                      expand: Callable[[pd.DataFrame], pd.DataFrame] | None = None
                      ) -> Splits:
    """Closed-set splits (identity folders with ``split_by="image"``): dev holds other photos of
    the train identities (`split_images`), and the enrolled (train) clean photos join the dev
    and evaluated galleries, so the harder variant (own photo removed) scores recognising a new
    photo of a known person against them.

    Identities are shared by design and a person's photos may look alike, so only identical
    images are refused (in the background, as in `check_leakage`; `expand` as in
    `make_splits`, before the enrolled photos join).
    """
    fraction = min(0.5, cfg.dev_fraction / (1.0 - cfg.holdout_fraction))
    train, dev = split_images(train, fraction, cfg.seed + 1)
    enrolled = train[train["distortion"] == "clean"]
    pairs = [_Pair.of(train, dev, "train", "dev"), _Pair.of(train, evaluated, "train", eval_name)]
    checks = _start_checks(pairs, False, cfg.allow_leakage, wait)
    expand = expand or _unchanged
    return Splits(train, pd.concat([expand(dev.assign(split="dev")), enrolled], ignore_index=True),
                  pd.concat([expand(evaluated), enrolled], ignore_index=True), eval_name, checks)
