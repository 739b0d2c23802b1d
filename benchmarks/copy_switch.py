"""The copy-or-identity gallery decision (`fusion.CopySwitch`) for trained Task B checkpoints, on
the evaluated split of the data they were trained on: the same splits, embeddings and face
descriptors as notebooks 02 and 03 (seed, split fractions and image settings from the
checkpoint's run), the switch fitted on dev, reported on the evaluated split beside each channel
alone. Prints one markdown table per checkpoint, the thresholds and the misses per distortion;
with ``--pairs`` also notebook 03's pair face rule on each face channel; with ``--floors`` the
switch fitted for people under a floor on dev's official top-1 (`print_official_floors`); with
``--faceless-shares`` the switch against one whose identity channel takes one share of the copy
channel for every image, not one apart for the faceless (`print_faceless_shares`); with
``--whole-image`` the switch whose identity channel also reads frozen ImageNet features of the
whole image where no face was found (`print_whole_image_shares`); with
``--figures DIR`` it also saves notebooks 02/03's switch figures there (`figures.switch_figures`:
top-1 per distortion, t-SNE of the identity channel, copies and people missed).

    python benchmarks/copy_switch.py --data-dir ../shared/data/facecom --work-root W \\
        --checkpoints W/weights/task_b_embedding_efficientnet_lite0.pt \\
                      W/weights/task_b_siamese_efficientnet_lite0.pt
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from common import (checkpoints, evaluation, experiment, face_descriptor,  # noqa: E402
                    figures, fusion, identity_training, plots, task_a, task_b, whole_image)


def print_pair_rules(task_data: task_b.TaskBData, learned: dict[str, np.ndarray],
                     identity: task_b.IdentityChannel, report: evaluation.SwitchReport,
                     card: checkpoints.ModelCard, seed: int) -> None:
    """Notebook 03's pair verification (`evaluation.pair_report`, its random list of 3000
    pairs) with the face rule on each face channel: the face descriptor, and the switch's
    identity channel (`task_b.identity_faces`), the latter also fitted for issue 20's operating
    point (0.98 of the different pairs refused). The distance is the card's embedding (its own
    descriptor share fused, as the notebook's)."""
    descriptor = task_b.fuse_descriptor(task_data, learned, float(card.descriptor_weight or 0),
                                        keep_faces=True, seed=seed)
    splits = task_data.splits
    rows = []
    identity_faces = task_b.identity_faces(learned, identity, report)
    for faces, channel, specificity in ((descriptor.faces, "descriptor", 0.0),
                                        (identity_faces, "identity", 0.0),
                                        (identity_faces, "identity", 0.98)):
        pairs = evaluation.pair_report(splits.dev, descriptor.embeddings["dev"], splits.eval,
                                       descriptor.embeddings["eval"], seed=seed, faces=faces,
                                       face_channel=channel, face_rule_specificity=specificity)
        by_kind = pairs.by_kind()["accuracy_face_rule"]
        rows.append({"face rule reads": channel, "fitted for": (
                         f"{specificity} of different refused" if specificity
                         else "best accuracy"),
                     "accuracy": pairs.face_rule["accuracy"],
                     **by_kind.to_dict(), "distance": pairs.rule.distance,
                     "cosine": pairs.rule.descriptor_cosine})
    print("\npair verification with the face rule (fitted on dev pairs):\n")
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4f"))


