#!/usr/bin/env bash
# SafetyPointGoal1Vision-v0 on one GPU box (sized for one H200 with 16 cores, <= 9 minutes):
#   1. training throughput, plain SB3 SAC (CnnPolicy) vs lbwrap's shielded SAC, side by side
#      (benchmarks/throughput.py: env steps/s, where the time goes, 1M-env-step projection);
#   2. modes none and shield side by side (two Ray workers), seed 0, the GPU layout of
#      `train_sac_shielded.py --preset gpu` (8 envs in worker processes each, paper world model,
#      bf16 updates in 64 x 50 batches, 8 SAC gradient steps per vector step), with the CPU
#      benchmark's table, plots and summary (benchmarks/safety_benchmark.py).
#
# Usage: benchmarks/gpu_vision.sh [OUT]          (default OUT: benchmarks/results/gpu_vision)
# Env:   BUDGET=tiny  a dry run of the same pipeline on a CPU in a few minutes (2 envs, CPU-size
#                     model, a few hundred steps); PY: the interpreter (default .venv/bin/python)
#
# Budget on the GPU: 25k agent steps = 50k env steps per mode, sized from CPU measurements
# (~230 env steps/s per rendering process here, 16 cores for 2 x 8 envs) so that both runs, their
# evaluation and the throughput step fit in 9 minutes; the throughput table it writes says what
# the box really did.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${1:-benchmarks/results/gpu_vision}"
PY="${PY:-.venv/bin/python}"
export MUJOCO_GL="${MUJOCO_GL:-egl}"
if [ "${BUDGET:-gpu}" = tiny ]; then
  DEVICE=cpu ENVS=2 AUTOCAST=off GRAD_STEPS=1 WM=cpu MB=4 SEQ=8
  TP_STEPS=300 TP_START=100 AGENT_STEPS=300 START=100 EVAL=1 PRETRAIN=20
else
  DEVICE=cuda ENVS=8 AUTOCAST=bf16 GRAD_STEPS=8 WM=paper MB=64 SEQ=50
  TP_STEPS=4000 TP_START=1000 AGENT_STEPS=25000 START=2500 EVAL=3 PRETRAIN=100
fi
mkdir -p "$OUT"
start=$(date +%s)
echo "== 1/2 throughput ($ENVS envs, $DEVICE)"
"$PY" -W ignore benchmarks/throughput.py --env-id SafetyPointGoal1Vision-v0 --num-envs "$ENVS" \
  --device "$DEVICE" --world-model "$WM" --model-batch "$MB" --model-seq-len "$SEQ" \
  --autocast "$AUTOCAST" --sac-gradient-steps "$GRAD_STEPS" --agent-steps "$TP_STEPS" \
  --learning-starts "$TP_START" --out "$OUT/throughput"
echo "== 2/2 none vs shield ($AGENT_STEPS agent steps each)"
"$PY" -W ignore benchmarks/safety_benchmark.py --env-id SafetyPointGoal1Vision-v0 \
  --modes none shield --seeds 0 --agent-steps "$AGENT_STEPS" --learning-starts "$START" \
  --num-envs "$ENVS" --device "$DEVICE" --world-model "$WM" --model-batch "$MB" \
  --model-seq-len "$SEQ" --autocast "$AUTOCAST" --sac-gradient-steps "$GRAD_STEPS" \
  --pretrain-updates "$PRETRAIN" --eval-episodes "$EVAL" --parallel 2 --out "$OUT/safety"
echo "total: $(( $(date +%s) - start )) s; results in $OUT (throughput/throughput.md, safety/summary.md)"
