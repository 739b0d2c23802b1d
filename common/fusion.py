"""A learned similarity plus a weighted extra channel, and the face rule built on both.

Two channels join Task B's learned embedding: the copy detector (`models.copy_descriptor`,
computed inside the network) and a face descriptor (`common.face_descriptor`, computed beside it).
Both join it one way, `fuse`: ``[sqrt(1 - w) a, sqrt(w) b]`` of unit rows is again a unit row
whose cosine is ``(1 - w) cos_a + w cos_b``, so the gallery protocol and the cosine thresholds
need no change. `choose_weight` picks ``w`` on dev by a score the caller passes
(`evaluation.dev_scores`), which keeps this module below the reports that use its face rule.

`FaceRule` uses a face descriptor for pairs instead: same when the embeddings are close *or* the
descriptors agree. It belongs to the model: fitted on dev pairs (`fit_face_rule`), saved in the
model card as ``face_rule`` and applied by `common.predict`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

__all__ = ["COPY_WEIGHTS", "DESCRIPTOR_WEIGHTS", "fuse", "choose_weight", "FaceRule",
           "fit_face_rule"]

COPY_WEIGHTS = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)  # copy-detector weights tried on dev
DESCRIPTOR_WEIGHTS = (0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8)  # face-descriptor weights tried on dev

Rows = TypeVar("Rows", np.ndarray, torch.Tensor)


def _weighted_concat(first: Rows, second: Rows, weight: float) -> Rows:
    """``[sqrt(1 - w) first, sqrt(w) second]``, also at ``w = 0`` (the dev table's first row)."""
    is_tensor = isinstance(first, torch.Tensor)
    second = second.to(first.dtype) if is_tensor else second.astype(first.dtype)
    parts = [first * (1.0 - weight) ** 0.5, second * weight ** 0.5]
    return torch.cat(parts, dim=1) if is_tensor else np.hstack(parts)


def fuse(first: Rows, second: Rows, weight: float) -> Rows:
    """(N, D1) and (N, D2) unit rows (arrays or tensors) -> (N, D1 + D2) unit rows whose cosine
    is ``(1 - weight) * cos_first + weight * cos_second``.

    ``weight = 0`` returns `first` itself: an unfused model keeps its dimension, so its card and
    a saved gallery index stay valid.

    Raises:
        ValueError: `weight` is outside [0, 1].
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight {weight} must be in [0, 1]")
    if weight == 0.0:
        return first
    return _weighted_concat(first, second, weight)


def choose_weight(first: np.ndarray, second: np.ndarray, candidates: Sequence[float],
                  score: Callable[[np.ndarray], dict], key: str, name: str = "weight"
                  ) -> tuple[float, pd.DataFrame]:
    """The candidate weight of `second` whose fused dev rows maximise ``score(fused)[key]``,
    the smallest on ties (the channel has to earn its place).

    Args:
        first / second: unit rows of the dev split, learned and the extra channel.
        candidates: weights to try, ascending.
        score: dev metrics of fused rows, e.g. ``partial(evaluation.dev_scores, dev_frame)``.
        key: the entry of `score`'s dict to maximise. name: the table's column of weights.

    Returns:
        (weight, one table row per candidate: the weight and its `score`).
    """
    rows = [{name: weight, **score(_weighted_concat(first, second, weight))}
            for weight in tqdm(candidates, desc=name, leave=False)]
    table = pd.DataFrame(rows)
    return float(table.loc[table[key].idxmax(), name]), table


@dataclass(frozen=True)
class FaceRule:
    """A pair decision for when one distance cannot serve both kinds of positive pair.

    Same when the embeddings are within `distance` (two views of one photo, which the learned
    part and the copy detector see) **or** a face descriptor found both faces and their cosine is
    at least `descriptor_cosine` (one person on two photos, which only a face-trained model sees).
    """

    distance: float
    descriptor_cosine: float

    def decide(self, distances: np.ndarray, descriptor_cosines: np.ndarray,
               both_found: np.ndarray) -> np.ndarray:
        """Boolean same/different per pair."""
        agree = np.asarray(descriptor_cosines) >= self.descriptor_cosine
        return (np.asarray(distances) <= self.distance) | (np.asarray(both_found, bool) & agree)


def fit_face_rule(distances: np.ndarray, descriptor_cosines: np.ndarray, both_found: np.ndarray,
                  same: np.ndarray, n_candidates: int = 100) -> FaceRule:
    """The `FaceRule` with the best accuracy on (dev) pairs: both thresholds on a grid of
    quantiles of their scores; the first best in (distance, cosine) order on ties."""
    same = np.asarray(same).astype(bool)
    quantiles = np.linspace(0, 1, n_candidates)
    cosines = np.unique(np.quantile(descriptor_cosines[both_found], quantiles)) if np.any(
        both_found) else np.array([np.inf])
    cosines = np.append(cosines, np.inf)  # inf: the descriptor never decides
    best = (-1.0, 0.0, np.inf)
    for distance in np.unique(np.quantile(distances, quantiles)):
        close = distances <= distance
        for cosine in cosines:
            accuracy = float(((close | (both_found & (descriptor_cosines >= cosine))) == same)
                             .mean())
            if accuracy > best[0]:
                best = (accuracy, float(distance), float(cosine))
    return FaceRule(best[1], best[2])
