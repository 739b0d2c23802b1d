"""The embedded sample: a small, deterministic, synthetic data set in FACECOM's exact layout.

Tests, CI and the notebooks' quick mode need data that is always there, free to redistribute and
identical on every machine, yet learnable, so that "beats chance" checks mean something. Faces are
drawn with OpenCV from per-identity parameters (face shape, skin tone, hair colour and style, eyes,
brows, nose, mouth, glasses, beard); gender shifts the odds of some traits (long hair, narrow jaw,
beard) without deciding them. Each clean image adds per-image jitter (pose, scale, lighting,
background, clothing) that is smaller than the differences between identities. Task B distortions
are the real FACECOM ones from common.distortions.

Layout (as in the hackathon release)::

    Task_A/{train,val}/{male,female}/<identity>_NNNN.jpg      (byte copies of Task B clean files)
    Task_B/{train,val}/<identity>/<identity>_NNNN.jpg
    Task_B/{train,val}/<identity>/distortion/<identity>_NNNN_<distortion>.jpg
    sample.json                                               (generator version + seed stamp)

Train and val identities are disjoint, male:female is 4:1 in each split (FACECOM: 3.9:1 train,
3:1 val), and identities have 1-3 clean images, like FACECOM's long tail of single-image people.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np

from common import workspace
from common.distortions import DISTORTIONS, apply_distortion

__all__ = [
    "SAMPLE_VERSION", "STAMP_NAME", "IMAGE_SIZE", "JPEG_QUALITY", "N_IDENTITIES",
    "FEMALE_FRACTION", "IMAGES_PER_IDENTITY", "create_sample", "ensure_sample", "render_face",
]

SAMPLE_VERSION = 2  # bump whenever the renderer or layout changes: ensure_sample() regenerates
STAMP_NAME = "sample.json"
IMAGE_SIZE = 112
JPEG_QUALITY = 90
N_IDENTITIES = {"train": 60, "val": 45}
FEMALE_FRACTION = 0.2  # 4:1 male:female, FACECOM's ratio
IMAGES_PER_IDENTITY = ((1, 2, 3), (0.3, 0.4, 0.3))  # (counts, probabilities)

_SKIN = np.array([[235, 200, 175], [220, 180, 150], [200, 155, 120], [170, 120, 90],
                  [135, 95, 65], [95, 65, 45]], np.float32)
_HAIR = np.array([[25, 20, 18], [60, 40, 25], [110, 75, 40], [190, 160, 100], [150, 70, 35],
                  [160, 160, 160]], np.float32)
_HAIR_P = (0.35, 0.3, 0.12, 0.1, 0.05, 0.08)  # dark hair is the most common
_IRIS = np.array([[60, 40, 20], [90, 60, 30], [60, 100, 150], [70, 110, 70]], np.float32)


def _identity_params(rng: np.random.Generator, female: bool) -> dict:
    """Draw the traits that make one synthetic person recognisable across photos."""
    long_hair = rng.random() < (0.85 if female else 0.08)
    bald = not female and rng.random() < 0.12
    return {
        "female": female,
        "face_w": rng.normal(22.0 if female else 26.5, 1.6),
        "face_h": rng.normal(31.0, 1.8),
        "jaw": float(np.clip(rng.normal(0.25 if female else 0.75, 0.2), 0, 1)),
        "skin": np.clip(_SKIN[rng.integers(len(_SKIN))] + rng.normal(0, 8, 3), 0, 255),
        "hair": np.clip(_HAIR[rng.choice(len(_HAIR), p=_HAIR_P)] + rng.normal(0, 10, 3), 0, 255),
        "clothes": rng.uniform(20, 230, 3),
        "long_hair": long_hair,
        "hair_len": rng.uniform(92, 112) if long_hair else 0.0,
        "hairline": rng.uniform(0.35, 0.75) * (0.3 if bald else 1.0),
        "hair_volume": rng.uniform(1.0, 5.0),
        "parting": rng.uniform(-0.6, 0.6),
        "eye_dx": rng.uniform(9.0, 12.5),
        "eye_y": rng.uniform(-0.12, 0.05),
        "eye_r": rng.uniform(2.2, 3.4) + (0.4 if female else 0.0),
        "iris": _IRIS[rng.integers(len(_IRIS))],
        "brow_t": int(rng.integers(1, 3) if female else rng.integers(2, 4)),
        "brow_tilt": rng.uniform(-2.0, 2.5),
        "nose_len": rng.uniform(7.0, 13.0),
        "nose_w": rng.uniform(2.5, 5.0),
        "mouth_w": rng.uniform(6.5, 11.0),
        "mouth_y": rng.uniform(0.45, 0.62),
        "lips": np.array([185, 60, 80], np.float32) if female and rng.random() < 0.6 else None,
        "beard": (not female) and rng.random() < 0.4,
        "moustache": (not female) and rng.random() < 0.3,
        "glasses": rng.random() < 0.15,
    }


def _c(color: np.ndarray) -> tuple[int, int, int]:
    return tuple(int(v) for v in np.clip(color, 0, 255))


def render_face(params: dict, rng: np.random.Generator, size: int = IMAGE_SIZE) -> np.ndarray:
    """Render one photo of the person `params` describes, with fresh per-photo jitter.

    Drawing happens on a 2x canvas with anti-aliased primitives and is then downscaled, which
    gives the soft edges of a photo rather than hard-edged clip art.

    Returns:
        RGB uint8 array (size, size, 3).
    """
    s = 2.0 * size / 112.0  # pixels per canonical unit on the 2x canvas
    n = 2 * size
    p = params

    def pt(x: float, y: float) -> tuple[int, int]:
        return int(round((56 + x) * s)), int(round((54 + y) * s))

    def ax(a: float, b: float) -> tuple[int, int]:
        return max(1, int(round(a * s))), max(1, int(round(b * s)))

    # Background: per-photo colour gradient (LFW backgrounds change from photo to photo).
    top = rng.uniform(100, 210) + rng.uniform(-25, 25, 3)
    bottom = top + rng.uniform(-40, 40) + rng.uniform(-10, 10, 3)
    ramp = np.linspace(0, 1, n, dtype=np.float32)[:, None, None]
    img = np.ascontiguousarray(np.broadcast_to(top * (1 - ramp) + bottom * ramp, (n, n, 3)))
    img = img.astype(np.float32)
    fw, fh, skin, hair = p["face_w"], p["face_h"], p["skin"], p["hair"]
    shade = skin * 0.82
    if p["long_hair"]:
        cv2.ellipse(img, pt(0, -4), ax(fw + 8, p["hair_len"] - 40), 0, 0, 360, _c(hair), -1,
                    cv2.LINE_AA)
        cv2.rectangle(img, pt(-fw - 8, 0), pt(fw + 8, p["hair_len"] - 46), _c(hair), -1)
    cv2.ellipse(img, pt(0, 72), ax(46, 22), 0, 0, 360, _c(p["clothes"] + rng.normal(0, 15, 3)),
                -1, cv2.LINE_AA)  # clothes: a favourite colour, shifted per photo
    cv2.rectangle(img, pt(-fw * 0.45, 10), pt(fw * 0.45, 52), _c(shade), -1)  # neck
    if not p["long_hair"]:
        for side in (-1, 1):
            cv2.ellipse(img, pt(side * fw, 0), ax(3.5, 6.5), 0, 0, 360, _c(shade), -1, cv2.LINE_AA)
    cv2.ellipse(img, pt(0, 0), ax(fw, fh), 0, 0, 360, _c(skin), -1, cv2.LINE_AA)
    jaw = p["jaw"]
    cv2.fillConvexPoly(img, np.array([pt(-fw * 0.93, fh * 0.1), pt(fw * 0.93, fh * 0.1),
                                      pt(fw * (0.35 + 0.4 * jaw), fh * (0.8 + 0.12 * jaw)),
                                      pt(-fw * (0.35 + 0.4 * jaw), fh * (0.8 + 0.12 * jaw))]),
                       _c(skin), cv2.LINE_AA)
    # Hair cap: an ellipse over the crown, clipped at the hairline, with a side parting.
    cap = ax(fw + p["hair_volume"], fh * (0.55 + 0.45 * p["hairline"]) + p["hair_volume"])
    cv2.ellipse(img, pt(p["parting"] * 3, -fh * 0.25), cap, p["parting"] * 8, 180, 360,
                _c(hair), -1, cv2.LINE_AA)
    if p["hairline"] > 0.2:
        cv2.ellipse(img, pt(0, -fh * 0.28), ax(fw + 1, fh * 0.45 * p["hairline"]), 0, 180, 360,
                    _c(hair), -1, cv2.LINE_AA)
    if p["beard"]:
        cv2.ellipse(img, pt(0, fh * 0.35), ax(fw * 0.85, fh * 0.6), 0, 0, 180, _c(hair), -1,
                    cv2.LINE_AA)
    eye_y = fh * p["eye_y"]
    gaze = rng.uniform(-0.6, 0.6)
    for side in (-1, 1):
        ex = side * p["eye_dx"]
        cv2.ellipse(img, pt(ex, eye_y), ax(p["eye_r"] * 1.7, p["eye_r"]), 0, 0, 360,
                    (245, 245, 240), -1, cv2.LINE_AA)
        cv2.circle(img, pt(ex + gaze, eye_y), ax(p["eye_r"] * 0.8, 0)[0], _c(p["iris"]), -1,
                   cv2.LINE_AA)
        cv2.circle(img, pt(ex + gaze, eye_y), ax(p["eye_r"] * 0.35, 0)[0], (10, 10, 10), -1,
                   cv2.LINE_AA)
        brow_y = eye_y - p["eye_r"] - 3.0
        cv2.line(img, pt(ex - side * 4.5, brow_y + p["brow_tilt"] * 0.5),
                 pt(ex + side * 4.5, brow_y - p["brow_tilt"] * 0.5), _c(hair * 0.9),
                 max(1, int(p["brow_t"] * s / 1.5)), cv2.LINE_AA)
        if p["glasses"]:
            cv2.circle(img, pt(ex, eye_y), ax(p["eye_r"] * 2.3 + 1, 0)[0], (30, 30, 30),
                       max(1, int(s)), cv2.LINE_AA)
    if p["glasses"]:
        cv2.line(img, pt(-p["eye_dx"] + p["eye_r"] * 2.3, eye_y),
                 pt(p["eye_dx"] - p["eye_r"] * 2.3, eye_y), (30, 30, 30), max(1, int(s)))
    nose_top, nose_bot = eye_y + 2, eye_y + 2 + p["nose_len"]
    cv2.line(img, pt(0.5, nose_top), pt(1.2, nose_bot), _c(shade * 0.9), max(1, int(s)),
             cv2.LINE_AA)
    cv2.ellipse(img, pt(0, nose_bot), ax(p["nose_w"], 1.6), 0, 0, 180, _c(shade * 0.75),
                max(1, int(s)), cv2.LINE_AA)
    mouth_y = fh * p["mouth_y"]
    lips = p["lips"] if p["lips"] is not None else skin * 0.6 + np.array([40, 0, 0])
    smile = rng.uniform(0.5, 3.0)
    cv2.ellipse(img, pt(0, mouth_y), ax(p["mouth_w"], smile), 0, 0, 180, _c(lips),
                max(1, int(1.3 * s)), cv2.LINE_AA)
    if p["moustache"]:
        cv2.ellipse(img, pt(0, mouth_y - 2.5), ax(p["mouth_w"] * 0.9, 2.0), 0, 180, 360,
                    _c(hair), -1, cv2.LINE_AA)
    # Per-photo pose (rotation, scale, shift) and lighting (gain + directional gradient).
    warp = cv2.getRotationMatrix2D((n / 2, n / 2), rng.uniform(-7, 7), rng.uniform(0.94, 1.06))
    warp[:, 2] += rng.uniform(-3.5, 3.5, 2) * s
    img = cv2.warpAffine(img, warp, (n, n), flags=cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REFLECT_101)
    yy, xx = np.mgrid[-1:1:n * 1j, -1:1:n * 1j].astype(np.float32)
    gain = rng.uniform(0.85, 1.1) + rng.uniform(-0.15, 0.15) * xx + rng.uniform(-0.1, 0.1) * yy
    img = img * gain[..., None] * rng.uniform(0.95, 1.05, 3)
    img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
    img += rng.normal(0, rng.uniform(1.0, 4.0), img.shape)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def _encode(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError("OpenCV could not JPEG-encode a sample image; check the cv2 install")
    return buf.tobytes()


def _write_split(root: Path, split: str, n_ids: int, first_index: int, seed: int) -> None:
    """Write one split's identities into Task_A and Task_B; every file is seeded by identity."""
    n_female = round(n_ids * FEMALE_FRACTION)
    order = np.random.default_rng([seed, first_index]).permutation(n_ids)
    counts, probs = IMAGES_PER_IDENTITY
    for gender in ("male", "female"):
        (root / "Task_A" / split / gender).mkdir(parents=True, exist_ok=True)
    for k in range(n_ids):
        index = first_index + k
        rng = np.random.default_rng([seed, 1000 + index])
        female = bool(order[k] < n_female)
        identity = f"person_{index:03d}"
        params = _identity_params(rng, female)
        folder = root / "Task_B" / split / identity
        (folder / "distortion").mkdir(parents=True)
        gender_dir = root / "Task_A" / split / ("female" if female else "male")
        for number in range(1, int(rng.choice(counts, p=probs)) + 1):
            stem = f"{identity}_{number:04d}"
            image = render_face(params, rng)
            data = _encode(image)
            (folder / f"{stem}.jpg").write_bytes(data)
            (gender_dir / f"{stem}.jpg").write_bytes(data)
            clean = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR),
                                 cv2.COLOR_BGR2RGB)  # distort the stored JPEG, as FACECOM did
            for name in DISTORTIONS:
                distorted = apply_distortion(clean, name, seed=int(rng.integers(2**31 - 1)))
                (folder / "distortion" / f"{stem}_{name}.jpg").write_bytes(_encode(distorted))


