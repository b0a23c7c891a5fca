#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install lbwrap into it.
#
# safety-gymnasium 1.0.0 (the only release on PyPI) pins packages that cannot be installed on
# Python >= 3.11 (pygame==2.1.0, gymnasium==0.28.1, ...). We therefore install it with
# --no-deps and install its real run-time needs ourselves (listed in pyproject.toml's
# dependencies). Users never have to know about this.
#
# Usage: scripts/setup_env.sh [VENV_DIR]   (default: .venv)
# Env:   PYTHON (interpreter to build the venv with, default python3)
#        LBWRAP_TORCH (torch requirement, default "torch>=2.2"; on machines with a local CPU
#        wheel, e.g. torch==2.13.0, pip picks it up from its configured find-links)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${1:-.venv}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.lbwrap-installed"

if [ -f "$STAMP" ] && [ "$STAMP" -nt pyproject.toml ] && [ "$STAMP" -nt "$0" ]; then
  exit 0  # already set up and nothing changed since
fi

if [ ! -x "$VENV/bin/python" ]; then
  "$PYTHON" -m venv "$VENV"
fi
PY="$VENV/bin/python"
"$PY" -m pip install -q --upgrade pip

# Torch first: prefer a wheel that is already on this machine (pip's find-links) so that we do not
# download a multi-GB CUDA build where a CPU build is at hand. A CUDA machine gets its usual build.
TORCH_REQ="${LBWRAP_TORCH:-}"
if [ -z "$TORCH_REQ" ]; then
  local_wheel=$(ls /opt/wheels/torch-*.whl 2>/dev/null | head -n1 || true)
  if [ -n "$local_wheel" ]; then
    ver=$(basename "$local_wheel" | cut -d- -f2 | cut -d+ -f1)
    TORCH_REQ="torch==$ver"
  else
    TORCH_REQ="torch>=2.2"
  fi
fi
"$PY" -m pip install -q "$TORCH_REQ"

# lbwrap itself (editable) with its dependencies (they include safety-gymnasium's real needs)
# and the dev, bench (Ray, rliable) and docs (MkDocs) extras: the newest releases pyproject.toml
# admits, except MuJoCo, which stays at 3.1 here because the published Safety-Gymnasium results
# were measured on it (newer releases change its physics and pixels slightly; see
# docs/compatibility.md). LBWRAP_MUJOCO overrides it (e.g. LBWRAP_MUJOCO="mujoco>=3.1,<5").
"$PY" -m pip install -q -e ".[dev,bench,docs]" "${LBWRAP_MUJOCO:-mujoco>=3.1,<3.2}"

# safety-gymnasium and gymnasium-robotics without their impossible pins (see above), the
# gymnasium-robotics release that matches the installed Gymnasium (1.2.2 for 0.29, 1.4 for 1.x).
# pip's resolver would otherwise report the pins it cannot meet; they are known and harmless here.
if "$PY" -c 'import sys, gymnasium; sys.exit(0 if gymnasium.__version__.startswith("0.") else 1)'; then
  ROBOTICS="gymnasium-robotics==1.2.2"
else
  ROBOTICS="gymnasium-robotics>=1.4,<1.5"
fi
"$PY" -m pip install -q --no-deps --no-warn-conflicts "safety-gymnasium==1.0.0" "$ROBOTICS"

touch "$STAMP"
