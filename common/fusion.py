"""A learned similarity plus a weighted extra channel, and the face rule built on both.

Two channels join Task B's learned embedding: the copy detector (`models.copy_descriptor`,
computed inside the network) and a face descriptor (`common.face_descriptor`, computed beside it).
Both join it one way, `fuse`: ``[sqrt(1 - w) a, sqrt(w) b]`` of unit rows is again a unit row
whose cosine is ``(1 - w) cos_a + w cos_b``, so the gallery protocol and the cosine thresholds
need no change. `choose_weight` picks ``w`` on dev by a score the caller passes
(`evaluation.dev_scores`), which keeps this module below the reports that use its face rule.

`FaceRule` uses a face descriptor for pairs instead: same when the embeddings are close *or* the
descriptors agree. It belongs to the model: fitted on dev pairs (`fit_face_rule`), saved in the
model card as ``face_rule`` and applied by `common.predict`. `CopySwitch` does the same for the
gallery: each query is answered by the copy channel when the gallery holds a near-duplicate of
it, else by the face descriptor (`fit_copy_switch`).
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

__all__ = ["COPY_WEIGHTS", "DESCRIPTOR_WEIGHTS", "fuse", "choose_weight", "FaceRule",
           "fit_face_rule", "CopySwitch", "fit_copy_switch", "ALWAYS_BY_MARGIN", "NEVER_BY_MARGIN",
           "NEVER_UNSURE", "ALWAYS_UNSURE", "NEVER_BY_COSINE", "SWITCH_THRESHOLDS",
           "best_switch_row", "switch_identity", "row_shares", "carries_whole", "FACE_CHANNELS",
           "WHOLE_SHARES"]

# `CopySwitch` thresholds that decide alone: a margin (a difference of cosines) is >= 0, and
# < 3 unless the gallery holds a single identity (then both channels give it); a cosine is in
# [-1, 1].
ALWAYS_BY_MARGIN, NEVER_BY_MARGIN = 0.0, 3.0
NEVER_UNSURE, ALWAYS_UNSURE = -2.0, 2.0
NEVER_BY_COSINE = 2.0  # a `CopySwitch.faceless_copy_cosine` that no cosine reaches
# The `CopySwitch` thresholds a fit chooses, in the order ties go to the lower value.
SWITCH_THRESHOLDS = ("threshold", "identity_threshold", "faceless_copy_cosine")
FACE_CHANNELS = ("descriptor", "identity")  # what a `FaceRule`'s cosine reads
COPY_WEIGHTS = tuple(np.round(np.arange(0.0, 1.0, 0.1), 1))  # copy-detector weights tried on dev
DESCRIPTOR_WEIGHTS = (0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8)  # face-descriptor weights tried on dev
WHOLE_SHARES = (0.0, 0.2, 0.3, 0.4)  # `CopySwitch.whole_share`s tried on dev (a switch fit each)

Rows = TypeVar("Rows", np.ndarray, torch.Tensor)


def _weighted_concat(first: Rows, second: Rows, weight: float | np.ndarray,
                     present: np.ndarray | None = None) -> Rows:
    """``[sqrt(1 - w) first, sqrt(w) second]``, also at ``w = 0`` (the dev table's first row);
    ``[first, 0]`` in the rows where `present` is False (`fuse`). `weight` is one number or
    one per row (`switch_identity`)."""
    is_tensor = isinstance(first, torch.Tensor)
    second = second.to(first.dtype) if is_tensor else second.astype(first.dtype)
    if np.ndim(weight):
        weight = np.asarray(weight, np.float32)[:, None]
        weight = torch.from_numpy(weight) if is_tensor else weight
    parts = [first * (1.0 - weight) ** 0.5, second * weight ** 0.5]
    fused = torch.cat(parts, dim=1) if is_tensor else np.hstack(parts)
    if present is not None and not np.all(present):
        absent = ~np.asarray(present, bool)
        absent = torch.from_numpy(absent) if is_tensor else absent
        fused[absent] = 0
        fused[absent, :first.shape[1]] = first[absent]
    return fused


def fuse(first: Rows, second: Rows, weight: float, present: np.ndarray | None = None) -> Rows:
    """(N, D1) and (N, D2) unit rows (arrays or tensors) -> (N, D1 + D2) unit rows whose cosine
    is ``(1 - weight) * cos_first + weight * cos_second``.

    ``weight = 0`` returns `first` itself: an unfused model keeps its dimension, so its card and
    a saved gallery index stay valid.

    present: per row, whether `second` has something to say (a face descriptor whose face was
        found); a row without it keeps `first` alone, ``[first, 0]``, so its cosine with a full
        row is ``sqrt(1 - weight) * cos_first``: every candidate of one query is scaled alike,
        and a descriptor of no face (dlib's of a glare-white image) cannot make strangers alike.

    Raises:
        ValueError: `weight` is outside [0, 1].
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight {weight} must be in [0, 1]")
    if weight == 0.0:
        return first
    return _weighted_concat(first, second, weight, present)


def choose_weight(first: np.ndarray, second: np.ndarray, candidates: Sequence[float],
                  score: Callable[[np.ndarray], dict], key: str, name: str = "weight",
                  present: np.ndarray | None = None) -> tuple[float, pd.DataFrame]:
    """The candidate weight of `second` whose fused dev rows maximise ``score(fused)[key]``,
    the smallest on ties (the channel has to earn its place).

    Args:
        first / second: unit rows of the dev split, learned and the extra channel.
        candidates: weights to try, ascending.
        score: dev metrics of fused rows, e.g. ``partial(evaluation.dev_scores, dev_frame)``.
        key: the entry of `score`'s dict to maximise. name: the table's column of weights.
        present: the rows where `second` has something to say (`fuse`).

    Returns:
        (weight, one table row per candidate: the weight and its `score`).
    """
    rows = [{name: weight, **score(_weighted_concat(first, second, weight, present))}
            for weight in tqdm(candidates, desc=name, leave=False)]
    table = pd.DataFrame(rows)
    return float(table.loc[table[key].idxmax(), name]), table


@dataclass(frozen=True)
class FaceRule:
    """A pair decision for when one distance cannot serve both kinds of positive pair.

    Same when the embeddings are within `distance` (two views of one photo, which the learned
    part and the copy detector see) **or** a face channel found both faces and their cosine is
    at least `descriptor_cosine` (one person on two photos, which only a face-trained model sees).
    `channel` names that face channel (`FACE_CHANNELS`): ``"descriptor"``, the card's face
    descriptor, which finds no face under heavy glare; ``"identity"``, the identity channel of
    the card's `CopySwitch` (`CopySwitch.pair_vectors`), which answers every image.

    `faceless_cosine` (None: never) decides, in the same way, the pairs where the face channel
    missed a face: the identity channel still describes such an image (hair, outline), but its
    cosines lie lower than two found faces', so one threshold would refuse all of them.
    """

    distance: float
    descriptor_cosine: float
    channel: str = "descriptor"
    faceless_cosine: float | None = None

    def __post_init__(self) -> None:
        if self.channel not in FACE_CHANNELS:
            raise ValueError(f"FaceRule channel={self.channel!r}; choose one of {FACE_CHANNELS}")

    def decide(self, distances: np.ndarray, descriptor_cosines: np.ndarray,
               both_found: np.ndarray) -> np.ndarray:
        """Boolean same/different per pair."""
        found, cosines = np.asarray(both_found, bool), np.asarray(descriptor_cosines)
        agree = found & (cosines >= self.descriptor_cosine)
        if self.faceless_cosine is not None:
            agree |= ~found & (cosines >= self.faceless_cosine)
        return (np.asarray(distances) <= self.distance) | agree


def fit_face_rule(distances: np.ndarray, descriptor_cosines: np.ndarray, both_found: np.ndarray,
                  same: np.ndarray, n_candidates: int = 100, min_specificity: float = 0.0,
                  faceless: bool = False) -> FaceRule:
    """The `FaceRule` fitted on (dev) pairs: its thresholds on a grid of quantiles of their
    scores; the first best in (distance, cosine, faceless cosine) order on ties.

    min_specificity: 0 takes the best accuracy. Above 0 it names an operating point: the most
        same pairs accepted while at least this share of the different pairs is refused (a
        verification system's false-accept budget; issue 20 asks 0.98), the best accuracy
        among those; the highest share refused when no candidate reaches it.
    faceless: also fit `FaceRule.faceless_cosine` on the pairs not ``both_found`` (a channel
        that describes every image, as the identity channel does); else those pairs are
        decided by distance alone.
    """
    same = np.asarray(same).astype(bool)
    found = np.asarray(both_found, bool)
    cosines = np.asarray(descriptor_cosines)
    quantiles = np.linspace(0, 1, n_candidates)

    def grid(rows: np.ndarray) -> np.ndarray:  # inf: these cosines never decide
        inner = np.unique(np.quantile(cosines[rows], quantiles)) if np.any(rows) else []
        return np.append(inner, np.inf)

    found_grid = grid(found)
    faceless_grid = grid(~found) if faceless else np.array([np.inf])
    n_same, n_different = int(same.sum()), int((~same).sum())
    best_key, best = None, (0.0, np.inf, np.inf)
    for distance in np.unique(np.quantile(distances, quantiles)):
        close = distances <= distance
        # per candidate of each group: the same and different pairs its cosine adds (not close)
        counts = []
        for rows, thresholds in ((found & ~close, found_grid), (~found & ~close, faceless_grid)):
            agree = cosines[rows][None, :] >= thresholds[:, None]
            counts.append(((agree & same[rows]).sum(axis=1), (agree & ~same[rows]).sum(axis=1)))
        (found_same, found_diff), (faceless_same, faceless_diff) = counts
        accepted_same = int((close & same).sum()) + found_same[:, None] + faceless_same[None, :]
        accepted_diff = int((close & ~same).sum()) + found_diff[:, None] + faceless_diff[None, :]
        accuracy = (accepted_same + n_different - accepted_diff) / len(same)
        if min_specificity > 0:
            refused = ((n_different - accepted_diff) / n_different if n_different
                       else np.ones_like(accuracy))
            accepted = accepted_same / n_same if n_same else np.zeros_like(accuracy)
            reached = refused >= min_specificity
            keys = (reached, np.where(reached, accepted, refused), accuracy)
        else:
            keys = (accuracy,)
        candidate = np.ones(accuracy.shape, bool)  # the best of this distance, first on ties
        for values in keys:
            candidate &= values == values[candidate].max()
        i, j = np.argwhere(candidate)[0]
        key = tuple(bool(v[i, j]) if v.dtype == bool else float(v[i, j]) for v in keys)
        if best_key is None or key > best_key:
            best_key, best = key, (float(distance), float(found_grid[i]), float(faceless_grid[j]))
    distance, cosine, faceless_cosine = best
    return FaceRule(distance, cosine,
                    faceless_cosine=faceless_cosine if faceless and np.isfinite(faceless_cosine)
                    else None)


@dataclass(frozen=True)
class CopySwitch:
    """A gallery decision for when one similarity cannot serve both kinds of match.

    A distorted copy of a gallery photo is found by the copy channel (the learned embedding with
    its copy detector); another photo of a known person only by a face descriptor; and a linear
    mix of the two costs one kind of match for every share it gives the other. So each query is
    answered by one channel: the copy channel's when its best identity stands out as a
    near-duplicate would (its cosine at least `threshold` above the next identity's) or when
    the descriptor is unsure (its best cosine below `identity_threshold`, as when glare hid the
    face) or, for a query whose face the face channel did not find, when the copy channel's
    best cosine reaches `faceless_copy_cosine`; else the descriptor's. A glare copy keeps its
    photo's layout, so its cosine with that photo stays high while another photo of the person
    scores low, but its best identity may stand out by less than `threshold`: there the margin
    alone sent copies to an identity channel that has only hair and outline to read.

    The identity channel it reads may carry `identity_share` of the copy channel's cosine
    (`identity_vectors`): a face network sees only the face, which glare can erase, while the
    whole-image embedding also keeps hair and head outline; 0 reads the face channel alone.
    `faceless_share` (None: the same) is that share for the images whose face the face channel
    did not find, where hair and outline are all that is left (most of a sunny split).
    A fine-tuned face network may in turn carry `descriptor_share` of a face descriptor
    (`face_vectors`, front end `descriptor_front_end`) where that descriptor found the face:
    dlib's detector and network, trained on other faces, fail on other images (rain, noise).
    And it may carry `whole_share` of a whole-image network fine-tuned for identity through
    glare (`with_whole`, `common.glare_identity`) in the gallery and in the queries whose face
    it did not find: a query with a face keeps the face channel's ranking.
    """

    threshold: float
    identity_threshold: float = NEVER_UNSURE
    identity_share: float = 0.0
    descriptor_share: float = 0.0
    descriptor_front_end: str = "robust"
    faceless_share: float | None = None
    faceless_copy_cosine: float = NEVER_BY_COSINE
    whole_share: float = 0.0

    def face_vectors(self, network: np.ndarray, descriptors: np.ndarray,
                     found: np.ndarray) -> np.ndarray:
        """The face channel of a fine-tuned network with `descriptor_share` of the face
        descriptor's cosine where it found the face (both unit rows; `fuse`)."""
        return fuse(network, descriptors, self.descriptor_share, present=found)

    def with_whole(self, face: np.ndarray, whole: np.ndarray, found: np.ndarray,
                   gallery: np.ndarray) -> np.ndarray:
        """The face channel with `whole_share` of the whole-image network's cosine (both unit
        rows; `fuse`) in the rows that carry it (`carries_whole`); `whole` is read only
        there."""
        return fuse(face, whole, self.whole_share, present=carries_whole(found, gallery))

    def identity_vectors(self, copy: np.ndarray, identity: np.ndarray,
                         found: np.ndarray | None = None) -> np.ndarray:
        """The identity channel as this switch reads it (`switch_identity`); `found`: per
        row, whether the face channel found the face.

        Raises:
            ValueError: the switch has a `faceless_share` and `found` is None.
        """
        if self.faceless_share is not None and found is None:
            raise ValueError("this CopySwitch mixes a share of its own into faceless images "
                             "(faceless_share): pass the face channel's face-found flags")
        return switch_identity(copy, identity, self.identity_share, found, self.faceless_share)

    def pair_vectors(self, copy: np.ndarray, identity: np.ndarray) -> np.ndarray:
        """What a pair `FaceRule` reads of this switch's identity channel: `identity_share` of
        the copy channel for every image. A faceless image's own share would put its pairs on
        another cosine scale than the rule's one threshold (on dev pairs it costs same-person
        pairs; `docs/results.md`)."""
        return switch_identity(copy, identity, self.identity_share)

    def decide(self, copy_scores: np.ndarray, copy_runner_up: np.ndarray,
               identity_scores: np.ndarray, found: np.ndarray | None = None) -> np.ndarray:
        """Per query, whether the copy channel answers: from its best identity's cosine and the
        next one's, the descriptor's best identity score and, for `faceless_copy_cosine`,
        whether the face channel found the query's face (`found`).

        Raises:
            ValueError: the switch reads `faceless_copy_cosine` and `found` is None.
        """
        copy_scores = np.asarray(copy_scores, float)
        use_copy = ((copy_scores - np.asarray(copy_runner_up, float) >= self.threshold)
                    | (np.asarray(identity_scores, float) < self.identity_threshold))
        if self.faceless_copy_cosine >= NEVER_BY_COSINE:
            return use_copy
        if found is None:
            raise ValueError("this CopySwitch answers faceless queries by their copy cosine "
                             "(faceless_copy_cosine): pass the face channel's face-found flags")
        return use_copy | (~np.asarray(found, bool) & (copy_scores >= self.faceless_copy_cosine))

    def uses_copy(self, copy_table: pd.DataFrame, identity_table: pd.DataFrame,
                  found: np.ndarray | None = None) -> np.ndarray:
        """`decide` for the queries of the two channels' retrieval tables; `found` per row of
        the split the tables were scored on (their ``query_row``)."""
        return self.decide(copy_table["predicted_score"].to_numpy(float),
                           copy_table["runner_up_score"].to_numpy(float),
                           identity_table["predicted_score"].to_numpy(float),
                           None if found is None
                           else np.asarray(found, bool)[copy_table["query_row"].to_numpy()])

    def choose(self, copy_table: pd.DataFrame, identity_table: pd.DataFrame,
               found: np.ndarray | None = None) -> pd.DataFrame:
        """One retrieval table: per query the row of `copy_table` or of `identity_table` (two
        `metrics.compute_retrieval_table` results over the same queries), with a ``channel``
        column saying which; `found` as in `uses_copy`."""
        if not np.array_equal(copy_table["query_index"], identity_table["query_index"]):
            raise ValueError("CopySwitch.choose needs both channels' tables over the same queries")
        use_copy = self.uses_copy(copy_table, identity_table, found)
        table = pd.DataFrame({column: np.where(use_copy, copy_table[column].to_numpy(),
                                               identity_table[column].to_numpy())
                              for column in identity_table.columns}, index=identity_table.index)
        table["channel"] = np.where(use_copy, "copy", "identity")
        table.attrs = dict(identity_table.attrs)
        return table


def switch_identity(copy: np.ndarray, identity: np.ndarray, share: float,
                    found: np.ndarray | None = None, faceless_share: float | None = None
                    ) -> np.ndarray:
    """The identity channel a `CopySwitch` reads: the face channel's unit rows with `share` of
    the copy channel's cosine mixed in (`fuse`); 0 returns the face channel itself.

    With `found` and a `faceless_share`, the rows where it is False get that share instead:
    each row is ``[sqrt(1 - s) identity, sqrt(s) copy]`` with its own ``s``, so two rows'
    cosine is ``sqrt((1 - s1)(1 - s2)) cos_identity + sqrt(s1 s2) cos_copy``.
    """
    if found is None or faceless_share is None or faceless_share == share:
        return fuse(identity, copy, share)
    if not (0.0 <= share <= 1.0 and 0.0 <= faceless_share <= 1.0):
        raise ValueError(f"shares {share} and {faceless_share} must be in [0, 1]")
    # two different shares: every row has both parts, whichever rows are given, so a gallery
    # and its queries described apart keep one dimension
    return _weighted_concat(identity, copy, row_shares(share, found, faceless_share))


def row_shares(share: float, found: np.ndarray, faceless_share: float | None) -> np.ndarray:
    """Per row, the copy channel's share `switch_identity` mixes in: `faceless_share` where
    the face channel did not find the face (`found` False), else `share`; `share` everywhere
    when `faceless_share` is None."""
    return np.where(np.asarray(found, bool), share,
                    share if faceless_share is None else faceless_share)


def carries_whole(found: np.ndarray, gallery: np.ndarray | bool) -> np.ndarray:
    """Per row, whether a `CopySwitch` mixes its whole-image share in: every gallery photo, and
    a query only where the face channel did not find its face (`found`)."""
    return np.asarray(gallery, bool) | ~np.asarray(found, bool)


def copy_margin(table: pd.DataFrame) -> np.ndarray:
    """How far a query's best identity stands above the next one (inf with a single one)."""
    return (table["predicted_score"] - table["runner_up_score"]).to_numpy(float)


def _grid(values: list[np.ndarray], n: int, ends: tuple[float, ...]) -> np.ndarray:
    """`n` quantiles of the pooled values, plus `ends` (a channel always / never used)."""
    pooled = np.concatenate(values) if values else np.zeros(0)
    pooled = pooled[np.isfinite(pooled)]  # a margin is infinite with a single identity
    inner = np.quantile(pooled, np.linspace(0, 1, n)) if len(pooled) else np.zeros(0)
    return np.unique(np.concatenate([ends, inner]))


def fit_copy_switch(tables: Sequence[tuple[pd.DataFrame, pd.DataFrame]], n_candidates: int = 100,
                    found: np.ndarray | None = None) -> tuple[CopySwitch, pd.DataFrame]:
    """The `CopySwitch` whose thresholds give the best mean top-1 over `tables`: (copy channel,
    identity channel) retrieval tables of dev, one pair per protocol (the official one and the
    one with each query's own photo removed).

    The mean gives each protocol the same weight, so a threshold is worth what it gains on both:
    a point of copies found counts as much as a point of people recognised. The margin and
    unsure thresholds are tried together on `n_candidates` quantiles of their channel's dev
    scores, with "always" and "never" (finite bounds, so a model card's JSON holds them); with
    `found` (per row of the dev split: whether the face channel found the face) and faceless
    dev queries, each pair also with `faceless_copy_cosine` on the quantiles of their copy
    cosines, and "never". Ties go to the higher first-protocol top-1, then to the lower
    thresholds: more queries to the copy channel, whose copies the official protocol asks for.

    Returns:
        (the switch, one row per candidate: thresholds, top-1 per protocol, mean, and
        ``chosen``, true on the switch's row).
    """
    margins = [copy_margin(copy) for copy, _ in tables]
    identity_scores = [identity["predicted_score"].to_numpy(float) for _, identity in tables]
    cosines = [copy["predicted_score"].to_numpy(float) for copy, _ in tables]
    taus = _grid(margins, n_candidates, (ALWAYS_BY_MARGIN, NEVER_BY_MARGIN))
    sigmas = _grid(identity_scores, n_candidates, (NEVER_UNSURE, ALWAYS_UNSURE))
    tau, sigma = (grid.ravel() for grid in np.meshgrid(taus, sigmas, indexing="ij"))
    faceless = ([~np.asarray(found, bool)[copy["query_row"].to_numpy()] for copy, _ in tables]
                if found is not None else [np.zeros(len(copy), bool) for copy, _ in tables])
    kappas = (_grid([cosine[rows] for cosine, rows in zip(cosines, faceless)], n_candidates,
                    (NEVER_BY_COSINE,))
              if any(rows.any() for rows in faceless) else [NEVER_BY_COSINE])
    # only the queries the two channels answer differently move a candidate's top-1: the
    # (candidates, queries) masks are built over those alone
    moves = [copy["correct"].to_numpy(bool) != identity["correct"].to_numpy(bool)
             for copy, identity in tables]
    by_margin = [(margin[None, cols] >= tau[:, None]) | (score[None, cols] < sigma[:, None])
                 for margin, score, cols in zip(margins, identity_scores, moves)]
    table = pd.concat([_switch_candidates(
        tables, {"threshold": tau, "identity_threshold": sigma, "faceless_copy_cosine": kappa},
        [mask | (rows[cols] & (cosine[cols] >= kappa))[None, :]
         for mask, rows, cosine, cols in zip(by_margin, faceless, cosines, moves)], moves)
        for kappa in kappas], ignore_index=True)
    best = best_switch_row(table, ("mean_top1", "top1_0"))
    table["chosen"] = table.index == best.name
    return CopySwitch(**{name: float(best[name]) for name in SWITCH_THRESHOLDS}), table


def best_switch_row(candidates: pd.DataFrame, objectives: Sequence[str]) -> pd.Series:
    """The candidate row of `fit_copy_switch`'s table with the highest `objectives`, compared in
    order; remaining ties go to the lower `SWITCH_THRESHOLDS` (more queries to the copy
    channel). Its ``name`` is its index in `candidates`."""
    return candidates.sort_values([*objectives, *SWITCH_THRESHOLDS],
                                  ascending=[False] * len(objectives)
                                  + [True] * len(SWITCH_THRESHOLDS)).iloc[0]


def _switch_candidates(tables: Sequence[tuple[pd.DataFrame, pd.DataFrame]], columns: dict,
                       uses_copy: Sequence[np.ndarray], moves: Sequence[np.ndarray]
                       ) -> pd.DataFrame:
    """Top-1 per protocol and their mean for each candidate: ``uses_copy``, per protocol, a
    (candidates, queries) mask of the queries the copy channel answers, over the queries
    `moves` marks (the two channels answer them differently; the others count alike)."""
    table = pd.DataFrame(columns)
    for number, ((copy, identity), mask, cols) in enumerate(zip(tables, uses_copy, moves)):
        copy_right = copy["correct"].to_numpy(bool)[cols]
        right = (int(identity["correct"].to_numpy(bool).sum()) + (mask & copy_right).sum(axis=1)
                 - (mask & ~copy_right).sum(axis=1))
        table[f"top1_{number}"] = right / len(copy) if len(copy) else np.zeros(len(table))
    table["mean_top1"] = table.filter(like="top1_").mean(axis=1)
    return table
