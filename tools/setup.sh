#!/usr/bin/env bash
# Installs the package (editable) and its test tools into the project's Python, the one that
# tools/py runs: the repository's .venv if there is one, else $PYTHON (default python3). Where
# that Python is externally managed (PEP 668: a distribution's /usr/bin/python3, which pip
# refuses to install into) and no virtual environment is active, it first makes .venv from it.
# torch is brought by the user; where none is importable we install the CPU build that
# this project's CI uses, with the Triton release the suite is checked against (both pinned
# here only, never in pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

externally_managed() {  # pip's test: the marker beside the standard library, outside a venv
    "$1" -c 'import os, sys, sysconfig
marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
sys.exit(0 if os.path.isfile(marker) and sys.prefix == sys.base_prefix else 1)'
}

if [ -x .venv/bin/python ]; then
    PY=.venv/bin/python
elif externally_managed "$PY"; then
    if ! "$PY" -c "import venv, ensurepip" >/dev/null 2>&1; then
        echo "setup: $("$PY" -c 'import sys; print(sys.executable)') is externally managed and cannot" \
            "make a virtual environment: install its venv module (Debian/Ubuntu: apt-get install python3-venv)" >&2
        exit 1
    fi
    echo "setup: $("$PY" -c 'import sys; print(sys.executable)') is externally managed (PEP 668):" \
        "installing into a new virtual environment, .venv (tools/py runs it)"
    if [ -e .venv ]; then
        "$PY" -m venv .venv  # over a broken one (its python gone); left as it is if this fails
    elif ! "$PY" -m venv .venv; then
        rm -rf .venv  # half made: tools/py must not pick it
        exit 1
    fi
    PY=.venv/bin/python
fi
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
    "$PY" -m pip install --quiet "torch==2.13.0" "triton==3.8.*"
fi
"$PY" -m pip install --quiet -e ".[test]"
