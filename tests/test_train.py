"""common.train: the loop learns, selects on dev, stops early, and an interruption anywhere (an
exception in the loss, in `evaluate`, in the replay, a real SIGTERM) resumes to the weights of
the uninterrupted run, bit for bit."""
from __future__ import annotations

import math
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Subset, TensorDataset

from common.config import seed_everything
from common.experiment import make_loader
from common.resume import ResumeMismatchError, ResumeStateError
from common.train import TrainingInterrupted, atomic_save, fit, predict_batches
from conftest import Interrupt, sigterm_when_started

STEPS_PER_EPOCH = 6  # `hard` runs: the 192 hardest train points in batches of 32
TESTS_DIR = Path(__file__).resolve().parent


def _problem(seed: int = 0):
    """Two Gaussian blobs; the dev set is drawn independently of the train set."""
    rng = np.random.default_rng(seed)

    def draw(n):
        labels = rng.integers(0, 2, n)
        points = rng.normal(0, 1, (n, 8)) + labels[:, None] * 1.5
        return torch.tensor(points, dtype=torch.float32), torch.tensor(labels)

    return draw(256), draw(128)


def _conv_net() -> nn.Module:
    """A linear layer of the 8 coordinates written as a convolution (each point a 2x2 image of 2
    channels), so that training and resuming go through the CPU's NHWC weights
    (`common.config.place`)."""
    return nn.Sequential(nn.Unflatten(1, (2, 2, 2)), nn.Conv2d(2, 16, 2), nn.Flatten(), nn.ReLU(),
                         nn.Dropout(0.3), nn.Linear(16, 2))


def _replay_interrupted(loader, interrupt: Interrupt):
    """The loader's batches, with `interrupt` ticking before each one (so it fires while the
    resumed epoch is replayed when `at` is small)."""
    for batch in loader:
        interrupt.tick()
        yield batch


def _run(tmp_path, *, resume=False, epochs=4, workers=0, patience=None, hard=False,
         on_loss=None, on_evaluate=None, on_batch=None, fingerprint=None, sleep=0.0,
         started_marker=None):
    """The toy problem trained by `fit`; `on_*` interrupt the loss, `evaluate` or the loader.

    With `hard`, each epoch trains on the 3/4 of the points the model gets most wrong at the
    start of that epoch (like hard negatives: the loader depends on the weights and embeds in
    eval mode), and the loss checks it runs in train mode.
    """
    seed_everything(0)
    (x, y), (dev_x, dev_y) = _problem()
    model = _conv_net()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.02)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    dataset = TensorDataset(x, y)
    steps = {"done": 0}

    def epoch_loader(epoch):
        subset = dataset
        if hard:
            logits = predict_batches(model, make_loader(dataset, 64), progress=False)
            losses = nn.functional.cross_entropy(logits, y, reduction="none")
            subset = Subset(dataset, torch.argsort(losses, descending=True)[:192].tolist())
        loader = make_loader(subset, 32, shuffle=True, seed=3, epoch=epoch,
                             num_workers=workers)
        return _replay_interrupted(loader, on_batch) if on_batch else loader

    def compute_loss(m, batch):
        assert m.training, "training must run in train mode"
        if on_loss:
            on_loss.tick()
        if sleep:
            time.sleep(sleep)
        steps["done"] += 1
        if started_marker and steps["done"] == 3:
            Path(started_marker).touch()
        return nn.functional.cross_entropy(m(batch[0]), batch[1])

    def evaluate(m):
        torch.rand(3)  # evaluation may draw random numbers: they must not leak into training
        if on_evaluate:
            on_evaluate.tick()
        return {"accuracy": (m(dev_x).argmax(1) == dev_y).float().mean().item()}

    return model, fit(
        model, make_loader=epoch_loader, compute_loss=compute_loss, evaluate=evaluate,
        optimizer=optimizer, scheduler=scheduler, epochs=epochs, monitor="accuracy",
        resume_path=tmp_path / "state.pt", best_path=tmp_path / "best.pt", resume=resume,
        progress=False, patience=patience, fingerprint=fingerprint)


