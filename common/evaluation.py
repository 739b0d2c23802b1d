"""Task B reports shared by notebooks 02, 03 and 04: gallery retrieval (plain and harder
variant), the verification view with a dev-calibrated threshold, Siamese pair verification (with
the model's `fusion.FaceRule` when it has one), the dev scores a fused weight is chosen by, and
the failure cases behind the figures.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import PurePath

import numpy as np
import pandas as pd
from sklearn.metrics import precision_recall_fscore_support
from tqdm.auto import tqdm

from common import data, fusion, gallery, metrics

__all__ = [
    "GalleryReport", "PairReport", "face_blind_decisions", "retrieval_table", "gallery_report",
    "pair_report", "face_rule_pairs", "make_pair_list", "frame_pair_list", "retrieval_failures",
    "worst_pairs",
    "load_rows", "photo_keys", "sorted_codes", "photo_index", "hackathon_pair_list", "PAIR_KINDS",
    "PAIR_PROTOCOLS", "OBJECTIVES", "dev_scores", "SwitchReport", "switch_report",
    "switched_report", "identity_shares", "IDENTITY_SHARES", "FACELESS_SHARES", "fit_switch",
    "dev_switch_scores", "choose_whole_share", "gallery_rows",
]

FIXED_DISTANCE = 0.5  # the hackathon Siamese entries' decision distance
PAIR_KINDS = ("same photo", "same identity", "different identity")
# what a dev choice maximises (`dev_scores`): gallery top-1, pair accuracy at the calibrated
# distance, or pair accuracy of the dev-fitted `fusion.FaceRule`
OBJECTIVES = ("top1", "pair_accuracy", "pair_accuracy_face_rule")
# pair lists: ours (`make_pair_list`) and the public Siamese entries' (`hackathon_pair_list`)
PAIR_PROTOCOLS = ("random", "hackathon")
# candidate shares of the copy channel in the switch's identity channel (`identity_shares`):
# for every image, then for the images where the face channel found no face
IDENTITY_SHARES = tuple(np.round(np.linspace(0.0, 0.5, 11), 2))
FACELESS_SHARES = tuple(np.round(np.linspace(0.0, 1.0, 21), 2))
_SHARES_CHUNK_CELLS = 2 ** 22  # query rows x gallery photos per chunk in `_mixed_top1s_hard`


def photo_keys(frame: pd.DataFrame) -> np.ndarray:
    """Per row, the photo it shows: its clean source, or itself when the source is unknown."""
    return frame["source"].where(frame["source"] != "", frame["path"]).to_numpy()


def sorted_codes(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct values, sorted; each value's position among them): what
    ``np.unique(values, return_inverse=True)`` gives, with the values hashed first so that only
    the distinct ones are sorted (a photo has eight rows in identity folders)."""
    codes, distinct = pd.factorize(values)
    order = np.argsort(distinct)
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    return np.asarray(distinct)[order], rank[codes]


