"""common/splits.py: identity-disjoint splits, and leakage refused before training on small data
and before the first dev evaluation when the content checks outlive their wait."""
from __future__ import annotations

import gc
import multiprocessing
import os
import subprocess
import sys
import shutil
import sqlite3
import time
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import torch
from PIL import Image

from common import feature_store, splits as splits_module, workspace
from common.data import read_task_b
from common.splits import LeakageError, check_leakage, make_splits, split_identities
from common.train import fit


@pytest.fixture(autouse=True)
def own_work_root(tmp_path, monkeypatch):
    """Per-test caches (the spawned check inherits the environment), so hashes start cold."""
    monkeypatch.setenv(workspace.WORK_ROOT_ENV, str(tmp_path / "work"))


def identity_table(n_male: int, n_female: int, rows_each: int = 2) -> pd.DataFrame:
    records = [(f"{g[0]}{i:03d}", g, f"/x/{g[0]}{i:03d}_{r}.jpg")
               for g, n in (("male", n_male), ("female", n_female))
               for i in range(n) for r in range(rows_each)]
    return pd.DataFrame(records, columns=["identity", "gender", "path"])


def test_split_identities_disjoint_stratified_seeded() -> None:
    table = identity_table(40, 10)
    train, dev = split_identities(table, dev_fraction=0.2, seed=3)
    assert not set(train["identity"]) & set(dev["identity"])
    assert len(train) + len(dev) == len(table)
    dev_ids = dev.groupby("identity")["gender"].first()
    assert (dev_ids == "male").sum() == 8 and (dev_ids == "female").sum() == 2
    assert (dev.groupby("identity").size() == 2).all()  # all rows of an identity together
    again = split_identities(table.sample(frac=1.0, random_state=1), 0.2, seed=3)[1]
    assert set(again["identity"]) == set(dev["identity"])  # row order does not matter
    other = split_identities(table, 0.2, seed=4)[1]
    assert set(other["identity"]) != set(dev["identity"])


def test_split_identities_without_stratify_column() -> None:
    table = identity_table(30, 0).drop(columns="gender")
    train, dev = split_identities(table, dev_fraction=0.3, seed=0, stratify="gender")
    assert dev["identity"].nunique() == 9 and train["identity"].nunique() == 21
    with pytest.raises(ValueError, match="dev_fraction"):
        split_identities(table, dev_fraction=1.0)



def _copy_identity(source_split: Path, identity: str, target_split: Path) -> None:
    """Copy one identity folder (clean + distorted images) between Task_B split folders."""
    shutil.copytree(source_split / identity, target_split / identity)


@pytest.fixture
def small_copy(tmp_path, sample_root) -> Path:
    """A FACECOM-layout copy with four train identities and two val identities."""
    root = tmp_path / "facecom"
    for split, identities in (("train", ("person_000", "person_001", "person_002", "person_003")),
                              ("val", ("person_004", "person_005"))):
        for identity in identities:
            _copy_identity(sample_root / "Task_B" / "train", identity, root / "Task_B" / split)
    return root


def _settings(**overrides) -> SimpleNamespace:
    """What `make_splits` reads of a notebook's resolved config (`splits.SplitSettings`)."""
    return SimpleNamespace(**{"seed": 0, "dev_fraction": 0.25, "holdout_fraction": 0.15,
                              "allow_leakage": False, **overrides})


def _splits_of(root: Path, tmp_path: Path, wait: float | None = None, **overrides):
    return make_splits(read_task_b(root, "train"), read_task_b(root, "val"),
                       _settings(**overrides), stratify=None, wait=wait)


def test_clean_copy_splits_without_complaint(small_copy, tmp_path):
    splits = _splits_of(small_copy, tmp_path)
    assert splits.eval_name == "val"
    assert set(splits.eval["identity"]) == {"person_004", "person_005"}


