"""common.fusion: the weighted concatenation, the dev choice of a channel's weight (scored by
`evaluation.dev_scores`) and the face rule."""
from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd
import pytest
import torch

from common import evaluation, fusion
from conftest import gallery_frame, unit_rows


def test_fuse_mixes_the_two_cosines_by_the_weight():
    learned = unit_rows([[1, 0], [0.6, 0.8]])           # cosine 0.6
    extra = unit_rows([[1, 0, 0], [0, 0, 1]])            # cosine 0
    for weight in (0.25, 0.7):
        fused = fusion.fuse(learned, extra, weight)
        assert fused.shape == (2, 5)
        np.testing.assert_allclose(np.linalg.norm(fused, axis=1), 1.0, atol=1e-6)
        assert fused[0] @ fused[1] == pytest.approx((1 - weight) * 0.6 + weight * 0.0, abs=1e-6)
        # tensors (the copy detector inside a network) are fused the same way
        as_tensor = fusion.fuse(torch.from_numpy(learned), torch.from_numpy(extra), weight)
        np.testing.assert_array_equal(as_tensor.numpy(), fused)
    assert fusion.fuse(learned, extra, 0.0) is learned
    with pytest.raises(ValueError, match="in \\[0, 1\\]"):
        fusion.fuse(learned, extra, 1.5)


def test_fuse_keeps_the_first_channel_alone_where_the_second_is_absent():
    """A face descriptor of no face found says nothing: such a row is the first channel alone,
    so its cosine with any full row is sqrt(1 - w) times the first channel's."""
    first = unit_rows([[1, 0], [0.6, 0.8], [0, 1]])
    second = unit_rows([[1, 0], [0, 1], [1, 0]])  # the last row's would wrongly match the first
    present = np.array([True, True, False])
    weight = 0.36
    fused = fusion.fuse(first, second, weight, present=present)
    np.testing.assert_allclose(np.linalg.norm(fused, axis=1), 1.0, atol=1e-6)
    assert fused[0] @ fused[1] == pytest.approx(0.64 * 0.6 + 0.36 * 0.0, abs=1e-6)
    assert fused[0] @ fused[2] == pytest.approx(0.8 * 0.0, abs=1e-6)
    assert fused[1] @ fused[2] == pytest.approx(0.8 * 0.8, abs=1e-6)
    np.testing.assert_array_equal(fused[2], [0, 1, 0, 0])
    as_tensor = fusion.fuse(torch.from_numpy(first), torch.from_numpy(second), weight, present)
    np.testing.assert_array_equal(as_tensor.numpy(), fused)
    switch = fusion.CopySwitch(0.1, descriptor_share=weight)
    np.testing.assert_array_equal(switch.face_vectors(first, second, present), fused)


def test_switch_identity_mixes_its_faceless_share_into_the_rows_without_a_face():
    """Each row takes the copy channel's share of its own kind (0.04 with a face, 0.64
    without), so two rows' cosine is sqrt((1 - s1)(1 - s2)) cos_face + sqrt(s1 s2) cos_copy,
    and every row keeps one dimension whichever rows are given."""
    face = unit_rows([[1, 0], [0.6, 0.8], [0, 1]])      # cosines 0.6, 0, 0.8
    copy = unit_rows([[1, 0, 0], [1, 0, 0], [0, 0, 1]])  # cosines 1, 0, 0
    found = np.array([True, True, False])
    switch = fusion.CopySwitch(0.1, identity_share=0.04, faceless_share=0.64)
    rows = switch.identity_vectors(copy, face, found)
    assert rows.shape == (3, 5)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-6)
    assert rows[0] @ rows[1] == pytest.approx(0.96 * 0.6 + 0.04 * 1.0, abs=1e-6)
    assert rows[0] @ rows[2] == pytest.approx((0.96 * 0.36) ** 0.5 * 0.0 + 0.16 * 0.0, abs=1e-6)
    assert rows[1] @ rows[2] == pytest.approx((0.96 * 0.36) ** 0.5 * 0.8, abs=1e-6)
    # the rows with a face alone are what one share gives, in the same dimension
    alone = switch.identity_vectors(copy[:2], face[:2], found[:2])
    np.testing.assert_allclose(alone, rows[:2], atol=1e-7)
    np.testing.assert_allclose(alone @ alone.T, (fusion.fuse(face, copy, 0.04)[:2]
                                                 @ fusion.fuse(face, copy, 0.04)[:2].T),
                               atol=1e-6)
    with pytest.raises(ValueError, match="face-found flags"):
        switch.identity_vectors(copy, face)
    # a switch without a faceless share reads every row alike, with or without the flags
    one = fusion.CopySwitch(0.1, identity_share=0.04)
    np.testing.assert_array_equal(one.identity_vectors(copy, face, found),
                                  fusion.fuse(face, copy, 0.04))


