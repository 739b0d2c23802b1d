"""common.evaluation: pair verification broken down by pair kind."""
from __future__ import annotations

from functools import partial

import numpy as np
import pandas as pd
import pytest

from common import evaluation, fusion
from conftest import gallery_frame, unit_rows


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
    blind = evaluation.face_blind_decisions(frame, report.pairs)
    distortion = frame["distortion"].to_numpy()
    for (i, j), decided in zip(report.pairs[["i", "j"]].to_numpy(), blind):
        assert decided == (distortion[i] != distortion[j])
    assert flat["pair_accuracy_face_blind"] == pytest.approx(
        (blind == report.pairs["same"].astype(bool)).mean())
    assert "pair_accuracy_different_identity" in flat


def _people_embeddings(frame: pd.DataFrame) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray]]:
    """Embeddings that only see photos (copies sit on their photo, every photo 1 apart) and unit
    descriptors that see people; bob's foggy copies hide his face from the descriptor."""
    photos = sorted(set(frame["source"]))
    embeddings = np.eye(len(photos))[[photos.index(s) for s in frame["source"]]] / np.sqrt(2)
    people = {"ann": [1.0, 0.0], "bob": [0.0, 1.0]}
    descriptors = np.array([people[p] for p in frame["identity"]])
    found = ~((frame["identity"] == "bob") & (frame["distortion"] == "foggy")).to_numpy()
    return embeddings, (descriptors, found)


def test_pair_report_with_faces_fits_the_rule_on_dev_and_reports_it():
    frame = _frame()
    embeddings, faces = _people_embeddings(frame)
    report = evaluation.pair_report(frame, embeddings, frame, embeddings, n_pairs=40, seed=0,
                                    faces={"dev": faces, "eval": faces})
    # No single distance separates two photos of one person (1 apart) from two people (1 apart).
    assert report.calibrated["accuracy"] < 1.0
    table = report.by_kind()
    assert table.loc["same photo", "accuracy_face_rule"] == 1.0
    assert table.loc["different identity", "accuracy_face_rule"] == 1.0
    # Two photos of one person: right unless one of them is bob's hidden face.
    pairs = report.pairs[report.pairs["kind"] == "same identity"]
    hidden = ~(faces[1][pairs["i"]] & faces[1][pairs["j"]])
    expected = 1.0 - hidden.mean()
    assert table.loc["same identity", "accuracy_face_rule"] == pytest.approx(expected)
    assert report.face_rule["accuracy"] == pytest.approx(
        (report.pairs["same_by_rule"] == report.pairs["same"].astype(bool)).mean())
    assert report.face_rule["accuracy"] > report.calibrated["accuracy"]
    flat = report.flat()
    assert flat["pair_accuracy_face_rule"] == report.face_rule["accuracy"]
    assert flat["face_rule_distance"] == report.rule.distance
    assert "face rule (dev)" in report.summary().columns
    plain = evaluation.pair_report(frame, embeddings, frame, embeddings, n_pairs=40, seed=0)
    assert plain.rule is None and "pair_accuracy_face_rule" not in plain.flat()
    # The rule records which face channel it was fitted on, for inference to read the same.
    # The identity channel describes faceless images too: their pairs get a cosine of their
    # own, and bob's hidden-face pairs are decided right as well.
    by_identity = evaluation.pair_report(frame, embeddings, frame, embeddings, n_pairs=40,
                                         seed=0, faces={"dev": faces, "eval": faces},
                                         face_channel="identity")
    assert by_identity.rule.channel == "identity" and by_identity.rule.faceless_cosine <= 1.0
    assert (by_identity.by_kind()["accuracy_face_rule"] == 1.0).all()
    assert (flat["face_rule_channel"], by_identity.flat()["face_rule_channel"]) == (
        "descriptor", "identity")
    # Notebook 04 applies a card's saved rule to the same pair list: the notebook's figures.
    for scored in (report, by_identity):
        applied = evaluation.face_rule_pairs(frame, embeddings, faces, scored.rule, n_pairs=40,
                                             seed=0)
        assert applied == {key: value for key, value in scored.flat().items()
                           if key.startswith("pair_") and "_face_rule" in key
                           or key == "pair_n_pairs"}
    assert applied["pair_accuracy_face_rule_same_identity"] == 1.0
    assert evaluation.face_rule_pairs(frame, embeddings, faces, report.rule, n_pairs=40,
                                      seed=0)["pair_accuracy_face_rule_same_identity"] == (
        pytest.approx(expected))
    # The operating point reaches the fit (`fusion.fit_face_rule`, tested on its own).
    asked = []
    fit = fusion.fit_face_rule
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(fusion, "fit_face_rule", lambda *args, **kwargs: (
            asked.append(kwargs["min_specificity"]), fit(*args, **kwargs))[1])
        evaluation.pair_report(frame, embeddings, frame, embeddings, n_pairs=40, seed=0,
                               faces={"dev": faces, "eval": faces}, face_rule_specificity=0.98)
    assert asked == [0.98]
    # The worst pairs are the decision's errors: with the rule, only bob's hidden-face pairs.
    by_distance = evaluation.worst_pairs(plain, n=100)
    assert len(by_distance) == round((1 - plain.calibrated["accuracy"]) * len(plain.pairs))
    assert by_distance["error"].is_monotonic_decreasing and (by_distance["error"] > 0).all()
    by_rule = evaluation.worst_pairs(report, n=100)
    assert len(by_rule) == int((~report.pairs["same_by_rule"]
                                & report.pairs["same"].astype(bool)).sum()) > 0
    assert (by_rule["kind"] == "same identity").all()
    assert not (faces[1][by_rule["i"]] & faces[1][by_rule["j"]]).any()


