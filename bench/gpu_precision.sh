#!/usr/bin/env bash
# Distillation on one GPU, three ways side by side on the same student, teacher and data: FSDP2 with bf16
# MixedPrecisionPolicy (--fsdp --precision bf16), bf16 autocast without FSDP, and fp32. Prints tokens/s and
# peak memory per run (bench/gpu_check.py's table). Needs a teacher folder and a pruned student folder,
# e.g. from bench/gpu_check.sh (OUT/pruned):
#
#   TEACHER=DIR STUDENT=DIR PYTHON=python bash bench/gpu_precision.sh [OUT] [STEPS]
set -euo pipefail
OUT="${1:-runs/gpu_precision}"; STEPS="${2:-150}"
PYTHON="${PYTHON:-python}"; HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
: "${TEACHER:?set TEACHER to a model folder or spec}"; : "${STUDENT:?set STUDENT to a pruned model folder}"
SEQ=1024; MICRO=8; TOKENS=$((STEPS * MICRO * SEQ))
for variant in "policy --fsdp --precision bf16" "autocast --precision bf16" "fp32 --precision fp32"; do
  read -r name flags <<<"$variant"
  rm -rf "$OUT/$name/stats"; mkdir -p "$OUT/$name"
  # shellcheck disable=SC2086  # flags is a list of options
  "$PYTHON" -m torch.distributed.run --standalone --nproc-per-node 1 "$HERE/gpu_check.py" stage "$OUT/$name" \
      distill "$TOKENS" -- -q distill --student "$STUDENT" --teacher "$TEACHER" --data builtin:python-docs \
      --steps "$STEPS" --seq-len "$SEQ" --micro-batch-size "$MICRO" $flags --eval-every 0 --eval-samples 16 \
      --save-every 0 --device cuda --out "$OUT/$name/student" --overwrite
  echo "== $name ($flags)"; "$PYTHON" "$HERE/gpu_check.py" summary "$OUT/$name" | tail -n +2
done
