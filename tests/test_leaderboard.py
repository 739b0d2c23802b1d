"""common.leaderboard.training_overlap: notebook 04 warns when a checkpoint is scored on data it
was trained or selected on, using what the model card records."""
from __future__ import annotations

from dataclasses import replace

from common import cache, data, leaderboard
from common.checkpoints import ModelCard

CARD = ModelCard(task="task_b", kind="embedding", model_kwargs={}, image_size=32, mean=[],
                 std=[], name="x", data_fingerprint="f")


def _val_frame(sample_root):
    return data.read_task_b(sample_root, "val")


def test_card_trained_on_scored_identities_is_flagged(sample_root):
    frame = _val_frame(sample_root)
    scored = sorted(frame["identity"].unique())
    train = sorted(data.read_task_b(sample_root, "train")["identity"].unique())
    card = replace(CARD, train_identities=train[:5] + scored[:2])
    warning = leaderboard.training_overlap(card, frame)
    assert warning.startswith(f"trained or selected on 2 of the {len(scored)} identities")
    assert str(scored[:2]) in warning
    assert leaderboard.training_overlap(replace(card, train_identities=train), frame) is None


def test_card_whose_fingerprint_is_the_scored_files_is_flagged(sample_root):
    frame = _val_frame(sample_root)
    card = replace(CARD, train_identities=[],
                   data_fingerprint=cache.compute_fingerprint(frame["path"].tolist()))
    assert "exactly the files it was trained on" in leaderboard.training_overlap(card, frame)


def test_card_without_training_identities_is_said_unchecked(sample_root):
    warning = leaderboard.training_overlap(CARD, _val_frame(sample_root))
    assert "cannot be checked" in warning
