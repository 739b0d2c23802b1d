"""Does SFace, fine-tuned on FACECOM's train identities and their distorted copies, make a better
identity channel than the off-the-shelf `robust+sface` descriptor? (issue 20)

The splits are notebook 02's (seed, fractions and image settings of a trained checkpoint's run,
as in `benchmarks/copy_switch.py`). Every row gets the 112 px face crop SFace reads
(`face_descriptor.sface_crop`, from the image itself, as at query time). OpenCV-zoo's SFace ONNX
becomes a torch module (``onnx2torch``, its PReLU slopes made trainable); its layers up to
`CUT` stay frozen and their output is computed once (fp16, mirrored train crops too), and the
last convolution stage and the head are trained with ArcFace over the train identities, one
model per epoch kept when the dev top-1 with the own photo removed improves. **Only dev
chooses**; the evaluated split is scored once at the end.

Reported per split: top-1 (official and own photo removed, and per distortion) of zero-shot SFace,
fine-tuned SFace and `robust+sface`, and of the copy-or-identity switch (`fusion.CopySwitch`,
fitted on dev) with the checkpoint's learned embedding as the copy channel and each identity
channel; a paired (McNemar) test of the fine-tuned against `robust+sface` on the evaluated split.

    python benchmarks/sface_finetune.py --data-dir ../shared/data/facecom --work-root W \\
        --checkpoint W/weights/task_b_embedding_efficientnet_lite0.pt --cache /tmp/sface_finetune

Needs ``pip install onnx2torch`` (and the extras of requirements-extras.txt).
"""
from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.fx as fx
import torch.nn.functional as F
from scipy.stats import binomtest
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import (checkpoints, data, evaluation, experiment, face_descriptor,  # noqa: E402
                    metrics, task_b)
from common.distortions import DISTORTIONS  # noqa: E402
from common.losses import ArcMarginProduct  # noqa: E402

CUT = "conv_13_relu"  # frozen: input .. this node (1024 x 7 x 7); trained: conv_14 + head
EPOCHS, LR, BATCH, WEIGHT_DECAY = 5, 1e-4, 128, 5e-4
ARC_S, ARC_M = 30.0, 0.5
CENTRE_LR_FACTOR = 10.0  # the ArcFace centres, started at the class means, learn faster


def sface_torch() -> fx.GraphModule:
    """SFace as a torch module (eval mode), equal to onnxruntime's output to about 3e-6.
    onnx2torch keeps PReLU slopes as buffers; each becomes a trainable `nn.PReLU`."""
    try:
        from onnx2torch import convert
    except ImportError as error:
        raise SystemExit("this benchmark converts SFace with onnx2torch: pip install onnx2torch"
                         ) from error

    model = convert(str(face_descriptor.sface_file(face_descriptor.SFACE_ONNX)))
    for node in list(model.graph.nodes):
        if (node.op == "call_module"
                and type(model.get_submodule(node.target)).__name__ == "OnnxPReLU"):
            value, slope = node.args
            prelu = nn.PReLU(model.get_buffer(slope.target).numel())
            prelu.weight.data.copy_(model.get_buffer(slope.target).detach().reshape(-1))
            setattr(model, node.target, prelu)
            node.args = (value,)
            if not slope.users:
                model.graph.erase_node(slope)
    model.graph.lint()
    model.recompile()
    return model.eval().to(memory_format=torch.channels_last)


def split_at(model: fx.GraphModule, cut: str) -> tuple[fx.GraphModule, fx.GraphModule]:
    """(input -> node `cut`, node `cut`'s value -> output), sharing `model`'s modules."""
    nodes = list(model.graph.nodes)
    at = next(node for node in nodes if node.name == cut)
    first, second = fx.Graph(), fx.Graph()
    env: dict = {}
    for node in nodes[:nodes.index(at) + 1]:
        env[node] = first.node_copy(node, lambda arg: env[arg])
    first.output(env[at])
    env = {at: second.placeholder("features")}
    for node in nodes[nodes.index(at) + 1:]:
        env[node] = second.node_copy(node, lambda arg: env[arg])
    parts = (fx.GraphModule(model, first), fx.GraphModule(model, second))
    for part in parts:
        part.graph.eliminate_dead_code()
        part.delete_all_unused_submodules()
        part.recompile()
    return parts


@torch.no_grad()
def run(module: nn.Module, rows, batch: int = 128, half: bool = False) -> torch.Tensor:
    """`module` over `rows` in batches: uint8 RGB crops (N, 112, 112, 3) or cached features."""
    out = []
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        if isinstance(chunk, np.ndarray):  # crops: SFace reads 0..255 RGB, NCHW
            chunk = torch.from_numpy(chunk).permute(0, 3, 1, 2).float().contiguous(
                memory_format=torch.channels_last)
        value = module(chunk.float())
        out.append(value.half() if half else value)
    return torch.cat(out)


