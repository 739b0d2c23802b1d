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
           "task_a_figures", "gallery_figures", "switch_figures", "worst_pairs_figure"]

Figures = list[tuple[str, Figure]]
TSNE_POINTS = 1000  # a t-SNE of more points takes minutes on a 2-core CPU and shows no more


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


def retrieval_failures_figure(table: pd.DataFrame, frame: pd.DataFrame, n: int,
                              title: str = "Retrieval failures") -> Figure | None:
    """Wrong answers of a retrieval table over `frame` (query, predicted, true identity; the
    answering channel too for a switch's table), largest margin first; None if none."""
    failures = evaluation.retrieval_failures(table, n=n)
    if not len(failures):
        return None
    channels = (failures["channel"] if "channel" in failures
                else pd.Series("", index=failures.index))
    return plots.plot_retrieval_failures(
        evaluation.load_rows(frame, failures["query_row"]),
        evaluation.load_rows(frame, failures["predicted_row"]),
        evaluation.load_rows(frame, failures["true_row"]),
        captions=[f"{q} -> {p} ({d}{', by ' + c if c else ''})" for q, p, d, c in zip(
            failures["identity"], failures["predicted_identity"], failures["distortion"],
            channels)],
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
                   threshold: float,
                   features: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
                   seed: int = 0) -> Figures:
    """Notebook 01: confusion matrix, ROC and PR curves of the clean images, accuracy per
    distortion (with its 95 % intervals), the worst errors of the evaluated split and, given
    the `features` each head reads on its rows (`task_a.classifier_features`), their t-SNE by
    gender and distortion, one per head (at most `TSNE_POINTS` rows each, drawn with `seed`)."""
    clean = (frame["distortion"] == "clean").to_numpy()
    labels = frame["label"].to_numpy()
    found = [("confusion_matrix", plots.plot_confusion_matrix(metrics["confusion_matrix"],
                                                              task_a.CLASS_NAMES)),
             ("roc", plots.plot_roc(labels[clean], probs[clean])),
             ("pr_curve", plots.plot_pr_curve(labels[clean], probs[clean])),
             ("accuracy_by_distortion", plots.plot_bar_by_distortion(
                 metrics["accuracy_by_distortion"], "accuracy",
                 title="Accuracy by distortion (95 % intervals over identities)",
                 intervals=metrics["accuracy_by_distortion_ci95"]))]
    for number, (head, (rows, vectors)) in enumerate((features or {}).items()):
        if len(rows) < 10:  # a head that answered (almost) nothing has no picture to show
            continue
        drawn = np.sort(np.random.default_rng(seed).permutation(len(rows))[:TSNE_POINTS])
        picked = rows[drawn]
        found.append(("features_tsne" + ("" if number == 0 else "_" + head.replace(" ", "_")),
                      plots.plot_tsne(
                          vectors[drawn], np.asarray(task_a.CLASS_NAMES)[labels[picked]],
                          frame["distortion"].to_numpy()[picked], top_n=len(task_a.CLASS_NAMES),
                          seed=seed, colour_by="gender", title="t-SNE of what the gender "
                          + ("classifier reads" if head == "classifier" else
                             f"probe's {head.replace(' ', '-')} head reads ({len(rows)} rows)"))))
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
    failures = retrieval_failures_figure(report.table, frame, n=8)
    return found + ([("retrieval_failures", failures)] if failures is not None else [])


def switch_figures(switch: evaluation.SwitchReport, identity: np.ndarray, frame: pd.DataFrame,
                   seed: int) -> Figures:
    """Notebooks 02 and 03, with a `fusion.CopySwitch`: top-1 per distortion of both protocols
    through it, a t-SNE of the identity channel alone (`identity`: the unit face descriptors of
    `frame`'s rows, what answers people), and the failures split by what was missed: copies
    (official queries) and people (the query's own photo removed)."""
    intervals = switch.intervals()
    found = [
        ("switch_top1_by_distortion", plots.plot_bar_by_distortion(
            {"official": switch.eval["top1_by_distortion"],
             "own photo removed": switch.hard["top1_by_distortion"]}, "top-1",
            title="Copy-or-identity switch: top-1 by distortion (95 % intervals over identities)",
            intervals={"official": intervals["switch_top1_by_distortion_ci95"],
                       "own photo removed": intervals["switch_top1_hard_by_distortion_ci95"]})),
        ("identity_channel_tsne", plots.plot_tsne(
            identity, frame["identity"].to_numpy(), frame["distortion"].to_numpy(), top_n=20,
            seed=seed, title="t-SNE of the identity channel (face descriptor)")),
    ]
    for name, protocol, title in (
            ("copy_missed", "eval", "Copy missed: official queries the switch answered wrong"),
            ("person_missed", "hard", "Person missed: wrong once the query's own photo is "
                                      "removed")):
        failures = retrieval_failures_figure(switch.tables[protocol], frame, n=8, title=title)
        found += [(name, failures)] if failures is not None else []
    return found


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