def test_shared_identity_is_refused(small_copy, tmp_path):
    _copy_identity(small_copy / "Task_B" / "train", "person_001", small_copy / "Task_B" / "val")
    with pytest.raises(LeakageError, match=r"identities in both train/dev and val.*person_001"):
        _splits_of(small_copy, tmp_path)


@pytest.mark.parametrize("part", ["train", "dev"])  # dev selects, so it must not leak either
def test_same_image_under_another_name_is_refused(small_copy, tmp_path, part):
    identity = sorted(getattr(_splits_of(small_copy, tmp_path / "clean"), part)["identity"])[0]
    clean = small_copy / "Task_B" / "train" / identity / f"{identity}_0001.jpg"
    renamed = small_copy / "Task_B" / "val" / "person_005" / "person_005_0999.jpg"
    shutil.copyfile(clean, renamed)
    with pytest.raises(LeakageError, match="identical images") as error:
        _splits_of(small_copy, tmp_path)
    assert str(clean) in str(error.value) and str(renamed) in str(error.value)
    assert "allow_leakage=True" in str(error.value)


def test_allow_leakage_only_warns(small_copy, tmp_path, capsys):
    _copy_identity(small_copy / "Task_B" / "train", "person_001", small_copy / "Task_B" / "val")
    splits = _splits_of(small_copy, tmp_path, allow_leakage=True)
    assert "person_001" in set(splits.eval["identity"])
    warning = "WARNING (allow_leakage=True): Leakage between train/dev and val"
    assert warning in capsys.readouterr().out