def test_hackathon_pair_list_pairs_consecutive_files_and_same_position_negatives():
    frame = _frame().sample(frac=1.0, random_state=3).reset_index(drop=True)  # order by name
    pairs = evaluation.hackathon_pair_list(frame, seed=0)
    names = frame["path"].to_numpy()
    got = {(names[i], names[j], same) for i, j, same in pairs.itertuples(index=False)}
    # Sorted by name, each person's files are p1, p1_fog, p2, p2_fog ("." sorts before "_");
    # with two people the other identity is always the other person.
    expected = set()
    for person, other in (("ann", "bob"), ("bob", "ann")):
        files = [f"{person}_p1.jpg", f"{person}_p1_fog.jpg", f"{person}_p2.jpg",
                 f"{person}_p2_fog.jpg"]
        others = [name.replace(person, other) for name in files]
        for k in range(3):
            expected |= {(files[k], files[k + 1], 1), (files[k], others[k], 0)}
    assert got == expected and len(pairs) == 12
    with pytest.raises(ValueError, match="two identities"):
        evaluation.hackathon_pair_list(frame[frame["identity"] == "ann"], seed=0)


def test_pair_report_on_the_hackathon_list():
    frame = _frame()
    photo_points = {"ann_p1": [0.0, 0.0], "ann_p2": [0.8, 0.0], "bob_p1": [0.0, 1.4],
                    "bob_p2": [0.8, 1.4]}
    embeddings = np.array([photo_points[s[:-4]] for s in frame["source"]])
    report = evaluation.pair_report(frame, embeddings, frame, embeddings, seed=0,
                                    protocol="hackathon")
    table = report.by_kind()
    # Per person: two same-photo positives, one across photos (p1_fog, p2), three negatives.
    assert table["pairs"].to_dict() == {"same photo": 4, "same identity": 2,
                                        "different identity": 6}
    # Distance 0.5 accepts only same-photo pairs: wrong on the two cross-photo positives.
    assert report.fixed["accuracy"] == pytest.approx(10 / 12)
    # Without looking at a face, "different distortions" gets every pair of this list right.
    assert report.face_blind_accuracy == 1.0
    assert report.flat()["pair_accuracy_face_blind"] == 1.0
    with pytest.raises(ValueError, match="protocol"):
        evaluation.pair_report(frame, embeddings, frame, embeddings, protocol="sorted")


