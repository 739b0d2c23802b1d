"""Run a benchmark script's measurement at another commit: the commit's ``common/`` extracted
from `git archive` into a temporary tree, the script (as it is now) started in a fresh process
with ``--one <tree>`` plus its own options, and the JSON it prints last read back. Comparing
commits this way keeps each one's imports apart and times them in the same conditions.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

PROJECT = Path(__file__).resolve().parents[1]


def run_commit(commit: str, script: str, options: list[str]) -> dict:
    """The JSON that `script` ``--one <tree> *options`` prints last, with `commit`'s
    ``common/`` in the tree."""
    with tempfile.TemporaryDirectory() as tree:
        archive = subprocess.run(["git", "-C", str(PROJECT), "archive", commit, "common"],
                                 check=True, stdout=subprocess.PIPE).stdout
        subprocess.run(["tar", "-x", "-C", tree], input=archive, check=True)
        done = subprocess.run([sys.executable, script, "--one", tree, *options],
                              check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])