def _assert_same(first: tuple, second: tuple) -> None:
    (first_model, first_result), (second_model, second_result) = first, second
    assert first_result.history == second_result.history
    for key, value in first_model.state_dict().items():
        assert torch.equal(value, second_model.state_dict()[key]), key


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run of the `hard` toy problem."""
    return _run(tmp_path_factory.mktemp("reference"), hard=True)


def test_fit_learns_and_keeps_best_checkpoint(tmp_path):
    model, result = _run(tmp_path)
    # Chance is 0.5 on the independently drawn dev set.
    assert result.best_metric >= 0.75
    assert result.best_metric == max(row["dev_accuracy"] for row in result.history)
    best = torch.load(tmp_path / "best.pt", weights_only=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, best[key])


def test_same_seed_gives_identical_history(tmp_path):
    _, first = _run(tmp_path / "a")
    _, second = _run(tmp_path / "b")
    assert first.history == second.history


# mid-epoch, exactly at an epoch end (before its evaluation), in the last epoch
@pytest.mark.parametrize("at_call", [4, STEPS_PER_EPOCH + 1, 3 * STEPS_PER_EPOCH + 5])
def test_interrupted_loss_resumes_to_the_same_weights(tmp_path, reference, at_call):
    with pytest.raises(TrainingInterrupted, match="resume=True"):
        _run(tmp_path, hard=True, on_loss=Interrupt(at_call))
    _assert_same(_run(tmp_path, hard=True, resume=True), reference)


def test_interrupted_evaluate_resumes_to_the_same_weights(tmp_path, reference):
    # Epoch 2's weights are trained when its evaluation is interrupted: the state must say so,
    # not "epoch 2, step 0", which would train epoch 2 twice.
    with pytest.raises(TrainingInterrupted, match=f"epoch 2, step {STEPS_PER_EPOCH}"):
        _run(tmp_path, hard=True, on_evaluate=Interrupt(2))
    model, resumed = _run(tmp_path, hard=True, resume=True)
    assert resumed.resumed_from_epoch == 1
    _assert_same((model, resumed), reference)


def test_interrupted_replay_resumes_to_the_same_weights(tmp_path, reference):
    with pytest.raises(TrainingInterrupted, match="epoch 2, step 3"):
        _run(tmp_path, hard=True, on_loss=Interrupt(STEPS_PER_EPOCH + 4))
    # Interrupted again while the resumed run replays batch 2 of those 3: still step 3.
    with pytest.raises(TrainingInterrupted, match="epoch 2, step 3"):
        _run(tmp_path, hard=True, resume=True, on_batch=Interrupt(2))
    _assert_same(_run(tmp_path, hard=True, resume=True), reference)


def test_other_exception_saves_state_and_keeps_its_type(tmp_path, reference):
    with pytest.raises(MemoryError) as error:
        _run(tmp_path, hard=True, on_evaluate=Interrupt(3, MemoryError("dev set too big")))
    assert any("resume=True" in note for note in error.value.__notes__)
    _assert_same(_run(tmp_path, hard=True, resume=True), reference)


def test_sigterm_to_a_training_process_resumes_to_the_same_weights(tmp_path, reference):
    marker = tmp_path / "started"  # touched at step 3; slow steps leave seconds to signal
    script = (f"import sys; sys.path.insert(0, {str(TESTS_DIR)!r}); from pathlib import Path; "
              f"import test_train; test_train._run(Path({str(tmp_path)!r}), hard=True, "
              f"sleep=0.25, started_marker={str(marker)!r})")
    sigterm_when_started(script, marker, TESTS_DIR.parent, timeout=120)
    _assert_same(_run(tmp_path, hard=True, resume=True), reference)


def test_resume_with_worker_processes(tmp_path):
    reference = _run(tmp_path / "reference", workers=2, epochs=2)
    with pytest.raises(TrainingInterrupted):
        _run(tmp_path / "resumed", on_loss=Interrupt(6), workers=2, epochs=2)
    _assert_same(_run(tmp_path / "resumed", resume=True, workers=2, epochs=2), reference)


def test_resume_of_another_run_is_refused_unless_forced(tmp_path, capsys):
    with pytest.raises(TrainingInterrupted):
        _run(tmp_path, on_loss=Interrupt(3), fingerprint={"config": {"lr": 0.02}, "data": "a"})
    with pytest.raises(ResumeMismatchError, match=r"config\.lr: saved 0\.02, now 0\.05.*force"):
        _run(tmp_path, resume=True, fingerprint={"config": {"lr": 0.05}, "data": "a"})
    model, result = _run(tmp_path, resume="force",
                         fingerprint={"config": {"lr": 0.05}, "data": "a"})
    assert result.resumed_from_epoch == 0 and len(result.history) == 4
    assert "config.lr: saved 0.02, now 0.05" in capsys.readouterr().out


class _RunsCode:
    """Unpickling this touches a file: what a malicious resume state could do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_resume_state_is_loaded_without_running_code(tmp_path):
    marker = tmp_path / "code_ran"
    torch.save({"model": _RunsCode(marker)}, tmp_path / "state.pt")
    with pytest.raises(ResumeStateError, match=r"state\.pt is not a resume state.*resume=False"):
        _run(tmp_path, resume=True)
    assert not marker.exists()


