"""common.train across processes: the notebook-01 recipe launched on two CPU processes (gloo)
through `accelerate.notebook_launcher`, the launcher a GPU notebook uses, shares the batches,
evaluates every dev and evaluated image exactly once, writes one set of files, and resumes an
interrupted two-process run to the weights of an uninterrupted one."""
from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from accelerate import notebook_launcher

from common import checkpoints, runs, task_a, train
from common.experiment import ExperimentConfig
from conftest import Interrupt
from test_train import linear_fit

pytestmark = pytest.mark.long  # conftest hands long files out first

TESTS_DIR = Path(__file__).resolve().parent
PROCESSES = 2
EPOCHS = 2
NAME = "task_a_processes"


def _digest(state: dict[str, torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(state.items()):
        digest.update(key.encode())
        digest.update(value.detach().cpu().numpy().tobytes())
    return digest.hexdigest()


def _train(folder: str, data_dir: str, run: str, interrupt_at: int, resume: bool) -> None:
    """One process of the launched run: notebook 01 with a tiny backbone, its loss calls and
    evaluated rows counted, interrupted at loss call `interrupt_at` (0: never); writes
    ``rank<r>.json`` and, on the main process only, the notebook's checkpoint and metrics."""
    folder = Path(folder)
    cfg = ExperimentConfig.resolve(
        task_a.Settings, data_dir=data_dir, output_dir=str(folder / run),
        weights_dir=str(folder / "weights"), quick=True, epochs=EPOCHS, image_size=32, seed=0,
        batch_size=16, pretrained=False, device="cpu", recipe="parameters",
        backbone="resnet10t", views_per_epoch=0, image_cache="stream", resume=resume)
    task_data = task_a.prepare_data(cfg)
    net = task_a.create_classifier(cfg)
    criterion = task_a.create_loss("focal", task_data.splits.train["label"].to_numpy(),
                                   "weighted_sampler")
    counts = {"losses": 0, "evaluated_rows": 0, "batches_per_epoch": 0, "drop_last": False}
    interrupt = Interrupt(interrupt_at)

    def count_evaluated(module, inputs):
        if not module.training:
            counts["evaluated_rows"] += len(inputs[0])

    def counting_fit(model, *, make_loader, compute_loss, **kwargs):
        loader = make_loader(0)
        counts.update(batches_per_epoch=len(loader), drop_last=loader.drop_last)

        def loss(trained, batch):
            counts["losses"] += 1
            interrupt.tick()
            return compute_loss(trained, batch)

        return train.fit(model, make_loader=make_loader, compute_loss=loss, **kwargs)

    net.register_forward_pre_hook(count_evaluated)
    task_a.fit = counting_fit
    rank = int(os.environ.get("RANK", "0"))
    try:
        result = task_a.train_classifier(net, task_data, cfg, criterion, NAME, views_per_epoch=0)
        counts["history"] = result.history
        threshold, dev_metrics, eval_metrics, eval_probs = task_a.evaluate_model(net, task_data,
                                                                                 cfg)
        counts["state"] = _digest(net.state_dict())
        if train.is_main_process():
            card = task_a.model_card(cfg, net, "single", threshold, dev_metrics,
                                     task_data.splits, "test")
            checkpoints.save_model(net, cfg.weights_dir, NAME, card)
            runs.write_metrics(cfg.run_dir, {**eval_metrics, "dev": dev_metrics},
                               data_dir=cfg.data_dir)
            np.save(cfg.run_dir / "eval_probs.npy", eval_probs)
        counts.update(dev=len(task_data.splits.dev), eval=len(task_data.splits.eval),
                      dev_clean=int((task_data.splits.dev["distortion"] == "clean").sum()))
    finally:
        (folder / f"{run}-rank{rank}.json").write_text(json.dumps(counts))


def launch(*args) -> None:
    """`_train(*args)` on two processes, as a notebook launches its training."""
    notebook_launcher(_train, args=args, num_processes=PROCESSES, use_port=str(train.free_port()))


def linear_on_processes(folder: str) -> None:
    """test_train's linear run with ``fit(num_processes=2)``, as a notebook asks for it; saves
    the weights the caller got back."""
    model = linear_fit(Path(folder), batch_size=16, processes=PROCESSES)
    torch.save({"state": model.state_dict(), "pid": os.getpid()}, Path(folder) / "returned.pt")


def _in_fresh_python(call: str) -> subprocess.CompletedProcess:
    """``test_train_processes.<call>`` in a fresh Python, as in a notebook kernel that has not
    made an Accelerator (the launcher refuses one that has)."""
    script = (f"import sys; sys.path.insert(0, {str(TESTS_DIR)!r}); import test_train_processes; "
              f"test_train_processes.{call}")
    env = {**os.environ, "PYTHONPATH": str(TESTS_DIR.parent)}
    return subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                          text=True, timeout=1800)


def _launch(folder: Path, data_dir: Path, run: str, interrupt_at: int = 0,
            resume: bool = False) -> subprocess.CompletedProcess:
    """`launch` (the whole notebook recipe on two processes) from a fresh Python."""
    return _in_fresh_python(f"launch({str(folder)!r}, {str(data_dir)!r}, {run!r}, "
                            f"{interrupt_at}, {resume})")


def _per_process(rank: dict) -> int:
    """Batches of an epoch each process trains on: accelerate deals the loader's batches out in
    turn and, like the loader, drops an incomplete last round with ``drop_last``."""
    share = rank["batches_per_epoch"] / PROCESSES
    return math.floor(share) if rank["drop_last"] else math.ceil(share)


def _ranks(folder: Path, run: str) -> list[dict]:
    return [json.loads((folder / f"{run}-rank{rank}.json").read_text())
            for rank in range(PROCESSES)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory, sample_root) -> Path:
    """An uninterrupted two-process run."""
    folder = tmp_path_factory.mktemp("reference")
    launched = _launch(folder, sample_root, "run")
    assert launched.returncode == 0, launched.stderr[-3000:]
    return folder


def test_both_processes_train_half_of_the_batches(reference):
    ranks = _ranks(reference, "run")
    per_process = _per_process(ranks[0])
    assert per_process >= 2
    assert [rank["losses"] for rank in ranks] == [EPOCHS * per_process] * PROCESSES
    # Gradients were synchronised: both processes end with the same weights and history.
    assert ranks[0]["state"] == ranks[1]["state"]
    assert ranks[0]["history"] == ranks[1]["history"]


def test_every_evaluated_image_is_predicted_once(reference, sample_root):
    ranks = _ranks(reference, "run")
    first = ranks[0]
    # Each epoch's dev selection, then the final dev and evaluated splits.
    expected = EPOCHS * first["dev_clean"] + first["dev"] + first["eval"]
    assert sum(rank["evaluated_rows"] for rank in ranks) == expected
    assert all(rank["evaluated_rows"] < expected for rank in ranks)
    # The gathered probabilities are those of one process predicting the whole split in order.
    checkpoint = checkpoints.resolve_checkpoint(reference / "weights" / f"{NAME}.pt")
    net, card = checkpoints.load_model(checkpoint)
    cfg = ExperimentConfig.resolve(
        task_a.Settings, data_dir=str(sample_root), output_dir=str(reference / "check"),
        weights_dir=str(reference / "weights"), quick=True, image_size=32, seed=0, batch_size=16,
        pretrained=False, device="cpu", recipe="parameters", backbone="resnet10t",
        views_per_epoch=0, image_cache="stream")
    task_data = task_a.prepare_data(cfg)
    probs = task_a.predict_probs(net, task_data.images["eval"], card.image_size)
    assert len(probs) == first["eval"]
    np.testing.assert_allclose(np.load(reference / "run" / "eval_probs.npy"), probs, atol=1e-6)


def test_only_the_main_process_writes(reference):
    names = {path.name for path in (reference / "weights").iterdir()}
    stamped = sorted(name for name in names if name.startswith(f"{NAME}-"))
    assert [Path(name).suffix for name in stamped] == [".json", ".pt"]  # one checkpoint + card
    assert names == {f"{NAME}.resume.pt", f"{NAME}.best_state.pt", f"{NAME}.latest.json",
                     *stamped}
    assert (reference / "run" / "metrics.json").is_file()


def test_interrupted_two_process_run_resumes_to_the_same_weights(reference, tmp_path,
                                                                 sample_root):
    at = _per_process(_ranks(reference, "run")[0]) + 2  # the second step of epoch 2
    stopped = _launch(tmp_path, sample_root, "run1", interrupt_at=at)
    assert stopped.returncode != 0 and "TrainingInterrupted" in stopped.stderr, \
        stopped.stderr[-3000:]
    # The first process to stop has the launcher stop the other with SIGTERM, which may land
    # one step earlier there; the state then records that step.
    losses = [rank["losses"] for rank in _ranks(tmp_path, "run1")]
    assert max(losses) == at and min(losses) >= at - 1
    assert not (tmp_path / "run1" / "metrics.json").exists()
    state = torch.load(tmp_path / "weights" / f"{NAME}.resume.pt", weights_only=True)
    assert (state["epoch"], state["num_processes"]) == (1, PROCESSES)
    assert state["step_in_epoch"] in (0, 1)

    resumed = _launch(tmp_path, sample_root, "run2", resume=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in resumed.stdout
    again, first = _ranks(tmp_path, "run2"), _ranks(reference, "run")
    assert again[0]["history"] == first[0]["history"]
    assert again[0]["state"] == again[1]["state"] == first[0]["state"]


def test_fit_launches_itself_on_two_processes_and_hands_back_the_weights(tmp_path):
    launched = _in_fresh_python(f"linear_on_processes({str(tmp_path / 'two')!r})")
    assert launched.returncode == 0, launched.stderr[-3000:]
    pids = (tmp_path / "two" / "losses.txt").read_text().split()
    # 64 points in batches of 16: each of two processes computed two of the four batches.
    assert sorted(pids.count(pid) for pid in set(pids)) == [2, 2]
    returned = torch.load(tmp_path / "two" / "returned.pt", weights_only=True)
    assert str(returned["pid"]) not in pids  # the caller only launched them
    # DDP averages the two processes' gradients: one step on 32 points, twice, as one process
    # with batches of 32 takes them.
    whole = linear_fit(tmp_path / "whole", batch_size=32)
    for key, value in whole.state_dict().items():
        torch.testing.assert_close(returned["state"][key], value, rtol=0, atol=1e-6)
    assert not (tmp_path / "two" / "s.launched.pt").exists()
