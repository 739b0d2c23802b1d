"""common.figures: each notebook's figure group, named as the notebooks save them, drawn from a
real report on the embedded sample."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pytest

from common import data, evaluation, figures
from common.distortions import DISTORTIONS


@pytest.fixture(scope="module")
def val_table(sample_root):
    table = data.read_task_b(sample_root, "val")
    keep = table["identity"].isin(sorted(table["identity"].unique())[:6])
    return table[keep].reset_index(drop=True)


def _unit(rows: int, seed: int) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(rows, 16)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def test_gallery_and_pair_figures(val_table):
    embeddings = _unit(len(val_table), 0)  # random: many failures to show
    report = evaluation.gallery_report(val_table, embeddings, val_table, embeddings)
    found = figures.gallery_figures(report, embeddings, val_table, seed=0)
    assert [name for name, _ in found] == ["top1_by_distortion", "verification_roc", "tsne",
                                           "similarity_heatmap", "retrieval_failures"]
    failures = evaluation.retrieval_failures(report, n=8)
    # One row of three images per failure, as plot_retrieval_failures lays them out.
    assert len(found[-1][1].axes) == 3 * len(failures)
    pairs = evaluation.pair_report(val_table, embeddings, val_table, embeddings, n_pairs=60)
    (name, grid), = figures.worst_pairs_figure(pairs, val_table, n=4)
    assert name == "worst_pairs" and len(grid.axes) == 2 * len(evaluation.worst_pairs(pairs, 4))
    plt.close("all")


def test_distortion_examples_show_real_and_synthetic_rows(sample_root):
    table = data.read_task_b(sample_root, "train")
    (name, grid), = figures.distortion_examples(table, n_examples=2, seed=0)
    titles = [axis.get_title() for axis in grid.axes if axis.get_title()]
    columns = 1 + len(DISTORTIONS)
    assert name == "distortions_real_vs_synthetic" and len(titles) == 4 * columns
    assert titles[columns:2 * columns] == [f"synthetic: {c}" for c in ("clean", *DISTORTIONS)]
    plt.close("all")
