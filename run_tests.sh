#!/usr/bin/env bash
# Set up .venv (first use) and run the test suite. Extra arguments go to pytest, e.g.
#   ./run_tests.sh -m "not notebooks"     the fast loop without notebook execution
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$ROOT/scripts/setup.sh"
export MPLBACKEND=agg
cd "$ROOT"
# Two workers (pytest-xdist), each taking whole test files, so module fixtures run once: most
# tests use one core, and the suite takes about half the time on two. Files go out in collection
# order, notebook-executing files first (tests/conftest.py). `-n 0` runs in one process.
exec python -m pytest -q -ra -n 2 --dist loadfile --no-loadscope-reorder "$@"