def photo_index(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(the distinct photos, sorted; each row's position among them): `sorted_codes` of
    `photo_keys`."""
    return sorted_codes(photo_keys(frame))


def gallery_rows(frame: pd.DataFrame) -> np.ndarray:
    """Per row of a split's table, whether the official protocol puts it in the gallery: the
    clean photos (the distorted copies are the queries)."""
    return (frame["distortion"] == "clean").to_numpy()


def retrieval_table(frame: pd.DataFrame, embeddings: np.ndarray, aggregate: str = "max",
                    exclude_own_source: bool = False, seed: int = 0) -> pd.DataFrame:
    """The official protocol on one split: clean rows are the gallery, distorted rows the
    queries. One row per scored query (see `metrics.compute_retrieval_table`), plus the rows of
    `frame` behind the query, the predicted and the true gallery image."""
    is_clean = gallery_rows(frame)
    if not is_clean.any() or is_clean.all():
        raise ValueError("Gallery retrieval needs clean (gallery) and distorted (query) images; "
                         f"this split has {int(is_clean.sum())} clean of {len(frame)}.")
    gallery, queries = frame[is_clean], frame[~is_clean]
    table = metrics.compute_retrieval_table(
        embeddings[is_clean], gallery["identity"].to_numpy(), embeddings[~is_clean],
        queries["identity"].to_numpy(), query_distortions=queries["distortion"].to_numpy(),
        query_sources=queries["source"].to_numpy(), gallery_sources=gallery["path"].to_numpy(),
        aggregate=aggregate, exclude_own_source=exclude_own_source, seed=seed)
    # Map the table's positions back to rows of `frame`, for failure plots.
    query_rows, photo_rows = np.flatnonzero(~is_clean), np.flatnonzero(is_clean)
    table["query_row"] = query_rows[table["query_index"].to_numpy()]
    table["predicted_row"] = photo_rows[table["predicted_gallery_index"].to_numpy()]
    table["true_row"] = photo_rows[table["true_gallery_index"].to_numpy()]
    return table


@dataclass
class GalleryReport:
    """Retrieval and verification numbers of one evaluated split (and the dev calibration)."""

    eval: dict
    hard: dict
    verification: dict
    dev: dict
    table: pd.DataFrame = field(repr=False)
    verification_scores: np.ndarray = field(repr=False)
    verification_same: np.ndarray = field(repr=False)

    def flat(self) -> dict:
        """Stable metrics.json keys (top1, top5, f1_macro, top1_hard, verification_*)."""
        out = {key: self.eval[key] for key in ("top1", "top5", "f1_macro", "top1_by_distortion",
                                               "n_queries")}
        out.update(top1_hard=self.hard["top1"], top5_hard=self.hard["top5"],
                   f1_macro_hard=self.hard["f1_macro"], n_queries_hard=self.hard["n_queries"],
                   top1_hard_by_distortion=self.hard["top1_by_distortion"],
                   dev_top1=self.dev["top1"])
        out.update({f"verification_{key}": value for key, value in self.verification.items()})
        return out

    def summary(self) -> pd.DataFrame:
        """The headline numbers as a small table for the notebook."""
        rows = {"top-1": self.eval["top1"], "top-5": self.eval["top5"],
                "macro-F1 (identities)": self.eval["f1_macro"],
                "top-1, own source removed": self.hard["top1"],
                "verification ROC AUC": self.verification["roc_auc"],
                "verification EER": self.verification["eer"],
                "TAR@FAR=1e-2": self.verification["tar_at_far_0.01"],
                "verification accuracy (dev threshold)": self.verification["accuracy"],
                **{f"top-1 {name}": value
                   for name, value in self.eval["top1_by_distortion"].items()}}
        return pd.DataFrame({"value": rows})


def gallery_report(evaluated: pd.DataFrame, eval_embeddings: np.ndarray,
                   dev: pd.DataFrame | None = None, dev_embeddings: np.ndarray | None = None,
                   threshold: float | None = None, aggregate: str = "max", seed: int = 0
                   ) -> GalleryReport:
    """The official protocol on `evaluated`; the verification threshold is calibrated on dev
    (training notebooks) or given (a model card's, in notebook 04 and the CLI)."""
    dev_summary: dict = {"top1": None, "f1_macro": None}
    if threshold is None:
        if dev is None or dev_embeddings is None:
            raise ValueError("gallery_report needs dev data to calibrate on, or a threshold.")
        dev_table = retrieval_table(dev, dev_embeddings, aggregate, False, seed)
        threshold = metrics.calibrate_threshold(*metrics.verification_pairs_from_retrieval(
            dev_table))
        dev_summary = metrics.summarize_retrieval(dev_table)
    table = retrieval_table(evaluated, eval_embeddings, aggregate, False, seed)
    hard = retrieval_table(evaluated, eval_embeddings, aggregate, True, seed)
    scores, same = metrics.verification_pairs_from_retrieval(table)
    return GalleryReport(
        eval=metrics.summarize_retrieval(table), hard=metrics.summarize_retrieval(hard),
        verification=metrics.compute_verification_metrics(scores, same, threshold=threshold),
        dev=dev_summary, table=table, verification_scores=scores, verification_same=same)


@dataclass
class SwitchReport:
    """A `fusion.CopySwitch` on one evaluated split: both protocols answered through it, each
    channel alone, and the dev table its threshold was chosen from.

    Failures split by what was missed: an official query that fails lost a copy of a gallery
    photo ("copy missed"); a query failing once its own photo is removed lost the person
    ("person missed")."""

    switch: fusion.CopySwitch
    eval: dict
    hard: dict
    channels: dict[str, dict[str, float]]
    dev: pd.DataFrame = field(repr=False)
    tables: dict[str, pd.DataFrame] = field(repr=False)
    shares: pd.DataFrame = field(default_factory=pd.DataFrame, repr=False)

    @property
    def copy_share(self) -> dict[str, float]:
        """Per protocol ("eval", "hard"), the share of queries the copy channel answered."""
        return {name: float((table["channel"] == "copy").mean())
                for name, table in self.tables.items()}

    def flat(self) -> dict:
        """metrics.json keys: ``switch_*`` for the switch (``switch_dev_*``: on dev, when fitted
        there), ``<channel>_channel_*`` alone."""
        out = {"switch_threshold": self.switch.threshold,
               "switch_identity_threshold": self.switch.identity_threshold,
               "switch_identity_share": self.switch.identity_share,
               "switch_faceless_share": self.switch.faceless_share,
               "switch_descriptor_share": self.switch.descriptor_share,
               "switch_whole_share": self.switch.whole_share,
               "switch_faceless_copy_cosine": self.switch.faceless_copy_cosine,
               "switch_top1": self.eval["top1"], "switch_top1_hard": self.hard["top1"],
               "switch_top1_by_distortion": self.eval["top1_by_distortion"],
               "switch_top1_hard_by_distortion": self.hard["top1_by_distortion"],
               "switch_copy_share": self.copy_share["eval"],
               "switch_copy_share_hard": self.copy_share["hard"],
               "switch_copy_missed": int((~self.tables["eval"]["correct"]).sum()),
               "switch_person_missed": int((~self.tables["hard"]["correct"]).sum()),
               **self.intervals()}
        if len(self.dev):  # the switch's dev figures, at the thresholds chosen there
            chosen = self.dev[self.dev["chosen"]].iloc[0]
            out.update(switch_dev_top1=float(chosen["top1_0"]),
                       switch_dev_top1_hard=float(chosen["top1_1"]))
        for channel, numbers in self.channels.items():
            out.update({f"{channel}_channel_{key}": value for key, value in numbers.items()})
        return out

    def intervals(self) -> dict:
        """``switch_top1_ci95``, ``switch_top1_hard_ci95`` and each per distortion
        (``switch_top1_by_distortion_ci95``, ...): 95 % bootstrap intervals resampling
        identities (`metrics.clustered_interval`), so that a bar is read against how far a
        holdout of its size can move."""
        def interval(table: pd.DataFrame) -> list[float] | None:
            return metrics.clustered_interval(table["correct"], table["identity"])

        out = {}
        for protocol, key in (("eval", "switch_top1"), ("hard", "switch_top1_hard")):
            table = self.tables[protocol]
            out[f"{key}_ci95"] = interval(table)
            out[f"{key}_by_distortion_ci95"] = {name: interval(rows)
                                                for name, rows in table.groupby("distortion")}
        return out

    def misses(self) -> pd.DataFrame:
        """Per query distortion: the queries, the copies missed (official queries answered
        wrong), the people missed (wrong once the own photo is removed) and the share each
        protocol's queries answered by the copy channel."""
        official, hard = self.tables["eval"], self.tables["hard"]

        def per_distortion(table: pd.DataFrame, values: pd.Series, how: str) -> pd.Series:
            return values.groupby(table["distortion"]).agg(how)

        return pd.DataFrame({
            "queries": official.groupby("distortion").size(),
            "copy_missed": per_distortion(official, ~official["correct"], "sum"),
            "person_missed": per_distortion(hard, ~hard["correct"], "sum"),
            "copy_channel_share": per_distortion(official, official["channel"] == "copy",
                                                 "mean"),
            "copy_channel_share_hard": per_distortion(hard, hard["channel"] == "copy", "mean"),
        }).fillna(0).astype({"queries": int, "copy_missed": int, "person_missed": int})

    def summary(self) -> pd.DataFrame:
        """Top-1 of both protocols through the switch and through each channel alone."""
        rows = {"copy or identity (switch)": (self.eval["top1"], self.hard["top1"]),
                **{f"{channel} channel alone": (numbers["top1"], numbers["top1_hard"])
                   for channel, numbers in self.channels.items()}}
        return pd.DataFrame(rows, index=["top-1", "top-1, own photo removed"]).T


def _channel_tables(frame: pd.DataFrame, copy: np.ndarray, identity: np.ndarray,
                    exclude_own_source: bool, aggregate: str, seed: int
                    ) -> tuple[pd.DataFrame, pd.DataFrame]:
    return tuple(retrieval_table(frame, embeddings, aggregate, exclude_own_source, seed)
                 for embeddings in (copy, identity))


def identity_shares(dev: pd.DataFrame, copy: np.ndarray, identity: np.ndarray,
                    aggregate: str = "max", seed: int = 0, found: np.ndarray | None = None
                    ) -> tuple[float, float | None, pd.DataFrame]:
    """The copy channel's share in the switch's identity channel (`fusion.CopySwitch.
    identity_vectors`) with the best dev top-1 once each query's own photo is removed: that
    channel's only job is recognising people in photos the gallery does not hold. The smallest
    share wins a tie.

    With `found` (per dev row, whether the face channel found the face) and dev images without
    a face, the faceless images get a share of their own (`FACELESS_SHARES`), both chosen
    together: glare that erased the face leaves hair and outline, which the copy channel
    holds, so those queries want more of it than the others can bear; and what a faceless
    query reads of the copy channel also depends on the gallery photos' share (its cosine with
    one is ``sqrt(s f) cos_copy`` plus the face part).

    Returns:
        (the share, the faceless share or None, the dev table of every candidate).
    """
    apart = found is not None and not np.all(found)
    grid = [(share, faceless) for share in IDENTITY_SHARES
            for faceless in (FACELESS_SHARES if apart else (None,))]
    if aggregate == "max":
        found_rows = np.ones(len(dev), bool) if found is None else found
        top1s = _mixed_top1s_hard(dev, copy, identity, [
            fusion.row_shares(share, found_rows, faceless) for share, faceless in grid])
    else:  # a centroid of rows mixed with different shares does not split into two cosines
        top1s = [metrics.summarize_retrieval(retrieval_table(
            dev, fusion.switch_identity(copy, identity, share, found, faceless), aggregate,
            exclude_own_source=True, seed=seed))["top1"]
            for share, faceless in tqdm(grid, desc="identity shares", leave=False)]
    candidates = pd.DataFrame([{"identity_share": share, "faceless_share": faceless,
                                "top1_hard": top1} for (share, faceless), top1 in zip(grid, top1s)])
    best = candidates.loc[candidates["top1_hard"].idxmax()]  # the first: the smallest shares
    return (float(best["identity_share"]),
            None if best["faceless_share"] is None else float(best["faceless_share"]), candidates)


def _mixed_top1s_hard(frame: pd.DataFrame, copy: np.ndarray, identity: np.ndarray,
                      shares: list[np.ndarray]) -> list[float | None]:
    """`retrieval_table`'s top-1 with the own photo removed (max aggregate) of the identity
    channel `fusion.switch_identity` builds with each per-row copy share of `shares`, from the
    two channels' cosines taken once: two such rows' cosine is ``sqrt((1 - s1)(1 - s2))
    cos_identity + sqrt(s1 s2) cos_copy``, so a candidate costs a weighted sum instead of a
    gallery search of its concatenated vectors (`identity_shares` scores hundreds). Ties go to
    the identity whose name sorts first, as there; queries go in chunks, so memory is bounded
    by a chunk, never queries x gallery."""
    is_gallery = gallery_rows(frame)
    photos, queries = np.flatnonzero(is_gallery), np.flatnonzero(~is_gallery)
    names, photo_code = np.unique(frame["identity"].to_numpy()[photos].astype(str),
                                  return_inverse=True)
    order = np.argsort(photo_code, kind="stable")  # each identity's photos together
    photos, starts = photos[order], np.searchsorted(photo_code[order], np.arange(len(names)))
    query_code = np.searchsorted(names, frame["identity"].to_numpy()[queries].astype(str))
    sources, photo_paths = frame["source"].to_numpy(), frame["path"].to_numpy()[photos]
    units = [gallery.normalise(vectors).astype(np.float64) for vectors in (identity, copy)]
    photo_units = [unit[photos].T for unit in units]
    photo_shares = [share[photos][None, :] for share in shares]
    right, scored = np.zeros(len(shares), np.int64), np.zeros(len(shares), np.int64)
    chunk = max(1, _SHARES_CHUNK_CELLS // max(1, len(photos)))
    with tqdm(total=len(shares) * -(-len(queries) // chunk), desc="identity shares",
              leave=False) as bar:
        for lo in range(0, len(queries), chunk):
            rows, codes = queries[lo:lo + chunk], query_code[lo:lo + chunk]
            identity_cosines, copy_cosines = (unit[rows] @ photo_unit
                                              for unit, photo_unit in zip(units, photo_units))
            own = sources[rows][:, None] == photo_paths[None, :]
            for k, (share, photo_share) in enumerate(zip(shares, photo_shares)):
                query_share = share[rows, None]
                similarity = (np.sqrt((1 - query_share) * (1 - photo_share)) * identity_cosines
                              + np.sqrt(query_share * photo_share) * copy_cosines
                              ).astype(np.float32)
                similarity[own] = -np.inf
                scores = np.maximum.reduceat(similarity, starts, axis=1)
                kept = np.isfinite(scores[np.arange(len(rows)), codes])
                right[k] += int((kept & (scores.argmax(axis=1) == codes)).sum())
                scored[k] += int(kept.sum())
                bar.update()
    return [float(r / n) if n else None for r, n in zip(right, scored)]


def fit_switch(dev: pd.DataFrame, copy: np.ndarray, identity: np.ndarray,
               aggregate: str = "max", seed: int = 0, found: np.ndarray | None = None
               ) -> tuple[fusion.CopySwitch, pd.DataFrame, pd.DataFrame]:
    """A `fusion.CopySwitch` fitted on dev: first the copy channel's shares in its identity
    channel (`identity_shares`; `found`: where the face channel found the face), then its two
    thresholds (`fusion.fit_copy_switch`: the best mean of the two protocols' top-1; with
    `found`, also its copy cosine for faceless queries).

    Returns:
        (the switch, its thresholds' candidate table, the identity shares').
    """
    share, faceless, shares = identity_shares(dev, copy, identity, aggregate, seed, found)
    reads = fusion.switch_identity(copy, identity, share, found, faceless)
    tables = [_channel_tables(dev, copy, reads, exclude, aggregate, seed)
              for exclude in (False, True)]
    switch, candidates = fusion.fit_copy_switch(tables, found=found)
    return (dataclasses.replace(switch, identity_share=share, faceless_share=faceless),
            candidates, shares)


def dev_switch_scores(frame: pd.DataFrame, copy: np.ndarray, identity: np.ndarray,
                      aggregate: str = "max", seed: int = 0) -> dict[str, float]:
    """What a dev choice of the copy channel compares when a `fusion.CopySwitch` will read it
    (`fusion.choose_weight`): the switch fitted on dev with `copy` (`fit_switch`, one share of
    it for every image) and its dev top-1 on the official protocol, with the own photo
    removed, and their mean (the switch's own objective). ``identity``: the dev rows' face
    channel."""
    switch, candidates, _ = fit_switch(frame, copy, identity, aggregate, seed)
    best = candidates[candidates["chosen"]].iloc[0]
    return {"dev_top1": best["top1_0"], "dev_top1_hard": best["top1_1"],
            "dev_switch_mean_top1": best["mean_top1"], "identity_share": switch.identity_share}


def choose_whole_share(dev: pd.DataFrame, copy: np.ndarray, face: np.ndarray,
                       whole: np.ndarray, found: np.ndarray, aggregate: str = "max",
                       seed: int = 0) -> tuple[float, pd.DataFrame, tuple]:
    """The `fusion.CopySwitch.whole_share` of a whole-image network's unit features `whole` in
    the dev face channel `face` (in the gallery, the clean rows, and the queries without a
    `found` face: `fusion.carries_whole`) whose switch, fitted on dev for each share
    (`fit_switch`), has the best dev mean of the two protocols' top-1 (the switch's own
    objective, so neither protocol is traded for the other); the smallest on ties.

    Returns:
        (the share, one row per candidate share: its switch's dev top-1s and their mean, and
        the chosen share's `fit_switch`, which `switch_report` takes instead of fitting again).
    """
    carries = fusion.carries_whole(found, gallery_rows(dev))
    rows, fits = [], []
    for share in tqdm(fusion.WHOLE_SHARES, desc="whole-image share", leave=False):
        fits.append(fit_switch(dev, copy, fusion.fuse(face, whole, share, carries), aggregate,
                               seed, found))
        best = fits[-1][1][fits[-1][1]["chosen"]].iloc[0]
        rows.append({"whole_share": share, "dev_top1": best["top1_0"],
                     "dev_top1_hard": best["top1_1"], "dev_switch_mean_top1": best["mean_top1"]})
    table = pd.DataFrame(rows)
    chosen = int(table["dev_switch_mean_top1"].to_numpy().argmax())
    return float(table.loc[chosen, "whole_share"]), table, fits[chosen]


def switch_report(dev: pd.DataFrame, dev_copy: np.ndarray, dev_identity: np.ndarray,
                  evaluated: pd.DataFrame, eval_copy: np.ndarray, eval_identity: np.ndarray,
                  aggregate: str = "max", seed: int = 0, eval_network: np.ndarray | None = None,
                  descriptor_share: float = 0.0, descriptor_front_end: str = "robust",
                  dev_found: np.ndarray | None = None, eval_found: np.ndarray | None = None,
                  whole_share: float = 0.0, fitted: tuple | None = None) -> SwitchReport:
    """Fit a `fusion.CopySwitch` on dev (`fit_switch`) and report it on the evaluated split.

    Args:
        dev / evaluated: the rows of each split; ``*_copy`` their copy-channel embeddings (the
            learned embedding with its copy detector), ``*_identity`` their unit face
            descriptors (the identity channel). eval_network: see `switched_report`.
        descriptor_share / descriptor_front_end: what the identity channel already carries of
            a face descriptor (`fusion.CopySwitch.face_vectors`), recorded in the switch so that
            inference builds the same channel.
        dev_found / eval_found: per row, whether the face channel found the face (both or
            neither): the switch may then mix more of the copy channel into faceless images
            (`identity_shares`).
        whole_share: what the identity channel already carries of a whole-image network
            (`fusion.CopySwitch.with_whole`, `choose_whole_share`), recorded likewise.
        fitted: `fit_switch` of these dev rows when already made (`choose_whole_share`).
    """
    switch, candidates, shares = fitted or fit_switch(dev, dev_copy, dev_identity, aggregate,
                                                      seed, dev_found)
    switch = dataclasses.replace(switch, descriptor_share=descriptor_share,
                                 descriptor_front_end=descriptor_front_end,
                                 whole_share=whole_share)
    report = switched_report(evaluated, eval_copy, eval_identity, switch, aggregate, seed,
                             eval_network, eval_found)
    report.dev, report.shares = candidates, shares
    return report


def switched_report(evaluated: pd.DataFrame, copy: np.ndarray, identity: np.ndarray,
                    switch: fusion.CopySwitch, aggregate: str = "max", seed: int = 0,
                    network: np.ndarray | None = None, found: np.ndarray | None = None
                    ) -> SwitchReport:
    """A given `fusion.CopySwitch` (fitted, or a model card's) on one split; its ``dev`` table
    is empty (`switch_report` fills it). ``identity`` is the face channel alone: the switch
    mixes in its shares of ``copy`` (`fusion.CopySwitch.identity_vectors`, `found`: where the
    face channel found the face), and each channel alone is reported as it is; so is
    `network`, a fine-tuned face network's own vectors, when given (the face channel may carry
    a face descriptor's share: ``descriptor_share``)."""
    protocols = (("eval", False), ("hard", True))

    def tables_of(face: np.ndarray) -> dict[str, tuple[pd.DataFrame, pd.DataFrame]]:
        return {name: _channel_tables(evaluated, copy, face, exclude, aggregate, seed)
                for name, exclude in protocols}

    pairs = tables_of(switch.identity_vectors(copy, identity, found))
    tables = {name: switch.choose(*pair, found) for name, pair in pairs.items()}
    alone = tables_of(identity) if switch.identity_share or switch.faceless_share else pairs
    channels = {channel: {key: metrics.summarize_retrieval(alone[name][position])["top1"]
                          for key, name in (("top1", "eval"), ("top1_hard", "hard"))}
                for position, channel in enumerate(("copy", "identity"))}
    if network is not None:
        channels["network"] = {key: metrics.summarize_retrieval(retrieval_table(
            evaluated, network, aggregate, exclude, seed))["top1"]
            for key, exclude in (("top1", False), ("top1_hard", True))}
    return SwitchReport(
        switch, metrics.summarize_retrieval(tables["eval"]),
        metrics.summarize_retrieval(tables["hard"]), channels, pd.DataFrame(), tables)


@dataclass
class PairReport:
    """Siamese pair verification at the fixed distance 0.5, at the dev-calibrated distance and,
    with face descriptors, by the dev-fitted `fusion.FaceRule`.

    ``face_blind_accuracy`` is the accuracy of `face_blind_decisions` on the same list, a rule
    that never looks at a face: a list on which it is far above 0.5 measures how the list was
    built rather than verification (as the entries' list does, `docs/results.md`).
    """

    fixed: dict
    calibrated: dict
    pairs: pd.DataFrame = field(repr=False)
    distances: np.ndarray = field(repr=False)
    same: np.ndarray = field(repr=False)
    rule: fusion.FaceRule | None = None
    face_rule: dict | None = None
    face_blind_accuracy: float = float("nan")

    @property
    def thresholds(self) -> dict[str, float]:
        """Decision distances by name, for the histogram figure."""
        return {"fixed": FIXED_DISTANCE, "calibrated": self.calibrated["threshold"]}

    def by_kind(self) -> pd.DataFrame:
        """Pairs and accuracy per kind: two views of the same photo, two photos of one identity,
        two identities. Pair accuracy depends on this mix, so any comparison needs it. A pair is
        *same* at ``distance <= threshold``, as in `metrics.compute_verification_metrics`."""
        rows = {}
        for kind, frame in self.pairs.groupby("kind", sort=False):
            same = frame["same"].to_numpy().astype(bool)
            rows[kind] = {"pairs": len(frame), "mean_distance": frame["distance"].mean(), **{
                f"accuracy_{name}": float(((frame["distance"] <= threshold) == same).mean())
                for name, threshold in self.thresholds.items()}}
        if self.rule is not None:
            for kind, accuracy in _rule_accuracy_by_kind(self.pairs).items():
                rows[kind]["accuracy_face_rule"] = accuracy
        order = [kind for kind in PAIR_KINDS if kind in rows]
        return pd.DataFrame.from_dict(rows, orient="index").loc[order]

    def flat(self) -> dict:
        """metrics.json keys: pair_* at the calibrated distance, pair_*_fixed at 0.5,
        pair_*_face_rule with the rule, and the accuracy per pair kind
        (pair_accuracy_same_photo, ..., pair_accuracy_face_rule_same_photo, ...)."""
        out = {f"pair_{key}": value for key, value in self.calibrated.items()}
        decisions = [("fixed", self.fixed)] + ([("face_rule", self.face_rule)]
                                               if self.face_rule else [])
        for name, values in decisions:
            out.update({f"pair_{key}_{name}": value for key, value in values.items()
                        if key in ("accuracy", "precision", "recall", "f1")})
        for kind, row in self.by_kind().iterrows():
            key = kind.replace(" ", "_")
            out[f"pair_accuracy_{key}"] = row["accuracy_calibrated"]
            if self.rule is not None:
                out[f"pair_accuracy_face_rule_{key}"] = row["accuracy_face_rule"]
        out["pair_accuracy_face_blind"] = self.face_blind_accuracy
        if self.rule is not None:
            out.update(face_rule_distance=self.rule.distance,
                       face_rule_descriptor_cosine=self.rule.descriptor_cosine,
                       face_rule_channel=self.rule.channel)
        return out

    def summary(self) -> pd.DataFrame:
        """Fixed vs calibrated distance (vs the face rule) side by side."""
        keys = ("threshold", "accuracy", "precision", "recall", "f1", "roc_auc", "eer")
        columns = {"fixed 0.5": [self.fixed[k] for k in keys],
                   "dev-calibrated": [self.calibrated[k] for k in keys]}
        if self.face_rule:
            columns["face rule (dev)"] = [self.face_rule.get(k, np.nan) for k in keys]
        return pd.DataFrame(columns, index=keys)


def make_pair_list(identities: np.ndarray, distortions: np.ndarray, n_pairs: int, seed: int,
                   hard_negatives_from: np.ndarray | None = None) -> pd.DataFrame:
    """Balanced (i, j, same) pairs of rows (their identity and distortion given), capped at the
    positives that exist (small splits have fewer same-identity pairs than asked for)."""
    sizes = pd.Series(identities).value_counts().to_numpy()
    n_pairs = min(n_pairs, 2 * int((sizes * (sizes - 1) // 2).sum()))
    return metrics.make_pairs(identities, distortions, n_pairs=n_pairs, seed=seed,
                              hard_negatives_from=hard_negatives_from)


def frame_pair_list(frame: pd.DataFrame, n_pairs: int, seed: int) -> pd.DataFrame:
    """`make_pair_list` of a split's table."""
    return make_pair_list(frame["identity"].to_numpy(), frame["distortion"].to_numpy(),
                          n_pairs, seed)


def hackathon_pair_list(frame: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The pair list of the public Siamese entries, whose validation pair accuracy is the bar
    of the Siamese notebook: each identity's files sorted by name (``distortion/`` flattened into
    the identity folder), every two consecutive files a positive, and for each positive one
    negative: its first image with the file at the same position in a random other identity.

    FACECOM names a photo's copies ``<photo>_<distortion>.jpg``, so consecutive files are two
    views of one photo, except the last copy of a photo (sunny, whose glare erases the face) next
    to the following photo; a negative pairs two copies with the same distortion.
    """
    names = frame["path"].map(lambda path: PurePath(path).name)
    order = frame.assign(_name=names.to_numpy(), _row=np.arange(len(frame))).sort_values(
        ["identity", "_name"], kind="stable")
    groups = [group["_row"].to_numpy() for _, group in order.groupby("identity", sort=True)]
    if len(groups) < 2:
        raise ValueError("hackathon_pair_list needs at least two identities")
    rng = np.random.default_rng(seed)
    rows = []
    for index, group in enumerate(groups):
        for position in range(len(group) - 1):
            other = groups[(index + rng.integers(1, len(groups))) % len(groups)]
            rows += [(group[position], group[position + 1], 1),
                     (group[position], other[position % len(other)], 0)]
    return pd.DataFrame(rows, columns=["i", "j", "same"])


def face_blind_decisions(frame: pd.DataFrame, pairs: pd.DataFrame) -> np.ndarray:
    """*Same* exactly when the two images carry different distortions: the sanity baseline of a
    pair list, since it never looks at a face. On `make_pair_list` it is near chance; on
    `hackathon_pair_list` it is perfect, because there every positive pairs two neighbouring
    files (different distortions) and every negative two files at the same position (the same
    distortion)."""
    distortion = frame["distortion"].to_numpy()
    return distortion[pairs["i"].to_numpy()] != distortion[pairs["j"].to_numpy()]


def _pair_list(frame: pd.DataFrame, n_pairs: int, seed: int, protocol: str) -> pd.DataFrame:
    if protocol not in PAIR_PROTOCOLS:
        raise ValueError(f"protocol={protocol!r}; choose one of {PAIR_PROTOCOLS}")
    return (frame_pair_list(frame, n_pairs, seed) if protocol == "random" else
            hackathon_pair_list(frame, seed))


def _pair_distances(embeddings: np.ndarray, pairs: pd.DataFrame) -> np.ndarray:
    return np.linalg.norm(embeddings[pairs["i"].to_numpy()] - embeddings[pairs["j"].to_numpy()],
                          axis=1)


def _descriptor_cosines(faces: tuple[np.ndarray, np.ndarray], pairs: pd.DataFrame
                        ) -> tuple[np.ndarray, np.ndarray]:
    unit, found = faces
    i, j = pairs["i"].to_numpy(), pairs["j"].to_numpy()
    return (unit[i] * unit[j]).sum(axis=1), found[i] & found[j]


def _rule_accuracy_by_kind(pairs: pd.DataFrame) -> dict[str, float]:
    """Accuracy of the ``same_by_rule`` decisions per pair kind (`PAIR_KINDS`)."""
    return {kind: float((frame["same_by_rule"].to_numpy()
                         == frame["same"].to_numpy().astype(bool)).mean())
            for kind, frame in pairs.groupby("kind", sort=False)}


def _evaluated_pairs(evaluated: pd.DataFrame, embeddings: np.ndarray, n_pairs: int, seed: int,
                     protocol: str) -> pd.DataFrame:
    """The evaluated rows' pair list (seeded ``seed + 1``, apart from the dev list's ``seed``)
    with each pair's embedding distance and kind (`PAIR_KINDS`)."""
    pairs = _pair_list(evaluated, n_pairs, seed + 1, protocol)
    same = pairs["same"].to_numpy().astype(int)
    photo = photo_keys(evaluated)
    same_photo = photo[pairs["i"].to_numpy()] == photo[pairs["j"].to_numpy()]
    return pairs.assign(distance=_pair_distances(embeddings, pairs), kind=np.select(
        [same_photo, same == 1], [PAIR_KINDS[0], PAIR_KINDS[1]], PAIR_KINDS[2]))


def _rule_decisions(rule: fusion.FaceRule, faces: tuple[np.ndarray, np.ndarray],
                    pairs: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """`pairs` with the rule's ``same_by_rule`` decisions, and their accuracy, precision,
    recall and F1."""
    decided = rule.decide(pairs["distance"].to_numpy(), *_descriptor_cosines(faces, pairs))
    same = pairs["same"].to_numpy().astype(int)
    precision, recall, f1, _ = precision_recall_fscore_support(
        same, decided.astype(int), average="binary", zero_division=0)
    return pairs.assign(same_by_rule=decided), {
        "threshold": rule.distance, "accuracy": float((decided == same).mean()),
        "precision": float(precision), "recall": float(recall), "f1": float(f1)}


def face_rule_pairs(evaluated: pd.DataFrame, embeddings: np.ndarray,
                    faces: tuple[np.ndarray, np.ndarray], rule: fusion.FaceRule,
                    n_pairs: int = 3000, seed: int = 0, protocol: str = "random"
                    ) -> dict[str, float]:
    """A model card's fitted `fusion.FaceRule` on the evaluated rows, for notebook 04: the
    ``pair_*_face_rule`` keys of `PairReport.flat` (overall and per pair kind, "same identity"
    being one person on two photos) and ``pair_n_pairs``, on the pair list `pair_report`
    scores with this seed and size.

    faces: (unit vectors, face found) of the rows on the rule's channel."""
    pairs, rule_metrics = _rule_decisions(rule, faces,
                                          _evaluated_pairs(evaluated, embeddings, n_pairs,
                                                           seed, protocol))
    out = {f"pair_{key}_face_rule": rule_metrics[key]
           for key in ("accuracy", "precision", "recall", "f1")}
    out.update({f"pair_accuracy_face_rule_{kind.replace(' ', '_')}": accuracy
                for kind, accuracy in _rule_accuracy_by_kind(pairs).items()})
    return {**out, "pair_n_pairs": len(pairs)}


def pair_report(dev: pd.DataFrame, dev_embeddings: np.ndarray, evaluated: pd.DataFrame,
                eval_embeddings: np.ndarray, n_pairs: int = 3000, seed: int = 0,
                faces: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
                protocol: str = "random", face_channel: str = "descriptor",
                face_rule_specificity: float = 0.0) -> PairReport:
    """Verification on a fixed, seeded pair list of `evaluated` (Euclidean distance of the
    L2-normalised embeddings); the calibrated distance is chosen on a dev pair list made the
    same way.

    Args:
        n_pairs: size of the ``"random"`` lists (`make_pair_list`); the ``"hackathon"`` lists
            (`hackathon_pair_list`) have one positive and one negative per consecutive file.
        faces: optional ``{"dev": (unit descriptors, face found), "eval": (...)}`` rows aligned
            with the two frames: then a `fusion.FaceRule` is fitted on the dev pairs and
            reported too.
        face_channel: what `faces` are (`fusion.FACE_CHANNELS`), recorded in the rule so that
            inference reads the same channel; the identity channel, which describes faceless
            images too, gets their pairs' cosine threshold of their own (``faceless``).
        face_rule_specificity: the rule's operating point (`fusion.fit_face_rule`'s
            ``min_specificity``); 0, the best dev accuracy.
    """
    dev_pairs = _pair_list(dev, n_pairs, seed, protocol)
    dev_distances = _pair_distances(dev_embeddings, dev_pairs)
    threshold = metrics.calibrate_threshold(dev_distances, dev_pairs["same"].to_numpy(),
                                            higher_is_same=False)
    pairs = _evaluated_pairs(evaluated, eval_embeddings, n_pairs, seed, protocol)
    distances = pairs["distance"].to_numpy()
    same = pairs["same"].to_numpy().astype(int)
    rule = rule_metrics = None
    if faces is not None:
        rule = dataclasses.replace(
            fusion.fit_face_rule(dev_distances, *_descriptor_cosines(faces["dev"], dev_pairs),
                                 dev_pairs["same"].to_numpy(),
                                 min_specificity=face_rule_specificity,
                                 faceless=face_channel == "identity"), channel=face_channel)
        pairs, rule_metrics = _rule_decisions(rule, faces["eval"], pairs)
    return PairReport(
        fixed=metrics.compute_verification_metrics(distances, same, FIXED_DISTANCE,
                                                   higher_is_same=False),
        calibrated=metrics.compute_verification_metrics(distances, same, threshold,
                                                        higher_is_same=False),
        pairs=pairs, distances=distances, same=same, rule=rule, face_rule=rule_metrics,
        face_blind_accuracy=float((face_blind_decisions(evaluated, pairs) == same).mean()))


def dev_scores(frame: pd.DataFrame, embeddings: np.ndarray, objective: str = "top1",
               seed: int = 0, n_pairs: int = 3000,
               faces: tuple[np.ndarray, np.ndarray] | None = None,
               face_rule_specificity: float = 0.0) -> dict[str, float]:
    """What a dev choice compares (`fusion.choose_weight`): gallery top-1, its harder variant
    and macro-F1 of `embeddings`, plus ``dev_pair_accuracy`` (at the dev-calibrated distance) for
    the pair objectives and ``dev_pair_accuracy_face_rule`` for the `fusion.FaceRule` one.

    Args:
        frame / embeddings: the dev rows and their unit embeddings.
        objective: one of `OBJECTIVES`; the key to maximise is ``f"dev_{objective}"``.
        faces: (unit descriptors, face found) of the rows, for ``"pair_accuracy_face_rule"``.
        face_rule_specificity: that rule's operating point (`pair_report`).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective={objective!r}; choose one of {OBJECTIVES}")
    if objective == "pair_accuracy_face_rule" and faces is None:
        raise ValueError("the pair_accuracy_face_rule objective needs `faces`")
    summary = metrics.summarize_retrieval(retrieval_table(frame, embeddings, seed=seed))
    hard = metrics.summarize_retrieval(retrieval_table(frame, embeddings, exclude_own_source=True,
                                                       seed=seed))
    row = {"dev_top1": summary["top1"], "dev_top1_hard": hard["top1"],
           "dev_f1_macro": summary["f1_macro"]}
    if objective != "top1":
        rule_faces = ({"dev": faces, "eval": faces} if objective == "pair_accuracy_face_rule"
                      else None)
        pairs = pair_report(frame, embeddings, frame, embeddings, n_pairs, seed, faces=rule_faces,
                            face_rule_specificity=face_rule_specificity)
        row["dev_pair_accuracy"] = pairs.calibrated["accuracy"]
        if rule_faces is not None:
            row["dev_pair_accuracy_face_rule"] = pairs.face_rule["accuracy"]
    return row


def retrieval_failures(table: pd.DataFrame, n: int = 8) -> pd.DataFrame:
    """The wrong answers of a retrieval table (`retrieval_table`, or a switch's with its
    ``channel``), the largest margin for the wrong identity first."""
    wrong = table[~table["correct"]].copy()
    wrong["margin"] = wrong["predicted_score"] - wrong["true_score"]
    return wrong.sort_values("margin", ascending=False).head(n)


def worst_pairs(report: PairReport, n: int = 8) -> pd.DataFrame:
    """Misjudged pairs, furthest on the wrong side of the calibrated distance first. With a
    `fusion.FaceRule`, the pairs the rule gets wrong: it is the decision the model card keeps."""
    pairs = report.pairs
    threshold = report.calibrated["threshold"]
    same = pairs["same"].to_numpy() == 1
    error = np.where(same, pairs["distance"] - threshold, threshold - pairs["distance"])
    wrong = error > 0 if report.rule is None else pairs["same_by_rule"].to_numpy() != same
    return pairs.assign(error=error)[wrong].sort_values("error", ascending=False).head(n)


def load_rows(frame: pd.DataFrame, rows) -> list[np.ndarray]:
    """Full-resolution images of the given rows of `frame`, for figures."""
    return [data.load_image(frame["path"].iloc[int(row)]) for row in rows]