def _stamp(seed: int, identities: dict[str, int]) -> dict:
    return {"generator": "common.sample", "version": SAMPLE_VERSION, "seed": int(seed),
            "identities": dict(identities), "image_size": IMAGE_SIZE}


def create_sample(root: Path | str, seed: int = 0,
                  identities: dict[str, int] | None = None) -> Path:
    """Generate the sample into `root`, replacing an older sample there (~5 s on 2 cores).

    The data is written to a temporary sibling folder and moved into place at the end, so a
    reader never sees half a sample and an interrupted run leaves the old one intact.

    Args:
        root: target folder; must be absent, empty, or hold a previous sample (a STAMP_NAME file).
        seed: same seed, same bytes; a different seed gives different people.
        identities: identities per split, e.g. {"train": 2, "val": 2} for a tiny test sample;
            None = N_IDENTITIES.

    Returns:
        `root` as an absolute Path.

    Raises:
        FileExistsError: `root` holds other files, which this function refuses to delete.
    """
    identities = dict(N_IDENTITIES if identities is None else identities)
    root = Path(root).resolve()
    if root.exists() and any(root.iterdir()) and not (root / STAMP_NAME).exists():
        raise FileExistsError(f"{root} is not empty and holds no {STAMP_NAME}; refusing to "
                              "overwrite it. Pass an empty or new folder for the sample.")
    tmp = root.parent / f".{root.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        first = 0
        for split, n_ids in identities.items():
            _write_split(tmp, split, n_ids, first, seed)
            first += n_ids
        (tmp / STAMP_NAME).write_text(json.dumps(_stamp(seed, identities), indent=2) + "\n")
        if root.exists():
            shutil.rmtree(root)
        os.replace(tmp, root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def ensure_sample(root: Path | str | None = None, seed: int = 0) -> Path:
    """Return the sample folder, generating it when missing or stamped by another version/seed.

    Args:
        root: sample folder; None means ``data/sample`` under the work root (gitignored).
        seed: generator seed recorded in the stamp.
    """
    if root is None:
        root = workspace.data_dir() / "sample"
    root = Path(root).resolve()
    try:
        current = json.loads((root / STAMP_NAME).read_text())
    except (OSError, ValueError):
        current = None
    if current != _stamp(seed, N_IDENTITIES):
        create_sample(root, seed=seed)
    return root
