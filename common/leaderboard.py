"""Notebook 04: evaluate every checkpoint in `weights/` on one split and rank them.

Each checkpoint is rebuilt from its model card and fed exactly the preprocessing the card records
(image size, normalisation, aligned or not, threshold). The hackathon's final score is
0.3 x Task A + 0.7 x Task B.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from common import (baselines, cache, checkpoints, data, evaluation, face_priors, figures, plots,
                    task_a, task_b)
from common.checkpoints import ModelCard
from common.model_inputs import ModelInputs, prepare_inputs

__all__ = ["Leaderboard", "evaluation_frame", "training_overlap", "evaluate_checkpoints",
           "best_model_figures", "TASK_A_WEIGHT", "TASK_B_WEIGHT"]

TASK_A_WEIGHT, TASK_B_WEIGHT = 0.3, 0.7


def _read(root: Path, task: str, split: str) -> pd.DataFrame | None:
    if task == "task_a":
        return task_a.load_views(root, split)
    return data.read_task_b(root, split) if (root / "Task_B" / split).is_dir() else None


def evaluation_frame(root: Path, card: ModelCard, split: str = "val",
                     image_limit: int = 0) -> tuple[pd.DataFrame, str]:
    """The rows a checkpoint is scored on, and a note saying which rows those are.

    `split="val"` uses the official val split when present, else the held-out identities
    recorded in the card (never trained on, never used for selection).
    """
    frame = _read(root, card.task, split)
    note = f"{split} split"
    if frame is None and split == "val":
        holdout = card.holdout_identities
        if not holdout:
            raise FileNotFoundError(
                f"{root} has no val split and model card {card.name} records no held-out "
                "identities; pass split='train' only for a sanity check (it was trained on).")
        train = _read(root, card.task, "train")
        frame = train[train["identity"].isin(set(holdout))].reset_index(drop=True)
        note = f"{len(holdout)} held-out train identities (no val split in the data)"
    if frame is None:
        raise FileNotFoundError(f"{root} has no {split} split for {card.task}.")
    if image_limit and len(frame) > image_limit:
        counts = frame.groupby("identity").size().sort_index()
        keep = counts.index[counts.cumsum() <= image_limit]
        frame = frame[frame["identity"].isin(set(keep))].reset_index(drop=True)
        note += f", first {len(keep)} identities ({len(frame)} images)"
    return frame, note


def training_overlap(card: ModelCard, frame: pd.DataFrame) -> str | None:
    """Why the card's scores on ``frame`` are not held-out numbers, or None when they are.

    Compares the identities the checkpoint was trained and selected on (``train_identities``)
    with those scored, and its ``data_fingerprint`` with the scored files' fingerprint (equal:
    scored on exactly its training files). A card without ``train_identities`` (older than
    this check) is said to be unchecked rather than passed silently.
    """
    if card.data_fingerprint and len(frame) and card.data_fingerprint == (
            cache.compute_fingerprint(frame["path"].tolist())):
        return "scored on exactly the files it was trained on (same data fingerprint)"
    if card.train_identities is None:
        return ("its model card records no training identities, so an overlap with the scored "
                "split cannot be checked; retrain to record them")
    shared = sorted(set(card.train_identities) & set(frame["identity"]))
    if shared:
        return (f"trained or selected on {len(shared)} of the {frame['identity'].nunique()} "
                f"identities it is scored on (e.g. {shared[:3]}): these are not held-out scores")
    return None


@dataclass
class Leaderboard:
    """One row per checkpoint plus what the best models' figures need."""

    rows: list[dict] = field(default_factory=list)
    by_distortion: pd.DataFrame = field(default_factory=pd.DataFrame)
    task_a_by_distortion: pd.DataFrame = field(default_factory=pd.DataFrame)
    details: dict[str, dict] = field(default_factory=dict, repr=False)

    @property
    def table(self) -> pd.DataFrame:
        """The comparison table (NaN where a metric does not apply to the task)."""
        columns = ["name", "task", "backbone", "pretrained", "evaluated_on", "accuracy",
                   "f1_macro", "recall_female", "top1", "top1_hard", "switch_top1",
                   "switch_top1_hard", "verification_roc_auc", "pair_accuracy_face_rule",
                   "pair_accuracy_face_rule_same_identity"]
        frame = pd.DataFrame(self.rows)
        return frame.reindex(columns=columns) if len(frame) else pd.DataFrame(columns=columns)

    def best(self, task: str, key: str) -> dict | None:
        """The row of `task` with the highest `key`, or None."""
        candidates = [row for row in self.rows if row["task"] == task
                      and row.get(key) is not None and not row.get("baseline")]
        return max(candidates, key=lambda row: row[key]) if candidates else None

    def final_score(self) -> dict:
        """0.3 x Task A + 0.7 x Task B with the best model of each task, two ways."""
        out = {}
        lines = ["**Hackathon final score** = 0.3 × Task A + 0.7 × Task B (best model per task)", ""]
        for label, a_key, b_key in (("accuracy", "accuracy", "top1"),
                                    ("f1", "f1_macro", "f1_macro")):
            best_a, best_b = self.best("task_a", a_key), self.best("task_b", b_key)
            if best_a is None or best_b is None:
                out[f"final_score_{label}"] = None
                lines.append(f"- with Task A {a_key} and Task B {b_key}: needs a checkpoint "
                             "of each task")
                continue
            score = TASK_A_WEIGHT * best_a[a_key] + TASK_B_WEIGHT * best_b[b_key]
            out[f"final_score_{label}"] = score
            lines.append(f"- with Task A {a_key} ({best_a['name']}: {best_a[a_key]:.4f}) and "
                         f"Task B {b_key} ({best_b['name']}: {best_b[b_key]:.4f}): "
                         f"**{score:.4f}**")
        out["explanation"] = "\n".join(lines)
        return out

    def to_markdown(self, score: dict) -> str:
        """leaderboard.md: the table, the per-distortion table and the final score."""
        parts = ["# Leaderboard", "", self.table.to_markdown(index=False, floatfmt=".4f"), ""]
        if len(self.task_a_by_distortion):
            parts += ["## Task A accuracy by distortion (off-the-shelf rows for comparison)", "",
                      self.task_a_by_distortion.to_markdown(floatfmt=".4f"), ""]
        if len(self.by_distortion):
            parts += ["## Task B top-1 by distortion (off-the-shelf rows for comparison)", "",
                      self.by_distortion.to_markdown(floatfmt=".4f"), ""]
        return "\n".join(parts + [score["explanation"], ""])

    def flat(self) -> dict:
        """metrics.json content: every row, keyed by checkpoint name."""
        return {"models": {row["name"]: row for row in self.rows},
                "top1_by_distortion": self.by_distortion.to_dict(orient="index"),
                "task_a_accuracy_by_distortion": self.task_a_by_distortion.to_dict(
                    orient="index")}


