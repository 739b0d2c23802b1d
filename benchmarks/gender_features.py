"""Which face features carry gender through FACECOM's distortions? (issue 20, Task A)

Task A's default probe is a logistic regression on dlib's descriptor of the clean train photos; it
loses accuracy on the distorted copies (sunny worst). This measures, on notebook 01's splits
(`task_a.load_views` + `make_splits`, seed 0: train, dev, and the identity-disjoint holdout):

- the probe's features and rows (dlib `robust`, clean train photos), with this script's C
  and scaling;
- the same regression trained on every train view (clean and the seven distortions);
- the regression on dlib's descriptor joined with SFace's frozen layers, average-pooled;
- SFace's tail (`sface_net.CUT` onwards) with a gender head, trained on every train view with a
  class-weighted cross-entropy; the epoch with the best dev mean of clean and distorted accuracy
  is kept.

Regressions pick C on the same dev mean. Each decision threshold is chosen on dev's clean photos,
as notebook 01 does; the holdout is scored once at the end.

    python benchmarks/gender_features.py --data-dir ../shared/data/facecom --work-root W

Writes ``benchmarks/results/gender_features.md``. Needs the extras of requirements-extras.txt.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.real_data import arguments  # noqa: E402
from common import experiment, face_descriptor, metrics, sface_net, task_a  # noqa: E402
from common.config import configure_threads  # noqa: E402
from common.distortions import DISTORTIONS  # noqa: E402
from common.splits import Splits, make_splits  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "gender_features.md"
SPLITS = ("train", "dev", "eval")


def scores(frame: pd.DataFrame, probs: np.ndarray, threshold: float) -> dict:
    """The table's columns from notebook 01's `task_a.evaluate_views`."""
    result = task_a.evaluate_views(frame, probs, threshold)
    return {"clean": result["accuracy"], "distorted": result["accuracy_distorted"],
            "female recall (clean)": result["recall_female"],
            **{name: result["accuracy_by_distortion"][name] for name in DISTORTIONS}}


def clean_threshold(frame: pd.DataFrame, probs: np.ndarray) -> float:
    clean = (frame["distortion"] == "clean").to_numpy()
    return metrics.choose_threshold(frame["label"].to_numpy()[clean], probs[clean])


def regression(frames: dict, features: dict, train_rows: np.ndarray) -> dict:
    """Dev-chosen logistic regression -> probabilities per split."""
    scaler = StandardScaler().fit(features["train"][train_rows])
    x = {split: scaler.transform(features[split]) for split in SPLITS}
    best = None
    for c in (0.01, 0.1, 1.0):
        fitted = LogisticRegression(C=c, class_weight="balanced", max_iter=5000).fit(
            x["train"][train_rows], frames["train"]["label"].to_numpy()[train_rows])
        probs = {split: fitted.predict_proba(x[split])[:, 1] for split in ("dev", "eval")}
        dev = scores(frames["dev"], probs["dev"], clean_threshold(frames["dev"], probs["dev"]))
        if best is None or dev["clean"] + dev["distorted"] > best[0]:
            best = (dev["clean"] + dev["distorted"], probs)
    return best[1]


def gender_tail(frames: dict, frozen: dict, epochs: int, seed: int) -> dict:
    """SFace's tail + a linear gender head trained on every train view -> probabilities."""
    torch.manual_seed(seed)
    model = sface_net.SFaceIdentity()
    tail, head = model.tail, nn.Linear(sface_net.EMBEDDING_DIM, 1)
    optimizer = torch.optim.AdamW([{"params": tail.parameters(), "lr": 1e-4},
                                   {"params": head.parameters(), "lr": 1e-3}], weight_decay=5e-4)
    labels = torch.tensor(frames["train"]["label"].to_numpy(), dtype=torch.float32)
    pos_weight = (labels == 0).sum() / (labels == 1).sum()

    def logits(features: torch.Tensor) -> torch.Tensor:
        return head(F.normalize(tail(features.float())) * 10).squeeze(1)

    @torch.no_grad()
    def probs(split: str) -> np.ndarray:
        tail.eval()
        return torch.cat([torch.sigmoid(logits(frozen[split][start:start + 256]))
                          for start in range(0, len(frozen[split]), 256)]).numpy()

    best = None
    for epoch in range(epochs):
        tail.train()
        order = torch.randperm(len(labels))
        for start in range(0, len(order), 128):
            rows = order[start:start + 128]
            loss = F.binary_cross_entropy_with_logits(logits(frozen["train"][rows]),
                                                      labels[rows], pos_weight=pos_weight)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        dev_probs = probs("dev")
        dev = scores(frames["dev"], dev_probs, clean_threshold(frames["dev"], dev_probs))
        print(f"gender tail epoch {epoch + 1}: dev clean {dev['clean']:.4f} distorted "
              f"{dev['distorted']:.4f}", flush=True)
        if best is None or dev["clean"] + dev["distorted"] > best[0]:
            best = (dev["clean"] + dev["distorted"], dev_probs, probs("eval"))
    return {"dev": best[1], "eval": best[2]}


