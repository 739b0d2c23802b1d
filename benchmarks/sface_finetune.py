"""Does SFace, fine-tuned on FACECOM's train identities and their distorted copies, make a better
identity channel than the off-the-shelf `robust+sface` descriptor? (issue 20)

The splits are notebook 02's (seed, fractions and image settings of a trained checkpoint's run,
as in `benchmarks/copy_switch.py`). Every row gets the 112 px face crop SFace reads
(`sface_net.face_crops`, from the image itself, as at query time) and SFace is fine-tuned with
notebook 02's recipe (`identity_training.fine_tune`: the layers up to `sface_net.CUT` frozen,
the last stage and the head trained with ArcFace over the train identities, the epoch with the
best dev top-1 with the own photo removed kept). **Only dev chooses**; the evaluated split is
scored once at the end.

Reported per split: top-1 (official and own photo removed, and per distortion) of zero-shot SFace,
fine-tuned SFace and `robust+sface`, and of the copy-or-identity switch (`fusion.CopySwitch`,
fitted on dev) with the checkpoint's learned embedding as the copy channel and each identity
channel; a paired (McNemar) test of the fine-tuned against `robust+sface` on the evaluated split.

    python benchmarks/sface_finetune.py --data-dir ../shared/data/facecom --work-root W \\
        --checkpoint W/weights/task_b_embedding_efficientnet_lite0.pt

Needs the extras of requirements-extras.txt (``onnx2torch`` among them).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import binomtest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import (checkpoints, evaluation, experiment, face_descriptor,  # noqa: E402
                    identity_training, metrics, sface_net, task_b)
from common.distortions import DISTORTIONS  # noqa: E402

def top1(frame: pd.DataFrame, vectors: np.ndarray, exclude_own_source: bool) -> dict:
    return metrics.summarize_retrieval(evaluation.retrieval_table(
        frame, face_descriptor.normalise(vectors), exclude_own_source=exclude_own_source))


def row(channel: str, split: str, official: dict, hard: dict) -> dict:
    return {"channel": channel, "split": split, "top1": official["top1"],
            "top1 own photo removed": hard["top1"],
            **{name: hard["top1_by_distortion"][name] for name in DISTORTIONS}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--work-root", type=Path, required=True,
                        help="the work root the checkpoint was trained in (its caches)")
    parser.add_argument("--checkpoint", type=Path, required=True,
                        help="notebook 02's checkpoint: its splits, and its copy channel")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    times: dict[str, float] = {}
    began = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal began
        times[name] = round(time.perf_counter() - began, 1)
        print(f"[{name}: {times[name]} s]", flush=True)
        began = time.perf_counter()

    model, card = checkpoints.load_model(args.checkpoint)
    cfg = experiment.ExperimentConfig.resolve(
        task_b.ArcFaceSettings, data_dir=str(args.data_dir), work_root=str(args.work_root),
        seed=args.seed, output_dir=str(args.work_root / "runs_sface_finetune"),
        image_size=card.image_size, fit=card.fit)
    task_data = task_b.prepare_data(cfg)
    splits = task_data.splits
    frames = {"train": splits.train, "dev": splits.dev, "eval": splits.eval}
    task_data.splits.verify()
    crops = {name: sface_net.face_crops(frame["path"].tolist(), progress=True)[0]
             for name, frame in frames.items()}
    lap("crops (YuNet + alignment)")

    sface = sface_net.SFaceIdentity()
    features = {name: sface_net.frozen_features(sface, crops[name]) for name in ("dev", "eval")}
    channels = {"zero-shot SFace": {name: sface_net.tail_vectors(sface, value)
                                    for name, value in features.items()}}
    settings = identity_training.TuneSettings()
    fitted = identity_training.fine_tune(
        sface, crops["train"], task_data.train.labels, features["dev"],
        identity_training.dev_top1_hard(frames["dev"]), settings, args.seed)
    history = fitted.history
    channels["fine-tuned SFace"] = {name: sface_net.tail_vectors(sface, value)
                                    for name, value in features.items()}
    lap(f"frozen layers once per crop, fine-tuning ({settings.epochs} epochs, best dev epoch "
        "kept)")
    channels["robust+sface"] = {
        name: face_descriptor.cached_descriptors(frames[name]["path"].tolist(), "robust+sface",
                                                 progress=False)[0] for name in ("dev", "eval")}
    copy_channel = {name: task_b.embed_array(model, task_data.images[name], card.image_size,
                                             card.mean, card.std) for name in ("dev", "eval")}
    rows, hard_tables = [], {}
    for channel, vectors in channels.items():
        unit = {name: face_descriptor.normalise(value) for name, value in vectors.items()}
        for name in ("dev", "eval"):
            rows.append(row(channel, name, top1(frames[name], unit[name], False),
                            top1(frames[name], unit[name], True)))
        switch = evaluation.switch_report(frames["dev"], copy_channel["dev"], unit["dev"],
                                          frames["eval"], copy_channel["eval"], unit["eval"])
        on_dev = evaluation.switched_report(frames["dev"], copy_channel["dev"], unit["dev"],
                                            switch.switch)
        rows += [row(f"switch: copy + {channel}", "dev", on_dev.eval, on_dev.hard),
                 row(f"switch: copy + {channel}", "eval", switch.eval, switch.hard)]
        hard_tables[channel] = (evaluation.retrieval_table(frames["eval"], unit["eval"],
                                                           exclude_own_source=True),
                                switch.tables["hard"])
    lap("evaluation")
    table = pd.DataFrame(rows).replace({"split": {"eval": splits.eval_name}})
    print(f"\nfine-tuning history (dev only): {history}\n")
    print(table.to_markdown(index=False, floatfmt=".4f"))
    print(f"\n{splits.eval_name}, own photo removed, fine-tuned SFace against robust+sface "
          "(queries only one of the two gets right; exact McNemar p):")
    for position, what in enumerate(("channel alone", "inside the switch")):
        first = hard_tables["fine-tuned SFace"][position]["correct"].to_numpy()
        second = hard_tables["robust+sface"][position]["correct"].to_numpy()
        wins, losses = int((first & ~second).sum()), int((~first & second).sum())
        print(f"- {what}: {wins} vs {losses} of {len(first)}, "
              f"p = {binomtest(wins, wins + losses).pvalue if wins + losses else 1.0:.3f}")
    print(f"\nseconds: {times}")


if __name__ == "__main__":
    main()
