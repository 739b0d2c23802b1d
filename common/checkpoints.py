"""Saved models: the typed model card, and checkpoint save / resolve / load / find.

Each saved model is its own pair `weights/<name>-<timestamp>.pt` + `.json`: the state dict and
its `ModelCard`, from which `load_model` rebuilds the network and `common.model_inputs` its
preprocessing. The card carries the weights' SHA-256, so a card is never used with weights from
another save. `weights/<name>.latest.json` points at the newest pair of a name, and
`weights/<name>.pt` means that pair wherever a checkpoint is asked for.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import io
import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from common import fallbacks, fusion, runs
from common.config import place
from common.experiment import ExperimentConfig, Splits
from common.models import create_model
from common.train import atomic_save

__all__ = ["ModelCard", "card_from_training", "MissingModelCardError", "CheckpointError",
           "save_model", "resolve_checkpoint", "load_model_card", "find_model_cards",
           "load_model", "LATEST_SUFFIX", "HEADLINE_METRICS"]

LATEST_SUFFIX = ".latest.json"
# Keys only one task's cards carry: `ModelCard.to_dict` leaves out the other task's, so a card
# is written with exactly the keys it always had.
_TASK_FIELDS = {
    "task_a": ("stream", "threshold", "class_names", "positive_class"),
    "task_b": ("model", "fit", "similarity_threshold", "descriptor_weight", "face_rule",
               "copy_switch", "identity_weights", "glare_weights", "pair_distance_threshold"),
}
_NOT_WRITTEN = ("weights_path", "extra")  # where the card was found; keys this class lacks
# Keys added after cards were first written: left out while unset, so an older card is written
# back key for key.
_WRITTEN_WHEN_SET = ("copy_switch", "identity_weights", "glare_weights", "eval_metrics",
                     "eval_split")
# What a card keeps of its notebook's evaluation (`ModelCard.eval_metrics`): the figures to
# compare checkpoints by without scoring them again (notebook 04 does that); for Task B the
# official top-1 and the own-photo-removed one, the copy switch's, and the pair face rule's
# accuracy, one person on two photos and two people apart.
HEADLINE_METRICS = {
    "task_a": ("accuracy", "f1_macro", "recall_female", "accuracy_distorted"),
    "task_b": ("top1", "top1_hard", "switch_top1", "switch_top1_hard", "pair_accuracy_face_rule",
               "pair_accuracy_face_rule_same_identity",
               "pair_accuracy_face_rule_different_identity"),
}
# Keys and network arguments renamed since cards were first written: older cards load unchanged.
_RENAMED_KEYS = {"pair_rule": "face_rule"}
_RENAMED_MODEL_KWARGS = {"layout_weight": "copy_weight"}
# Network arguments added since: a card with the first argument but not the second rebuilds the
# network its weights were saved from with the second's value here.
_EARLIER_MODEL_KWARGS = {("copy_weight", "copy_local_contrast"): False}


class MissingModelCardError(FileNotFoundError):
    """A checkpoint without the JSON model card that says how to rebuild and preprocess it."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: damaged, or not the weights its model card describes."""


