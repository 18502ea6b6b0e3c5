#!/usr/bin/env bash
# GPU check: the whole chain on the built-in teacher (SmolLM2-135M) on the GPUs of this machine, in bf16
# with SDPA attention (transformers' default), distillation under FSDP2 over every GPU via torchrun; prints
# seconds, tokens/s and peak memory per stage (also in OUT/summary.txt). Aims at under 8 minutes.
#
#   bash bench/gpu_check.sh [OUT]            # on a CUDA machine (default OUT: runs/gpu_check)
#   bash bench/gpu_check.sh --dry-run [OUT]  # print the commands only
#   bash bench/gpu_check.sh --cpu [OUT]      # no GPU: a tiny smoke run of the same chain (2 gloo processes)
#
# Run from the repository root with the project's Python (PYTHON=..., default: python).
set -euo pipefail

MODE=gpu
case "${1:-}" in
  --dry-run) MODE=dry; shift ;;
  --cpu) MODE=cpu; shift ;;
esac
OUT="${1:-runs/gpu_check}"
PYTHON="${PYTHON:-python}"
TEACHER="${TEACHER:-builtin:smollm2-135m}"  # another model spec: TEACHER=DIR bash bench/gpu_check.sh
DATA="builtin:python-docs"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"

if [[ "$MODE" == gpu ]]; then
  NPROC="$("$PYTHON" -c 'import torch; print(torch.cuda.device_count() if torch.cuda.is_available() else 0)')"
  if [[ "$NPROC" == 0 ]]; then
    echo "gpu_check: no CUDA GPU here; use --cpu for a tiny smoke run of the chain, or --dry-run" >&2
    exit 2
  fi
  DEVICE=cuda; DTYPE=bfloat16; PRECISION=bf16
  SAMPLES=320; SEQ=1024; BATCH=16; STEPS=300; MICRO=8; EVAL_SAMPLES=32  # built-in text: ~350 train, ~34 held-out blocks
elif [[ "$MODE" == cpu ]]; then
  NPROC=2; DEVICE=cpu; DTYPE=float32; PRECISION=fp32
  SAMPLES=8; SEQ=64; BATCH=4; STEPS=2; MICRO=2; EVAL_SAMPLES=8
else
  NPROC="${NPROC:-8}"; DEVICE=cuda; DTYPE=bfloat16; PRECISION=bf16
  SAMPLES=320; SEQ=1024; BATCH=16; STEPS=300; MICRO=8; EVAL_SAMPLES=32  # built-in text: ~350 train, ~34 held-out blocks
fi

IMPORTANCE_TOKENS=$((SAMPLES * SEQ))
DISTILL_TOKENS=$((STEPS * MICRO * NPROC * SEQ))
EVAL_TOKENS=$((EVAL_SAMPLES * SEQ))
STAGE=("$PYTHON" "$HERE/gpu_check.py" stage "$OUT")
TORCHRUN=("$PYTHON" -m torch.distributed.run --standalone --nproc-per-node "$NPROC")

run() {  # print, then run unless --dry-run
  echo "+ $*"
  [[ "$MODE" == dry ]] || "$@"
}

[[ "$MODE" == dry ]] || { rm -rf "$OUT/stats"; mkdir -p "$OUT"; }
echo "gpu_check: mode $MODE, $NPROC process(es), out $OUT"
run "${STAGE[@]}" importance "$IMPORTANCE_TOKENS" -- -q importance --model "$TEACHER" --data "$DATA" \
    --samples "$SAMPLES" --seq-len "$SEQ" --batch-size "$BATCH" --dtype "$DTYPE" --device "$DEVICE" \
    --out "$OUT/scores" --overwrite
run "${STAGE[@]}" prune 0 -- -q prune --model "$TEACHER" --scores "$OUT/scores" --hidden-size 504 \
    --intermediate-size 1152 --device "$DEVICE" --out "$OUT/pruned" --overwrite
run "${TORCHRUN[@]}" "$HERE/gpu_check.py" stage "$OUT" distill "$DISTILL_TOKENS" -- -q distill \
    --student "$OUT/pruned" --teacher "$TEACHER" --data "$DATA" --steps "$STEPS" --seq-len "$SEQ" \
    --micro-batch-size "$MICRO" --precision "$PRECISION" --fsdp --eval-every 0 --eval-samples 16 \
    --save-every 0 --device "$DEVICE" --out "$OUT/student" --overwrite
run "${STAGE[@]}" eval "$EVAL_TOKENS" -- -q eval --model "$OUT/student" --data "$DATA" \
    --samples "$EVAL_SAMPLES" --seq-len "$SEQ" --batch-size "$BATCH" --dtype "$DTYPE" --device "$DEVICE"
[[ "$MODE" == dry ]] || "$PYTHON" "$HERE/gpu_check.py" summary "$OUT"