def test_whole_share_goes_into_the_gallery_and_the_faceless_queries_only():
    """A gallery photo and a query whose face was not found carry `whole_share` of the
    whole-image network: their cosine is (1 - w) cos_face + w cos_whole. A query with a face
    keeps [face, 0]: its cosine to every gallery photo is sqrt(1 - w) cos_face, one scale for
    all its candidates, so its ranking is the face channel's."""
    np.testing.assert_array_equal(
        fusion.carries_whole(np.array([True, True, False, False]),
                             np.array([True, False, True, False])), [True, False, True, True])
    np.testing.assert_array_equal(fusion.carries_whole(np.array([True, False]), False),
                                  [False, True])
    face = unit_rows([[1, 0], [0.6, 0.8], [0.8, 0.6], [0, 1]])   # gallery, gallery, queries
    whole = unit_rows([[1, 0], [0, 1], [0.6, 0.8], [1, 0]])      # the found query's: unread
    found = np.array([True, True, True, False])
    gallery = np.array([True, True, False, False])
    w = 0.36
    rows = fusion.CopySwitch(0.1, whole_share=w).with_whole(face, whole, found, gallery)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-6)
    assert rows[0] @ rows[1] == pytest.approx(0.64 * 0.6 + w * 0.0, abs=1e-6)
    # the found query (row 2): the face channel's cosines, scaled by sqrt(1 - w) = 0.8
    assert rows[2] @ rows[0] == pytest.approx(0.8 * 0.8, abs=1e-6)
    assert rows[2] @ rows[1] == pytest.approx(0.8 * (0.48 + 0.48), abs=1e-6)
    # the faceless query (row 3): face and whole image mixed
    assert rows[3] @ rows[0] == pytest.approx(0.64 * 0.0 + w * 1.0, abs=1e-6)
    assert rows[3] @ rows[1] == pytest.approx(0.64 * 0.8 + w * 0.0, abs=1e-6)
    np.testing.assert_array_equal(fusion.CopySwitch(0.1).with_whole(face, whole, found, gallery),
                                  face)


