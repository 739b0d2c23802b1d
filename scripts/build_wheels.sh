#!/usr/bin/env bash
# Download the wheels the notebooks install (requirements.txt + requirements-extras.txt, without
# torch) into a folder, for a Kaggle session with the internet off:
#   scripts/build_wheels.sh facecom-wheels                  # Kaggle's Python 3.11, x86_64
#   scripts/build_wheels.sh facecom-wheels --python-version 3.12
# Upload the folder as a Kaggle data set and attach it to the notebook: its first cell finds the
# folder by the facecom-wheels.txt inside and installs from it with pip --no-index.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHONPATH="$ROOT" exec "${PYTHON:-python3}" -m common.bootstrap wheels "$@"
