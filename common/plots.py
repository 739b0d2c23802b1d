"""Figures for the notebooks: confusion matrices, curves, t-SNE, image grids, distortion tables.

Every `plot_*` function builds and returns a `matplotlib.figure.Figure` and never calls
`plt.show()`. Notebooks pass it to `save_and_show`, which writes the PNG into the run folder and
displays that saved file, so the executed notebook, its HTML export and the PNG always agree
(see STYLE.md 2.2). No backend is forced here: ipykernel picks its inline backend itself.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.container import BarContainer
from matplotlib.figure import Figure
from sklearn.manifold import TSNE
from sklearn.metrics import PrecisionRecallDisplay, RocCurveDisplay, auc

__all__ = [
    "save_and_show", "plot_confusion_matrix", "plot_roc", "plot_pr_curve",
    "plot_training_curves", "plot_tsne", "plot_similarity_heatmap", "plot_image_grid",
    "plot_retrieval_failures", "plot_distance_histograms", "plot_distortion_heatmap",
    "plot_bar_by_distortion",
]

# Marker per distortion for t-SNE; clean images are round.
_MARKERS = {"clean": "o", "blurred": "s", "foggy": "^", "lowlight": "v", "noisy": "D",
            "rainy": "P", "resized": "X", "sunny": "*"}


def save_and_show(fig: Figure, path: str | Path) -> str:
    """Save `fig` as PNG (dpi 120, tight), close it, and display the saved file under IPython.

    Returns:
        The PNG path as `str`. Parent folders are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
    try:
        from IPython import get_ipython
        from IPython.display import Image, display
    except ImportError:  # plain Python without IPython: saving is all there is to do
        return str(path)
    if get_ipython() is not None:
        display(Image(filename=str(path)))
    return str(path)


def plot_confusion_matrix(cm: Sequence[Sequence[int]] | np.ndarray,
                          class_names: Sequence[str] = ("male", "female"),
                          title: str = "Confusion matrix") -> Figure:
    """Counts and row-normalised rates (recall per true class) side by side; 2 axes."""
    cm = np.asarray(cm, dtype=float)
    rates = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for ax, data, fmt, name in ((axes[0], cm, ".0f", "counts"),
                                (axes[1], rates, ".2f", "row-normalised")):
        sns.heatmap(data, annot=True, fmt=fmt, cmap="Blues", cbar=False, square=True, ax=ax,
                    xticklabels=class_names, yticklabels=class_names,
                    vmin=0, vmax=1 if data is rates else None)
        ax.set(xlabel="predicted", ylabel="true", title=name)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def _target_ax(ax, figsize):
    if ax is None:
        return plt.subplots(figsize=figsize)
    return ax.figure, ax


def plot_roc(labels: Sequence[int] | None = None, scores: Sequence[float] | None = None, *,
             fpr: Sequence[float] | None = None, tpr: Sequence[float] | None = None,
             label: str | None = None, title: str = "ROC", ax=None) -> Figure:
    """ROC curve from labels+scores or a precomputed fpr/tpr; pass `ax` to overlay models."""
    fig, ax = _target_ax(ax, (4.5, 4.5))
    if fpr is not None and tpr is not None:
        fpr, tpr = np.asarray(fpr, float), np.asarray(tpr, float)
        RocCurveDisplay(fpr=fpr, tpr=tpr, roc_auc=auc(fpr, tpr), name=label).plot(ax=ax)
        ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    elif labels is not None and scores is not None:
        RocCurveDisplay.from_predictions(labels, scores, name=label, ax=ax,
                                         plot_chance_level=not ax.lines)
    else:
        raise ValueError("plot_roc: pass labels and scores, or fpr and tpr")
    ax.set_title(title)
    return fig


def plot_pr_curve(labels: Sequence[int], scores: Sequence[float], label: str | None = None,
                  title: str = "Precision-recall", ax=None) -> Figure:
    """Precision-recall curve with average precision in the legend; pass `ax` to overlay."""
    fig, ax = _target_ax(ax, (4.5, 4.5))
    PrecisionRecallDisplay.from_predictions(labels, scores, name=label, ax=ax,
                                            plot_chance_level=not ax.lines)
    ax.set_title(title)
    return fig


