"""Benchmark the face descriptors per front end (`common.face_descriptor.FRONT_ENDS`).

On every image of a seeded sample of real FACECOM Task_B train identities: images/s on this
machine, how often a face box was found, and gallery top-1 per distortion (the project's protocol,
plus the harder variant without the query's own photo). Prints markdown tables to stdout.

    python benchmarks/descriptor.py --identities 40          # from the project root
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import data, evaluation, face_descriptor, metrics  # noqa: E402 (after sys.path)

DEFAULT_DATA_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "facecom"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR,
                        help="FACECOM root (default: ../shared/data/facecom)")
    parser.add_argument("--identities", type=int, default=40, help="identities in the sample")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not (args.data_dir / "Task_B" / "train").is_dir():
        raise SystemExit(f"No Task_B/train under {args.data_dir}; pass --data-dir pointing at the "
                         "FACECOM root (the folder holding Task_A and Task_B).")
    table = data.read_task_b(args.data_dir, "train")
    names = table["identity"].drop_duplicates().to_numpy()
    keep = np.random.default_rng(args.seed).choice(names, min(args.identities, len(names)),
                                                   replace=False)
    frame = table[table["identity"].isin(set(keep))].reset_index(drop=True)
    print(f"{len(keep)} identities, {len(frame)} images\n")
    speed, found, top1 = [], {}, {}
    for front_end in face_descriptor.FRONT_ENDS:
        start = time.perf_counter()
        raw, hit = face_descriptor.describe(frame["path"].tolist(), front_end, progress=False)
        seconds = time.perf_counter() - start
        speed.append({"front end": front_end, "images/s": len(frame) / seconds})
        found[front_end] = pd.Series(hit).groupby(frame["distortion"]).mean()
        unit = face_descriptor.normalise(raw)
        plain, hard = (metrics.summarize_retrieval(evaluation.retrieval_table(
            frame, unit, exclude_own_source=exclude, seed=args.seed)) for exclude in (False, True))
        top1[front_end] = {"all": plain["top1"], "own photo removed": hard["top1"],
                           **plain["top1_by_distortion"]}
    print(pd.DataFrame(speed).to_markdown(index=False, floatfmt=".1f"), "\n")
    print("Face found (else dlib: the whole image; SFace: the typical face position)\n")
    print(pd.DataFrame(found).T.to_markdown(floatfmt=".3f"), "\n")
    print("Gallery top-1\n")
    print(pd.DataFrame(top1).T.to_markdown(floatfmt=".3f"))


if __name__ == "__main__":
    main()
