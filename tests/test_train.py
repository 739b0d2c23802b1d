"""common.train: the loop learns, selects on dev, stops early, and resumes to identical results."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from common.config import seed_everything
from common.experiment import make_loader
from common.train import TrainingInterrupted, atomic_save, fit


def _problem(seed: int = 0):
    """Two Gaussian blobs; the dev set is drawn independently of the train set."""
    rng = np.random.default_rng(seed)

    def draw(n):
        labels = rng.integers(0, 2, n)
        points = rng.normal(0, 1, (n, 8)) + labels[:, None] * 1.5
        return torch.tensor(points, dtype=torch.float32), torch.tensor(labels)

    return draw(256), draw(128)


def _run(tmp_path, *, resume=False, stop_after_steps=None, epochs=4, workers=0, patience=None):
    seed_everything(0)
    (x, y), (dev_x, dev_y) = _problem()
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 2))
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.02)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.7)
    dataset = TensorDataset(x, y)

    def evaluate(m):
        accuracy = (m(dev_x).argmax(1) == dev_y).float().mean().item()
        return {"accuracy": accuracy}

    return model, fit(
        model, make_loader=lambda epoch: make_loader(dataset, 32, shuffle=True, seed=3,
                                                     epoch=epoch, num_workers=workers),
        compute_loss=lambda m, batch: nn.functional.cross_entropy(m(batch[0]), batch[1]),
        evaluate=evaluate, optimizer=optimizer, scheduler=scheduler, epochs=epochs,
        monitor="accuracy", resume_path=tmp_path / "state.pt", best_path=tmp_path / "best.pt",
        resume=resume, stop_after_steps=stop_after_steps, progress=False, patience=patience)


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


@pytest.mark.parametrize("stop_after", [3, 8, 13])  # mid-epoch, exactly an epoch end, later
def test_interrupt_and_resume_matches_uninterrupted(tmp_path, stop_after):
    reference_model, reference = _run(tmp_path / "reference")
    with pytest.raises(TrainingInterrupted, match="resume=True"):
        _run(tmp_path / "resumed", stop_after_steps=stop_after)
    assert (tmp_path / "resumed" / "state.pt").exists()
    resumed_model, resumed = _run(tmp_path / "resumed", resume=True)
    assert resumed.resumed_from_epoch is not None
    assert resumed.history == reference.history
    for key, value in reference_model.state_dict().items():
        assert torch.equal(value, resumed_model.state_dict()[key]), key


def test_resume_with_worker_processes(tmp_path):
    _, reference = _run(tmp_path / "reference", workers=2, epochs=2)
    with pytest.raises(TrainingInterrupted):
        _run(tmp_path / "resumed", stop_after_steps=5, workers=2, epochs=2)
    _, resumed = _run(tmp_path / "resumed", resume=True, workers=2, epochs=2)
    assert resumed.history == reference.history


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