def _card_inputs(card: ModelCard, frame: pd.DataFrame, device) -> ModelInputs:
    """The rows in the view the checkpoint was trained on (`model_inputs.prepare_inputs`, with
    the rows' clean sources, so face chips are the ones training cut; decoded images from the
    cache training filled). An unreadable file stops this checkpoint's scoring: a score on
    fewer rows would not compare with the others."""
    rule = card.fitted_face_rule
    inputs = prepare_inputs(card, frame["path"].tolist(), frame["source"].tolist(),
                            with_faces=rule is not None and rule.channel == "descriptor",
                            with_identity=bool(card.copy_switch) or (
                                rule is not None and rule.channel == "identity"),
                            gallery=evaluation.gallery_rows(frame),
                            image_cache="memmap", device=str(device), progress=True)
    failed = [f"{path}: {error}" for path, error in zip(frame["path"], inputs.errors) if error]
    if failed:
        raise ValueError(f"{len(failed)} images could not be read, e.g. {failed[:3]}")
    return inputs


def _score_task_a(model, card, frame, inputs, device) -> tuple[dict, dict]:
    probs = task_a.predict_probs(model, inputs.images, card.image_size, device, inputs.aligned,
                                 progress=True)
    result = task_a.evaluate_views(frame, probs, card.threshold)
    return result, {"probs": probs}