def test_whole_share_is_chosen_by_the_switchs_dev_objective():
    """On dev, the faceless sunny copies' face vectors are noise and the other photo of each
    person is the gallery's only one left once the own photo is removed: a whole-image
    channel that knows people lifts them and the switch's mean of both protocols, so a share
    above 0 is chosen; a whole-image channel of noise earns no share (ties go to 0)."""
    rng = np.random.default_rng(0)
    frame = gallery_frame()
    people = {name: unit_rows(rng.normal(size=(1, 16)))[0] for name in ("a", "b", "c")}
    person = np.stack([people[name] for name in frame["identity"]])
    sunny = frame["distortion"].eq("sunny").to_numpy()
    found = ~sunny
    face = unit_rows(np.where(sunny[:, None], rng.normal(size=person.shape),
                              person + 0.1 * rng.normal(size=person.shape)))
    photo = unit_rows(rng.normal(size=(len(frame), 16)))  # each photo's own look: copies
    photo_of = {path: photo[i] for i, path in enumerate(frame["path"])}
    copy = unit_rows(np.stack([photo_of[row.source or row.path]
                               for row in frame.itertuples()]) + 0.01)
    knows = unit_rows(person + 0.1 * rng.normal(size=person.shape))
    share, table, (switch, candidates, _) = evaluation.choose_whole_share(frame, copy, face,
                                                                         knows, found)
    assert share > 0
    assert list(table["whole_share"]) == list(fusion.WHOLE_SHARES)
    chosen = table.set_index("whole_share").loc[share]
    none = table.set_index("whole_share").loc[0.0]
    assert chosen["dev_top1_hard"] > none["dev_top1_hard"]
    assert chosen["dev_switch_mean_top1"] == table["dev_switch_mean_top1"].max()
    # the chosen share's own fit, which switch_report takes instead of fitting again
    assert candidates[candidates["chosen"]]["mean_top1"].iloc[0] == chosen["dev_switch_mean_top1"]
    refit = evaluation.fit_switch(frame, copy, fusion.fuse(
        face, knows, share, fusion.carries_whole(found, evaluation.gallery_rows(frame))),
        found=found)[0]
    assert refit == switch
    noise = unit_rows(rng.normal(size=person.shape))
    assert evaluation.choose_whole_share(frame, copy, face, noise, found)[0] == 0.0


def _choose(frame: pd.DataFrame, first, second, objective: str = "top1", found=None):
    score = partial(evaluation.dev_scores, frame, objective=objective, n_pairs=60,
                    faces=None if found is None else (second, found))
    return fusion.choose_weight(first, second, fusion.DESCRIPTOR_WEIGHTS, score,
                                f"dev_{objective}", "descriptor_weight")


def test_choose_weight_picks_the_channel_only_when_it_helps_on_dev():
    frame = gallery_frame()
    rng = np.random.default_rng(0)
    identity_code = frame["identity"].map({"a": 0, "b": 1, "c": 2}).to_numpy()
    knows_identity = unit_rows(np.eye(3)[identity_code] + 0.05 * rng.normal(size=(len(frame), 3)))
    noise = unit_rows(rng.normal(size=(len(frame), 8)))
    # Learned = noise: the channel is all that matches; the largest share wins (ties: smallest).
    weight, table = _choose(frame, noise, knows_identity)
    assert weight == table.loc[table["dev_top1"].idxmax(), "descriptor_weight"] > 0
    assert table["dev_top1"].max() == 1.0 and table["dev_top1"].iloc[0] < 1.0
    # Learned already perfect: every share ties at top-1 1.0, so the smallest (0) is kept.
    weight, table = _choose(frame, knows_identity, noise)
    assert weight == 0.0 and list(table["descriptor_weight"]) == list(fusion.DESCRIPTOR_WEIGHTS)
    weight, table = _choose(frame, noise, knows_identity, "pair_accuracy")
    assert weight > 0 and "dev_pair_accuracy" in table
    with pytest.raises(ValueError, match="objective"):
        _choose(frame, noise, knows_identity, "auc")


def test_choose_weight_for_the_face_rule_keeps_the_descriptor_out_of_the_distance():
    frame = gallery_frame()
    rng = np.random.default_rng(0)
    photos = frame["path"].str.split("_").str[0].str.replace(".jpg", "", regex=False)
    photo_code = pd.factorize(photos)[0]
    sees_photos = unit_rows(np.eye(photo_code.max() + 1)[photo_code])  # copies on their photo
    identity_code = frame["identity"].map({"a": 0, "b": 1, "c": 2}).to_numpy()
    knows_identity = unit_rows(np.eye(3)[identity_code] + 0.05 * rng.normal(size=(len(frame), 3)))
    # One distance needs the descriptor in it to tell two photos of a person from two people...
    weight, table = _choose(frame, sees_photos, knows_identity, "pair_accuracy")
    assert weight > 0 and table["dev_pair_accuracy"].iloc[0] < 1.0
    # ...but the face rule asks the descriptor separately, so the distance can stay learned.
    weight, table = _choose(frame, sees_photos, knows_identity, "pair_accuracy_face_rule",
                            found=np.ones(len(frame), bool))
    assert weight == 0.0 and table["dev_pair_accuracy_face_rule"].iloc[0] == 1.0
    with pytest.raises(ValueError, match="needs `faces`"):
        _choose(frame, sees_photos, knows_identity, "pair_accuracy_face_rule")


