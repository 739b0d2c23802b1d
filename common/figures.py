"""The notebooks' figure groups, built from their reports: one call per group, the same figures
wherever a report is shown (notebooks 01-04).

Each function returns ``[(file stem, Figure), ...]``; the notebook saves and shows every pair with
`plots.save_and_show`, so the executed notebook, its HTML export and the PNGs agree. Drawing one
figure is `common.plots`; choosing what to draw for a report is here.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from common import data, distortions, evaluation, plots, task_a

__all__ = ["worst_errors_figure", "retrieval_failures_figure", "distortion_examples",
           "task_a_figures", "gallery_figures", "worst_pairs_figure"]

Figures = list[tuple[str, Figure]]


def worst_errors_figure(frame: pd.DataFrame, probs: np.ndarray, threshold: float, n: int,
                        title: str) -> Figure | None:
    """The most confidently wrong Task A images with P(female) and distortion; None if none."""
    errors = task_a.worst_errors(frame, probs, threshold, n=n).reset_index(drop=True)
    if not len(errors):
        return None
    return plots.plot_image_grid(
        evaluation.load_rows(errors, range(len(errors))),
        [f"{g} p(f)={p:.2f} {d}" for g, p, d in zip(errors["gender"], errors["prob"],
                                                    errors["distortion"])],
        ncols=8, title=title)


def retrieval_failures_figure(report: evaluation.GalleryReport, frame: pd.DataFrame, n: int,
                              title: str = "Retrieval failures") -> Figure | None:
    """Wrong retrievals (query, predicted, true identity), largest margin first; None if none."""
    failures = evaluation.retrieval_failures(report, n=n)
    if not len(failures):
        return None
    return plots.plot_retrieval_failures(
        evaluation.load_rows(frame, failures["query_row"]),
        evaluation.load_rows(frame, failures["predicted_row"]),
        evaluation.load_rows(frame, failures["true_row"]),
        captions=[f"{q} -> {p} ({d})" for q, p, d in zip(
            failures["identity"], failures["predicted_identity"], failures["distortion"])],
        title=title)


def distortion_examples(table: pd.DataFrame, n_examples: int, seed: int) -> Figures:
    """Notebook 00: real FACECOM copies of a few clean photos beside `common.distortions`."""
    clean = table[table["distortion"] == "clean"]
    examples = clean.iloc[np.random.default_rng(seed).choice(len(clean), n_examples,
                                                              replace=False)]
    images, titles = [], []
    columns = ("clean", *distortions.DISTORTIONS)
    for _, row in examples.iterrows():
        real = table[table["source"] == row["path"]].set_index("distortion")["path"]
        original = data.load_image(row["path"])
        images += [original] + [data.load_image(real[name]) if name in real else original * 0
                                for name in distortions.DISTORTIONS]
        images += [original] + [distortions.apply_distortion(original, name, seed=seed)
                                for name in distortions.DISTORTIONS]
        titles += [f"{row['identity'][:14]} real: {c}" for c in columns]
        titles += [f"synthetic: {c}" for c in columns]
    return [("distortions_real_vs_synthetic", plots.plot_image_grid(
        images, titles, ncols=len(columns),
        title="FACECOM distortions (real) vs common.distortions (synthetic)"))]


def task_a_figures(metrics: dict, frame: pd.DataFrame, probs: np.ndarray,
                   threshold: float) -> Figures:
    """Notebook 01: confusion matrix, ROC and PR curves of the clean images, accuracy per
    distortion and the worst errors of the evaluated split."""
    clean = (frame["distortion"] == "clean").to_numpy()
    labels = frame["label"].to_numpy()
    found = [("confusion_matrix", plots.plot_confusion_matrix(metrics["confusion_matrix"],
                                                              task_a.CLASS_NAMES)),
             ("roc", plots.plot_roc(labels[clean], probs[clean])),
             ("pr_curve", plots.plot_pr_curve(labels[clean], probs[clean])),
             ("accuracy_by_distortion", plots.plot_bar_by_distortion(
                 metrics["accuracy_by_distortion"], "accuracy"))]
    errors = worst_errors_figure(frame, probs, threshold, n=16, title="worst errors")
    return found + ([("worst_errors", errors)] if errors is not None else [])


def gallery_figures(report: evaluation.GalleryReport, embeddings: np.ndarray,
                    frame: pd.DataFrame, seed: int) -> Figures:
    """Notebooks 02 and 03: top-1 per distortion, the verification ROC, a t-SNE of the
    embeddings, the similarity of the 12 largest identities and the worst retrievals."""
    largest = frame["identity"].value_counts().index[:12]
    subset = frame["identity"].isin(largest).to_numpy()
    identities = frame["identity"].to_numpy()
    found = [
        ("top1_by_distortion", plots.plot_bar_by_distortion(report.eval["top1_by_distortion"],
                                                            "top-1")),
        ("verification_roc", plots.plot_roc(report.verification_same, report.verification_scores,
                                            title="Verification view (query vs identity)")),
        ("tsne", plots.plot_tsne(embeddings, identities, frame["distortion"].to_numpy(),
                                 top_n=20, seed=seed)),
        ("similarity_heatmap", plots.plot_similarity_heatmap(embeddings[subset],
                                                             identities[subset])),
    ]
    failures = retrieval_failures_figure(report, frame, n=8)
    return found + ([("retrieval_failures", failures)] if failures is not None else [])


def worst_pairs_figure(pairs: evaluation.PairReport, frame: pd.DataFrame,
                       n: int = 8) -> Figures:
    """Notebook 03: the misjudged pairs of the decision the card keeps, each with its
    distance and both images' distortions."""
    worst = evaluation.worst_pairs(pairs, n=n)
    if not len(worst):
        return []
    distortion = frame["distortion"].to_numpy()
    images: Sequence[np.ndarray] = (evaluation.load_rows(frame, worst["i"])
                                    + evaluation.load_rows(frame, worst["j"]))
    captions = ([f"{'same' if s else 'diff'} d={d:.2f} {distortion[i]}" for s, d, i in
                 zip(worst["same"], worst["distance"], worst["i"])]
                + [str(distortion[j]) for j in worst["j"]])
    return [("worst_pairs", plots.plot_image_grid(
        images, captions, ncols=len(worst),
        title="worst misjudged pairs (top: first, bottom: second image; d: distance)"))]