def print_official_floors(task_data: task_b.TaskBData, learned: dict[str, np.ndarray],
                          identity: task_b.IdentityChannel, report: evaluation.SwitchReport,
                          seed: int, misses: tuple[int, ...] = (0, 1, 2, 4, 8)) -> None:
    """The switch's alternative objective: the best dev own-photo-removed top-1 among the
    threshold pairs whose dev official top-1 stays within `misses` queries of its best (instead
    of the best mean of the two), each reported on the evaluated split."""
    dev = report.dev
    n_queries = len(evaluation.retrieval_table(task_data.splits.dev, learned["dev"]))
    rows = []
    for allowed in misses:
        kept = dev[dev["top1_0"] >= dev["top1_0"].max() - (allowed + 0.5) / n_queries]
        best = fusion.best_switch_row(kept, ("top1_1", "top1_0"))
        switch = dataclasses.replace(report.switch, **{
            name: float(best[name]) for name in fusion.SWITCH_THRESHOLDS})
        evaluated = evaluation.switched_report(task_data.splits.eval, learned["eval"],
                                               identity.vectors["eval"], switch, seed=seed,
                                               found=identity.found["eval"])
        rows.append({"dev official misses allowed": str(allowed), "dev top-1": best["top1_0"],
                     "dev own photo removed": best["top1_1"],
                     "top-1": evaluated.eval["top1"],
                     "sunny": evaluated.eval["top1_by_distortion"]["sunny"],
                     "own photo removed": evaluated.hard["top1"]})
    print("\nthe switch fitted for the best dev own-photo-removed top-1 within a few official "
          "misses of dev's best official top-1 (the evaluated split beside it):\n")
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4f"))


def print_faceless_shares(task_data: task_b.TaskBData, learned: dict[str, np.ndarray],
                          identity: task_b.IdentityChannel, report: evaluation.SwitchReport,
                          seed: int) -> None:
    """The switch of `report`, whose identity channel mixes a share of the copy channel of its
    own into the images where the face channel found no face (`evaluation.identity_shares`),
    against the switch refitted on dev with one share for every image (no face-found flags, so
    no copy cosine of its own for faceless queries either): the identity channel alone on both
    splits and the switch on the evaluated one."""
    splits = {"dev": task_data.splits.dev, "eval": task_data.splits.eval}
    one = evaluation.switch_report(splits["dev"], learned["dev"], identity.vectors["dev"],
                                   splits["eval"], learned["eval"], identity.vectors["eval"],
                                   seed=seed)
    # scored as the notebooks choose the identity channel's shares
    top1_hard = {split: identity_training.dev_top1_hard(frame) for split, frame in splits.items()}
    rows = []
    for name, switched, found in (("one share for every image", one, None),
                                  ("apart for faceless images", report, identity.found)):
        switch = switched.switch
        channel = {split: switch.identity_vectors(learned[split], identity.vectors[split],
                                                  found[split] if found else None)
                   for split in splits}
        rows.append({"identity channel": name, "share face / faceless":
                         f"{switch.identity_share} / {switch.faceless_share}",
                     "alone, dev": top1_hard["dev"](channel["dev"]),
                     "alone, evaluated": top1_hard["eval"](channel["eval"]),
                     **switch_columns(switched)})
    faceless = ~identity.found["eval"]
    sunny = splits["eval"]["distortion"].eq("sunny").to_numpy()
    print(f"\nfaceless rows (the face channel found no face): dev "
          f"{int((~identity.found['dev']).sum())}, evaluated {int(faceless.sum())} of "
          f"{len(faceless)}, {int((faceless & sunny).sum())} of them sunny; the copy channel's "
          "share in the identity channel, one for every image against one apart for the "
          "faceless images (each chosen on dev, the switch refitted on dev):\n")
    print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4f"))