def test_face_rule_decides_by_distance_or_agreeing_faces():
    rule = fusion.FaceRule(distance=0.3, descriptor_cosine=0.9)
    same = rule.decide(np.array([0.1, 0.8, 0.8, 0.8]), np.array([0.0, 0.95, 0.95, 0.5]),
                       np.array([False, True, False, True]))
    # close embeddings | agreeing faces | agreeing but a face missing | disagreeing faces
    assert same.tolist() == [True, True, False, False]


def test_fit_face_rule_never_trusts_a_useless_descriptor():
    distances = np.array([0.1, 0.2, 0.9, 1.0])
    same = np.array([1, 1, 0, 0])
    rule = fusion.fit_face_rule(distances, np.array([0.99, 0.1, 0.99, 0.1]),
                                np.ones(4, bool), same)
    assert rule.decide(distances, np.array([0.99, 0.1, 0.99, 0.1]), np.ones(4, bool)).tolist() \
        == [True, True, False, False]
    assert rule.descriptor_cosine > 0.99  # a cosine of 0.99 also marks a different pair


def test_fit_face_rule_at_an_operating_point_accepts_more_same_pairs():
    # One copy (close), three photos of one person, four pairs of different people (far).
    distances = np.array([0.1, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0])
    cosines = np.array([0.95, 0.9, 0.7, 0.5, 0.6, 0.55, 0.2, 0.1])
    same = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    found = np.ones(8, bool)

    def decided(rule):
        return rule.decide(distances, cosines, found).tolist()

    # Best accuracy (7/8 correct): the faces must agree above 0.6, the 0.5 pair is refused.
    best = fusion.fit_face_rule(distances, cosines, found, same)
    assert decided(best) == [True, True, True, False, False, False, False, False]
    # Refusing half of the different pairs is enough: every same pair is accepted.
    half = fusion.fit_face_rule(distances, cosines, found, same, min_specificity=0.5)
    assert decided(half) == [True, True, True, True, True, True, False, False]
    # At 3/4, accepting the 0.6 pair or not accepts the same pairs: the more accurate wins.
    assert decided(fusion.fit_face_rule(distances, cosines, found, same, min_specificity=0.75)) \
        == decided(best)
    # Out of reach: the rule that refuses the most different pairs.
    strict = fusion.fit_face_rule(distances, cosines, found, same, min_specificity=1.5)
    assert not any(decided(strict)[4:])


def test_faceless_pairs_get_a_cosine_of_their_own():
    # A copy (close), then four pairs with both faces found (same people at 0.9, others at
    # 0.3) and four where glare hid a face: the identity channel's cosines lie lower there
    # (same 0.25, others 0.05). The eight are far apart: only cosines can accept them.
    distances = np.array([0.1] + [1.5] * 8)
    cosines = np.array([0.95, 0.9, 0.9, 0.3, 0.3, 0.25, 0.25, 0.05, 0.05])
    same = np.array([1, 1, 1, 0, 0, 1, 1, 0, 0])
    found = np.array([True] * 5 + [False] * 4)
    rule = fusion.fit_face_rule(distances, cosines, found, same, min_specificity=0.98,
                                faceless=True)
    assert 0.05 < rule.faceless_cosine <= 0.25 and 0.3 < rule.descriptor_cosine <= 0.9
    assert rule.decide(distances, cosines, found).tolist() == same.astype(bool).tolist()
    # One cosine for every pair cannot accept 0.25 without 0.3: two same pairs are lost.
    every = np.ones(9, bool)
    one = fusion.fit_face_rule(distances, cosines, every, same, min_specificity=0.98)
    assert one.decide(distances, cosines, every).tolist() == [
        True, True, True, False, False, False, False, False, False]
    # Without `faceless`, such pairs are decided by distance alone, as for a face descriptor.
    assert fusion.fit_face_rule(distances, cosines, found, same).faceless_cosine is None
    assert not any(fusion.FaceRule(1.0, 0.2).decide(distances, cosines, found)[5:])


