"""MTCNN face detection and aligned square crops: the "processed" image stream, with its cache.

FACECOM mixes 250x250 LFW-style crops, 224x224 distorted copies and large studio portraits
(``NNN_frontal``, up to 2048x3072 in the original release). `align_faces` turns any of them into
the same framing: the face box found by facenet-pytorch's MTCNN (weights ship inside the package,
so this works offline), expanded by a margin, rotated so the eyes are level, resized to a square.

Pipeline per image:

1. Decode a *detection copy* whose long side is at most `DETECT_MAX_SIDE` px. JPEGs are decoded
   at reduced scale (PIL draft mode), so a 3072 px studio shot never exists at full size in memory.
2. Run MTCNN on batches of equal-size copies (FACECOM is almost all 250x250 or 224x224, so the
   batches stay full).
3. Drop faces centred outside the middle of the image (`MAX_CENTRE_OFFSET`: bystanders), then
   pick one face per image with `_select_face` (large and central beats small and off-centre).
4. Crop from the detection copy with a similarity transform (`cv2.warpAffine`). The output is
   112-224 px, and at <= 640 px on the long side a FACECOM face still spans >= ~120 px, so the
   full-resolution pixels would add nothing but decode time. Boxes are reported in
   *original-image* pixels.
5. When no face is found, fall back to a centre crop (rule in `_fallback_crop`) and count it.

Results are kept per image by its content (`common.feature_store`), under the settings that
change the pixels: an image is aligned once, whatever list or notebook asks for it again.
"""
from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
from facenet_pytorch import MTCNN
from PIL import Image, UnidentifiedImageError

from common import views
from common.config import resolve_device
from common.feature_store import FeatureStore, content_keys
from common.image_decode import to_rgb

__all__ = [
    "DETECT_MAX_SIDE",
    "FALLBACK_FACE_FRACTION",
    "MAX_CENTRE_OFFSET",
    "AlignmentResult",
    "FaceReadError",
    "create_detector",
    "detect_subject_box",
    "align_faces",
    "compute_alignment_stats",
]

DETECT_MAX_SIDE = 640
"""Long side (px) of the copy MTCNN sees; larger inputs only cost time and memory."""

FALLBACK_FACE_FRACTION = 0.5
"""Assumed face size / image short side for the fallback crop (median 0.49 on FACECOM LFW crops)."""

MAX_CENTRE_OFFSET = 0.3
"""Faces whose centre is further than this (fraction of image width / height) from the image centre
are bystanders: FACECOM subjects sit within 0.11 of the centre (300 clean, 700 distorted images),
while the off-centre detections seen were bystanders at 0.4 in over-exposed `sunny` images. 0.3
still keeps portraits framed high, such as skimage's astronaut (0.27)."""

_CACHE_VERSION = 2  # bump when the crop geometry changes, so stale caches are not reused
_RESULT_FIELDS = ("images", "found", "boxes", "probs", "sizes")  # the AlignmentResult arrays
_CENTER_WEIGHT = 2.0  # as facenet-pytorch's "center_weighted_size" heuristic
_EXIF_ORIENTATION = 0x0112  # the EXIF tag; values 5-8 rotate the picture by 90 degrees


class FaceReadError(OSError):
    """An image could not be decoded; carries the path so the caller can exclude the file."""

    def __init__(self, path: str, reason: str):
        super().__init__(f"Cannot read image {path!r}: {reason}. Exclude it from the table "
                         "(common.data.validate_dataset lists unreadable files).")
        self.path = path
        self.reason = reason


