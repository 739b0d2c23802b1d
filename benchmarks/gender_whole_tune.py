"""Gender through glare: the probe's whole-image network frozen or fine-tuned (issue 20, Task A).

Notebook 01's probe answers the rows where dlib finds no face (mostly sunny copies) from the
whole image. This builds and fits the probe as the notebook does (`task_a.prepare_data`,
`create_classifier`, `train_classifier`; its settings and splits, seed 0) twice:

- ``context_epochs=0``: a logistic regression on frozen ImageNet EfficientNet-Lite0 features,
  trained on every train view (the recipe before the fine-tuning);
- ``context_epochs=--epochs``: that network fine-tuned end to end with a linear gender head on
  the train views where dlib found no face (`common.gender_tuning`), the epoch with the best
  accuracy on dev's faceless views kept.

Each row's threshold is chosen on dev's clean photos, as notebook 01 does; the holdout is
scored once at the end.

    python benchmarks/gender_whole_tune.py --data-dir ../shared/data/facecom --work-root W

Writes ``benchmarks/results/gender_whole_tune.md``. Needs the extras of requirements-extras.txt.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.gender_features import write_tables  # noqa: E402
from benchmarks.real_data import arguments  # noqa: E402
from common import experiment, task_a  # noqa: E402
from common.config import configure_threads  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "gender_whole_tune.md"


def probe_probs(args, context_epochs: int) -> tuple[dict, tuple, list[dict], float]:
    """Notebook 01's probe with `context_epochs`: P(female) of dev and the evaluated split, the
    splits' frames and rows without a face, its fit history and the fit's seconds."""
    cfg = experiment.ExperimentConfig.resolve(
        task_a.Settings, data_dir=str(args.data_dir), work_root=str(args.work_root),
        seed=args.seed, context_epochs=context_epochs,
        output_dir=str(args.work_root / f"runs_gender_whole_tune_{context_epochs}"))
    task_data = task_a.prepare_data(cfg, stream=cfg.task.stream)
    net = task_a.create_classifier(cfg, cfg.task.model)
    started = time.time()
    result = task_a.train_classifier(net, task_data, cfg, None, "gender_whole_tune",
                                     dev_views=cfg.task.dev_views)
    seconds = time.time() - started
    splits = task_data.splits
    frames = {"train": splits.train, "dev": splits.dev, "eval": splits.eval}
    faceless = {split: int((~net.split_rows(rows)[1]).sum())
                for split, rows in task_data.images.items()}
    return ({split: task_a.predict_probs(net, task_data.images[split], cfg.image_size)
             for split in ("dev", "eval")}, (splits, frames, faceless), result.history, seconds)


def main() -> None:
    parser = arguments(__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    configure_threads(torch.device("cpu"))
    frozen, (splits, frames, faceless), _, frozen_seconds = probe_probs(args, 0)
    tuned, _, history, tuned_seconds = probe_probs(args, args.epochs)
    accuracy = ", ".join(f"{row['dev_faceless_accuracy']:.4f}" for row in history
                         if "dev_faceless_accuracy" in row)
    write_tables(RESULTS, [
        "# Gender through glare: the whole-image network frozen or fine-tuned (issue 20, Task A)",
        "", f"`python benchmarks/gender_whole_tune.py --data-dir ../shared/data/facecom "
        f"--work-root W --epochs {args.epochs}` (seed {args.seed}; notebook 01's settings and "
        "splits). The rows where dlib found no face: "
        + ", ".join(f"{split} {faceless[split]} of {len(frames[split])}" for split in frames)
        + f". The probe's fit took {frozen_seconds:.0f} s frozen and {tuned_seconds:.0f} s "
        f"fine-tuned here; dev's faceless accuracy per tuning epoch: {accuracy} (the best is "
        "kept). Accuracy at a threshold chosen on dev's clean photos.", ""],
        splits, frames, {"frozen ImageNet features where dlib finds no face (context_epochs=0)":
                         frozen,
                         f"the network fine-tuned on the faceless train views "
                         f"(context_epochs={args.epochs})": tuned})


if __name__ == "__main__":
    main()