def plot_training_curves(history: Sequence[Mapping[str, float]] | pd.DataFrame,
                         title: str = "Training") -> Figure:
    """Loss panel (`*_loss` keys) and metric panel (other numeric keys) per epoch; 2 axes.

    Keys named `epoch` or containing `lr` are not plotted; the x axis is `epoch` when present. A
    sweep instead of epochs (rows with a `candidate` label, e.g. `task_a.fit_probe`'s
    regularisation strengths) is plotted against those labels.
    """
    df = pd.DataFrame(history)
    if df.empty:
        raise ValueError("plot_training_curves: history is empty; train at least one epoch")
    x = df["epoch"] if "epoch" in df else pd.Series(np.arange(1, len(df) + 1))
    xlabel = "candidate" if "candidate" in df else "epoch"
    numeric = [c for c in df.select_dtypes("number").columns if c != "epoch" and "lr" not in c]
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, cols, name in ((ax_loss, [c for c in numeric if c.endswith("loss")], "loss"),
                           (ax_metric, [c for c in numeric if not c.endswith("loss")], "metric")):
        for col in cols:
            ax.plot(x, df[col], marker="o", ms=3, label=col)
        ax.set(xlabel=xlabel, ylabel=name)
        if "candidate" in df:  # long sweeps get slanted labels
            slanted = len(df) > 6
            ax.set_xticks(x, df["candidate"], rotation=45 if slanted else 0,
                          ha="right" if slanted else "center")
        if cols:
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no {name} recorded", ha="center", transform=ax.transAxes)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_tsne(embeddings: np.ndarray, identities: Sequence,
              distortions: Sequence[str] | None = None, top_n: int = 20, seed: int = 0,
              title: str = "t-SNE of embeddings", colour_by: str = "identity") -> Figure:
    """2-D t-SNE of the `top_n` largest identities: colour = identity, marker = distortion.
    `identities` may hold any labels (e.g. gender); `colour_by` names them in the legend.

    Only the largest identities are kept because 20 colours are about the limit of legibility;
    perplexity is capped below a third of the points so small sets still run. Barnes-Hut t-SNE
    (`benchmarks/results/tsne.md`: 2.5-4x faster than exact from 150 to 1,000 points).
    """
    ids = pd.Series(np.asarray(identities).astype(str))
    keep = ids.isin(ids.value_counts().index[:top_n]).to_numpy()
    points = np.asarray(embeddings, dtype=np.float32)[keep]
    if len(points) < 3:
        raise ValueError(f"plot_tsne: {len(points)} points after keeping the top {top_n} "
                         f"identities; need at least 3")
    xy = TSNE(n_components=2, perplexity=min(30.0, (len(points) - 1) / 3), init="pca",
              random_state=seed).fit_transform(points)
    df = pd.DataFrame({"x": xy[:, 0], "y": xy[:, 1], colour_by: ids[keep].to_numpy()})
    style = None
    if distortions is not None:
        df["distortion"] = np.asarray(distortions, str)[keep]
        style = "distortion"
    fig, ax = plt.subplots(figsize=(7.5, 6))
    markers = {d: _MARKERS.get(d, "o") for d in df["distortion"].unique()} if style else True
    groups = df[colour_by].nunique()  # tab20 pairs light and dark shades of one hue
    palette = "tab10" if groups <= 10 else "tab20" if groups <= 20 else "husl"
    sns.scatterplot(data=df, x="x", y="y", hue=colour_by, style=style, markers=markers,
                    palette=palette, s=40, ax=ax)
    ax.legend(bbox_to_anchor=(1.02, 1), loc="upper left", fontsize=7, ncol=2)
    ax.set(title=title, xticks=[], yticks=[], xlabel="", ylabel="")
    return fig


def plot_similarity_heatmap(embeddings: np.ndarray, labels: Sequence,
                            title: str = "Cosine similarity") -> Figure:
    """Cosine-similarity matrix with rows sorted by label, so same-label blocks show up."""
    order = np.argsort(np.asarray(labels).astype(str), kind="stable")
    x = np.asarray(embeddings, dtype=np.float32)[order]
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    names = np.asarray(labels).astype(str)[order]
    fig, ax = plt.subplots(figsize=(7, 6))
    sns.heatmap(x @ x.T, vmin=-1, vmax=1, cmap="vlag", square=True, ax=ax,
                xticklabels=names, yticklabels=names)
    ax.set_title(title)
    return fig


def plot_image_grid(images: Sequence[np.ndarray], titles: Sequence[str] | None = None,
                    ncols: int = 6, title: str | None = None) -> Figure:
    """Grid of RGB uint8 images (worst errors, distortion samples); one axes per cell."""
    if not len(images):
        raise ValueError("plot_image_grid: no images to show")
    nrows = math.ceil(len(images) / ncols)
    # constrained layout: tight_layout lets a row's titles slide under the images above it
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.2 * ncols, 2.4 * nrows), squeeze=False,
                             layout="constrained")
    for k, ax in enumerate(axes.flat):
        ax.axis("off")
        if k < len(images):
            ax.imshow(images[k])
            if titles is not None:
                ax.set_title(titles[k], fontsize=8)
    if title:
        fig.suptitle(title)
    return fig


