#!/usr/bin/env bash
# Create/refresh the project's .venv and Jupyter kernel. Sourced by run_all.sh and run_tests.sh.
# Re-installs only when requirements.txt changed (a hash stamp in .venv), so repeated runs are fast.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FACECOM_VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.facecom-requirements.sha1"
EXTRAS="${FACECOM_EXTRAS:-1}"  # 0 skips the optional face priors (requirements-extras.txt)
WANT="$(cat "$ROOT/requirements.txt" "$ROOT/requirements-extras.txt" "$ROOT/scripts/setup.sh" \
  "$ROOT/common/bootstrap.py" | sha1sum | cut -d' ' -f1)-extras$EXTRAS"

if [ ! -x "$VENV/bin/python" ]; then
  echo "[setup] creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
if [ "$(cat "$STAMP" 2>/dev/null)" != "$WANT" ]; then
  echo "[setup] installing requirements into $VENV (first run takes a few minutes)"
  # PyPI's x86_64 torch brings its CUDA libraries: a new venv takes about 7 GiB.
  FREE_MIB="$(df -Pm "$VENV" | awk 'NR == 2 {print $4}')"
  if [ "${FREE_MIB:-0}" -lt 8192 ] && ! "$VENV/bin/python" -m pip show --quiet torch \
      >/dev/null 2>&1; then
    echo "[setup] warning: only ${FREE_MIB} MiB free on the disk of $VENV; the venv needs about" \
      "7 GiB and a test run 2 GiB more. Free space or set FACECOM_VENV to a larger disk." >&2
  fi
  # One list of what is installed and how (torch kept, the #no-deps lines without their
  # dependencies): the same code as the notebooks' first cell.
  NO_EXTRAS=""; [ "$EXTRAS" = "1" ] || NO_EXTRAS="--no-extras"
  PYTHONPATH="$ROOT" "$VENV/bin/python" -m common.bootstrap install $NO_EXTRAS
  "$VENV/bin/python" -m ipykernel install --sys-prefix --name facecom \
    --display-name "Python (facecom)" >/dev/null
  echo "$WANT" > "$STAMP"
fi
export PATH="$VENV/bin:$PATH"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
# CPU torch is allocation-bound here: large glibc malloc thresholds keep freed blocks for reuse,
# and passive OpenMP waiting stops idle threads spinning on a shared 2-core machine (together
# 2.4-13x inference throughput for EfficientNet-Lite0; benchmarks/results/malloc.md).
export MALLOC_MMAP_THRESHOLD_="${MALLOC_MMAP_THRESHOLD_:-1073741824}"
export MALLOC_TRIM_THRESHOLD_="${MALLOC_TRIM_THRESHOLD_:-1073741824}"
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
