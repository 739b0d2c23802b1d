"""Every number of two runs' `metrics.json`, compared to the last digit: the check that a change
which should change no number (a refactor, a faster step) did not.

Both files are flattened to ``dotted.key -> value``; provenance, checkpoint names and wall times
are left out, since they differ between any two runs. Prints how many numbers were compared and
each key that differs (missing on one side included); exits 1 when any does.

    python benchmarks/compare_metrics.py runs/A/02_task_b_arcface/metrics.json runs/B/02_task_b_arcface/metrics.json
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

IGNORED = ("provenance", "checkpoint", "wall_time", "time_s")


def flatten(value: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted key, leaf value)`` of nested dicts and lists, ignored keys left out."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not any(part in key for part in IGNORED):
                yield from flatten(item, f"{prefix}{key}.")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from flatten(item, f"{prefix}{index}.")
    else:
        yield prefix.rstrip("."), value


def differences(first: dict, second: dict) -> tuple[int, list[tuple[str, Any, Any]]]:
    """The number of numeric leaves of `first` and the ``(key, first, second)`` that differ."""
    a, b = dict(flatten(first)), dict(flatten(second))
    numbers = sum(isinstance(v, (int, float)) and not isinstance(v, bool) for v in a.values())
    missing = object()
    differ = [(key, a.get(key, missing), b.get(key, missing)) for key in sorted(set(a) | set(b))
              if a.get(key, missing) != b.get(key, missing)]
    return numbers, [(k, None if x is missing else x, None if y is missing else y)
                     for k, x, y in differ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("first", type=Path)
    parser.add_argument("second", type=Path)
    args = parser.parse_args(argv)
    numbers, differ = differences(*(json.loads(p.read_text()) for p in (args.first, args.second)))
    print(f"{numbers} numbers compared; {len(differ)} differ")
    for key, first, second in differ:
        print(f"  {key}: {first!r} != {second!r}")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