@pytest.mark.parametrize("edit", ["reencoded", "distorted"])
def test_near_duplicate_under_another_identity_is_refused(small_copy, tmp_path, edit):
    """A train photo re-encoded smaller, or one of its distorted copies, filed under a val
    identity has other bytes (the SHA-1 guard passes it) but the same perceptual hash."""
    identity = sorted(_splits_of(small_copy, tmp_path / "clean").train["identity"])[0]
    folder = small_copy / "Task_B" / "train" / identity
    leaked = small_copy / "Task_B" / "val" / "person_005" / "person_005_0999.jpg"
    if edit == "reencoded":
        source = folder / f"{identity}_0001.jpg"
        image = Image.open(source)
        image.resize((image.width * 3 // 4, image.height * 3 // 4)).save(leaked, quality=70)
    else:
        source = folder / "distortion" / f"{identity}_0001_blurred.jpg"
        shutil.copyfile(source, leaked)
        with open(leaked, "ab") as handle:  # other bytes, same pixels
            handle.write(b"\0")
    with pytest.raises(LeakageError, match="near-duplicate image pairs") as error:
        _splits_of(small_copy, tmp_path)
    assert "identical images" not in str(error.value) and str(leaked) in str(error.value)


def test_other_identities_distorted_copies_are_not_near_duplicates(small_copy, tmp_path):
    """Every image of the copy, clean and distorted, is hashed: different people pass."""
    splits = _splits_of(small_copy, tmp_path)
    assert (splits.train["distortion"] != "clean").any()
    assert check_leakage(splits.train, splits.eval, "val") == []


def test_splits_are_identity_disjoint_and_cover_train(tmp_path, sample_root):
    train = read_task_b(sample_root, "train")
    splits = make_splits(train, None, _settings(dev_fraction=0.15), stratify=None)
    assert splits.eval_name == "holdout"
    parts = [set(frame["identity"]) for frame in (splits.train, splits.dev, splits.eval)]
    assert all(parts)
    assert not (parts[0] & parts[1] or parts[0] & parts[2] or parts[1] & parts[2])
    assert parts[0] | parts[1] | parts[2] == set(train["identity"])
    assert len(splits.train) + len(splits.dev) + len(splits.eval) == len(train)


def _lock_hash_store() -> sqlite3.Connection:
    """Hold the write lock of the content-hash store: the spawned check cannot record a hash,
    so cannot finish, until the returned connection commits."""
    folder = feature_store.store_folder()
    folder.mkdir(parents=True, exist_ok=True)
    connection = sqlite3.connect(folder / "files.sqlite", isolation_level=None)
    connection.execute("PRAGMA journal_mode=WAL")
    connection.execute("CREATE TABLE IF NOT EXISTS files (path BLOB, size INTEGER, mtime INTEGER, "
                       "sha256 TEXT, PRIMARY KEY (path, size, mtime))")
    connection.execute("BEGIN EXCLUSIVE")
    return connection


def _leak_identical_image(root: Path, tmp_path: Path) -> None:
    identity = sorted(_splits_of(root, tmp_path / "clean").train["identity"])[0]
    shutil.copyfile(root / "Task_B" / "train" / identity / f"{identity}_0001.jpg",
                    root / "Task_B" / "val" / "person_005" / "person_005_0999.jpg")


def _fit_guarded(splits, tmp_path: Path, events: list[str], on_first_step=lambda: None):
    """A tiny `train.fit` whose dev evaluation is guarded as task_a / task_b guard theirs."""
    model = torch.nn.Linear(2, 1)
    batches = [(torch.ones(4, 2), torch.zeros(4, 1))] * 2

    def compute_loss(trained, batch):
        if "step" not in events:
            on_first_step()
        events.append("step")
        return torch.nn.functional.mse_loss(trained(batch[0]), batch[1])

    @splits.guard
    def evaluate(trained) -> dict:
        events.append("evaluate")
        return {"loss": 0.0}

    return fit(model, make_loader=lambda epoch: batches, compute_loss=compute_loss,
               evaluate=evaluate, optimizer=torch.optim.SGD(model.parameters(), 0.1), epochs=1,
               monitor="loss", mode="min", progress=False,
               resume_path=tmp_path / "w.resume.pt", best_path=tmp_path / "w.best.pt")


def test_late_leak_is_raised_before_the_first_dev_evaluation(small_copy, tmp_path):
    """With no wait, training starts while the check cannot finish (its hash store is locked
    until the first step); the leak it then finds stops `fit` before any dev metric."""
    _leak_identical_image(small_copy, tmp_path)
    lock = _lock_hash_store()
    splits = _splits_of(small_copy, tmp_path, wait=0)
    assert len(splits.checks) == 1 and not splits.checks[0].done()
    events: list[str] = []
    with pytest.raises(LeakageError, match="identical images"):
        _fit_guarded(splits, tmp_path / "fit", events, on_first_step=lambda: lock.commit())
    assert events == ["step", "step"]  # the whole first epoch ran; no evaluation did


def test_late_leak_only_warns_under_allow_leakage(small_copy, tmp_path, capsys):
    _leak_identical_image(small_copy, tmp_path)
    lock = _lock_hash_store()
    splits = _splits_of(small_copy, tmp_path, wait=0, allow_leakage=True)
    assert "continues beside training" in capsys.readouterr().out
    events: list[str] = []
    _fit_guarded(splits, tmp_path / "fit", events, on_first_step=lambda: lock.commit())
    assert events == ["step", "step", "evaluate"]
    assert "WARNING (allow_leakage=True): Leakage between" in capsys.readouterr().out


def test_clean_splits_pass_the_background_check(small_copy, tmp_path):
    splits = _splits_of(small_copy, tmp_path, wait=0)
    splits.verify()
    splits.verify()  # once passed, a no-op
    events: list[str] = []
    _fit_guarded(splits, tmp_path / "fit", events)
    assert events == ["step", "step", "evaluate"]


def test_closed_set_split_refuses_identical_photos_only(small_copy, tmp_path):
    table = read_task_b(small_copy, "train")
    evaluated = read_task_b(small_copy, "val")
    made = splits_module.make_image_splits(table, evaluated, "val", _settings())
    assert set(made.train["identity"]) == set(made.dev["identity"])  # closed set
    leaked = evaluated.iloc[:1].assign(path=made.train["path"].iloc[0], distortion="clean")
    with pytest.raises(LeakageError, match="identical images"):
        splits_module.make_image_splits(table, pd.concat([evaluated, leaked]), "val", _settings())


def test_large_splits_do_not_wait_for_the_check(small_copy, tmp_path, monkeypatch):
    """Above CONTENT_CHECK_AWAITED_IMAGES the splits return while the check still runs (here
    it cannot finish: its hash store is locked); the leak is still raised by `verify`."""
    _leak_identical_image(small_copy, tmp_path)
    monkeypatch.setattr(splits_module, "CONTENT_CHECK_WAIT", 20.0)
    monkeypatch.setattr(splits_module, "CONTENT_CHECK_AWAITED_IMAGES", 10)
    lock = _lock_hash_store()
    start = time.monotonic()
    splits = _splits_of(small_copy, tmp_path)
    assert time.monotonic() - start < splits_module.CONTENT_CHECK_WAIT
    assert len(splits.checks) == 1 and not splits.checks[0].done()
    lock.commit()
    with pytest.raises(LeakageError, match="identical images"):
        splits.verify()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_check_dropped_unread_leaves_no_file_behind(tmp_path, monkeypatch):
    """The paths go to the check's process through a temp file; a check nobody awaits (a run
    stopped after its first step) must not leave it in the temp folder. The process is held
    before it reads the file (a forked one running a stand-in that only waits): a real one,
    started from a warm fork server, may read it before the kill lands."""
    monkeypatch.setattr(splits_module.config, "process_context",
                        lambda preload: multiprocessing.get_context("fork"))
    monkeypatch.setattr(splits_module, "_run_check", lambda *args: time.sleep(600))
    pair = splits_module._Pair([str(tmp_path / "a.jpg")], [True], [str(tmp_path / "b.jpg")],
                               [True], "train", "dev")
    check = splits_module.ContentCheck([pair], near=False, allow=False, await_start=False)
    pairs_file = Path(check._pairs_file)
    check._process.kill()  # as at exit: the process ends before it read the file
    check._process.join()
    assert pairs_file.exists()
    del check
    gc.collect()
    assert not pairs_file.exists()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_process_forked_after_a_check_runs_its_own(sample_root):
    """A launched training process is forked from the notebook's, whose fork server started
    with its first check; the forked process's own check must still run and answer."""
    paths = sorted(str(p) for p in (sample_root / "Task_B" / "val").rglob("*.jpg"))[:8]
    pair = splits_module._Pair(paths[:4], [True] * 4, paths[4:], [True] * 4, "train", "dev")
    expected = splits_module.ContentCheck([pair], near=True, allow=True).result()
    child = os.fork()
    if child == 0:  # the forked process: exit 0 only when its check gave the same answer
        try:
            found = splits_module.ContentCheck([pair], near=True, allow=True).result()
            os._exit(0 if found == expected else 2)
        except BaseException:
            os._exit(1)
    _, status = os.waitpid(child, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_a_near_duplicate_check_leaves_no_semaphore_behind(sample_root, tmp_path):
    """The check's process ends with os._exit; a multiprocessing lock it made (tqdm's) would be
    reported as a leaked semaphore when the program exits."""
    paths = sorted(str(p) for p in (sample_root / "Task_B" / "val").rglob("*.jpg"))[:8]
    script = tmp_path / "check.py"
    script.write_text(
        "import sys\n"
        f"sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})\n"
        "from common import splits\n"
        "if __name__ == '__main__':\n"
        f"    paths = {paths!r}\n"
        "    pair = splits._Pair(paths[:4], [True] * 4, paths[4:], [True] * 4, 'train', 'dev')\n"
        "    print(splits.ContentCheck([pair], near=True, allow=True).result())\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert "leaked semaphore" not in done.stderr