def crops_of(frame: pd.DataFrame, cache: Path, name: str) -> np.ndarray:
    """SFace's crop (RGB) of every row, cached as ``crops_<name>.npy``."""
    path = cache / f"crops_{name}.npy"
    if path.exists():
        return np.load(path)
    models = face_descriptor.sface_models()
    crops = np.stack([face_descriptor.sface_crop(models, data.load_image(p))[0][:, :, ::-1]
                      for p in frame["path"]])
    np.save(path, crops)
    return crops


def fine_tune(tail: nn.Module, train: dict, labels: torch.Tensor, dev_features: torch.Tensor,
              dev: pd.DataFrame, seed: int) -> tuple[dict, list[dict]]:
    """ArcFace over the train identities on the frozen part's features (a mirrored crop half
    of the time); the state of the epoch with the best dev own-photo-removed top-1."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    classes = int(labels.max()) + 1
    arc = ArcMarginProduct(128, classes, s=ARC_S, m=ARC_M)
    start = F.normalize(run(tail.eval(), train["plain"], 256))
    arc.weight.data.copy_(F.normalize(torch.zeros(classes, 128).index_add_(0, labels, start)))
    optimizer = torch.optim.AdamW([{"params": tail.parameters(), "lr": LR},
                                   {"params": arc.parameters(), "lr": LR * CENTRE_LR_FACTOR}],
                                  weight_decay=WEIGHT_DECAY)
    steps = EPOCHS * math.ceil(len(labels) / BATCH)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))

    def dev_top1_hard() -> float:
        vectors = F.normalize(run(tail.eval(), dev_features, 256)).numpy()
        return top1(dev, vectors, True)["top1"]

    history = [{"epoch": 0, "dev_top1_hard": dev_top1_hard()}]
    best = (history[0]["dev_top1_hard"], copy.deepcopy(tail.state_dict()))
    for epoch in range(1, EPOCHS + 1):
        began, total = time.perf_counter(), 0.0
        tail.train()
        order, mirrored = rng.permutation(len(labels)), rng.random(len(labels)) < 0.5
        for first in range(0, len(labels), BATCH):
            index = torch.from_numpy(order[first:first + BATCH])
            flip = torch.from_numpy(mirrored[order[first:first + BATCH]])[:, None, None, None]
            batch = torch.where(flip, train["mirrored"][index], train["plain"][index]).float()
            loss = F.cross_entropy(arc(tail(batch), labels[index]), labels[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(index)
        history.append({"epoch": epoch, "loss": total / len(labels),
                        "dev_top1_hard": dev_top1_hard(),
                        "seconds": round(time.perf_counter() - began, 1)})
        print(history[-1], flush=True)
        if history[-1]["dev_top1_hard"] > best[0]:
            best = (history[-1]["dev_top1_hard"], copy.deepcopy(tail.state_dict()))
    return best[1], history


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
    parser.add_argument("--cache", type=Path, required=True, help="crops and features go here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    args.cache.mkdir(parents=True, exist_ok=True)
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
        seed=args.seed, output_dir=str(args.cache / "run"), image_size=card.image_size,
        fit=card.fit)
    task_data = task_b.prepare_data(cfg)
    splits = task_data.splits
    frames = {"train": splits.train, "dev": splits.dev, "eval": splits.eval}
    task_data.splits.verify()
    crops = {name: crops_of(frame, args.cache, name) for name, frame in frames.items()}
    lap("crops (YuNet + alignment)")

    whole = sface_torch()
    frozen, tail = split_at(whole, CUT)
    features = {name: run(frozen, crops[name], 64, half=True) for name in ("dev", "eval")}
    train = {"plain": run(frozen, crops["train"], 64, half=True),
             "mirrored": run(frozen, np.ascontiguousarray(crops["train"][:, :, ::-1]), 64,
                             half=True)}
    lap("frozen layers, once per crop (fp16)")
    channels = {"zero-shot SFace": {name: run(tail, value, 256).numpy()
                                    for name, value in features.items()}}
    state, history = fine_tune(tail, train, torch.as_tensor(task_data.train.labels),
                               features["dev"], frames["dev"], args.seed)
    tail.load_state_dict(state)
    channels["fine-tuned SFace"] = {name: run(tail.eval(), value, 256).numpy()
                                    for name, value in features.items()}
    lap(f"fine-tuning ({EPOCHS} epochs, best dev epoch kept)")
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
