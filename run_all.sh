#!/usr/bin/env bash
# Run every notebook headlessly (papermill) into runs/<timestamp>/; sets up .venv on first use.
#   ./run_all.sh                              quick mode on the embedded sample
#   ./run_all.sh --data-dir ../shared/data/facecom --full
#   ./run_all.sh -f params.yaml -p epochs 20 --only 01_task_a_gender
# ./run_all.sh --help lists every option.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
source "$ROOT/scripts/setup.sh"
# Figures are saved as PNG and displayed from the file (common.plots.save_and_show), so the
# non-interactive backend costs the executed notebooks nothing and never needs a display.
export MPLBACKEND=agg
cd "$ROOT"
exec python -m common.run_all "$@"