# --- copy or identity ----------------------------------------------------------------------

def _table(margins, identity_scores, correct, runner_up=0.1) -> pd.DataFrame:
    """A retrieval table of one channel: predicted score = runner-up + margin."""
    margins = np.asarray(margins, float)
    return pd.DataFrame({"query_index": np.arange(len(margins)),
                         "identity": ["x"] * len(margins),
                         "predicted_identity": ["x" if c else "y" for c in correct],
                         "predicted_score": (identity_scores if identity_scores is not None
                                             else runner_up + margins),
                         "runner_up_score": runner_up, "correct": correct})


def test_copy_switch_fitted_on_hand_made_tables():
    """Official: the copy channel finds every copy (one, glare-like, by a small margin, where
    the descriptor found no face); the descriptor misses that one. Own photo removed: the copy
    channel finds only the fourth query (by the smallest margin: no copy threshold singles it
    out), whose face the descriptor is unsure of. The best rule answers official queries by
    copies, the rest by the descriptor unless it is unsure: official 4/4, own photo removed
    3/4, where either channel alone gets a mean of 5/8."""
    official = (_table([0.5, 0.6, 0.05, 0.7], None, [True] * 4),
                _table([0] * 4, [0.9, 0.8, 0.2, 0.85], [True, True, False, True]))
    removed = (_table([0.02, 0.03, 0.04, 0.01], None, [False, False, False, True]),
               _table([0] * 4, [0.9, 0.85, 0.1, 0.3], [True, True, False, False]))
    switch, table = fusion.fit_copy_switch([official, removed])
    assert 0.03 < switch.threshold <= 0.5 and 0.3 < switch.identity_threshold <= 0.85
    assert switch.choose(*official)["correct"].tolist() == [True] * 4
    chosen = switch.choose(*removed)
    assert chosen["correct"].tolist() == [True, True, False, True]
    assert chosen["channel"].tolist() == ["identity", "identity", "copy", "copy"]
    assert table["mean_top1"].max() == pytest.approx(7 / 8)
    (row,) = table[table["chosen"]].itertuples()
    assert (row.threshold, row.identity_threshold) == (switch.threshold, switch.identity_threshold)
    assert row.mean_top1 == pytest.approx(7 / 8)
    always = table[table["threshold"].isin([fusion.ALWAYS_BY_MARGIN, fusion.NEVER_BY_MARGIN])
                   & table["identity_threshold"].isin([fusion.NEVER_UNSURE,
                                                       fusion.ALWAYS_UNSURE])]
    assert sorted(always["mean_top1"]) == pytest.approx([5 / 8, 5 / 8, 5 / 8, 5 / 8])


