"""Tests for common/metrics.py against small cases worked out by hand."""
import json
import time

import numpy as np
import pytest

from common import metrics
from common.metrics import (calibrate_threshold, choose_threshold, compute_classification_metrics,
                            compute_retrieval_metrics, compute_retrieval_table,
                            compute_verification_metrics, make_pairs, summarize_retrieval,
                            verification_pairs_from_retrieval)

LABELS = [0, 0, 0, 1, 1]
PROBS = [0.1, 0.6, 0.3, 0.8, 0.4]


def test_classification_hand_computed():
    m = compute_classification_metrics(LABELS, PROBS, threshold=0.5)
    json.dumps(m)  # plain JSON types only
    assert m["confusion_matrix"] == [[2, 1], [1, 1]]
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["precision_male"] == pytest.approx(2 / 3)
    assert m["recall_male"] == pytest.approx(2 / 3)
    assert m["precision_female"] == pytest.approx(1 / 2)
    assert m["f1_female"] == pytest.approx(1 / 2)
    assert m["f1_macro"] == pytest.approx(7 / 12)
    assert m["balanced_accuracy"] == pytest.approx(7 / 12)
    assert m["roc_auc"] == pytest.approx(5 / 6)
    assert m["average_precision"] == pytest.approx(5 / 6)
    assert m["support_female"] == 2 and m["n_samples"] == 5
    assert m["positive_class"] == "female" and m["threshold"] == 0.5
    # the threshold is inclusive: prob 0.4 becomes female at threshold 0.4
    assert compute_classification_metrics(LABELS, PROBS, threshold=0.4)["recall_female"] == 1.0


def test_classification_single_class_and_bad_input():
    m = compute_classification_metrics([0, 0, 0], [0.1, 0.7, 0.2])
    assert m["roc_auc"] is None and m["average_precision"] is None
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["confusion_matrix"] == [[2, 1], [0, 0]]
    with pytest.raises(ValueError, match="shape"):
        compute_classification_metrics([0, 1], [0.5])
    with pytest.raises(ValueError, match="0/1"):
        compute_classification_metrics([0, 2], [0.5, 0.5])


def test_choose_threshold():
    # f1_macro is 0.8 on (0.3, 0.4] only; the candidate there closest to 0.5 is 0.4
    assert choose_threshold(LABELS, PROBS) == pytest.approx(0.4)
    # accuracy is 0.8 on (0.3, 0.4] and (0.6, 0.8]: 0.4 (0.1 away) beats 0.61 (0.11 away)
    assert choose_threshold(LABELS, PROBS, metric="accuracy") == pytest.approx(0.4)
    t = choose_threshold(LABELS, PROBS, metric="f1")
    assert compute_classification_metrics(LABELS, PROBS, t)["f1_female"] == pytest.approx(0.8)
    with pytest.raises(ValueError, match="f1_macro"):
        choose_threshold(LABELS, PROBS, metric="auc")


def _unit(deg):
    rad = np.radians(np.asarray(deg, float))
    return np.stack([np.cos(rad), np.sin(rad)], axis=1)


# Gallery deliberately not sorted by identity: indices 0 = B@40, 1 = A@100, 2 = C@210, 3 = A@0.
GALLERY = dict(gallery_embeddings=_unit([40, 100, 210, 0]),
               gallery_identities=["B", "A", "C", "A"],
               gallery_sources=["sB1", "sA2", "sC1", "sA1"])
QUERY = dict(query_embeddings=3 * _unit([10, 30, 60, 120]),  # norm 3: normalised internally
             query_identities=["A", "A", "B", "C"],
             query_distortions=["blurred", "foggy", "foggy", "foggy"],
             query_sources=["sA1", "sA1", "sB1", "sC1"])