@dataclass
class AlignmentResult:
    """Aligned crops of N images and what the detector found.

    Attributes:
        images: (N, S, S, 3) uint8 RGB crops, in the order of the input paths.
        found: (N,) bool, True where MTCNN found a face (False = centre-crop fallback).
        boxes: (N, 4) float32 x1, y1, x2, y2 of the chosen face in original-image pixels;
            NaN where no face was found.
        probs: (N,) float32 MTCNN confidence of the chosen face; NaN where none was found.
        sizes: (N, 2) int64 original image width, height.
    """

    images: np.ndarray
    found: np.ndarray
    boxes: np.ndarray
    probs: np.ndarray
    sizes: np.ndarray

    @property
    def n_fallback(self) -> int:
        """Number of images that got the centre-crop fallback."""
        return int((~self.found).sum())

    def __len__(self) -> int:
        return len(self.images)


def create_detector(device: str = "auto", min_face_size: int = 40,
                    thresholds: Sequence[float] = (0.6, 0.7, 0.7),
                    factor: float = 0.709) -> MTCNN:
    """Build facenet-pytorch's MTCNN for detection only (one face per image, no post-processing).

    `min_face_size=40` (facenet-pytorch uses 20) drops the smallest pyramid levels: the subject of a
    FACECOM image spans >= ~100 px of the <= 640 px detection copy, and the smaller levels cost 3x
    the time while adding only background faces. `selection_method="center_weighted_size"` makes a
    direct `detector(img)` call rank faces as `align_faces` does (see `_select_face`;
    `align_faces` also drops off-centre bystanders, `MAX_CENTRE_OFFSET`).

    Args:
        device: "auto", "cpu" or "cuda[:i]" (resolved by `common.config.resolve_device`).
        min_face_size: smallest face side to search for, in detection-copy pixels.
        thresholds: P-, R- and O-net score thresholds.
        factor: scale step of the image pyramid.

    Returns:
        An `MTCNN` in eval mode on the resolved device.
    """
    detector = MTCNN(min_face_size=min_face_size, thresholds=list(thresholds), factor=factor,
                     post_process=False, keep_all=False, select_largest=False,
                     selection_method="center_weighted_size", device=resolve_device(device))
    return detector.eval()