def _score_task_b(model, card, frame, inputs, device, seed) -> tuple[dict, dict]:
    channels = (task_b.switch_channels(model, card, inputs, device, progress=True)
                if inputs.identity is not None else {})
    embeddings = task_b.embed_for_card(model, card, inputs, device, progress=True,
                                       learned=channels.get("embedding"))
    report = evaluation.gallery_report(frame, embeddings, threshold=card.similarity_threshold,
                                       seed=seed)
    result = report.flat()
    if card.copy_switch:  # the gallery decision `common.predict` applies for this card
        result.update(evaluation.switched_report(  # it mixes the switch's share in itself
            frame, channels["embedding"], channels["face"],
            card.fitted_copy_switch, seed=seed,
            network=inputs.identity if card.identity_weights else None,
            found=channels["found"]).flat())
    rule = card.fitted_face_rule
    if rule is not None:  # the pair decision `common.predict.compare` applies for this card
        faces = task_b.rule_faces(rule, inputs.faces,
                                  (channels.get("pair_faces"), channels.get("found")))
        size = ({"n_pairs": card.config["n_eval_pairs"]} if "n_eval_pairs" in card.config
                else {})  # the list size its notebook scored
        result.update(evaluation.face_rule_pairs(frame, embeddings, faces, rule, seed=seed,
                                                 **size))
    return result, {"report": report, "embeddings": embeddings}


def _baseline_row(row: dict, task: str, note: str, keys: tuple[str, ...]) -> dict:
    """A leaderboard row for an off-the-shelf model (its status instead of the rows if absent)."""
    return {"name": f"{row['model']} (off-the-shelf)", "task": task,
            "backbone": row["backbone"], "pretrained": True, "baseline": True,
            "evaluated_on": note if row["status"] == "ok" else row["status"],
            **{key: row.get(key) for key in keys}}


def _add_baselines(board: Leaderboard, frame: pd.DataFrame, note: str,
                   accuracy_rows: dict) -> None:
    """Off-the-shelf Task A models on the same rows as the project's first Task A checkpoint."""
    for row in baselines.baseline_rows(frame).to_dict(orient="records"):
        board.rows.append(_baseline_row(row, "task_a", note,
                                        ("accuracy", "f1_macro", "recall_female")))
        if row["status"] == "ok":
            accuracy_rows[board.rows[-1]["name"]] = {
                key[len("accuracy_"):]: value for key, value in row.items()
                if key.startswith("accuracy_") and key != "accuracy_distorted"}


def _add_task_b_baselines(board: Leaderboard, frame: pd.DataFrame, note: str,
                          distortion_rows: dict, seed: int) -> None:
    """Off-the-shelf Task B models on the same rows as the project's first Task B checkpoint;
    how often dlib found no face (whole image used instead) goes into the row's note."""
    rows, reports = baselines.task_b_baseline_rows(frame, seed)
    for row in rows.to_dict(orient="records"):
        board.rows.append(_baseline_row(row, "task_b", note, (
            "f1_macro", "top1", "top1_hard", "verification_roc_auc")))
        if row["status"] == "ok":
            board.rows[-1]["evaluated_on"] += (
                f"; no face found in {1 - row['face_found_rate']:.1%} of images, whole image used")
            distortion_rows[board.rows[-1]["name"]] = reports[row["model"]].eval[
                "top1_by_distortion"]


