"""The copy switch's dev fit timed at one commit or several, with its outputs compared:
`evaluation.choose_whole_share`, the call notebooks 02 and 03 make (one `evaluation.fit_switch`
per candidate share of the glare network: the identity shares, then the switch thresholds).

The dev split is synthetic, of the size of notebook 02's (``--identities`` people with two or
three clean photos each, seven distorted copies of every photo) and of its channels' widths: a
copy channel that knows the photo and a little of the person, a face channel that knows the
person, a whole-image channel, and faces not found on most sunny copies. Each commit runs in its
own process on a `git archive` of its ``common/`` (`benchmarks.at_commit`); a digest of every
output (the shares' table, the chosen switch, its candidates) shows whether the commits agree.
Prints a markdown table.

    python benchmarks/switch_fit.py --commits 14529b6 HEAD
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.at_commit import run_commit  # noqa: E402

DISTORTIONS = ("blurred", "foggy", "lowlight", "noisy", "rainy", "resized", "sunny")
WIDTHS = {"copy": 640, "face": 256, "whole": 1280}  # the channels' widths in notebook 02


def dev_split(identities: int, seed: int):
    """(table, copy, face, whole, found) of a synthetic dev split."""
    from common import evaluation  # the measured commit's, once `--one` put its tree first

    rng = np.random.default_rng(seed)
    rows = []
    for person in range(identities):
        for photo in range(2 + person % 2):
            clean = f"p{person:04d}/{photo}.jpg"
            rows += [(clean, f"p{person:04d}", "clean", "")] + [
                (f"p{person:04d}/{photo}_{name}.jpg", f"p{person:04d}", name, clean)
                for name in DISTORTIONS]
    frame = pd.DataFrame(rows, columns=["path", "identity", "distortion", "source"])
    person = pd.factorize(frame["identity"])[0]
    photo = pd.factorize(evaluation.photo_keys(frame))[0]
    sunny = (frame["distortion"] == "sunny").to_numpy()

    def channel(width: int, signal: list[tuple[np.ndarray, float]], noise: float) -> np.ndarray:
        codes = rng.normal(size=(max(int(c.max()) for c, _ in signal) + 1, width))
        x = sum(weight * codes[c] for c, weight in signal) + rng.normal(
            0, noise, (len(frame), width))
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    copy = channel(WIDTHS["copy"], [(photo, 1.0), (person, 0.3)], 0.8)
    face = channel(WIDTHS["face"], [(person, 1.0)], 1.2)
    face[sunny] = channel(WIDTHS["face"], [(photo, 0.2)], 1.0)[sunny]  # glare: little face left
    whole = channel(WIDTHS["whole"], [(person, 0.5)], 1.0)
    found = ~sunny | (rng.random(len(frame)) < 0.2)
    return frame, copy, face, whole, found


def measure(identities: int, seed: int) -> dict:
    """Seconds of one `choose_whole_share` and a digest of its outputs, with `common` as
    imported."""
    from common import evaluation

    frame, copy, face, whole, found = dev_split(identities, seed)
    start = time.perf_counter()
    share, table, (switch, candidates, shares) = evaluation.choose_whole_share(
        frame, copy, face, whole, found)
    seconds = time.perf_counter() - start
    text = "\n".join([str(share), table.to_csv(), repr(switch), candidates.to_csv(),
                      shares.to_csv()])
    return {"seconds": seconds, "digest": hashlib.sha256(text.encode()).hexdigest()[:12],
            "rows": len(frame), "candidates": len(candidates), "shares": len(shares),
            "whole_share": share, "dev_top1_hard": float(table["dev_top1_hard"].max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--identities", type=int, default=130)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--commits", nargs="+", default=["HEAD"])
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a tree holding common/: JSON out
    args = parser.parse_args()
    if args.one:
        sys.path.insert(0, args.one)
        print(json.dumps(measure(args.identities, args.seed)))
        return
    options = ["--identities", str(args.identities), "--seed", str(args.seed)]
    results = {commit: run_commit(commit, __file__, options) for commit in args.commits}
    first = next(iter(results.values()))
    print(f"synthetic dev split: {first['rows']:,} images of {args.identities} identities; "
          f"{first['shares']} identity shares and {first['candidates']:,} switch candidates "
          "per fit, one fit per whole-image share\n")
    print("| commit | seconds | whole share chosen | its dev top-1, own photo removed | "
          "output digest |")
    print("|---|---|---|---|---|")
    for commit, result in results.items():
        print(f"| {commit} | {result['seconds']:.1f} | {result['whole_share']} | "
              f"{result['dev_top1_hard']:.4f} | {result['digest']} |")


if __name__ == "__main__":
    main()
