#!/usr/bin/env bash
# One call on a lent GPU machine (no network there): the bf16 step benchmark with MFU at the CPU
# setup's shapes (batch 4, length 256) and at a GPU-sized batch (16 x 512), then okd's whole
# pipeline on CUDA (`okd demo --tiny`: train sft/fkd/okd with mixed precision, evaluate, report).
#
# Carried along (git-ignored, made on a machine with the presets and PyPI):
#   .whl/  wheels missing on the GPU image: pydantic(+core, annotated_types, typing_inspection),
#          trl, datasets, dill, multiprocess, nltk, rouge_score
#   .gpu/  smollm2/ (the preset's config.json + tokenizer files), sharegpt-train.jsonl, seed_tasks.jsonl
# The GPU has no SmolLM2 weights: the models are SmolLM2-shaped with random weights, which is all
# that step time and FLOPs depend on (benchmarks/bench_step.py --setup smollm2-random).
set -u
OUT=${OUT:-/tmp/okd-gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TRL_EXPERIMENTAL_SILENCE=1 OKD_HOME=/tmp/okd-home OKD_SEED_TASKS=$PWD/.gpu/seed_tasks.jsonl
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/env.txt"
env | grep -iE "cuda|nccl|torch|omp" | sort > "$OUT/cuda_env.txt"
python3 -c "import torch, transformers, accelerate, peft, trl; print('torch', torch.__version__, 'transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'peft', peft.__version__, 'trl', trl.__version__)" 2>&1 | tee -a "$OUT/env.txt"
B="python3 benchmarks/bench_step.py --device cuda --precision bf16 --setup smollm2-random --shape-dir .gpu/smollm2 --data .gpu/sharegpt-train.jsonl"
timeout "${B4_TIMEOUT:-240}" $B --profile --rounds 2 --steps 8 --warmup 3 --output "$OUT/bench_step_gpu_b4.json" 2>&1 | tee "$OUT/b4.log"
timeout "${B16_TIMEOUT:-90}" $B --configs okd:sft okd:fkd okd:okd trl:gkd-l0 --rounds 1 --steps 8 --warmup 3 \
    --batch-size 16 --max-length 512 --output "$OUT/bench_step_gpu_b16.json" 2>&1 | tee "$OUT/b16.log"
timeout "${DEMO_TIMEOUT:-100}" python3 -m okd demo --tiny -o /tmp/demo-tiny > "$OUT/demo_tiny.log" 2>&1
echo "demo exit $?"; tail -30 "$OUT/demo_tiny.log"