def evaluate_checkpoints(cards: list[ModelCard], root: Path, split: str = "val",
                         device: torch.device | str = "cpu", image_limit: int = 0,
                         seed: int = 0, with_baselines: bool = True) -> Leaderboard:
    """Score every card's checkpoint; a checkpoint that cannot be scored gets a row saying why,
    one scored on data it was trained on a printed warning and a ``warning`` entry
    (`training_overlap`).

    With `with_baselines`, off-the-shelf face models (`common.baselines`; optional packages)
    are scored on the rows of the first Task A / Task B checkpoint, so the table compares like
    with like.
    """
    board = Leaderboard()
    distortion_rows, accuracy_rows, baseline_frame, task_b_frame = {}, {}, None, None
    for card in cards:
        row = {"name": card.name, "task": card.task, "backbone": card.backbone,
               "pretrained": card.pretrained}
        try:
            frame, note = evaluation_frame(Path(root), card, split, image_limit)
            overlap = training_overlap(card, frame)
            if overlap:
                print(f"WARNING {card.name}: {overlap}")
                row["warning"] = overlap
            model, card = checkpoints.load_model(card.weights_path, device)
            inputs = _card_inputs(card, frame, device)
            if card.task == "task_a":
                result, extra = _score_task_a(model, card, frame, inputs, device)
                accuracy_rows[card.name] = result["accuracy_by_distortion"]
                baseline_frame = (frame, note) if baseline_frame is None else baseline_frame
            else:
                result, extra = _score_task_b(model, card, frame, inputs, device, seed)
                distortion_rows[card.name] = result["top1_by_distortion"]
                task_b_frame = (frame, note) if task_b_frame is None else task_b_frame
        except (FileNotFoundError, ValueError, RuntimeError,
                face_priors.PriorUnavailableError) as error:
            print(f"{card.name}: not evaluated: {error}")
            board.rows.append({**row, "evaluated_on": f"not evaluated: {error}"})
            continue
        board.rows.append({**row, "evaluated_on": note, **{
            key: value for key, value in result.items() if not isinstance(value, (dict, list))}})
        board.details[card.name] = {"card": card, "frame": frame, "metrics": result, **extra}
    if with_baselines and baseline_frame is not None:
        _add_baselines(board, *baseline_frame, accuracy_rows)
    if with_baselines and task_b_frame is not None:
        _add_task_b_baselines(board, *task_b_frame, distortion_rows, seed)
    board.by_distortion = pd.DataFrame(distortion_rows).T
    board.task_a_by_distortion = pd.DataFrame(accuracy_rows).T
    return board


def best_model_figures(board: Leaderboard, seed: int = 0) -> list[tuple[str, object]]:
    """(file stem, figure) pairs: the best Task A model's confusion matrix and errors, the best
    Task B model's t-SNE and retrieval failures."""
    found = []
    best_a = board.best("task_a", "accuracy")
    if best_a is not None:
        name, detail = best_a["name"], board.details[best_a["name"]]
        found.append((f"confusion_matrix_{name}", plots.plot_confusion_matrix(
            detail["metrics"]["confusion_matrix"], task_a.CLASS_NAMES, title=name)))
        errors = figures.worst_errors_figure(detail["frame"], detail["probs"],
                                             detail["card"].threshold, n=8,
                                             title=f"{name}: worst errors")
        found += [(f"worst_errors_{name}", errors)] if errors is not None else []
    best_b = board.best("task_b", "top1")
    if best_b is not None:
        name, detail = best_b["name"], board.details[best_b["name"]]
        frame = detail["frame"]
        found.append((f"tsne_{name}", plots.plot_tsne(
            detail["embeddings"], frame["identity"].to_numpy(), frame["distortion"].to_numpy(),
            seed=seed, title=f"{name}: t-SNE")))
        failures = figures.retrieval_failures_figure(detail["report"].table, frame, n=6,
                                                     title=f"{name}: retrieval failures")
        found += [(f"retrieval_failures_{name}", failures)] if failures is not None else []
    return found