def add_probe_front_end(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--probe-front-end``: dlib's front end for the probe's rows, the shipped one unless a
    results page was made with an earlier one (its command says which)."""
    parser.add_argument("--probe-front-end", default=task_a.PROBE_FRONT_END,
                        choices=face_descriptor.FRONT_ENDS)
    return parser


def probe_descriptors(args: argparse.Namespace, frames: dict[str, pd.DataFrame]
                      ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """dlib's raw descriptors and face-found flags of each split, by ``--probe-front-end``."""
    return {split: face_descriptor.cached_descriptors(frame["path"].tolist(),
                                                      args.probe_front_end)
            for split, frame in frames.items()}


def notebook_splits(args: argparse.Namespace, run: str) -> tuple[Splits, dict[str, pd.DataFrame]]:
    """Notebook 01's splits of the train views (checked for leakage) and their frames."""
    configure_threads(torch.device("cpu"))
    cfg = experiment.ExperimentConfig.resolve(
        task_a.Settings, data_dir=str(args.data_dir), work_root=str(args.work_root),
        seed=args.seed, output_dir=str(args.work_root / run))
    splits = make_splits(task_a.load_views(cfg.data_dir, "train"), None, cfg)
    splits.verify()
    return splits, {"train": splits.train, "dev": splits.dev, "eval": splits.eval}


def write_tables(path: Path, header: list[str], splits: Splits,
                 frames: dict[str, pd.DataFrame], rows: dict[str, dict]) -> None:
    """One markdown table per split (dev, then the evaluated split, scored once) of every row's
    `scores` at its dev-clean threshold, after `header`; written to `path` and printed."""
    columns = ["clean", "distorted", "female recall (clean)", *DISTORTIONS]
    lines = list(header)
    for split in ("dev", "eval"):
        title = "dev" if split == "dev" else f"{splits.eval_name} (scored once)"
        lines += [f"## {title}", "", "| features | " + " | ".join(columns) + " |",
                  "|---" * (len(columns) + 1) + "|"]
        for name, probs in rows.items():
            threshold = clean_threshold(frames["dev"], probs["dev"])
            values = scores(frames[split], probs[split], threshold)
            lines.append(f"| {name} | " + " | ".join(f"{values[key]:.3f}" for key in columns)
                         + " |")
        lines.append("")
    path.write_text("\n".join(lines))
    print("\n".join(lines))


def main() -> None:
    parser = add_probe_front_end(arguments(__doc__.split("\n\n")[0]))
    parser.add_argument("--epochs", type=int, default=6)
    args = parser.parse_args()
    splits, frames = notebook_splits(args, "runs_gender_features")
    dlib = {split: face_descriptor.normalise(vectors)
            for split, (vectors, _) in probe_descriptors(args, frames).items()}
    model = sface_net.SFaceIdentity()
    frozen = {split: sface_net.frozen_features(
        model, sface_net.face_crops(frame["path"].tolist(), progress=True)[0], desc=split)
        for split, frame in frames.items()}
    pooled = {split: np.concatenate([dlib[split], frozen[split].float().mean(dim=(2, 3)).numpy()],
                                    axis=1) for split in SPLITS}
    every = np.ones(len(frames["train"]), bool)
    rows = {
        "dlib, clean train photos (the probe's rows; C and scaling here)": regression(
            frames, dlib, (frames["train"]["distortion"] == "clean").to_numpy()),
        "dlib, every train view": regression(frames, dlib, every),
        "dlib + SFace frozen layers pooled, every train view": regression(frames, pooled, every),
        "SFace tail + gender head, every train view": gender_tail(frames, frozen, args.epochs,
                                                                  args.seed),
    }
    write_tables(RESULTS, [
        "# Gender through FACECOM's distortions: which features (issue 20, Task A)", "",
        "`python benchmarks/gender_features.py --data-dir ../shared/data/facecom "
        f"--work-root W --epochs {args.epochs} --probe-front-end {args.probe_front_end}` "
        f"(seed {args.seed}; notebook 01's splits: "
        + ", ".join(f"{name} {len(frame)} images" for name, frame in frames.items())
        + "). Accuracy at a threshold chosen on dev's clean photos.", ""],
        splits, frames, rows)


if __name__ == "__main__":
    main()
