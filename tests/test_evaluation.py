"""common.evaluation: pair verification broken down by pair kind."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from common import evaluation


def _frame() -> pd.DataFrame:
    """Two identities, two photos each, every photo with one distorted copy."""
    rows = []
    for person in ("ann", "bob"):
        for photo in ("p1", "p2"):
            clean = f"{person}_{photo}.jpg"
            rows += [(clean, person, "clean", clean), (f"{person}_{photo}_fog.jpg", person,
                                                        "foggy", clean)]
    return pd.DataFrame(rows, columns=["path", "identity", "distortion", "source"])


def test_pair_report_accuracy_by_kind():
    frame = _frame()
    # Copies sit on their photo; the two photos of a person are 0.8 apart; people 1.4 apart.
    photo_points = {"ann_p1": [0.0, 0.0], "ann_p2": [0.8, 0.0], "bob_p1": [0.0, 1.4],
                    "bob_p2": [0.8, 1.4]}
    embeddings = np.array([photo_points[s[:-4]] for s in frame["source"]])
    report = evaluation.pair_report(frame, embeddings, frame, embeddings, n_pairs=40, seed=0)
    table = report.by_kind()
    assert list(table.index) == list(evaluation.PAIR_KINDS)
    assert table["pairs"].sum() == len(report.pairs)
    # Fixed distance 0.5 accepts only same-photo pairs: right on them and on other people,
    # wrong on every pair of two photos of one person.
    assert table.loc["same photo", "accuracy_fixed"] == 1.0
    assert table.loc["same identity", "accuracy_fixed"] == 0.0
    assert table.loc["different identity", "accuracy_fixed"] == 1.0
    assert table.loc["same photo", "mean_distance"] == pytest.approx(0.0)
    flat = report.flat()
    assert flat["pair_accuracy_same_photo"] == table.loc["same photo", "accuracy_calibrated"]
    assert "pair_accuracy_different_identity" in flat
