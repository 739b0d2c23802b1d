"""common.feature_store: per-image results are computed once per content, whatever the list, its
order or the file's name, survive an interruption chunk by chunk, and follow an in-place edit."""
from __future__ import annotations

import hashlib
import os
import random

import numpy as np
import pytest
import torch

from common import config, feature_store
from common.feature_store import FeatureStore, content_keys

FIELDS = {"vector": ((3,), "float32"), "found": ((), "bool")}


def _files(folder, contents: dict[str, bytes]) -> list[str]:
    paths = []
    for name, content in contents.items():
        path = folder / name
        path.write_bytes(content)
        paths.append(str(path))
    return paths


def _compute_from(paths: list[str], calls: list[int]):
    """A step whose value is derived from the file's bytes; records every index it computes."""
    def compute(indices: list[int]) -> dict[str, np.ndarray]:
        calls.extend(indices)
        data = [open(paths[i], "rb").read() for i in indices]
        return {"vector": np.array([[len(d), d[0], d[-1]] for d in data], np.float32),
                "found": np.array([d[0] % 2 == 1 for d in data])}
    return compute


def test_content_keys_are_the_bytes_sha256_and_follow_edits(tmp_path):
    a, b, c = _files(tmp_path, {"a.jpg": b"same", "b.jpg": b"same", "c.jpg": b"other"})
    keys = content_keys([a, b, c], folder=tmp_path / "store")
    assert keys == [hashlib.sha256(b"same").hexdigest()] * 2 + [
        hashlib.sha256(b"other").hexdigest()]
    stat = os.stat(a)
    (tmp_path / "a.jpg").write_bytes(b"SAME")  # same size, new content
    os.utime(a, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
    assert content_keys([a], folder=tmp_path / "store") == [hashlib.sha256(b"SAME").hexdigest()]


def test_hashes_are_remembered_per_path_size_and_mtime(tmp_path, monkeypatch):
    paths = _files(tmp_path, {f"{i}.jpg": bytes([i]) * 5 for i in range(4)})
    read = []
    real = feature_store._file_sha256
    monkeypatch.setattr(feature_store, "_file_sha256", lambda p: read.append(p) or real(p))
    first = content_keys(paths, folder=tmp_path / "store")
    assert content_keys(list(reversed(paths)), folder=tmp_path / "store") == first[::-1]
    assert sorted(read) == sorted(paths)  # each file read once, the second call read nothing


def test_fetch_computes_each_content_once(tmp_path):
    paths = _files(tmp_path, {"a": b"\x01abc", "b": b"\x02de", "c": b"\x03f", "d": b"\x04gh",
                              "copy_of_a": b"\x01abc"})
    store = FeatureStore("step", {"version": 1}, FIELDS, folder=tmp_path / "store")
    calls: list[int] = []
    first = store.fetch(content_keys(paths[:3], tmp_path / "store"),
                        _compute_from(paths, calls))
    assert sorted(calls) == [0, 1, 2]
    # Another list, another order, a copy under another name: only d is new.
    order = [paths[2], paths[3], paths[4], paths[0]]
    calls.clear()
    second = store.fetch(content_keys(order, tmp_path / "store"),
                         _compute_from(order, calls))
    assert calls == [1]
    np.testing.assert_array_equal(second["vector"][[0, 2, 3]], first["vector"][[2, 0, 0]])
    assert second["vector"][1].tolist() == [3.0, 4.0, ord("h")]
    assert second["found"].tolist() == [True, False, True, True]


def test_other_settings_are_another_store(tmp_path):
    paths = _files(tmp_path, {"a": b"\x01a"})
    keys = content_keys(paths, tmp_path / "store")
    calls: list[int] = []
    for version in (1, 2, 1):
        FeatureStore("step", {"version": version}, FIELDS, folder=tmp_path / "store").fetch(
            keys, _compute_from(paths, calls))
    assert calls == [0, 0]


def test_an_interrupted_fill_keeps_the_finished_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(feature_store, "_CHUNK", 2)
    paths = _files(tmp_path, {f"{i}": bytes([i + 1]) * 3 for i in range(5)})
    keys = content_keys(paths, tmp_path / "store")
    store = FeatureStore("step", {}, FIELDS, folder=tmp_path / "store")
    calls: list[int] = []
    compute = _compute_from(paths, calls)

    def failing(indices):
        if 4 in indices:
            raise KeyboardInterrupt
        return compute(indices)

    with pytest.raises(KeyboardInterrupt):
        store.fetch(keys, failing)
    calls.clear()
    store.fetch(keys, compute)
    assert calls == [4]


def _draws() -> tuple:
    """One draw from each global random stream (Python, NumPy, torch)."""
    return random.random(), float(np.random.rand()), float(torch.rand(()))


def test_a_cold_store_leaves_the_random_streams_as_a_warm_one(tmp_path):
    """Computing a missing entry may draw (a network built before its weights are loaded), but
    what a run draws afterwards is the same whether the store was cold or warm."""
    paths = _files(tmp_path, {"a": b"\x01a", "b": b"\x02b"})
    keys = content_keys(paths, tmp_path / "store")
    store = FeatureStore("step", {}, FIELDS, folder=tmp_path / "store")
    calls: list[int] = []
    compute = _compute_from(paths, calls)

    def drawing(indices):
        drawn = _draws()
        values = compute(indices)
        values["vector"][:, 0] = drawn[2]  # what it drew is what it stores
        return values

    after = []
    for _ in ("cold", "warm"):
        config.seed_everything(7)
        stored = store.fetch(keys, drawing)
        after.append(_draws())
    assert calls == [0, 1]  # computed when cold only
    assert after[0] == after[1]
    config.seed_everything(7)
    assert stored["vector"][0, 0] == np.float32(_draws()[2])  # the draw happened, then undone


def test_random_streams_are_restored_after_an_error_too():
    config.seed_everything(3)
    expected = _draws()
    config.seed_everything(3)
    with pytest.raises(RuntimeError), config.rng_state_kept():
        _draws()
        raise RuntimeError("cut short")
    assert _draws() == expected
