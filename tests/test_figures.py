"""common.figures: each notebook's figure group, named as the notebooks save them, drawn from a
real report on the embedded sample."""
from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest

from common import data, evaluation, figures, task_a
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
    failures = evaluation.retrieval_failures(report.table, n=8)
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


def test_switch_figures_split_failures_into_copies_and_people(val_table):
    copy, identity = _unit(len(val_table), 1), _unit(len(val_table), 2)  # random: failures
    switch = evaluation.switch_report(val_table, copy, identity, val_table, copy, identity)
    found = dict(figures.switch_figures(switch, identity, val_table, seed=0))
    assert list(found) == ["switch_top1_by_distortion", "identity_channel_tsne", "copy_missed",
                           "person_missed"]
    for name, protocol in (("copy_missed", "eval"), ("person_missed", "hard")):
        failures = evaluation.retrieval_failures(switch.tables[protocol], n=8)
        labels = [axis.get_ylabel() for axis in found[name].axes if axis.get_ylabel()]
        assert len(found[name].axes) == 3 * len(failures)
        # each caption names the channel that answered that query
        assert [label.rsplit("by ", 1)[1].rstrip(")") for label in labels] == list(
            failures["channel"])
    plt.close("all")


def test_task_a_figures_show_the_classifier_features_by_gender(monkeypatch):
    """Right answers everywhere (so no error grid); the t-SNE draws at most TSNE_POINTS rows,
    coloured by gender name, marked by distortion."""
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1], 60)
    frame = pd.DataFrame({"label": labels, "gender": np.where(labels, "female", "male"),
                          "distortion": np.tile(["clean", "foggy", "sunny"], 40),
                          "path": [f"/x/{i}.jpg" for i in range(120)],
                          "identity": [f"person {i // 3}" for i in range(120)]})
    probs = np.where(labels == 1, 0.9, 0.1)
    features = rng.normal(size=(120, 8)) + 4 * labels[:, None]
    metrics = task_a.evaluate_views(frame, probs, 0.5)
    monkeypatch.setattr(figures, "TSNE_POINTS", 50)
    found = dict(figures.task_a_figures(metrics, frame, probs, 0.5,
                                        {"classifier": (np.arange(120), features)}, seed=0))
    assert list(found) == ["confusion_matrix", "roc", "pr_curve", "accuracy_by_distortion",
                           "features_tsne"]
    axis = found["features_tsne"].axes[0]
    assert sum(len(points.get_offsets()) for points in axis.collections) == 50
    legend = [text.get_text() for text in axis.get_legend().get_texts()]
    assert {"gender", "male", "female", "distortion", "sunny"} <= set(legend)
    assert "features_tsne" not in dict(figures.task_a_figures(metrics, frame, probs, 0.5))
    # A probe with a whole-image head: one t-SNE per head, on the rows each answers, whose
    # labels and markers are those rows' own (the sunny rows here: all of one distortion).
    sunny = np.flatnonzero(frame["distortion"] == "sunny")
    others = np.flatnonzero(frame["distortion"] != "sunny")
    heads = dict(figures.task_a_figures(metrics, frame, probs, 0.5, {
        "face": (others, features[others]), "whole image": (sunny, features[sunny])}, seed=0))
    assert {"features_tsne", "features_tsne_whole_image"} <= set(heads)
    axis = heads["features_tsne_whole_image"].axes[0]
    assert sum(len(points.get_offsets()) for points in axis.collections) == len(sunny) == 40
    legend = {text.get_text() for text in axis.get_legend().get_texts()}
    assert "sunny" in legend and not {"clean", "foggy"} & legend
    plt.close("all")