def test_retrieval_max_hand_computed():
    # q0 (10 deg): A cos10 > B cos30 -> A; q1 (30): B cos10 > A cos30 -> B, rank 2;
    # q2 (60): B cos20 > A cos40 -> B; q3 (120): A cos20 > B cos80 > C cos90 -> A, rank 3
    table = compute_retrieval_table(**GALLERY, **QUERY)
    assert table["predicted_identity"].tolist() == ["A", "B", "B", "A"]
    assert table["rank"].tolist() == [1, 2, 1, 3]
    assert table["true_score"].to_numpy() == pytest.approx(np.cos(np.radians([10, 30, 20, 90])))
    assert table.loc[1, "predicted_gallery_index"] == 0  # B@40
    assert table.loc[1, "true_gallery_index"] == 3  # A@0
    assert table.loc[0, "best_other_identity"] == "B"
    assert table.loc[0, "best_other_score"] == pytest.approx(np.cos(np.radians(30)))
    # the next identity's score, truth unseen: q0 B cos30; q1 A cos30; q2 A cos40; q3 B cos80
    assert table["runner_up_score"].to_numpy() == pytest.approx(
        np.cos(np.radians([30, 30, 40, 80])))
    assert (table["random_other_identity"] != table["identity"]).all()
    m = summarize_retrieval(table, k=2)
    json.dumps(m)
    assert m["top1"] == 0.5 and m["top2"] == 0.75 and m["n_queries"] == 4
    # A: P 1/2 R 1/2; B: P 1/2 R 1; C: 0 -> (1/2 + 2/3 + 0) / 3
    assert m["f1_macro"] == pytest.approx(7 / 18)
    assert m["top1_by_distortion"] == {"blurred": 1.0, "foggy": pytest.approx(1 / 3)}
    assert m["n_queries_by_distortion"] == {"blurred": 1, "foggy": 3}
    assert compute_retrieval_metrics(**GALLERY, **QUERY)["top5"] == 1.0


def test_retrieval_mean_aggregate():
    # A's mean of 0 and 100 deg points at 50 deg: q0/q1 then prefer B, q2 prefers A
    m = compute_retrieval_metrics(**GALLERY, **QUERY, aggregate="mean")
    assert m["top1"] == 0.0
    table = compute_retrieval_table(**GALLERY, **QUERY, aggregate="mean")
    assert table.loc[2, "true_score"] == pytest.approx(np.cos(np.radians(20)))
    assert table.loc[2, "predicted_score"] == pytest.approx(np.cos(np.radians(10)))


@pytest.mark.parametrize("aggregate", ["max", "mean"])
def test_retrieval_exclude_own_source(aggregate):
    # q0/q1 lose A@0 (their source) and keep A@100; B and C have one reference each, so q2
    # and q3 are not scored. q0: A cos90 vs B cos30 -> B; q1: A cos70 vs B cos10 -> B.
    table = compute_retrieval_table(**GALLERY, **QUERY, aggregate=aggregate,
                                    exclude_own_source=True)
    assert table["query_index"].tolist() == [0, 1]
    assert table["predicted_identity"].tolist() == ["B", "B"]
    assert table["true_score"].to_numpy() == pytest.approx(np.cos(np.radians([90, 70])), abs=1e-6)
    assert table.loc[0, "true_gallery_index"] == 1
    m = summarize_retrieval(table)
    assert m["n_queries"] == 2 and m["n_queries_excluded"] == 2 and m["top1"] == 0.0
    assert m["exclude_own_source"] is True
    with pytest.raises(ValueError, match="query_sources"):
        compute_retrieval_table(GALLERY["gallery_embeddings"], GALLERY["gallery_identities"],
                                QUERY["query_embeddings"], QUERY["query_identities"],
                                exclude_own_source=True)


def test_retrieval_missing_identity_is_named():
    with pytest.raises(ValueError, match="Zed"):
        compute_retrieval_metrics(GALLERY["gallery_embeddings"], GALLERY["gallery_identities"],
                                  _unit([5]), ["Zed"])


