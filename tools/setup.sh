#!/usr/bin/env bash
# Installs the package and its test tools into the current Python.
# torch is brought by the user; where none is importable we install the CPU build that
# this project's CI uses, with the Triton release the suite is checked against (both pinned
# here only, never in pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    "$PY" -m pip install --quiet "torch==2.13.0" "triton==3.8.*"
fi
"$PY" -m pip install --quiet -e ".[test]"
