#!/usr/bin/env bash
# Profile one NVIDIA GPU for the planner and verify the result, in one go:
#   llama-3.1-8b at TP 1 and qwen3-32b shapes at TP 1 and 2, in bf16 and fp8 (fp8 is skipped, with a line
#   saying so, where torch or the GPU cannot), all merged into one profile directory; then the 8B bf16 run
#   is verified against whole-model passes of the runtime's model.
#
#   bash bench/gpu_profile.sh [OUT]            # on the GPU machine; OUT defaults to profiles/h200-sxm
#   bash bench/gpu_profile.sh "$OUT/h200-sxm"  # through the device tool: profile.csv and profile.json come
#                                              # back under files_at/h200-sxm; commit them as profiles/h200-sxm/
#   DEVICE=cpu CONFIGS="tiny:1" DTYPES=fp32 QUICK=1 bash bench/gpu_profile.sh /tmp/p   # the same logic on a CPU
#
# Needs python3 with torch, numpy, pandas, scipy and typer (the GPU image has them); no install: it runs
# from the checkout. Prints every step's figures; the verify table is the last thing printed.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PY:-}" ]; then
  if [ "${DEVICE:-cuda}" = cpu ] && [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
DEVICE=${DEVICE:-cuda}
OUT=${1:-${OUT:-profiles/h200-sxm}}
CONFIGS=${CONFIGS:-"llama-3.1-8b:1 qwen3-32b:1 qwen3-32b:2"}
DTYPES=${DTYPES:-"bf16 fp8"}
VERIFY_MODEL=${VERIFY_MODEL:-${CONFIGS%%:*}}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

pdsim() { "$PY" -c 'import sys; from planner.cli import main; main()' "$@"; }

"$PY" - <<EOF
import torch
print("torch", torch.__version__, "cuda", torch.cuda.is_available(),
      torch.cuda.get_device_name(0) if torch.cuda.is_available() else "(no GPU)")
EOF
[ "$DEVICE" = cpu ] || nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,driver_version --format=csv || true

start=$(date +%s)
for cfg in $CONFIGS; do
  model=${cfg%%:*}; tp=${cfg##*:}
  for dtype in $DTYPES; do
    t0=$(date +%s)
    if pdsim profile --model "$model" --tp "$tp" --dtype "$dtype" --device "$DEVICE" ${QUICK:+--quick} --out "$OUT"; then
      echo "== $model tp$tp $dtype: $(( $(date +%s) - t0 ))s"
    else
      echo "== $model tp$tp $dtype: SKIPPED (exit $?; see the line above)"
    fi
  done
done
echo "== all profiles: $(( $(date +%s) - start ))s -> $OUT"
pdsim profile --verify "$OUT" --model "$VERIFY_MODEL" --dtype "$(echo "$DTYPES" | awk '{print $1}')"
echo "== total: $(( $(date +%s) - start ))s"