def test_copy_switch_answers_faceless_queries_by_their_copy_cosine():
    """A glare copy whose face was not found (official query 2) stands out by no more than the
    own-photo-removed queries do (margins 0.04-0.06), and its identity score is that of a
    faceless query the identity channel gets right (0.5): neither threshold can take it without
    losing a person. Its copy cosine (0.7) is above every own-photo-removed query's: with the
    face-found flags the fit answers it by the copy channel, official 4/4 and own photo removed
    3/4 (6 of the 8 right without the flags); ties go to the lowest cosine candidate, here
    just above own-photo-removed query 2's (0.3), which the identity channel gets right."""
    def rows(table: pd.DataFrame) -> pd.DataFrame:
        return table.assign(query_row=np.arange(len(table)))

    def with_cosines(margins, cosines, correct) -> pd.DataFrame:
        cosines = np.asarray(cosines, float)
        return rows(_table(margins, cosines, correct, runner_up=cosines - np.asarray(margins)))

    official = (with_cosines([0.5, 0.05, 0.05, 0.6], [0.9, 0.6, 0.7, 0.9], [True] * 4),
                rows(_table([0] * 4, [0.9, 0.9, 0.5, 0.9], [True, True, False, True])))
    removed = (with_cosines([0.04, 0.06, 0.05, 0.02], [0.3, 0.35, 0.3, 0.32], [False] * 4),
               rows(_table([0] * 4, [0.9, 0.9, 0.5, 0.5], [True, True, True, False])))
    found = np.array([True, True, False, False])  # per query row, in both protocols
    blind, _ = fusion.fit_copy_switch([official, removed])
    assert blind.faceless_copy_cosine == fusion.NEVER_BY_COSINE
    assert sum(blind.choose(*tables)["correct"].sum() for tables in (official, removed)) == 6
    switch, table = fusion.fit_copy_switch([official, removed], found=found)
    assert 0.3 < switch.faceless_copy_cosine < 0.32
    # blind, the margin took the copy at the cost of people; now it leaves them to identity
    assert blind.threshold <= 0.05 + 1e-9 and switch.threshold > 0.06
    chosen = switch.choose(*official, found)
    assert chosen["correct"].all() and chosen["channel"][2] == "copy"
    assert switch.choose(*removed, found)["correct"].tolist() == [True, True, True, False]
    (row,) = table[table["chosen"]].itertuples()
    assert (row.faceless_copy_cosine, row.mean_top1) == (switch.faceless_copy_cosine,
                                                         pytest.approx(7 / 8))
    with pytest.raises(ValueError, match="face-found flags"):
        switch.choose(*official)


def test_every_candidate_scores_what_its_switch_then_answers():
    """The fit counts only the queries the two channels answer differently (the others are
    right or wrong either way); each candidate row's top-1s must still be those of the switch
    with its thresholds, chosen query by query (`CopySwitch.choose`), on random tables where
    the channels disagree on about half the queries and a third of the faces were not found."""
    rng = np.random.default_rng(0)

    def protocol(n: int) -> tuple[pd.DataFrame, pd.DataFrame]:
        copy_scores = rng.uniform(0.2, 1.0, n)
        return tuple(table.assign(query_row=np.arange(n)) for table in (
            _table(rng.uniform(0, 0.4, n), copy_scores, rng.random(n) < 0.6,
                   runner_up=copy_scores - rng.uniform(0, 0.4, n)),
            _table(np.zeros(n), rng.uniform(-0.2, 1.0, n), rng.random(n) < 0.7)))

    tables = [protocol(40), protocol(40)]
    found = rng.random(40) > 1 / 3
    _, candidates = fusion.fit_copy_switch(tables, n_candidates=12, found=found)
    assert candidates["top1_0"].nunique() > 5 and candidates["top1_1"].nunique() > 5
    for row in candidates.sample(60, random_state=0).itertuples():
        switch = fusion.CopySwitch(row.threshold, row.identity_threshold,
                                   faceless_copy_cosine=row.faceless_copy_cosine)
        for number, (copy, identity) in enumerate(tables):
            assert getattr(row, f"top1_{number}") == pytest.approx(
                switch.choose(copy, identity, found)["correct"].mean(), abs=1e-12)


def test_copy_switch_needs_both_tables_over_the_same_queries():
    copy = _table([0.5, 0.6], None, [True, True])
    with pytest.raises(ValueError, match="same queries"):
        fusion.CopySwitch(0.3).choose(copy, copy.iloc[::-1].reset_index(drop=True))