def test_retrieval_blocks_agree_and_scale(monkeypatch):
    rng = np.random.default_rng(0)
    gallery, queries = rng.normal(size=(2000, 64)), rng.normal(size=(3000, 64))
    g_ids = rng.integers(0, 500, 2000)
    source = rng.integers(0, 2000, 3000)  # each query is a distortion of one gallery image
    q_ids = g_ids[source]
    start = time.perf_counter()
    full = compute_retrieval_table(gallery, g_ids, queries, q_ids, aggregate="mean",
                                   exclude_own_source=True, query_sources=source.astype(str),
                                   gallery_sources=np.arange(2000).astype(str))
    assert time.perf_counter() - start < 20
    n_refs = np.bincount(g_ids, minlength=500)
    assert len(full) == (n_refs[q_ids] >= 2).sum()
    monkeypatch.setattr(metrics, "_BLOCK_CELLS", 2000 * 7)  # 7 queries per block
    blocked = compute_retrieval_table(gallery, g_ids, queries[:100], q_ids[:100],
                                      aggregate="mean")
    monkeypatch.undo()
    whole = compute_retrieval_table(gallery, g_ids, queries[:100], q_ids[:100], aggregate="mean")
    for col in ("identity", "predicted_identity", "rank", "predicted_gallery_index"):
        assert (blocked[col] == whole[col]).all()
    assert blocked["true_score"].to_numpy() == pytest.approx(whole["true_score"].to_numpy(),
                                                             abs=1e-6)


def test_verification_hand_computed():
    scores = [0.9, 0.8, 0.4, 0.7, 0.3, 0.2]
    same = [1, 1, 1, 0, 0, 0]
    m = compute_verification_metrics(scores, same, threshold=0.5)
    json.dumps(m)
    assert m["roc_auc"] == pytest.approx(8 / 9)
    assert m["eer"] == pytest.approx(1 / 3) and m["eer_threshold"] == pytest.approx(0.7)
    assert m["tar_at_far_0.01"] == pytest.approx(2 / 3)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["precision"] == pytest.approx(2 / 3) and m["recall"] == pytest.approx(2 / 3)
    assert compute_verification_metrics(scores, same)["threshold"] == pytest.approx(0.7)
    # the same data as distances: identical curve, threshold mirrored
    d = compute_verification_metrics(1 - np.array(scores), same, 0.5, higher_is_same=False)
    assert d["roc_auc"] == pytest.approx(8 / 9) and d["eer_threshold"] == pytest.approx(0.3)
    assert d["accuracy"] == pytest.approx(4 / 6)


def test_eer_interpolates_between_roc_points():
    # FNR - FPR goes 1/6 -> -1/6 between thresholds 0.8 and 0.5: crossing at FPR = FNR = 0.5
    m = compute_verification_metrics([0.9, 0.5, 0.4, 0.8, 0.2], [1, 1, 1, 0, 0])
    assert m["eer"] == pytest.approx(0.5) and m["eer_threshold"] == pytest.approx(0.5)


def test_calibrate_threshold():
    scores = np.array([0.9, 0.8, 0.4, 0.7, 0.3, 0.2])
    same = [1, 1, 1, 0, 0, 0]
    # accuracy 5/6 at midpoints 0.35 and 0.75; the median of the tied candidates is 0.75
    assert calibrate_threshold(scores, same) == pytest.approx(0.75)
    assert calibrate_threshold(1 - scores, same, higher_is_same=False) == pytest.approx(0.25)
    t = calibrate_threshold(scores, same)
    assert compute_verification_metrics(scores, same, t)["accuracy"] == pytest.approx(5 / 6)
    with pytest.raises(ValueError, match="both"):
        calibrate_threshold([0.1, 0.2], [1, 1])