def test_photo_index_is_numpy_unique_with_its_inverse():
    """Rows of shuffled photos (clean rows, copies with a source, copies without one)."""
    rng = np.random.default_rng(5)
    photos = [f"/d/id{i % 7}/p{i}.jpg" for i in rng.permutation(40)]
    rows = [(p, p) for p in photos] + [(f"{p}_{k}.jpg", p) for p in photos for k in range(3)]
    rows += [(f"/d/orphan{i}.jpg", "") for i in range(5)]
    frame = pd.DataFrame([rows[i] for i in rng.permutation(len(rows))],
                         columns=["path", "source"])
    expected, inverse = np.unique(evaluation.photo_keys(frame), return_inverse=True)
    got, positions = evaluation.photo_index(frame)
    assert list(got) == list(expected) and positions.tolist() == inverse.tolist()
    assert len(got) == 45 and sorted(got) == list(got)


def _channels(frame: pd.DataFrame, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Copy channel: each photo its own direction, a copy close to its photo and equally close to
    two photos of other people (so once the photo is removed it finds someone else). Identity
    channel: each person their own direction with per-image noise; a sunny copy shows no face,
    so its descriptor points nowhere near anyone."""
    rng = np.random.default_rng(seed)
    photos = sorted(frame.loc[frame["distortion"] == "clean", "path"])
    people = sorted(frame["identity"].unique())
    photo = np.eye(len(photos))
    copy, identity = [], []
    for _, row in frame.iterrows():
        own = photos.index(row["source"] or row["path"])
        vector = photo[own].copy()
        if row["distortion"] != "clean":
            others = [i for i, p in enumerate(photos) if not p.startswith(row["identity"] + "/")]
            vector += 0.3 * photo[others[0]] + 0.3 * photo[others[-1]]
        copy.append(vector + rng.normal(0, 0.01, len(photos)))
        face = np.zeros(len(people) + 1)
        if row["distortion"] == "sunny":
            face[-1] = 1.0
        else:
            face[people.index(row["identity"])] = 1.0
        identity.append(face + rng.normal(0, 0.05, len(face)))
    unit = [np.asarray(v) / np.linalg.norm(v, axis=1, keepdims=True) for v in (copy, identity)]
    return unit[0], unit[1]


def test_switch_report_answers_copies_and_people_each_by_its_channel():
    frame = gallery_frame()
    dev_copy, dev_identity = _channels(frame, seed=1)
    eval_copy, eval_identity = _channels(frame, seed=2)
    report = evaluation.switch_report(frame, dev_copy, dev_identity, frame, eval_copy,
                                      eval_identity)
    assert report.eval["top1"] == 1.0  # every copy found
    # own photo removed: the noisy copies recognised by their face; the sunny ones, which show
    # none, by chance at best
    assert report.hard["top1_by_distortion"]["noisy"] == 1.0
    assert report.hard["top1_by_distortion"]["sunny"] < 1.0
    assert report.channels["copy"]["top1"] == 1.0 and report.channels["copy"]["top1_hard"] == 0.0
    assert report.channels["identity"]["top1_hard"] < 1.0
    switched = (report.eval["top1"] + report.hard["top1"]) / 2
    for numbers in report.channels.values():
        assert switched > (numbers["top1"] + numbers["top1_hard"]) / 2
    flat = report.flat()
    assert flat["switch_copy_missed"] == 0 and flat["switch_person_missed"] > 0
    assert flat["switch_top1_hard"] == report.hard["top1"] and 0 < flat["switch_copy_share"] <= 1
    # its dev figures are those of the fitted switch answering dev's queries again
    on_dev = evaluation.switched_report(frame, dev_copy, dev_identity, report.switch)
    assert (flat["switch_dev_top1"], flat["switch_dev_top1_hard"]) == pytest.approx(
        (on_dev.eval["top1"], on_dev.hard["top1"]))
    assert "switch_dev_top1" not in on_dev.flat()  # given, not fitted: no dev figures
    # intervals over identities: a point where every copy was found, around each own-photo
    # figure otherwise (sunny's, by chance at best, wide; noisy's all right)
    assert flat["switch_top1_ci95"] == [1.0, 1.0]
    low, high = flat["switch_top1_hard_ci95"]
    assert low < flat["switch_top1_hard"] < high
    by = flat["switch_top1_hard_by_distortion_ci95"]
    assert set(by) == set(report.hard["top1_by_distortion"]) and by["noisy"] == [1.0, 1.0]
    assert by["sunny"][0] < report.hard["top1_by_distortion"]["sunny"] <= by["sunny"][1]


def test_switch_reads_the_person_in_the_copy_channel_where_glare_erased_the_face():
    """Face channel: one direction per person, but a sunny copy shows no face (a direction of
    its own, as far from everyone). Copy channel: one direction per photo plus a weaker one per
    person (hair, outline). Once its own photo is removed, a sunny copy ties with every person
    in the face channel, so the smallest share of the copy channel that breaks the tie is
    chosen (0.05 of `IDENTITY_SHARES`) and every person is found."""
    frame = gallery_frame()
    people = sorted(frame["identity"].unique())
    photos = sorted(frame.loc[frame["distortion"] == "clean", "path"])
    copy, face = [], []
    for row in frame.itertuples():
        person = len(photos) + people.index(row.identity)
        copy.append(np.eye(len(photos) + len(people) + 1)[photos.index(row.source or row.path)])
        copy[-1][person] = 0.5
        face.append(np.eye(len(photos) + len(people) + 1)[-1 if row.distortion == "sunny"
                                                          else person])
    copy, face = unit_rows(copy), unit_rows(face)
    share, faceless, shares = evaluation.identity_shares(frame, copy, face)
    assert faceless is None  # no face-found flags: one share for every image
    by_share = shares.set_index("identity_share")["top1_hard"]
    assert share == 0.05 == evaluation.IDENTITY_SHARES[1]
    assert by_share[0.0] < 1.0 and by_share[0.05] == 1.0
    report = evaluation.switch_report(frame, copy, face, frame, copy, face)
    assert report.switch.identity_share == 0.05 and report.flat()["switch_identity_share"] == 0.05
    assert report.eval["top1"] == 1.0 and report.hard["top1"] == 1.0
    # each channel alone is reported as it is: the face channel misses sunny copies
    assert report.channels["identity"]["top1_hard"] == by_share[0.0]
    # a fine-tuned network's own vectors, when given, get a row of their own: here the copy
    # channel as the "network" recognises every copy and, with its own photo removed, the
    # person by the weaker direction
    # a channel that already carries a descriptor's share: the switch records it for
    # inference, and the numbers are those of the channel given
    with_network = evaluation.switch_report(frame, copy, face, frame, copy, face,
                                            eval_network=copy, descriptor_share=0.6,
                                            descriptor_front_end="hog")
    assert (with_network.switch.descriptor_share, with_network.switch.descriptor_front_end,
            with_network.switch.identity_share) == (0.6, "hog", 0.05)
    assert with_network.hard == report.hard
    assert with_network.channels["network"] == {"top1": 1.0, "top1_hard": 1.0}
    assert with_network.flat()["network_channel_top1_hard"] == 1.0
    assert "network" not in report.channels


def test_identity_shares_score_each_candidate_as_a_gallery_search_would(monkeypatch):
    """The shares' dev top-1s come from the two channels' cosines, taken once; each must equal
    a gallery search of that candidate's mixed vectors (`retrieval_table` of
    `fusion.switch_identity`, own photo removed), on random channels, with faceless rows and
    an identity with a single photo (its queries are not scored once it is removed)."""
    rng = np.random.default_rng(3)
    rows = []
    for person in range(7):
        for photo in range(1 if person == 0 else 2 + person % 2):
            source = f"p{person}/{photo}.jpg"
            rows += [(source, f"p{person}", "clean", "")] + [
                (f"p{person}/{photo}_{d}.jpg", f"p{person}", d, source) for d in ("fog", "sunny")]
    frame = pd.DataFrame(rows, columns=["path", "identity", "distortion", "source"])
    person = frame["identity"].str[1:].astype(int).to_numpy()
    photo = pd.factorize(evaluation.photo_keys(frame))[0]
    # a person's direction under noise in the face channel; the photo's, and a faint
    # person's, in the copy channel
    face = unit_rows(np.eye(7)[person] + rng.normal(0, 0.5, (len(frame), 7)))
    copy = unit_rows(np.hstack([np.eye(photo.max() + 1)[photo], 0.4 * np.eye(7)[person]])
                     + rng.normal(0, 0.3, (len(frame), photo.max() + 8)))
    found = rng.random(len(frame)) > 0.3
    _, _, table = evaluation.identity_shares(frame, copy, face, found=found)
    assert table["top1_hard"].nunique() > 3
    for row in table.itertuples():
        searched = evaluation.retrieval_table(
            frame, fusion.switch_identity(copy, face, row.identity_share, found,
                                          row.faceless_share), exclude_own_source=True)
        assert row.top1_hard == searched["correct"].mean()
    assert len(searched) < (frame["distortion"] != "clean").sum()  # p0's queries unscored
    # queries in chunks of three rows: the same figures
    photos = int((frame["distortion"] == "clean").sum())
    monkeypatch.setattr(evaluation, "_SHARES_CHUNK_CELLS", 3 * photos)
    _, _, chunked = evaluation.identity_shares(frame, copy, face, found=found)
    assert chunked["top1_hard"].tolist() == table["top1_hard"].tolist()
    # the mean aggregate (a centroid per person) is searched candidate by candidate
    _, _, by_mean = evaluation.identity_shares(frame, copy, face, "mean", found=found)
    row = by_mean.iloc[len(by_mean) // 2]
    assert row.top1_hard == evaluation.retrieval_table(
        frame, fusion.switch_identity(copy, face, row.identity_share, found, row.faceless_share),
        "mean", exclude_own_source=True)["correct"].mean()
    assert not by_mean["top1_hard"].equals(table["top1_hard"])


def test_switch_mixes_more_of_the_copy_channel_where_the_face_was_not_found():
    """Face channel: one direction per person, but glare turns a sunny copy's face into the
    next person's, with full confidence, and the face is reported not found there. Copy
    channel: one direction per photo plus half a person's: the own person on a sunny copy
    (hair, outline), the next person on a noisy one (its texture). Own photo removed, a query's
    copy cosine is 0.2 with the person it shows, 0 with the others, and its margin 0.2 either
    way, so no threshold tells noisy from sunny queries: with one share of the copy channel
    (at most 0.5) the identity channel answers the noisy ones and misses every sunny one (0.5
    at best). A sunny query with share f against a gallery photo with share s scores
    sqrt(s f) 0.2 for its own person and sqrt((1 - s)(1 - f)) for the next: only f = 1
    (with s > 0) recognises it, so (0.05, 1.0) is chosen and the switch finds everyone."""
    frame = gallery_frame()
    people = sorted(frame["identity"].unique())
    photos = sorted(frame.loc[frame["distortion"] == "clean", "path"])
    size = len(photos) + len(people)
    copy, face = [], []
    for row in frame.itertuples():
        person = people.index(row.identity)
        shown = (person + 1) % len(people) if row.distortion == "noisy" else person
        copy.append(np.eye(size)[photos.index(row.source or row.path)]
                    + 0.5 * np.eye(size)[len(photos) + shown])
        face.append(np.eye(len(people))[(person + 1) % len(people) if row.distortion == "sunny"
                                        else person])
    copy, face = unit_rows(copy), unit_rows(face)
    found = (frame["distortion"] != "sunny").to_numpy()
    one, no_faceless, one_table = evaluation.identity_shares(frame, copy, face)
    assert no_faceless is None and one_table["top1_hard"].max() == 0.5
    share, faceless, table = evaluation.identity_shares(frame, copy, face, found=found)
    assert (share, faceless) == (0.05, 1.0) and len(table) == (
        len(evaluation.IDENTITY_SHARES) * len(evaluation.FACELESS_SHARES))
    assert table["top1_hard"].max() == 1.0
    report = evaluation.switch_report(frame, copy, face, frame, copy, face,
                                      dev_found=found, eval_found=found)
    assert (report.switch.identity_share, report.switch.faceless_share) == (0.05, 1.0)
    assert report.eval["top1"] == 1.0 and report.hard["top1"] == 1.0
    assert report.flat()["switch_faceless_share"] == 1.0
    # the face channel alone is reported as it is: every sunny copy missed
    assert report.channels["identity"]["top1_hard"] == 0.5
    without = evaluation.switch_report(frame, copy, face, frame, copy, face)
    assert without.switch.faceless_share is None and without.hard["top1"] <= 0.5


def test_the_copy_weight_for_a_switch_is_the_one_that_tells_copies_from_strangers():
    """The learned embedding finds every copy alone (official top-1 1.0 at weight 0), but a
    sunny copy's cosine is faint and every image carries random texture, so its margin is no
    larger than a stranger's: no switch threshold tells copies from other photos, and with the
    own photo removed some queries stay with the copy channel. The copy detector (one direction
    per photo) separates them at any weight: dev top-1 picks weight 0, the switch's objective
    the smallest weight that gives the detector a say."""
    frame = gallery_frame()
    people = sorted(frame["identity"].unique())
    photos = sorted(frame.loc[frame["distortion"] == "clean", "path"])
    rng = np.random.default_rng(0)
    learned, copies, face = [], [], []
    for row in frame.itertuples():
        photo = np.eye(len(photos))[photos.index(row.source or row.path)]
        glare = 0.35 if row.distortion == "sunny" else 1.0
        learned.append(np.concatenate([glare * photo, rng.normal(0, 0.25, 8)]))
        copies.append(photo)
        face.append(np.eye(len(people) + 1)[-1 if row.distortion == "sunny"
                                            else people.index(row.identity)])
    learned, copies, face = unit_rows(learned), unit_rows(copies), unit_rows(face)
    by_top1, _ = fusion.choose_weight(learned, copies, fusion.COPY_WEIGHTS,
                                      partial(evaluation.dev_scores, frame), "dev_top1")
    by_switch, table = fusion.choose_weight(
        learned, copies, fusion.COPY_WEIGHTS,
        partial(evaluation.dev_switch_scores, frame, identity=face), "dev_switch_mean_top1")
    assert by_top1 == 0.0 and by_switch == fusion.COPY_WEIGHTS[1]
    rows = table.set_index("weight")
    assert (rows["dev_top1"] == 1.0).all()  # every copy found at every weight
    # with the own photo removed: 4 of 12 queries are sunny (no face, no photo), the other 8
    # are recognised by the face channel once the switch hands every one of them to it
    assert rows.loc[by_switch, "dev_top1_hard"] == 8 / 12
    assert rows.loc[0.0, "dev_top1_hard"] < 8 / 12
    assert rows.loc[by_switch, "dev_switch_mean_top1"] == (1 + 8 / 12) / 2


def test_switch_misses_count_copies_and_people_per_distortion():
    """Hand-built tables: 3 foggy and 2 sunny queries per protocol."""
    official = pd.DataFrame({"distortion": ["foggy", "foggy", "foggy", "sunny", "sunny"],
                             "correct": [True, False, True, True, True],
                             "channel": ["copy", "copy", "identity", "copy", "copy"]})
    hard = official.assign(correct=[True, False, False, False, True],
                           channel=["identity", "identity", "identity", "copy", "identity"])
    report = evaluation.SwitchReport(fusion.CopySwitch(0.1, 0.5), {}, {}, {}, pd.DataFrame(),
                                     {"eval": official, "hard": hard})
    misses = report.misses()
    assert misses.loc["foggy"].tolist() == [3, 1, 2, 2 / 3, 0.0]
    assert misses.loc["sunny"].tolist() == [2, 0, 1, 1.0, 0.5]