def _load_detection_copy(path: str, max_side: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Decode `path` with its long side <= `max_side`; returns (RGB uint8 array, original (w, h)).

    Local loader rather than `common.data.load_image`: that one decodes at full size, while draft
    mode here lets libjpeg decode a 3072 px JPEG at 1/2-1/8 scale directly. Modes and the EXIF
    orientation are handled by `image_decode.to_rgb`, so the copy is upright like every decoded
    image; the original size is reported upright too.
    """
    try:
        with Image.open(io.BytesIO(views.read_image_bytes(path))) as image:
            upright_swaps_axes = image.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8)
            original_size = image.size[::-1] if upright_swaps_axes else image.size
            image.draft("RGB", (max_side, max_side))  # JPEG only; picks a scale >= the request
            image = to_rgb(image)
            image.thumbnail((max_side, max_side), Image.Resampling.BILINEAR, reducing_gap=2.0)
            return np.asarray(image, dtype=np.uint8).copy(), original_size
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as error:
        raise FaceReadError(str(path), str(error)) from error


def _select_face(boxes: np.ndarray, probs: np.ndarray, width: int, height: int) -> int:
    """Index of the subject's face: max of box area - 2 * squared offset from the image centre.

    FACECOM images are framed on one person, but LFW-style crops often show bystanders; the
    subject is the large face near the centre. Highest probability alone picks a sharp bystander
    (MTCNN scores saturate near 1.0), largest alone picks a close-up bystander at the edge. This is
    facenet-pytorch's `center_weighted_size` rule; probability breaks exact ties only.
    """
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    centres = np.stack([(boxes[:, 0] + boxes[:, 2]) / 2, (boxes[:, 1] + boxes[:, 3]) / 2], axis=1)
    offsets = ((centres - np.array([width / 2, height / 2])) ** 2).sum(axis=1)
    score = areas - _CENTER_WEIGHT * offsets
    return int(np.lexsort((-probs, -score))[0])


def _crop_matrix(centre: tuple[float, float], side: float, angle_deg: float,
                 image_size: int) -> np.ndarray:
    """2x3 similarity transform mapping a rotated square (centre, side) onto the output square.

    `centre` is in continuous coordinates (pixel i spans [i, i + 1)), as MTCNN boxes are; OpenCV
    samples pixel i at coordinate i, hence the half-pixel shifts on both sides.
    """
    source = (centre[0] - 0.5, centre[1] - 0.5)
    matrix = cv2.getRotationMatrix2D(source, angle_deg, image_size / side)
    target = image_size / 2 - 0.5
    matrix[:, 2] += np.array([target - source[0], target - source[1]])
    return matrix


def _warp(image: np.ndarray, matrix: np.ndarray, image_size: int) -> np.ndarray:
    """Apply `matrix`, first area-downsampling the source when shrinking > 2x to avoid aliasing."""
    scale = math.hypot(matrix[0, 0], matrix[0, 1])
    if scale < 0.5:
        height, width = image.shape[:2]
        size = (max(1, round(width * 2 * scale)), max(1, round(height * 2 * scale)))
        image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
        # old pixel index = (new index + 0.5) / ratio - 0.5 (cv2.resize's pixel-centre convention)
        ratio = np.array([size[0] / width, size[1] / height])
        matrix = np.concatenate([matrix[:, :2] / ratio,
                                 matrix[:, 2:] + matrix[:, :2] @ (0.5 / ratio - 0.5)[:, None]],
                                axis=1)
    return cv2.warpAffine(image, matrix, (image_size, image_size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


def _aligned_crop(image: np.ndarray, box: np.ndarray, points: np.ndarray | None,
                  image_size: int, margin: float) -> np.ndarray:
    """Square crop of side max(box w, h) * (1 + margin) around the box centre, eyes levelled.

    The rotation (about the box centre) uses the two eye landmarks; it is skipped when the
    landmarks are missing or imply a tilt > 45 degrees, which only a wrong detection produces.
    """
    x1, y1, x2, y2 = (float(v) for v in box)
    centre = ((x1 + x2) / 2, (y1 + y2) / 2)
    side = max(x2 - x1, y2 - y1) * (1 + margin)
    angle = 0.0
    if points is not None:
        (lx, ly), (rx, ry) = points[0], points[1]
        tilt = math.degrees(math.atan2(ry - ly, rx - lx))
        angle = tilt if abs(tilt) <= 45 else 0.0
    return _warp(image, _crop_matrix(centre, side, angle, image_size), image_size)


def _fallback_crop(image: np.ndarray, image_size: int, margin: float) -> np.ndarray:
    """Centre square of side min(w, h) * FALLBACK_FACE_FRACTION * (1 + margin), capped at min(w, h).

    FACECOM images are framed on the face, so this is the crop a detection would most likely
    have produced (same scale as a typical aligned crop), instead of a wider centre crop that
    would change the face scale for exactly the hardest images.
    """
    height, width = image.shape[:2]
    side = min(min(width, height) * FALLBACK_FACE_FRACTION * (1 + margin), min(width, height))
    return _warp(image, _crop_matrix((width / 2, height / 2), side, 0.0, image_size), image_size)


def align_faces(paths: Sequence[str | os.PathLike], image_size: int = 112, margin: float = 0.2,
                cache_dir: str | os.PathLike | None = None, device: str = "auto",
                batch_size: int = 16, progress: bool = True,
                min_face_size: int = 40,
                thresholds: Sequence[float] = (0.6, 0.7, 0.7)) -> AlignmentResult:
    """Detect the face in each image and return eye-levelled square crops, cached on disk.

    Args:
        paths: image files (any PIL-readable format and mode; converted to RGB).
        image_size: output side S in px.
        margin: extra context as a fraction of the face box side (0.2 = 20 % larger crop).
        cache_dir: folder of the per-image store (`common.feature_store`); None = its default.
        device: "auto", "cpu" or "cuda[:i]".
        batch_size: images per MTCNN call (equal-size images are batched together).
        progress: show a tqdm bar.
        min_face_size: smallest face side searched for, in detection-copy px (`create_detector`).
        thresholds: MTCNN P/R/O-net thresholds.

    Returns:
        `AlignmentResult` with (N, S, S, 3) uint8 `images`, the `found` mask, original-pixel
        `boxes` and `probs`; images without a face get a centre crop (`_fallback_crop`).

    Raises:
        ValueError: for image_size < 16, margin < 0 or batch_size < 1.
        FaceReadError: when an image cannot be decoded.
        FileNotFoundError: when a path does not exist.

    Example:
        >>> result = align_faces(table["path"], image_size=112)
        >>> result.images.shape, result.found.mean()
    """
    if image_size < 16 or margin < 0 or batch_size < 1:
        raise ValueError(f"align_faces needs image_size >= 16, margin >= 0 and batch_size >= 1; "
                         f"got image_size={image_size}, margin={margin}, batch_size={batch_size}.")
    paths = [str(Path(path).resolve()) for path in paths]
    missing = [path for path in paths if not os.path.isfile(path)]
    if missing:
        raise FileNotFoundError(f"{len(missing)} image(s) not found, first: {missing[0]!r}; "
                                "build the path table with common.data.read_task_a/read_task_b.")
    settings = {"min_face_size": int(min_face_size), "thresholds": [float(t) for t in thresholds],
                "factor": 0.709}
    folder = Path(cache_dir) if cache_dir is not None else None
    store = FeatureStore(
        f"aligned_{image_size}px", {"version": _CACHE_VERSION, "image_size": image_size,
                                    "margin": margin, "max_side": DETECT_MAX_SIDE,
                                    "fallback_fraction": FALLBACK_FACE_FRACTION, **settings},
        {"images": ((image_size, image_size, 3), "uint8"), "found": ((), "bool"),
         "boxes": ((4,), "float32"), "probs": ((), "float32"), "sizes": ((2,), "int64")}, folder)
    detector: list[MTCNN] = []  # built once, and only when an image is not stored yet

    def compute(indices: list[int]) -> dict[str, np.ndarray]:
        if not detector:
            detector.append(create_detector(device=device, **settings))
        found = _align([paths[i] for i in indices], detector[0], image_size, margin, batch_size)
        return {name: getattr(found, name) for name in _RESULT_FIELDS}

    return AlignmentResult(**store.fetch(content_keys(paths, folder), compute, progress,
                                         desc="align_faces"))


def _align(paths: list[str], detector: MTCNN, image_size: int, margin: float,
           batch_size: int) -> AlignmentResult:
    """MTCNN on `paths`, batched by detection-copy size; see `align_faces`."""
    count = len(paths)
    result = AlignmentResult(
        images=np.zeros((count, image_size, image_size, 3), dtype=np.uint8),
        found=np.zeros(count, dtype=bool),
        boxes=np.full((count, 4), np.nan, dtype=np.float32),
        probs=np.full(count, np.nan, dtype=np.float32),
        sizes=np.zeros((count, 2), dtype=np.int64))

    # Group by detection-copy size so each MTCNN call gets one stacked (B, H, W, 3) batch; the
    # size is known from the header alone, but decoding happens batch by batch to bound memory.
    by_shape: dict[tuple[int, int], list[int]] = {}
    for index, path in enumerate(paths):
        try:
            with Image.open(io.BytesIO(views.read_image_bytes(path))) as image:
                width, height = image.size
        except (OSError, UnidentifiedImageError, Image.DecompressionBombError) as error:
            raise FaceReadError(path, str(error)) from error
        shrink = min(1.0, DETECT_MAX_SIDE / max(width, height))
        by_shape.setdefault((round(width * shrink), round(height * shrink)), []).append(index)
    batches = [indices[start:start + batch_size] for indices in by_shape.values()
               for start in range(0, len(indices), batch_size)]
    for indices in batches:
        copies = []
        for index in indices:
            array, result.sizes[index] = _load_detection_copy(paths[index], DETECT_MAX_SIDE)
            copies.append(array)
        # thumbnail rounding can differ by 1 px from the header estimate: split if so
        groups: dict[tuple[int, ...], list[int]] = {}
        for position, array in enumerate(copies):
            groups.setdefault(array.shape, []).append(position)
        for positions in groups.values():
            _detect_and_crop(detector, [copies[p] for p in positions],
                             [indices[p] for p in positions], result, image_size, margin)
    return result


def _detect_and_crop(detector: MTCNN, copies: list[np.ndarray], indices: list[int],
                     result: AlignmentResult, image_size: int, margin: float) -> None:
    """Run MTCNN on equal-size copies and fill `result` rows `indices` in place."""
    with torch.inference_mode():
        all_boxes, all_probs, all_points = detector.detect(np.stack(copies), landmarks=True)
    for array, index, boxes, probs, points in zip(copies, indices, all_boxes, all_probs,
                                                  all_points):
        subject = _subject_face(boxes, probs, points, array.shape[1], array.shape[0])
        if subject is None:
            result.images[index] = _fallback_crop(array, image_size, margin)
            continue
        box, prob, point = subject
        result.images[index] = _aligned_crop(array, box, point, image_size, margin)
        to_original = result.sizes[index][0] / array.shape[1]
        result.found[index] = True
        result.boxes[index] = box * to_original
        result.probs[index] = prob


def _subject_face(boxes, probs, points, width: int, height: int
                  ) -> tuple[np.ndarray, float, np.ndarray] | None:
    """(box, probability, landmarks) of the subject among MTCNN's faces, None if there is none:
    bystanders off-centre (`MAX_CENTRE_OFFSET`) are dropped, then `_select_face` picks."""
    if boxes is None or len(boxes) == 0:
        return None
    boxes = np.asarray(boxes, dtype=np.float32)
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2 / np.array([width, height]) - 0.5
    central = np.abs(centres).max(axis=1) <= MAX_CENTRE_OFFSET
    if not central.any():
        return None
    boxes, probs = boxes[central], np.asarray(probs, dtype=np.float32)[central]
    points = np.asarray(points, dtype=np.float32)[central]
    best = _select_face(boxes, probs, width, height)
    return boxes[best], float(probs[best]), points[best]


def detect_subject_box(detector: MTCNN, image: np.ndarray) -> np.ndarray | None:
    """x1, y1, x2, y2 of the subject's face in one RGB image (the rule of `align_faces`), or None.

    For callers that already hold the decoded image and need only the box, such as the dlib
    descriptor's fallback when dlib's own detector misses (`common.face_descriptor`).
    """
    with torch.inference_mode():
        boxes, probs, points = detector.detect(image, landmarks=True)
    subject = _subject_face(boxes, probs, points, image.shape[1], image.shape[0])
    return None if subject is None else subject[0]


def compute_alignment_stats(result: AlignmentResult) -> dict[str, float]:
    """Numbers notebook 00 reports: detection rate, fallback count and mean face-box size.

    Returns:
        dict with `n_images`, `detection_rate` (found / N), `n_fallback`, `mean_box_size_px`
        (mean of sqrt(box w * h) in original pixels) and `mean_box_fraction` (the same divided by
        the image's short side); box entries are NaN when nothing was found.
    """
    found = result.found
    widths = result.boxes[found, 2] - result.boxes[found, 0]
    heights = result.boxes[found, 3] - result.boxes[found, 1]
    box_sizes = np.sqrt(widths * heights)
    short_sides = result.sizes[found].min(axis=1)
    return {
        "n_images": int(len(found)),
        "detection_rate": float(found.mean()) if len(found) else float("nan"),
        "n_fallback": result.n_fallback,
        "mean_box_size_px": float(box_sizes.mean()) if found.any() else float("nan"),
        "mean_box_fraction": float((box_sizes / short_sides).mean()) if found.any()
        else float("nan"),
    }
