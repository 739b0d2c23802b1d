"""Classification, gallery-retrieval and verification metrics, plus seeded pair lists.

Inputs are numpy arrays; outputs are plain dicts of JSON-able numbers (keys follow
scikit-learn: `accuracy`, `precision_macro`, `f1_macro`, `roc_auc`, ...) so they go straight into
metrics.json. Per-query retrieval rows are a DataFrame from `compute_retrieval_table`, summarised
by `summarize_retrieval`; `compute_retrieval_metrics` chains the two for callers that only need
the numbers.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats
from sklearn import metrics as skm

from common import gallery

__all__ = [
    "compute_classification_metrics", "choose_threshold", "compute_retrieval_table",
    "summarize_retrieval", "compute_retrieval_metrics", "compute_verification_metrics",
    "calibrate_threshold", "verification_pairs_from_retrieval", "make_pairs",
    "clustered_interval",
]

THRESHOLD_METRICS = ("f1_macro", "accuracy", "balanced_accuracy", "f1")
INTERVAL_LEVEL = 0.95  # the ``*_ci95`` keys of metrics.json
INTERVAL_RESAMPLES = 2000
# Query rows per similarity block: 2**22 float32 cells = 16 MB, so 3,000 x 2,000 is two blocks.
_BLOCK_CELLS = 2 ** 22


def _check_binary(labels: np.ndarray, probs: np.ndarray, where: str) -> None:
    if labels.shape != probs.shape:
        raise ValueError(f"{where}: labels {labels.shape} and scores {probs.shape} differ in shape")
    if not np.isin(labels, (0, 1)).all():
        raise ValueError(f"{where}: labels must be 0/1, got {np.unique(labels)[:5].tolist()}")


def compute_classification_metrics(labels: Sequence[int], probs: Sequence[float],
                                   threshold: float = 0.5,
                                   class_names: tuple[str, str] = ("male", "female")) -> dict:
    """Binary classification metrics from probabilities of class 1 (female, the positive class).

    A sample is predicted positive when `prob >= threshold`. Per-class keys are named after
    `class_names` (`precision_female`, `recall_male`, `support_female`, ...).

    Returns:
        dict with accuracy, balanced_accuracy, precision/recall/f1 `_macro` and per class,
        roc_auc and average_precision (None when only one class is present), confusion_matrix
        (nested list, rows = true class, columns = predicted), threshold, positive_class,
        n_samples.
    """
    labels, probs = np.asarray(labels).astype(int).ravel(), np.asarray(probs, float).ravel()
    _check_binary(labels, probs, "compute_classification_metrics")
    preds = (probs >= threshold).astype(int)
    p, r, f, support = skm.precision_recall_fscore_support(labels, preds, labels=[0, 1],
                                                           zero_division=0)
    both = len(np.unique(labels)) == 2
    out = {
        "accuracy": float(skm.accuracy_score(labels, preds)),
        "balanced_accuracy": float(np.mean(r[support > 0])) if support.any() else None,
        "precision_macro": float(p.mean()), "recall_macro": float(r.mean()),
        "f1_macro": float(f.mean()),
        "roc_auc": float(skm.roc_auc_score(labels, probs)) if both else None,
        "average_precision": float(skm.average_precision_score(labels, probs)) if both else None,
    }
    for k, name in enumerate(class_names):
        out.update({f"precision_{name}": float(p[k]), f"recall_{name}": float(r[k]),
                    f"f1_{name}": float(f[k]), f"support_{name}": int(support[k])})
    out["confusion_matrix"] = skm.confusion_matrix(labels, preds, labels=[0, 1]).tolist()
    out.update(threshold=float(threshold), positive_class=class_names[1],
               n_samples=int(labels.size))
    return out


def _sweep(pos: np.ndarray, neg: np.ndarray, cands: np.ndarray) -> dict[str, np.ndarray]:
    """Confusion counts for `score >= t` at every candidate t, vectorised by sorting."""
    tp = pos.size - np.searchsorted(np.sort(pos), cands, side="left")
    tn = np.searchsorted(np.sort(neg), cands, side="left")
    fn, fp = pos.size - tp, neg.size - tn
    with np.errstate(divide="ignore", invalid="ignore"):
        f1_pos = np.nan_to_num(2 * tp / (2 * tp + fp + fn))
        f1_neg = np.nan_to_num(2 * tn / (2 * tn + fn + fp))
        tpr = np.nan_to_num(tp / pos.size)
        tnr = np.nan_to_num(tn / neg.size)
    return {"accuracy": (tp + tn) / (pos.size + neg.size), "f1": f1_pos,
            "f1_macro": (f1_pos + f1_neg) / 2, "balanced_accuracy": (tpr + tnr) / 2}


def choose_threshold(labels: Sequence[int], probs: Sequence[float],
                     metric: str = "f1_macro") -> float:
    """Probability threshold maximising `metric` on a dev split (never on the test split).

    Candidates are every distinct probability plus a 0.01 grid; ties go to the candidate closest
    to 0.5, the least surprising choice when the dev split cannot tell them apart.

    Args:
        metric: One of THRESHOLD_METRICS; "f1" is the positive (female) class F1.
    """
    if metric not in THRESHOLD_METRICS:
        raise ValueError(f"choose_threshold: metric={metric!r}; use one of {THRESHOLD_METRICS}")
    labels, probs = np.asarray(labels).astype(int).ravel(), np.asarray(probs, float).ravel()
    _check_binary(labels, probs, "choose_threshold")
    cands = np.unique(np.concatenate([probs, np.round(np.arange(0.01, 1.0, 0.01), 2)]))
    values = _sweep(probs[labels == 1], probs[labels == 0], cands)[metric]
    best = np.flatnonzero(np.isclose(values, values.max(), rtol=0, atol=1e-12))
    return float(cands[best[np.argmin(np.abs(cands[best] - 0.5))]])


def compute_retrieval_table(gallery_embeddings: np.ndarray, gallery_identities: Sequence,
                            query_embeddings: np.ndarray, query_identities: Sequence,
                            query_distortions: Sequence[str] | None = None,
                            query_sources: Sequence[str] | None = None,
                            gallery_sources: Sequence[str] | None = None,
                            aggregate: str = "max", exclude_own_source: bool = False,
                            seed: int = 0) -> pd.DataFrame:
    """Rank gallery identities for every query by cosine similarity; one row per scored query.

    Searched exactly with `gallery.GalleryIndex`, the search `common.predict` uses too, ranking
    every identity in query blocks so memory stays bounded.

    The score of an identity is the max cosine over its gallery references
    (`aggregate="max"`) or the cosine to their normalised mean embedding (`"mean"`).
    With `exclude_own_source=True` (the harder variant) each query's own source image (gallery
    items whose source equals the query's) is removed from the gallery for that query, and only
    queries whose identity keeps at least one reference are scored; with a gallery of clean
    images this means identities with >= 2 clean images.

    Returns:
        DataFrame with columns query_index (row in the inputs), identity, distortion (only when
        given), predicted_identity, predicted_score, runner_up_score (the next identity's, truth
        unseen), true_score, rank (1-based; ties broken like
        argmax, so rank 1 <=> correct), correct, best_other_identity, best_other_score,
        random_other_identity, random_other_score (a seeded uniformly drawn wrong identity),
        predicted_gallery_index and true_gallery_index (best-matching reference, indices into
        the gallery inputs, for failure plots).

    Raises:
        ValueError: If a query identity has no gallery reference at all (named in the message),
            or exclusion is asked for without sources.
    """
    if aggregate not in ("max", "mean"):
        raise ValueError(f"compute_retrieval_table: aggregate={aggregate!r}; use 'max' or 'mean'")
    g_ids = np.asarray(gallery_identities).astype(str)
    q_ids = np.asarray(query_identities).astype(str)
    missing = sorted(set(q_ids) - set(g_ids))
    if missing:
        raise ValueError(f"compute_retrieval_table: {len(missing)} query identities have no "
                         f"gallery reference, e.g. {missing[:5]}; build the gallery from every "
                         f"query identity")
    if exclude_own_source and (query_sources is None or gallery_sources is None):
        raise ValueError("compute_retrieval_table: exclude_own_source=True needs query_sources "
                         "and gallery_sources (the table's `source` column)")
    names = np.unique(g_ids)
    index = gallery.GalleryIndex.build(gallery_embeddings, g_ids, gallery_sources
                                       if exclude_own_source else None, aggregate=aggregate,
                                       kind="exact")
    by_code = np.argsort(np.asarray(index.names))  # columns of `names` -> index codes
    q_code = np.searchsorted(names, q_ids)
    queries = np.asarray(query_embeddings)  # normalised by the index, once
    excluded = np.asarray(query_sources, str) if exclude_own_source else None
    rng = np.random.default_rng(seed)
    rows = []
    block = max(1, _BLOCK_CELLS // max(1, len(g_ids)))
    for lo in range(0, len(queries), block):
        qb, cb = queries[lo:lo + block], q_code[lo:lo + block]
        scores, best_image = index.identity_scores(qb, None if excluded is None
                                                   else excluded[lo:lo + block])
        scores, best_image = scores[:, by_code], best_image[:, by_code]
        ar = np.arange(len(qb))
        true = scores[ar, cb]
        pred = scores.argmax(axis=1)
        cols = np.arange(len(names))[None, :]
        rank = 1 + (scores > true[:, None]).sum(1) + (
            (scores == true[:, None]) & (cols < cb[:, None])).sum(1)
        other = scores.copy()
        other[ar, cb] = -np.inf
        best_other = other.argmax(axis=1)
        runner_up = scores.copy()
        runner_up[ar, pred] = -np.inf
        runner_up = runner_up.max(axis=1) if len(names) > 1 else np.full(len(qb), -np.inf)
        rand_other = (cb + rng.integers(1, max(2, len(names)), size=len(qb))) % len(names)
        for r in np.flatnonzero(np.isfinite(true)):
            p, t = pred[r], cb[r]
            rows.append({
                "query_index": lo + r, "identity": names[t],
                "predicted_identity": names[p], "predicted_score": float(scores[r, p]),
                "runner_up_score": float(runner_up[r]),
                "true_score": float(true[r]), "rank": int(rank[r]), "correct": bool(p == t),
                "best_other_identity": names[best_other[r]],
                "best_other_score": float(other[r, best_other[r]]),
                "random_other_identity": names[rand_other[r]],
                "random_other_score": float(scores[r, rand_other[r]]),
                "predicted_gallery_index": int(best_image[r, p]),
                "true_gallery_index": int(best_image[r, t]),
            })
    table = pd.DataFrame(rows)
    if query_distortions is not None and len(table):
        table.insert(2, "distortion", np.asarray(query_distortions, str)[table["query_index"]])
    table.attrs.update(n_queries_total=len(queries), aggregate=aggregate,
                       exclude_own_source=bool(exclude_own_source))
    return table


def summarize_retrieval(table: pd.DataFrame, k: int = 5) -> dict:
    """JSON-able summary of a `compute_retrieval_table` result.

    Returns:
        dict with top1, top{k}, f1_macro (sklearn macro F1 over the query identities),
        top1_by_distortion and n_queries_by_distortion (empty without a distortion column),
        n_queries (scored), n_queries_excluded, aggregate, exclude_own_source.
    """
    n_total = table.attrs.get("n_queries_total", len(table))
    out = {"top1": None, f"top{k}": None, "f1_macro": None}
    if len(table):
        out.update({
            "top1": float(table["correct"].mean()), f"top{k}": float((table["rank"] <= k).mean()),
            "f1_macro": float(skm.f1_score(table["identity"], table["predicted_identity"],
                                           labels=np.unique(table["identity"]), average="macro",
                                           zero_division=0)),
        })
    by = table.groupby("distortion")["correct"] if "distortion" in table else None
    out["top1_by_distortion"] = {} if by is None else {d: float(v) for d, v in by.mean().items()}
    out["n_queries_by_distortion"] = {} if by is None else {d: int(v)
                                                           for d, v in by.size().items()}
    out.update(n_queries=int(len(table)), n_queries_excluded=int(n_total - len(table)),
               aggregate=table.attrs.get("aggregate"),
               exclude_own_source=table.attrs.get("exclude_own_source"))
    return out


def compute_retrieval_metrics(gallery_embeddings: np.ndarray, gallery_identities: Sequence,
                              query_embeddings: np.ndarray, query_identities: Sequence,
                              query_distortions: Sequence[str] | None = None,
                              query_sources: Sequence[str] | None = None,
                              gallery_sources: Sequence[str] | None = None,
                              aggregate: str = "max", exclude_own_source: bool = False,
                              k: int = 5) -> dict:
    """`summarize_retrieval(compute_retrieval_table(...), k)`: the numbers only.

    Call the two steps yourself when the per-query rows are needed too (failure plots,
    verification view), so the similarities are computed once.
    """
    table = compute_retrieval_table(gallery_embeddings, gallery_identities, query_embeddings,
                                    query_identities, query_distortions, query_sources,
                                    gallery_sources, aggregate, exclude_own_source)
    return summarize_retrieval(table, k)


def clustered_interval(correct: Sequence[bool], clusters: Sequence, seed: int = 0
                       ) -> list[float] | None:
    """95 % percentile-bootstrap interval of the share of `correct` answers, resampling whole
    `clusters` (identities, photos) rather than single answers.

    The answers of one cluster rise and fall together (every copy of a photo shows the same
    face; a hard identity fails all its queries), so an interval over single answers would
    understate how much a holdout of a few hundred identities can move. A point ([p, p]) when
    every cluster has the same share right; None with fewer than two clusters.
    """
    correct = np.asarray(correct, dtype=float)
    codes, distinct = pd.factorize(pd.Series(np.asarray(clusters)), sort=False)
    if len(distinct) < 2:
        return None
    right = np.bincount(codes, weights=correct, minlength=len(distinct))
    count = np.bincount(codes, minlength=len(distinct)).astype(float)
    result = stats.bootstrap((right, count), _share, paired=True, vectorized=True,
                             confidence_level=INTERVAL_LEVEL, n_resamples=INTERVAL_RESAMPLES,
                             method="percentile", random_state=seed)
    interval = result.confidence_interval
    return [float(interval.low), float(interval.high)]


def _share(right: np.ndarray, count: np.ndarray, axis: int = -1) -> np.ndarray:
    """Right answers over answers, summed over the resampled clusters."""
    return right.sum(axis=axis) / count.sum(axis=axis)


def _oriented(scores: Sequence[float], is_same: Sequence[int], higher_is_same: bool, where: str):
    s, y = np.asarray(scores, float).ravel(), np.asarray(is_same).astype(int).ravel()
    _check_binary(y, s, where)
    if len(np.unique(y)) < 2:
        raise ValueError(f"{where}: needs both same (1) and different (0) pairs")
    return (s if higher_is_same else -s), y


def calibrate_threshold(scores: Sequence[float], is_same: Sequence[int],
                        higher_is_same: bool = True) -> float:
    """Accuracy-maximising verification threshold, chosen on a dev split.

    Candidates are midpoints between consecutive distinct scores (robust to unseen scores);
    among equally accurate ones the median candidate is returned.
    `higher_is_same=False` treats scores as distances (same when `distance <= threshold`).
    """
    s, y = _oriented(scores, is_same, higher_is_same, "calibrate_threshold")
    u = np.unique(s)
    cands = np.concatenate([[u[0] - 1e-6], (u[:-1] + u[1:]) / 2, [u[-1] + 1e-6]])
    acc = _sweep(s[y == 1], s[y == 0], cands)["accuracy"]
    best = np.flatnonzero(acc == acc.max())
    t = float(cands[best[len(best) // 2]])
    return t if higher_is_same else -t


def compute_verification_metrics(scores: Sequence[float], is_same: Sequence[int],
                                 threshold: float | None = None,
                                 higher_is_same: bool = True) -> dict:
    """Pair verification metrics for similarities (or distances with `higher_is_same=False`).

    Args:
        threshold: Decision threshold (same when `score >= t`, or `distance <= t`). None uses
            the EER threshold of these very scores, which is optimistic: pass one chosen with
            `calibrate_threshold` on dev (or the Siamese fixed 0.5) for honest numbers.

    Returns:
        dict with roc_auc, eer, eer_threshold, tar_at_far_0.01, threshold, accuracy,
        precision, recall, f1 (same = positive class), n_pairs, n_same.
    """
    s, y = _oriented(scores, is_same, higher_is_same, "compute_verification_metrics")
    fpr, tpr, thr = skm.roc_curve(y, s, drop_intermediate=False)
    fnr = 1 - tpr
    # first ROC point where FNR no longer exceeds FPR (tolerance: 1 - 2/3 != 1/3 in floats)
    i = int(np.argmax(fnr - fpr <= 1e-12))
    if i == 0 or fnr[i] == fpr[i]:
        eer = float((fnr[i] + fpr[i]) / 2)
    else:  # crossing lies between points i-1 and i: intersect the two segments
        d0, d1 = fnr[i - 1] - fpr[i - 1], fnr[i] - fpr[i]
        w = d0 / (d0 - d1)
        eer = float(fpr[i - 1] + w * (fpr[i] - fpr[i - 1]))
    eer_thr = float(thr[i]) if higher_is_same else float(-thr[i])
    t = eer_thr if threshold is None else float(threshold)
    pred = (s >= (t if higher_is_same else -t)).astype(int)
    p, r, f, _ = skm.precision_recall_fscore_support(y, pred, average="binary", zero_division=0)
    return {
        "roc_auc": float(skm.roc_auc_score(y, s)), "eer": eer, "eer_threshold": eer_thr,
        "tar_at_far_0.01": float(tpr[fpr <= 0.01].max()),
        "threshold": t, "accuracy": float((pred == y).mean()), "precision": float(p),
        "recall": float(r), "f1": float(f), "n_pairs": int(y.size), "n_same": int(y.sum()),
    }


def verification_pairs_from_retrieval(table: pd.DataFrame,
                                      negatives: str = "random") -> tuple[np.ndarray, np.ndarray]:
    """Verification view of a retrieval table: (query, own identity) vs (query, other identity).

    Each scored query gives one positive (its true-identity score) and one negative: a seeded
    random wrong identity (`"random"`, the usual benchmark) or the most similar wrong identity
    (`"hardest"`, a stress test).

    Returns:
        (scores, is_same) arrays of length 2 * len(table), positives first.
    """
    column = {"random": "random_other_score", "hardest": "best_other_score"}.get(negatives)
    if column is None:
        raise ValueError(f"negatives={negatives!r}; use 'random' or 'hardest'")
    scores = np.concatenate([table["true_score"].to_numpy(), table[column].to_numpy()])
    return scores, np.repeat([1, 0], len(table))


def make_pairs(identities: Sequence, distortions: Sequence[str] | None = None,
               n_pairs: int = 1000, seed: int = 0,
               hard_negatives_from: np.ndarray | None = None) -> pd.DataFrame:
    """Seeded balanced same/different index pairs for evaluation lists or per-epoch training.

    Positives: an identity with >= 2 images drawn uniformly, then two of its images (so
    clean-distorted and distorted-distorted pairs both occur). Negatives: two distinct
    identities drawn uniformly, one image each; or, with `hard_negatives_from=embeddings`
    `(N, D)`, anchors drawn without replacement (while possible) paired with their most
    similar image of another identity. Random pairs are unique; use a new seed per epoch.

    Returns:
        DataFrame[i, j, same] (same: 1/0, shuffled), plus pair_type ("clean-clean",
        "clean-distorted", "distorted-distorted") when distortions are given.

    Raises:
        ValueError: If fewer distinct positive pairs exist than requested.
    """
    ids = np.asarray(identities).astype(str)
    rng = np.random.default_rng(seed)
    n_pos = n_pairs // 2
    n_neg = n_pairs - n_pos
    _, code = np.unique(ids, return_inverse=True)
    members = pd.Series(np.arange(ids.size)).groupby(code).apply(np.asarray)
    sizes = members.map(len)
    multi = sizes[sizes >= 2].index.to_numpy()
    n_pos_max = int((sizes * (sizes - 1) // 2).sum())
    n_neg_max = int((ids.size ** 2 - (sizes ** 2).sum()) // 2)
    if n_pos_max < n_pos or n_neg_max < n_neg:
        raise ValueError(f"make_pairs: {n_pos} positive / {n_neg} negative pairs requested but "
                         f"only {n_pos_max} / {n_neg_max} exist among {members.size} identities; "
                         f"lower n_pairs")

    def draw_unique(draw, n):
        seen, out = set(), []
        while len(out) < n:
            for a, b in zip(*draw(2 * (n - len(out)) + 8)):
                key = (min(a, b), max(a, b))
                if key not in seen:
                    seen.add(key)
                    out.append((a, b))
        return out[:n]

    def draw_pos(n):
        groups = members[rng.choice(multi, n)].to_numpy()
        size = np.array([len(g) for g in groups])
        pa = (rng.random(n) * size).astype(int)
        pb = (rng.random(n) * (size - 1)).astype(int)
        pb += pb >= pa  # second position uniform over the others
        return ([g[x] for g, x in zip(groups, pa)], [g[x] for g, x in zip(groups, pb)])

    def draw_neg(n):
        ga = rng.integers(0, members.size, n)
        gb = (ga + rng.integers(1, members.size, n)) % members.size
        return ([rng.choice(members[g]) for g in ga], [rng.choice(members[g]) for g in gb])

    pos = draw_unique(draw_pos, n_pos)
    if hard_negatives_from is None:
        neg = draw_unique(draw_neg, n_neg)
    else:
        emb = gallery.normalise(hard_negatives_from)
        anchors = rng.choice(ids.size, n_neg, replace=n_neg > ids.size)
        nearest = []
        block = max(1, _BLOCK_CELLS // ids.size)
        for lo in range(0, n_neg, block):
            a = anchors[lo:lo + block]
            sim = emb[a] @ emb.T
            sim[code[a][:, None] == code[None, :]] = -np.inf
            nearest.append(sim.argmax(axis=1))
        neg = list(zip(anchors, np.concatenate(nearest) if nearest else []))
    pairs = pd.DataFrame(pos + neg, columns=["i", "j"]).astype(int)
    pairs["same"] = np.repeat([1, 0], [len(pos), len(neg)])
    if distortions is not None:
        clean = np.asarray(distortions, str) == "clean"
        n_clean = clean[pairs["i"]].astype(int) + clean[pairs["j"]].astype(int)
        pairs["pair_type"] = np.array(["distorted-distorted", "clean-distorted",
                                       "clean-clean"])[n_clean]
    return pairs.sample(frac=1.0, random_state=seed).reset_index(drop=True)