def test_verification_pairs_from_retrieval():
    table = compute_retrieval_table(**GALLERY, **QUERY)
    scores, same = verification_pairs_from_retrieval(table, negatives="hardest")
    assert same.tolist() == [1] * 4 + [0] * 4
    assert scores[:4] == pytest.approx(table["true_score"].to_numpy())
    assert scores[4:] == pytest.approx(table["best_other_score"].to_numpy())
    scores, _ = verification_pairs_from_retrieval(table)
    assert scores[4:] == pytest.approx(table["random_other_score"].to_numpy())
    with pytest.raises(ValueError, match="hardest"):
        verification_pairs_from_retrieval(table, negatives="semi")


def test_make_pairs_balanced_unique_seeded():
    ids = np.repeat(["p0", "p1", "p2", "p3", "p4"], 4)
    dist = np.tile(["clean", "blurred", "foggy", "noisy"], 5)
    pairs = make_pairs(ids, dist, n_pairs=40, seed=3)
    assert list(pairs.columns) == ["i", "j", "same", "pair_type"]
    assert pairs["same"].sum() == 20 and len(pairs) == 40
    assert ((ids[pairs["i"]] == ids[pairs["j"]]) == pairs["same"].astype(bool)).all()
    assert (pairs["i"] != pairs["j"]).all()
    keys = {(min(i, j), max(i, j)) for i, j in zip(pairs["i"], pairs["j"])}
    assert len(keys) == 40
    n_clean = (dist[pairs["i"]] == "clean").astype(int) + (dist[pairs["j"]] == "clean")
    assert ((n_clean == 1) == (pairs["pair_type"] == "clean-distorted")).all()
    assert pairs.equals(make_pairs(ids, dist, n_pairs=40, seed=3))
    assert not pairs.equals(make_pairs(ids, dist, n_pairs=40, seed=4))
    # all 30 positive pairs of 5 identities x C(4, 2) can be drawn, not 31
    assert make_pairs(ids, n_pairs=60)["same"].sum() == 30
    with pytest.raises(ValueError, match="lower n_pairs"):
        make_pairs(ids, n_pairs=62)


def test_make_pairs_hard_negatives():
    ids = np.array(["A", "A", "B", "B"])
    emb = _unit([0, 10, 20, 180])
    nearest_other = {0: 2, 1: 2, 2: 1, 3: 1}
    pairs = make_pairs(ids, n_pairs=4, seed=0, hard_negatives_from=emb)
    neg = pairs[pairs["same"] == 0]
    assert len(neg) == 2 and neg["i"].nunique() == 2
    assert all(nearest_other[i] == j for i, j in zip(neg["i"], neg["j"]))


def test_clustered_interval_matches_the_binomial_and_widens_with_clusters():
    """400 answers, 320 right. Alone, each its own cluster, the interval is the binomial one:
    0.8 +- 1.96 sqrt(0.8 * 0.2 / 400) = [0.761, 0.839]. In 20 clusters of 20 that are right or
    wrong together, it is 20 answers' worth: 0.8 +- 1.96 sqrt(0.8 * 0.2 / 20) = [0.625, 0.975]
    (the bootstrap's shares move in steps of 0.05)."""
    correct = np.r_[np.ones(320), np.zeros(80)].astype(bool)
    alone = metrics.clustered_interval(correct, np.arange(400))
    assert alone == pytest.approx([0.761, 0.839], abs=0.006)
    together = metrics.clustered_interval(correct, np.repeat(np.arange(20), 20))
    assert together == pytest.approx([0.625, 0.975], abs=0.051)
    assert together[1] - together[0] > 4 * (alone[1] - alone[0])
    # clusters need not be sorted or numeric, and the seed fixes the interval
    shuffled = np.random.default_rng(0).permutation(400)
    names = np.array([f"person {i // 20}" for i in range(400)])
    assert metrics.clustered_interval(correct[shuffled], names[shuffled]) == together
    # every cluster as right as the others: nothing to move; one cluster: no interval
    assert metrics.clustered_interval(np.ones(10, bool), np.arange(10)) == [1.0, 1.0]
    assert metrics.clustered_interval(correct, np.zeros(400)) is None
