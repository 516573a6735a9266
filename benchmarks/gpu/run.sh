#!/usr/bin/env bash
# The GPU benchmark in one call, at most 8 minutes (issue 14): ops and syncs per training step; step
# time, tokens/s and MFU (against a bf16 GEMM timed in the same run) at 4x256, 16x512 and 32x1024 for
# okd's sft, fkd, okd and gkd λ=0.5; TRL's GKDTrainer at the same shapes; sampler tokens/s (okd's
# generate vs Hugging Face generate's defaults, MiniLLM's sampler before/after). Results as JSON and a
# markdown table (bench.json, bench.md) in benchmarks/results/gpu_<date>/ and in $OUT when set.
#
#   bash benchmarks/gpu/run.sh                       # on a GPU machine
#   bash benchmarks/gpu/run.sh --device cpu --tiny   # the CPU smoke run (tiny models, ~15-30 s)
#   options: --budget SECONDS (default 480, all of run.sh), --results-dir DIR, --demo (also `okd demo
#   --tiny` when time is left), anything else goes to benchmarks/gpu/bench.py (e.g. --shapes 4x256)
#
# Self-contained: the models are SmolLM2-135M-shaped with random weights, the tokenizer and the data
# are generated (benchmarks/gpu/assets.py); nothing is downloaded. The GPU image lacks some Python
# packages (pydantic, trl, datasets, ...): benchmarks/gpu/wheels.sh fetches them into .whl/ on a
# machine with PyPI; carry .whl along and they are installed here first (into /tmp/site).
set -u
cd "$(dirname "$0")/../.."
START=$(date +%s)
DEVICE=cuda BUDGET=480 RESULTS="" DEMO=0 EXTRA=()
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    --budget) BUDGET=$2; shift 2 ;;
    --results-dir) RESULTS=$2; shift 2 ;;
    --demo) DEMO=1; shift ;;
    *) EXTRA+=("$1"); shift ;;
  esac
done
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
RESULTS=${RESULTS:-benchmarks/results/gpu_$(date +%Y-%m-%d)}
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1 TRL_EXPERIMENTAL_SILENCE=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
export OKD_HOME=${OKD_HOME:-/tmp/okd-home}
if ls .whl/*.whl > /dev/null 2>&1; then
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "installing .whl/ failed" >&2; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
else
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$RESULTS/env.txt" 2>&1
  env | grep -iE "cuda|nccl|torch|omp" | sort > "$RESULTS/cuda_env.txt"
else
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
fi
LEFT=$(( BUDGET - ($(date +%s) - START) - 15 ))  # 15 s for the interpreter's exit and the copies
timeout --kill-after=10 $(( LEFT + 10 )) "$PYTHON" benchmarks/gpu/bench.py --device "$DEVICE" --budget "$LEFT" \
  --results-dir "$RESULTS" ${EXTRA[@]+"${EXTRA[@]}"} 2>&1 | tee "$RESULTS/bench.log"
STATUS=${PIPESTATUS[0]}
LEFT=$(( BUDGET - ($(date +%s) - START) - 5 ))
if [ "$DEMO" = 1 ] && [ "$LEFT" -gt 60 ]; then  # okd's whole pipeline on this device, if time is left
  timeout "$LEFT" "$PYTHON" -m okd demo --tiny -o /tmp/okd-demo-tiny > "$RESULTS/demo_tiny.log" 2>&1
  echo "demo exit $?" | tee -a "$RESULTS/demo_tiny.log"
elif [ "$DEMO" = 1 ]; then
  echo "demo skipped: ${LEFT} s left of the budget" | tee "$RESULTS/demo_tiny.log"
fi
if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
  cp "$RESULTS"/* "$OUT"/ 2>/dev/null
fi
echo "run.sh: $(( $(date +%s) - START )) s, exit $STATUS; results in $RESULTS"
exit "$STATUS"