def print_whole_image_shares(task_data: task_b.TaskBData, learned: dict[str, np.ndarray],
                             identity: task_b.IdentityChannel, seed: int,
                             tuned: whole_image.Tuned | None = None) -> None:
    """The switch whose identity channel carries a share of features of the whole image (Task
    A's `whole_image` backbone: frozen ImageNet weights, or its `tuned` copy), in the gallery
    and in the queries whose face was not found: what glare leaves (hair, outline, clothes). A
    query with a face keeps the identity channel's ranking (its cosine to every gallery photo is
    scaled alike). For each share the switch is fitted on dev again; the share the dev mean of
    the two top-1s (the switch's own objective) prefers is marked."""
    splits = {"dev": task_data.splits.dev, "eval": task_data.splits.eval}
    whole = {split: face_descriptor.normalise(whole_image.features(
        frame["path"].tolist(), task_a.PROBE_CONTEXT, progress=True, tuned=tuned))
        for split, frame in splits.items()}
    carries = {split: fusion.carries_whole(identity.found[split], evaluation.gallery_rows(frame))
               for split, frame in splits.items()}
    rows = []
    for share in fusion.WHOLE_SHARES:
        vectors = {split: fusion.fuse(identity.vectors[split], whole[split], share,
                                      present=carries[split]) for split in splits}
        switched = evaluation.switch_report(
            splits["dev"], learned["dev"], vectors["dev"], splits["eval"], learned["eval"],
            vectors["eval"], seed=seed, dev_found=identity.found["dev"],
            eval_found=identity.found["eval"])
        columns = switch_columns(switched)
        chosen = switched.dev[switched.dev["chosen"]].iloc[0]
        rows.append({"whole-image share": share,
                     "switch dev top-1 / own photo removed":
                         columns.pop("switch dev top-1 / own photo removed"),
                     "dev mean": (chosen["top1_0"] + chosen["top1_1"]) / 2, **columns})
    table = pd.DataFrame(rows)
    table.insert(0, "dev's choice", np.where(
        np.arange(len(table)) == int(table["dev mean"].to_numpy().argmax()), "*", ""))
    print(f"\n{'Fine-tuned' if tuned else 'ImageNet'} {task_a.PROBE_CONTEXT} features of the "
          "whole image in the identity channel, for the gallery and the queries without a found "
          "face (the switch fitted on dev for each share):\n")
    print(table.to_markdown(index=False, floatfmt=".4f"))


def switch_columns(switched: evaluation.SwitchReport) -> dict[str, str | float]:
    """A table row's figures of a switch fitted on dev: its dev top-1s, then the evaluated
    split's top-1, own photo removed and sunny own photo removed."""
    chosen = switched.dev[switched.dev["chosen"]].iloc[0]
    return {"switch dev top-1 / own photo removed":
                f"{chosen['top1_0']:.4f} / {chosen['top1_1']:.4f}",
            "switch top-1": switched.eval["top1"],
            "switch own photo removed": switched.hard["top1"],
            "sunny": switched.hard["top1_by_distortion"]["sunny"]}


def interval_text(pair: list[float] | None) -> str:
    """An interval of `metrics.clustered_interval` as ``low-high``; "–" for None."""
    return "–" if pair is None else f"{pair[0]:.3f}-{pair[1]:.3f}"


