"""Tests for common/plots.py: each function returns a Figure with the expected content."""
import time

import numpy as np
import pandas as pd
import pytest
from matplotlib.container import ErrorbarContainer
from matplotlib.figure import Figure

from common import plots

RNG = np.random.default_rng(0)


def _images(n, size=24):
    return [RNG.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def test_save_and_show_writes_png_and_closes(tmp_path):
    import matplotlib.pyplot as plt

    fig = plots.plot_confusion_matrix([[5, 1], [2, 3]])
    out = plots.save_and_show(fig, tmp_path / "deep" / "cm.png")
    assert out == str(tmp_path / "deep" / "cm.png")
    data = (tmp_path / "deep" / "cm.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert fig.number not in plt.get_fignums()


def test_save_and_show_displays_saved_png_under_ipython(tmp_path, monkeypatch):
    IPython = pytest.importorskip("IPython")
    import IPython.display

    shown = []
    # pyplot's first figure registers a display hook with IPython: draw it before faking one
    figure = plots.plot_bar_by_distortion({"foggy": 0.5})
    monkeypatch.setattr(IPython, "get_ipython", lambda: object())
    monkeypatch.setattr(IPython.display, "display", shown.append)
    path = plots.save_and_show(figure, tmp_path / "b.png")
    assert len(shown) == 1 and shown[0].filename == path


def test_confusion_matrix_counts_and_rates():
    fig = plots.plot_confusion_matrix(np.array([[5, 1], [2, 3]]), ("male", "female"))
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    counts = [t.get_text() for t in fig.axes[0].texts]
    rates = [t.get_text() for t in fig.axes[1].texts]
    assert counts == ["5", "1", "2", "3"]
    assert rates == ["0.83", "0.17", "0.40", "0.60"]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["male", "female"]


def test_roc_and_pr_curves_overlay():
    labels, scores = [0, 0, 1, 1, 0, 1], [0.1, 0.4, 0.35, 0.8, 0.2, 0.9]
    fig = plots.plot_roc(labels, scores, label="a")
    ax = fig.axes[0]
    plots.plot_roc(fpr=[0, 0.5, 1], tpr=[0, 1, 1], label="b", ax=ax)
    assert len(fig.axes) == 1
    assert {"a", "b"} <= {ln.get_label().split(" ")[0] for ln in ax.lines}
    with pytest.raises(ValueError, match="fpr and tpr"):
        plots.plot_roc()
    fig = plots.plot_pr_curve(labels, scores, label="a")
    assert len(fig.axes) == 1 and len(fig.axes[0].lines) >= 1


def test_training_curves_split_loss_and_metrics():
    history = [{"epoch": e, "train_loss": 1 / e, "dev_loss": 1.2 / e, "dev_f1_macro": 0.5 + e / 10,
                "lr": 1e-3} for e in (1, 2, 3)]
    fig = plots.plot_training_curves(history)
    ax_loss, ax_metric = fig.axes
    assert [ln.get_label() for ln in ax_loss.lines] == ["train_loss", "dev_loss"]
    assert [ln.get_label() for ln in ax_metric.lines] == ["dev_f1_macro"]
    assert list(ax_loss.lines[0].get_xdata()) == [1, 2, 3]
    with pytest.raises(ValueError, match="empty"):
        plots.plot_training_curves([])
    sweep = [{"epoch": i, "candidate": f"C={c}", "f1_macro": 0.9} for i, c in enumerate((1, 3))]
    ax_metric = plots.plot_training_curves(sweep).axes[1]
    assert [t.get_text() for t in ax_metric.get_xticklabels()] == ["C=1", "C=3"]
    assert ax_metric.get_xlabel() == "candidate"


def test_tsne_fast_and_keeps_top_identities():
    emb = RNG.normal(size=(60, 32))
    ids = np.repeat(np.arange(6), 10)
    ids[:3] = 99  # the smallest identity: top_n=6 must drop it
    dist = np.tile(["clean", "blurred", "foggy"], 20)
    start = time.perf_counter()
    fig = plots.plot_tsne(emb, ids, dist, top_n=6)
    assert time.perf_counter() - start < 10
    ax = fig.axes[0]
    assert sum(len(c.get_offsets()) for c in ax.collections) == 57
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "99" not in legend and {"0", "5", "clean", "foggy"} <= set(legend)


def test_similarity_heatmap_sorted_by_label():
    fig = plots.plot_similarity_heatmap(RNG.normal(size=(6, 4)), ["b", "a", "b", "a", "c", "c"])
    ticks = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert ticks == ["a", "a", "b", "b", "c", "c"]


def test_image_grid_and_retrieval_failures():
    fig = plots.plot_image_grid(_images(7), [f"img {k}" for k in range(7)], ncols=3, title="t")
    assert len(fig.axes) == 9 and sum(bool(ax.images) for ax in fig.axes) == 7
    assert fig.axes[6].get_title() == "img 6"
    fig = plots.plot_retrieval_failures(_images(2), _images(2), _images(2), ["q0", "q1"])
    assert len(fig.axes) == 6 and all(ax.images for ax in fig.axes)
    assert fig.axes[3].get_ylabel() == "q1" and fig.axes[1].get_title() == "predicted (wrong)"
    with pytest.raises(ValueError, match="equally many"):
        plots.plot_retrieval_failures(_images(2), _images(1), _images(2))


def test_image_grid_titles_stay_clear_of_the_row_above():
    fig = plots.plot_image_grid(_images(16, size=224), [f"same d=1.{k:02d}" for k in range(16)],
                                ncols=8, title="worst pairs")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    for above, below in zip(fig.axes[:8], fig.axes[8:]):
        image_bottom = above.images[0].get_window_extent(renderer).y0
        assert below.title.get_window_extent(renderer).y1 <= image_bottom


def test_distance_histograms_with_thresholds():
    d = np.concatenate([RNG.normal(0.4, 0.1, 50), RNG.normal(1.0, 0.1, 50)])
    fig = plots.plot_distance_histograms(d, np.repeat([1, 0], 50),
                                         {"fixed": 0.5, "calibrated": 0.71})
    ax = fig.axes[0]
    assert [ln.get_xdata()[0] for ln in ax.lines] == [0.5, 0.71]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["same", "different", "fixed = 0.500", "calibrated = 0.710"]


def test_distortion_heatmap_and_bars():
    table = pd.DataFrame({"blurred": [0.9, 0.8], "foggy": [0.7, 0.65]}, index=["m1", "m2"])
    fig = plots.plot_distortion_heatmap(table)
    assert [t.get_text() for t in fig.axes[0].texts] == ["0.900", "0.700", "0.800", "0.650"]
    fig = plots.plot_bar_by_distortion({"blurred": 0.9, "foggy": 0.7, "noisy": 0.5})
    assert len(fig.axes[0].patches) == 3
    assert [t.get_text() for t in fig.axes[0].texts] == ["0.90", "0.70", "0.50"]
    fig = plots.plot_bar_by_distortion({"m1": {"blurred": 0.9, "foggy": 0.7},
                                        "m2": {"blurred": 0.8, "foggy": 0.6}})
    assert len(fig.axes[0].patches) == 4 and fig.axes[0].get_legend() is not None
    # intervals: one error bar per bar with an interval, from its low to its high end
    fig = plots.plot_bar_by_distortion({"m1": {"blurred": 0.9, "foggy": 0.7},
                                        "m2": {"blurred": 0.8, "foggy": 0.6}},
                                       intervals={"m1": {"blurred": [0.85, 1.0],
                                                         "foggy": [0.5, 0.75]},
                                                  "m2": {"blurred": None, "foggy": [0.6, 0.6]}})
    bars = [c for c in fig.axes[0].containers if isinstance(c, ErrorbarContainer)]
    ends = sorted(tuple(np.round(np.sort(segment[:, 1]), 3)) for bar in bars
                  for collection in bar.lines[2] for segment in collection.get_segments()
                  if len(segment))  # None: no bar drawn
    assert ends == [(0.5, 0.75), (0.6, 0.6), (0.85, 1.0)]
    assert [t.get_text() for t in fig.axes[0].texts] == ["0.90", "0.70", "0.80", "0.60"]
