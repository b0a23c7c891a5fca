#!/usr/bin/env bash
# The compatibility matrix: Python 3.10 / 3.11 / 3.12 x {oldest supported, newest} stack.
#
# Each cell gets a throwaway virtual environment (under $COMPAT_DIR, default /tmp/lbwrap-compat),
# installs that stack, runs the fast test suite and compares a fixed-seed episode of every env
# (scripts/env_fingerprint.py) with the one of the first cell that ran (the reference). One line
# per cell goes to $COMPAT_DIR/results.csv: cell, versions, suite result, fingerprint result.
#
# Usage: scripts/test_compat.sh [CELL ...]     (default: all seven; e.g. py3.11-newest)
# Env:   COMPAT_DIR (work folder), PYTEST_ARGS (extra pytest arguments, e.g. "-x")
#
# Stacks (what pyproject.toml allows at each end):
#   oldest: gymnasium 0.29.1, stable-baselines3 2.4.1, numpy 1.26.4, mujoco 3.1.6, torch 2.2.2
#           (torch 2.13.0 where a local CPU wheel is on the machine), gymnasium-robotics 1.2.2
#   newest: the newest releases pyproject.toml admits (gymnasium 1.x, SB3, numpy 2.x, mujoco 3.x,
#           torch), gymnasium-robotics 1.4.x
#   newest_mujoco31: newest, but mujoco 3.1.6 as in the oldest stack (what `make setup` installs):
#           isolates the Gymnasium 1.x compatibility code in the fingerprint comparison
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
COMPAT_DIR="${COMPAT_DIR:-/tmp/lbwrap-compat}"
mkdir -p "$COMPAT_DIR"
CELLS=("$@")
if [ ${#CELLS[@]} -eq 0 ]; then
  CELLS=(py3.11-oldest py3.11-newest py3.11-newest_mujoco31 py3.10-oldest py3.10-newest
         py3.12-oldest py3.12-newest)
fi
RESULTS="$COMPAT_DIR/results.csv"
[ -f "$RESULTS" ] || echo "cell,date,machine,versions,suite,fingerprint" > "$RESULTS"
REFERENCE="$COMPAT_DIR/fingerprint-reference.json"

install_cell() {  # $1 python, $2 stack, $3 venv
  local py=$1 stack=$2 venv=$3 pyver local_torch
  "$py" -m venv "$venv" || return 1
  local P="$venv/bin/python"
  "$P" -m pip install -q --upgrade pip || return 1
  pyver=$("$P" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
  local_torch=$(ls /opt/wheels/torch-*-"$pyver"-*.whl 2>/dev/null | head -n1 || true)
  if [ "$stack" = oldest ]; then
    if [ -n "$local_torch" ]; then
      "$P" -m pip install -q "$local_torch" || return 1
    else
      "$P" -m pip install -q "torch==2.2.2" || return 1
    fi
    "$P" -m pip install -q "gymnasium==0.29.1" "stable-baselines3==2.4.1" "numpy==1.26.4" \
      "mujoco==3.1.6" "pettingzoo==1.24.3" || return 1
    ROBOTICS="gymnasium-robotics==1.2.2"
  else
    if [ -n "$local_torch" ]; then
      "$P" -m pip install -q "$local_torch" || return 1
    fi
    if [ "$stack" = newest_mujoco31 ]; then
      "$P" -m pip install -q "mujoco==3.1.6" || return 1
    fi
    ROBOTICS="gymnasium-robotics>=1.4,<1.5"
  fi
  # lbwrap with its dependencies (pip keeps what is installed when it fits, else the newest)
  "$P" -m pip install -q -e "$ROOT[dev,bench]" || return 1
  "$P" -m pip install -q --no-deps --no-warn-conflicts "safety-gymnasium==1.0.0" "$ROBOTICS" || return 1
}

for cell in "${CELLS[@]}"; do
  pyv=${cell%%-*}; pyv=${pyv#py}; stack=${cell#*-}
  py=""
  for candidate in "python$pyv" "$(pyenv root 2>/dev/null)/versions/$pyv"*/bin/"python$pyv"; do
    if "$candidate" -c "pass" > /dev/null 2>&1; then py="$candidate"; break; fi  # pyenv shims
  done
  venv="$COMPAT_DIR/$cell"
  log="$COMPAT_DIR/$cell.log"
  echo "== $cell (log: $log)"
  if [ -z "$py" ]; then
    echo "$cell,$(date -u +%F),$(hostname),python$pyv not found,skipped,skipped" >> "$RESULTS"
    continue
  fi
  rm -rf "$venv"
  if ! install_cell "$py" "$stack" "$venv" > "$log" 2>&1; then
    echo "$cell,$(date -u +%F),$(hostname),install failed,failed,-" >> "$RESULTS"
    echo "   install failed (see $log)"
    continue
  fi
  P="$venv/bin/python"
  versions=$("$P" -c 'from importlib import metadata as m; import sys; print(" ".join(
      [f"python {sys.version.split()[0]}"] + [f"{n} {m.version(n)}" for n in
      ("gymnasium", "stable_baselines3", "numpy", "mujoco", "torch")]))')
  echo "   $versions"
  if MUJOCO_GL=egl "$P" -m pytest -q -p no:cacheprovider ${PYTEST_ARGS:-} >> "$log" 2>&1; then
    suite="pass ($(grep -Eo '[0-9]+ passed' "$log" | tail -n1))"
  else
    suite="FAIL ($(grep -Eo '[0-9]+ failed' "$log" | tail -n1))"
  fi
  if [ -f "$REFERENCE" ]; then
    fp=$(MUJOCO_GL=egl "$P" -W ignore scripts/env_fingerprint.py "$COMPAT_DIR/fingerprint-$cell.json" \
         --compare "$REFERENCE" 2>/dev/null | tail -n3 | tr '\n' ';')
  else
    MUJOCO_GL=egl "$P" -W ignore scripts/env_fingerprint.py "$REFERENCE" > /dev/null 2>&1
    fp="reference"
  fi
  echo "   suite: $suite | fingerprint: $fp"
  echo "$cell,$(date -u +%F),$(hostname) ($(nproc) cores),$versions,$suite,\"$fp\"" >> "$RESULTS"
  [ -n "${KEEP_VENVS:-}" ] || rm -rf "$venv"
done
echo "results: $RESULTS"