@dataclass
class ModelCard:
    """Everything needed to rebuild a saved network, feed it and read its output.

    Attribute names are the JSON keys, so cards written before this class existed load as they
    are (`from_dict`); a field an older card lacks takes its default, which is what the code
    that read those cards assumed.

    Attributes:
        task: ``"task_a"`` (gender) or ``"task_b"`` (identity).
        kind: the `models.create_model` name; with ``model_kwargs``, rebuilds the network.
        model_kwargs: keyword arguments of `models.create_model` (without ``pretrained``).
        image_size: side of the square input, in pixels.
        mean / std: the normalisation the weights were trained with (empty for a probe).
        backbone: the backbone name the run was given, a label for tables; a linear probe's is
            the frozen network whose descriptor it reads (``dlib_descriptor``: dlib's ResNet).
        fit: how an image becomes square (`cache.FITS`); Task A always crops.
        aligned: whether a second input of MTCNN-aligned faces is needed (dual-stream model).
        stream: Task A input view, one of `task_a.STREAMS`: whole images, dlib face chips or
            face descriptors.
        descriptor_front_end: the face-descriptor front end of a probe or of a fused channel.
        threshold: Task A decision threshold on P(female), chosen on dev.
        class_names / positive_class: Task A label order and the class ``threshold`` is for.
        model: Task B recipe (``embedding``, ``facenet``, ``efficientfr``, ``siamese``).
        similarity_threshold: Task B same/different cosine threshold, calibrated on dev.
        descriptor_weight: share of the face descriptor joined to the learned embedding (0:
            none); thresholds were calibrated with it, so inference must add it too.
        face_rule: the dev-fitted face rule's fields (`fusion.FaceRule`: thresholds and the face
            channel it reads), or None.
        copy_switch: the dev-fitted gallery decision's fields (`fusion.CopySwitch`), or None:
            `common.predict` then matches by the learned embedding or the identity channel.
        identity_weights: the switch's identity channel when it is a fine-tuned network: the
            file name of its checkpoint, in this card's folder (`identity_path`); None: the
            face descriptor of ``descriptor_front_end``.
        glare_weights: the whole-image network the switch's identity channel carries a share
            of (`fusion.CopySwitch.whole_share`, `common.glare_identity`): the file name of its
            checkpoint, in this card's folder (`glare_path`); None: none.
        pair_distance_threshold: the Siamese notebook's calibrated pair distance, or None.
        data_fingerprint: fingerprint of the files trained on (`cache.compute_fingerprint`).
        dev_metrics: numeric dev metrics at selection time.
        eval_metrics / eval_split: the headline metrics (`HEADLINE_METRICS`) the notebook
            measured on its evaluated split (``"val"`` or ``"holdout"``) before saving.
        weights_source / pretrained: where the starting weights came from.
        holdout_identities: identities held out for evaluation when the data had no val split.
        train_identities: identities trained or selected on; scoring on them is not held out.
        config: the resolved settings (`ExperimentConfig.summary`).
        name / run_id / weights_file / weights_sha256 / git_commit / fallbacks / saved:
            written by `save_model`.
        weights_path: the checkpoint this card was loaded beside (set on load, not written).
        extra: keys of the JSON this class does not know, kept so a re-save loses nothing.
    """

    task: str
    kind: str
    model_kwargs: dict[str, Any]
    image_size: int
    mean: list[float]
    std: list[float]
    backbone: str | None = None
    fit: str = "crop"
    aligned: bool = False
    stream: str = "raw"
    descriptor_front_end: str | None = None
    threshold: float | None = None
    class_names: list[str] | None = None
    positive_class: str | None = None
    model: str | None = None
    similarity_threshold: float | None = None
    descriptor_weight: float = 0.0
    face_rule: dict[str, float | str] | None = None
    copy_switch: dict[str, float | str] | None = None
    identity_weights: str | None = None
    glare_weights: str | None = None
    pair_distance_threshold: float | None = None
    data_fingerprint: str | None = None
    dev_metrics: dict[str, float] = field(default_factory=dict)
    eval_metrics: dict[str, float] = field(default_factory=dict)
    eval_split: str | None = None
    weights_source: str | None = None
    pretrained: bool | None = None
    holdout_identities: list[str] | None = None
    train_identities: list[str] | None = None
    config: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    run_id: str = ""
    weights_file: str = ""
    weights_sha256: str = ""
    git_commit: str = ""
    fallbacks: list[str] = field(default_factory=list)
    saved: str = ""
    weights_path: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "ModelCard":
        """A card from its JSON object; keys this class does not know go to ``extra``.

        Raises:
            CheckpointError: a key needed to rebuild the model is missing.
        """
        fields = dataclasses.fields(cls)
        known = {f.name for f in fields} - set(_NOT_WRITTEN)
        missing = [f.name for f in fields if f.name not in values and f.default
                   is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise CheckpointError(f"Model card {values.get('name', '')!r} lacks {missing}; "
                                  "re-run the notebook that trained it.")
        values = {_RENAMED_KEYS.get(key, key): value for key, value in values.items()}
        kwargs = values.get("model_kwargs") or {}
        values["model_kwargs"] = {_RENAMED_MODEL_KWARGS.get(key, key): value
                                  for key, value in kwargs.items()}
        return cls(**{key: value for key, value in values.items() if key in known},
                   extra={key: value for key, value in values.items() if key not in known})

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "ModelCard":
        """The card stored in the JSON file `path`.

        Raises:
            CheckpointError: the file is not valid JSON or lacks a required key.
        """
        try:
            values = json.loads(Path(path).read_text())
        except json.JSONDecodeError as error:
            raise CheckpointError(f"Model card {path} is not valid JSON ({error}); re-run the "
                                  "notebook that trained the model.") from error
        return cls.from_dict(values)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: every field under its own key, except the other task's fields and
        ``weights_path``; ``extra`` keys are written back as they were read."""
        other = [key for task, keys in _TASK_FIELDS.items() if task != self.task for key in keys]
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if f.name not in (*_NOT_WRITTEN, *other)
                  and not (f.name in _WRITTEN_WHEN_SET and not getattr(self, f.name))}
        return runs.to_jsonable({**values, **self.extra})

    @property
    def identity_path(self) -> Path | None:
        """The identity channel's checkpoint (`identity_weights` beside this card's), or None."""
        return self._beside(self.identity_weights)

    @property
    def glare_path(self) -> Path | None:
        """The glare network's checkpoint (`glare_weights` beside this card's), or None."""
        return self._beside(self.glare_weights)

    def _beside(self, file_name: str | None) -> Path | None:
        if not file_name:
            return None
        return Path(self.weights_path or self.weights_file).parent / file_name

    @property
    def fitted_copy_switch(self) -> fusion.CopySwitch | None:
        """The dev-fitted gallery decision `copy_switch` records, or None."""
        return fusion.CopySwitch(**self.copy_switch) if self.copy_switch else None

    @property
    def fitted_face_rule(self) -> fusion.FaceRule | None:
        """The dev-fitted pair `fusion.FaceRule` `face_rule` records, or None. A rule on the
        identity channel from a card without ``faceless_cosine`` was fitted with one cosine for
        every pair, and reads it so."""
        if not self.face_rule:
            return None
        fields = dict(self.face_rule)
        if fields.get("channel") == "identity" and "faceless_cosine" not in fields:
            fields["faceless_cosine"] = fields["descriptor_cosine"]
        return fusion.FaceRule(**fields)

    def to_json(self, path: str | os.PathLike) -> Path:
        """Write `to_dict` to `path` atomically (`runs.write_json`)."""
        return runs.write_json(self.to_dict(), Path(path))


def card_from_training(cfg: ExperimentConfig, network: nn.Module, splits: Splits,
                       fingerprint: str, *, task: str, kind: str, model_kwargs: dict[str, Any],
                       dev_metrics: dict[str, Any], eval_metrics: dict[str, Any] | None = None,
                       **task_fields: Any) -> ModelCard:
    """The card of a network a notebook just trained: the fields every task shares, taken from
    the run's settings, the network and the splits, plus the task's own (``task_fields``, which
    may include ``model``, the Task B recipe). `eval_metrics`: the notebook's metrics on
    ``splits.eval``, of which the card keeps the task's `HEADLINE_METRICS`.

    One builder, so both tasks record weights provenance, normalisation and the identities
    trained on the same way (notebook 04's leakage warning relies on them).
    """
    source = network.weights_source
    return ModelCard(
        task=task, kind=kind, model_kwargs=model_kwargs, backbone=cfg.backbone,
        image_size=cfg.image_size, mean=list(network.data_config["mean"]),
        std=list(network.data_config["std"]), data_fingerprint=fingerprint,
        dev_metrics={key: value for key, value in dev_metrics.items()
                     if isinstance(value, (int, float))},
        eval_metrics={key: float(eval_metrics[key]) for key in HEADLINE_METRICS[task]
                      if isinstance((eval_metrics or {}).get(key), (int, float))},
        eval_split=splits.eval_name if eval_metrics else None,
        weights_source=str(source), pretrained=bool(getattr(source, "pretrained", False)),
        holdout_identities=(sorted(splits.eval["identity"].unique())
                            if splits.eval_name == "holdout" else None),
        train_identities=sorted(set(splits.train["identity"]) | set(splits.dev["identity"])),
        config=cfg.to_dict(), **task_fields)


def _new_run_id(weights_dir: Path, name: str) -> str:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_id, suffix = f"{name}-{stamp}", 2
    while (weights_dir / f"{run_id}.pt").exists() or (weights_dir / f"{run_id}.json").exists():
        run_id, suffix = f"{name}-{stamp}-{suffix}", suffix + 1
    return run_id


def save_model(model: nn.Module, weights_dir: Path, name: str, card: ModelCard) -> Path:
    """Save the deployable state dict as this run's own `<name>-<timestamp>.pt` with its model
    card `<name>-<timestamp>.json`, then point `<name>.latest.json` at them.

    Earlier runs' checkpoints are kept. The card records the weights' SHA-256, which
    `load_model` checks, and the pointer is written last: a save interrupted half-way leaves
    the previous pair as the latest, never new weights read with an old card's threshold.

    Returns:
        The path of the new checkpoint.

    Raises:
        ValueError: `name` is not a plain file name (`runs.check_run_name`).
    """
    runs.check_run_name(name)
    weights_dir = Path(weights_dir)
    weights_dir.mkdir(parents=True, exist_ok=True)
    run_id = _new_run_id(weights_dir, name)
    path = weights_dir / f"{run_id}.pt"
    atomic_save(model.state_dict(), path)
    dataclasses.replace(
        card, name=name, run_id=run_id, weights_file=path.name,
        weights_sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        git_commit=runs.git_commit(), fallbacks=fallbacks.recorded(),
        saved=_dt.datetime.now().isoformat(timespec="seconds")).to_json(path.with_suffix(".json"))
    runs.write_json({"name": name, "checkpoint": path.name},
                    weights_dir / f"{name}{LATEST_SUFFIX}")
    return path


def _latest(pointer: Path) -> Path:
    """The checkpoint a `<name>.latest.json` pointer names (always in the pointer's folder)."""
    try:
        entry = json.loads(pointer.read_text())["checkpoint"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise CheckpointError(f"{pointer} is not a latest-checkpoint pointer ({error}); delete "
                              "it and pass a checkpoint file instead.") from error
    return pointer.parent / Path(entry).name


def resolve_checkpoint(weights: str | os.PathLike) -> Path:
    """The checkpoint file `weights` stands for: `weights/<name>.pt` (or `weights/<name>`, or
    its pointer `<name>.latest.json`) is the latest run of `<name>` when that pointer exists,
    else the file itself; a model card `x.json` stands for its checkpoint `x.pt`.

    Raises:
        FileNotFoundError: neither a pointer nor the file exists.
    """
    weights = Path(weights)
    if weights.name.endswith(LATEST_SUFFIX):
        weights = weights.with_name(weights.name[:-len(LATEST_SUFFIX)])
    elif weights.suffix == ".json":
        weights = weights.with_suffix(".pt")
    name = weights.name[:-len(".pt")] if weights.name.endswith(".pt") else weights.name
    pointer = weights.parent / f"{name}{LATEST_SUFFIX}"
    if pointer.is_file():
        checkpoint = _latest(pointer)
        if not checkpoint.is_file():
            raise FileNotFoundError(f"{pointer} points to {checkpoint.name}, which does not "
                                    f"exist; pass one of `ls {weights.parent}/{name}-*.pt`.")
        return checkpoint
    if not weights.is_file():
        raise FileNotFoundError(f"Checkpoint {weights} does not exist; list the available ones "
                                f"with `ls {weights.parent}/*{LATEST_SUFFIX}`.")
    return weights


def load_model_card(weights: str | os.PathLike) -> ModelCard:
    """The card beside the checkpoint `weights` stands for (`x.pt` -> `x.json`, see
    `resolve_checkpoint`); a missing card is an error saying why it is needed."""
    checkpoint = resolve_checkpoint(weights)
    card_path = checkpoint.with_suffix(".json")
    if not card_path.exists():
        raise MissingModelCardError(
            f"{checkpoint} has no model card {card_path.name} beside it. The card records the "
            "model kind, backbone, image size, normalisation and threshold needed to use the "
            "weights; checkpoints written by the notebooks always have one.")
    return dataclasses.replace(ModelCard.from_json(card_path), weights_path=str(checkpoint))


def find_model_cards(weights_dir: str | os.PathLike = "") -> list[ModelCard]:
    """The latest model card of each run name in `weights_dir` (what `<name>.latest.json`
    points to), sorted by name; a name whose checkpoint or card is gone is skipped.

    Earlier runs of a name stay on disk but are not listed: one row per model, as trained last.
    """
    weights_dir = runs.resolve_weights_dir(weights_dir)
    cards = []
    for pointer in sorted(weights_dir.glob(f"*{LATEST_SUFFIX}")):
        checkpoint = _latest(pointer)
        if checkpoint.is_file() and checkpoint.with_suffix(".json").is_file():
            cards.append(load_model_card(checkpoint))
    return cards


def _read_verified(card: ModelCard) -> dict:
    """The state dict of the card's checkpoint, after checking it is the file the card was
    saved with (SHA-256) and loading it without running code (``weights_only=True``)."""
    checkpoint = Path(card.weights_path)
    card_name = checkpoint.with_suffix(".json").name
    if not card.weights_sha256:
        raise CheckpointError(
            f"Model card {card_name} records no weights_sha256 (it predates cards that carry "
            f"the weights' hash), so nothing shows {checkpoint} is the file it describes; "
            "re-run the notebook that trained it, or re-save the model with "
            "checkpoints.save_model.")
    raw = checkpoint.read_bytes()
    actual = hashlib.sha256(raw).hexdigest()
    if actual != card.weights_sha256:
        raise CheckpointError(
            f"{checkpoint} is not the checkpoint its model card {card_name} was saved with "
            f"(SHA-256 {actual[:12]}..., the card says {card.weights_sha256[:12]}...): it is "
            "damaged, or one of the two files was replaced. Use a pair written together, or "
            "re-run the notebook that trained it.")
    try:
        return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{checkpoint} is not a weights-only state dict ({reason}); "
                              "re-run the notebook that trained it.") from error


def load_model(weights: str | os.PathLike, device: torch.device | str = "cpu"
               ) -> tuple[nn.Module, ModelCard]:
    """Rebuild the network described by the card beside `weights` and load the weights into it.

    Raises:
        FileNotFoundError / MissingModelCardError: no such checkpoint, or no card beside it.
        CheckpointError: the checkpoint is damaged or not the file its card was saved with.
        RuntimeError: the weights do not fit the network the card describes.
    """
    card = load_model_card(weights)
    state = _read_verified(card)
    kwargs = {added: value for (present, added), value in _EARLIER_MODEL_KWARGS.items()
              if present in card.model_kwargs}
    model = create_model(card.kind, **{**kwargs, **card.model_kwargs, "pretrained": False})
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise RuntimeError(f"{weights} does not match the model its card describes "
                           f"({card.kind}, {card.model_kwargs}): {error}") from error
    # Rebuilt without pretrained weights, the backbones report their architecture's default
    # normalisation; the card holds the one the weights were trained with.
    for module in model.modules():
        if getattr(module, "is_facecom_backbone", False):
            module.data_config = {**module.data_config, "mean": tuple(card.mean),
                                  "std": tuple(card.std)}
    return place(model, device).eval(), card