def measure(checkpoint: Path, data_dir: Path, work_root: Path, seed: int,
            figure_dir: Path | None = None, pairs: bool = False, floors: bool = False,
            faceless: bool = False, whole: bool = False,
            whole_tuned: whole_image.Tuned | None = None) -> None:
    """Fit and report the switch for one checkpoint; prints its tables (with `pairs`, also the
    pair face rule on each face channel; `print_pair_rules`; with `whole`, the whole-image
    shares, read by `whole_tuned` when given) and saves its figures under `figure_dir`."""
    model, card = checkpoints.load_model(checkpoint)
    section = task_b.SiameseSettings if card.kind == "siamese" else task_b.ArcFaceSettings
    cfg = experiment.ExperimentConfig.resolve(
        section, data_dir=str(data_dir), work_root=str(work_root), seed=seed,
        output_dir=str(work_root / "runs_copy_switch"), image_size=card.image_size,
        fit=card.fit)
    start = time.perf_counter()
    task_data = task_b.prepare_data(cfg)
    learned = {split: task_b.embed_array(model, task_data.images[split], card.image_size,
                                         card.mean, card.std, "cpu")
               for split in ("dev", "eval")}
    # the card's fine-tuned identity channel when it has one, else the face descriptor
    identity = task_b.identity_channel(task_data, cfg,
                                       "sface" if card.identity_weights else "descriptor",
                                       inherit_from=checkpoint)
    report = task_b.copy_or_identity(task_data, learned, identity, seed=seed)
    if report is None:
        raise SystemExit("no face descriptors: install the extras (requirements-extras.txt)")
    flat = report.flat()
    print(f"\n### {checkpoint.name} ({task_data.splits.eval_name}, "
          f"{time.perf_counter() - start:.0f} s)\n")
    print(report.summary().to_markdown(floatfmt=".4f"))
    print(f"\nthresholds: copy margin {flat['switch_threshold']:.4f}, descriptor "
          f"{flat['switch_identity_threshold']:.4f}, copy cosine of a faceless query "
          f"{flat['switch_faceless_copy_cosine']:.4f}; dlib descriptor's share in the identity "
          f"channel {flat['switch_descriptor_share']:.2f}, then the copy channel's "
          f"{flat['switch_identity_share']:.2f} ({flat['switch_faceless_share']} where it found no "
          f"face); copies missed {flat['switch_copy_missed']}, "
          f"people missed {flat['switch_person_missed']}; copy channel answers "
          f"{flat['switch_copy_share']:.3f} of official and {flat['switch_copy_share_hard']:.3f}"
          " of own-photo-removed queries\n")
    chosen = report.dev[report.dev["chosen"]]
    print(f"dev at these thresholds: top-1 {chosen['top1_0'].iloc[0]:.4f}, own photo removed "
          f"{chosen['top1_1'].iloc[0]:.4f}\n")
    if identity.descriptor_table is not None:
        print("dev own-photo-removed top-1 of the identity channel per share of dlib's "
              "descriptor:\n")
        print(identity.descriptor_table.to_markdown(index=False, floatfmt=".4f") + "\n")
    shares = report.shares
    if report.switch.faceless_share is not None:  # a grid: one row per faceless share
        shares = shares.pivot(index="faceless_share", columns="identity_share",
                              values="top1_hard").reset_index()
    print("dev own-photo-removed top-1 of the identity channel per share of the copy channel"
          + (" (columns), per faceless images' share (rows)" if report.switch.faceless_share
             is not None else "") + ":\n")
    print(shares.to_markdown(index=False, floatfmt=".4f") + "\n")
    print(f"95 % intervals over identities: top-1 {interval_text(flat['switch_top1_ci95'])}, "
          f"own photo removed {interval_text(flat['switch_top1_hard_ci95'])}\n")
    rows = {"official": flat["switch_top1_by_distortion"],
            "own photo removed": flat["switch_top1_hard_by_distortion"]}
    header = sorted(rows["official"])
    print("| switch top-1 | " + " | ".join(header) + " |")
    print("|---" * (len(header) + 1) + "|")
    for name, values in rows.items():
        print(f"| {name} | " + " | ".join(f"{values[d]:.3f}" for d in header) + " |")
    hard = flat["switch_top1_hard_by_distortion_ci95"]
    print("| own photo removed, 95 % interval | "
          + " | ".join(interval_text(hard.get(d)) for d in header) + " |")
    print("\n" + report.misses().to_markdown(floatfmt=".3f"))
    if floors:
        print_official_floors(task_data, learned, identity, report, seed)
    if faceless:
        print_faceless_shares(task_data, learned, identity, report, seed)
    if whole:
        print_whole_image_shares(task_data, learned, identity, seed, whole_tuned)
    if pairs:
        print_pair_rules(task_data, learned, identity, report, card, seed)
    if figure_dir is not None:
        for name, figure in figures.switch_figures(report, identity.vectors["eval"],
                                                   task_data.splits.eval, seed):
            plots.save_and_show(figure, figure_dir / f"{checkpoint.stem}_{name}.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--work-root", type=Path, required=True,
                        help="the work root the checkpoints were trained in (its caches)")
    parser.add_argument("--checkpoints", type=Path, nargs="+", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--figures", type=Path, help="save the switch figures in this folder")
    parser.add_argument("--pairs", action="store_true",
                        help="also the pair face rule on the descriptor and the identity channel")
    parser.add_argument("--floors", action="store_true",
                        help="also the switch fitted under a floor on dev's official top-1")
    parser.add_argument("--faceless-shares", action="store_true",
                        help="also the switch with one copy share for every image, not one "
                             "apart for the faceless")
    parser.add_argument("--whole-image", action="store_true",
                        help="also the switch with ImageNet features of the whole image in the "
                             "identity channel where no face was found")
    args = parser.parse_args()
    for checkpoint in args.checkpoints:
        measure(checkpoint, args.data_dir, args.work_root, args.seed, args.figures, args.pairs,
                args.floors, args.faceless_shares, args.whole_image)


if __name__ == "__main__":
    main()