def test_no_improving_epoch_keeps_the_last_weights_not_a_stale_best(tmp_path, capsys):
    seed_everything(0)
    model = nn.Linear(2, 2)
    stale = {key: torch.zeros_like(value) for key, value in model.state_dict().items()}
    atomic_save(stale, tmp_path / "b.pt")  # an earlier run's best weights
    dataset = TensorDataset(torch.ones(8, 2), torch.zeros(8, dtype=torch.long))
    result = fit(model, make_loader=lambda epoch: make_loader(dataset, 4, epoch=epoch),
                 compute_loss=lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]),
                 evaluate=lambda m: {"score": math.nan}, optimizer=torch.optim.SGD(
                     model.parameters(), lr=0.1), epochs=2, monitor="score",
                 resume_path=tmp_path / "s.pt", best_path=tmp_path / "b.pt", progress=False)
    assert result.best_epoch == -1 and not (tmp_path / "b.pt").exists()
    assert not torch.equal(model.weight, stale["weight"])
    assert "no epoch improved dev score" in capsys.readouterr().out


def test_cpu_training_keeps_convolutions_channels_last_with_unchanged_outputs(tmp_path):
    model, result = _run(tmp_path, epochs=1)
    conv = model[1]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert not conv.weight.is_contiguous()  # 16 x 2 x 2 x 2: the two layouts differ
    plain = _conv_net()
    plain.load_state_dict(model.state_dict())
    assert plain[1].weight.is_contiguous()
    (_, _), (dev_x, _) = _problem()
    expected = plain.eval()(dev_x).detach()
    got = predict_batches(model, make_loader(TensorDataset(dev_x), 32), progress=False)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_predict_batches_hands_the_model_back_in_its_mode():
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout(0.5))
    loader = make_loader(TensorDataset(torch.ones(4, 2)), 2)
    predict_batches(model.train(), loader, progress=False)
    assert model.training
    predict_batches(model.eval(), loader, progress=False)
    assert not model.training


def test_early_stopping(tmp_path):
    seed_everything(0)
    model = nn.Linear(2, 2)
    dataset = TensorDataset(torch.zeros(8, 2), torch.zeros(8, dtype=torch.long))
    result = fit(model, make_loader=lambda epoch: make_loader(dataset, 4, epoch=epoch),
                 compute_loss=lambda m, b: nn.functional.cross_entropy(m(b[0]), b[1]),
                 evaluate=lambda m: {"score": 1.0},  # never improves after epoch 1
                 optimizer=torch.optim.SGD(model.parameters(), lr=0.1), epochs=10,
                 monitor="score", patience=2, resume_path=tmp_path / "s.pt",
                 best_path=tmp_path / "b.pt", progress=False)
    assert result.stopped_early and len(result.history) == 3 and result.best_epoch == 1


def test_atomic_save_leaves_no_temp_files(tmp_path):
    atomic_save({"a": torch.ones(2)}, tmp_path / "x.pt")
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]


def linear_fit(folder: Path, batch_size: int, accumulation: int = 1,
               processes: int = 1) -> nn.Module:
    """One epoch of a linear model (no dropout, no batch norm: a batch's mean gradient is the
    mean of its halves') on 64 points; each loss computation appends its process id to
    ``folder/losses.txt``."""
    seed_everything(0)
    (x, y), _ = _problem()
    model = nn.Linear(8, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    dataset = TensorDataset(x[:64], y[:64])
    folder.mkdir(parents=True, exist_ok=True)

    def loss(m, batch):
        with open(folder / "losses.txt", "a") as record:
            record.write(f"{os.getpid()}\n")
        return nn.functional.cross_entropy(m(batch[0]), batch[1])

    fit(model, make_loader=lambda epoch: make_loader(dataset, batch_size, epoch=epoch),
        compute_loss=loss, evaluate=lambda m: {"score": 0.0}, optimizer=optimizer, epochs=1,
        monitor="score", resume_path=folder / "s.pt", best_path=folder / "b.pt",
        progress=False, gradient_accumulation_steps=accumulation, num_processes=processes)
    return model


def test_gradient_accumulation_steps_once_per_group_of_batches(tmp_path):
    whole = linear_fit(tmp_path / "whole", batch_size=32, accumulation=1)
    halves = linear_fit(tmp_path / "halves", batch_size=16, accumulation=2)
    # Two optimiser steps in both runs: two half-batches accumulate into one batch's gradient.
    for key, value in whole.state_dict().items():
        torch.testing.assert_close(halves.state_dict()[key], value, rtol=0, atol=1e-6)
    single = linear_fit(tmp_path / "single", batch_size=16, accumulation=1)
    assert not torch.allclose(single.weight, halves.weight)  # four steps are another run


def test_several_processes_fall_back_to_one_when_cuda_is_in_use(tmp_path, monkeypatch, capsys):
    # A forked process cannot use CUDA that its parent initialised: fit says so and trains here.
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    model = linear_fit(tmp_path, batch_size=16, processes=2)
    assert set((tmp_path / "losses.txt").read_text().split()) == {str(os.getpid())}
    assert "training on one process instead" in capsys.readouterr().out
    single = linear_fit(tmp_path / "single", batch_size=16)
    torch.testing.assert_close(model.weight, single.weight, rtol=0, atol=0)