def plot_retrieval_failures(query_imgs: Sequence[np.ndarray], wrong_imgs: Sequence[np.ndarray],
                            right_imgs: Sequence[np.ndarray],
                            captions: Sequence[str] | None = None,
                            title: str = "Retrieval failures") -> Figure:
    """One row per failed query: the query, the wrong gallery match, the true reference."""
    n = len(query_imgs)
    if not n or not n == len(wrong_imgs) == len(right_imgs):
        raise ValueError(f"plot_retrieval_failures: need equally many (> 0) query, wrong and "
                         f"right images; got {n}, {len(wrong_imgs)}, {len(right_imgs)}")
    fig, axes = plt.subplots(n, 3, figsize=(6.6, 2.3 * n), squeeze=False)
    for r in range(n):
        for c, (img, head) in enumerate(((query_imgs[r], "query"),
                                         (wrong_imgs[r], "predicted (wrong)"),
                                         (right_imgs[r], "true reference"))):
            axes[r, c].imshow(img)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(head, fontsize=9)
        if captions is not None:
            axes[r, 0].set_ylabel(captions[r], fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_distance_histograms(distances: Sequence[float], is_same: Sequence[int],
                             thresholds: Mapping[str, float] | None = None,
                             xlabel: str = "distance",
                             title: str = "Same vs different pairs") -> Figure:
    """Overlaid histograms of same / different pair scores with labelled threshold lines."""
    df = pd.DataFrame({xlabel: np.asarray(distances, float),
                       "pair": np.where(np.asarray(is_same).astype(bool), "same", "different")})
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    sns.histplot(data=df, x=xlabel, hue="pair", hue_order=["same", "different"], bins=40,
                 stat="density", common_norm=False, element="step", ax=ax)
    colors = sns.color_palette("dark", max(1, len(thresholds or {})))
    for color, (name, value) in zip(colors, (thresholds or {}).items()):
        ax.axvline(value, color=color, ls="--", lw=1.2, label=f"{name} = {value:.3f}")
    if thresholds:
        ax.legend(handles=ax.get_legend().legend_handles + ax.lines[-len(thresholds):],
                  labels=["same", "different"] + [ln.get_label()
                                                  for ln in ax.lines[-len(thresholds):]],
                  fontsize=8)
    ax.set_title(title)
    return fig


def plot_distortion_heatmap(table: pd.DataFrame, title: str = "Top-1 by distortion",
                            fmt: str = ".3f", vmin: float = 0.0, vmax: float = 1.0) -> Figure:
    """Annotated heatmap of a models x distortions table (rows = models)."""
    fig, ax = plt.subplots(figsize=(1.1 * table.shape[1] + 2.5, 0.6 * table.shape[0] + 1.8))
    sns.heatmap(table.astype(float), annot=True, fmt=fmt, cmap="viridis", vmin=vmin, vmax=vmax,
                ax=ax, cbar_kws={"shrink": 0.8})
    ax.set(title=title, xlabel="", ylabel="")
    ax.tick_params(axis="x", rotation=30)
    return fig


def plot_bar_by_distortion(values: Mapping[str, float] | Mapping[str, Mapping[str, float]],
                           ylabel: str = "top-1", title: str = "By distortion",
                           intervals: Mapping | None = None) -> Figure:
    """Bars per distortion, from `{distortion: value}` or grouped `{model: {distortion: value}}`;
    `intervals` (the same shape, ``[low, high]`` or None per bar) as error bars, the values
    then written inside the bars."""
    grouped = all(isinstance(v, Mapping) for v in values.values())

    def table(of: Mapping) -> pd.DataFrame:
        return pd.DataFrame(of) if grouped else pd.DataFrame({ylabel: pd.Series(of)})

    df = table(values)
    errors = None
    if intervals is not None:
        bounds = table(intervals).reindex(index=df.index, columns=df.columns)
        ends = [bounds.map(lambda pair, end=end: np.nan if not isinstance(pair, (list, tuple))
                           else pair[end]).astype(float) for end in (0, 1)]
        # pandas' asymmetric error bars: (columns, [below, above], rows)
        errors = np.stack([[(df[c] - ends[0][c]).to_numpy(), (ends[1][c] - df[c]).to_numpy()]
                           for c in df.columns]).clip(min=0)
    fig, ax = plt.subplots(figsize=(1.0 * len(df) + 2.5, 3.8))
    df.plot.bar(ax=ax, legend=False, rot=30, width=0.8, yerr=errors, capsize=3,
                error_kw={"elinewidth": 1, "ecolor": "0.2"})
    for container in ax.containers:
        if isinstance(container, BarContainer):
            ax.bar_label(container, fmt="%.2f", fontsize=7,
                         label_type="edge" if errors is None else "center")
    if grouped:  # beside the axes: inside, it hides the bars it names
        ax.legend(bbox_to_anchor=(1.01, 1), loc="upper left", fontsize=8)
    ax.set(ylabel=ylabel, title=title, xlabel="")
    return fig
