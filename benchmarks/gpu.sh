#!/usr/bin/env bash
# Throughput on a GPU machine, in one command: installs what the GPU image lacks from wheels
# carried with the tree (.whl/, made by `make gpu-wheels` on a machine with a registry), runs
# the GPU-only tests and the benchmark plan (ldm_jax/benchmark/suite.py) within one budget,
# and writes records.json, section.md and suite.log into OUT_DIR, appending section.md to
# benchmarks/RESULTS.md.
#
#   benchmarks/gpu.sh [OUT_DIR]
#
# Environment: BUDGET_S (default 540: the whole plan, install and tests included), PLAN (gpu;
# `dry` runs tiny points, as tests/benchmark/suite_test.py does on a CPU), RESULTS (the file
# to append to; empty: none), PYTHON (python3), WHEELS (.whl), ONLY (comma-separated entries).
set -uo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
OUT_DIR=${1:-benchmarks/gpu-$(date -u +%Y%m%d-%H%M%S)}
PLAN=${PLAN:-gpu}
BUDGET_S=${BUDGET_S:-540}
RESULTS=${RESULTS-benchmarks/RESULTS.md}
PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}

if compgen -G "$WHEELS/*.whl" > /dev/null; then
  site=$(mktemp -d /tmp/ldm_jax_site.XXXXXX)
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$site" "$WHEELS"/*.whl || { echo "gpu.sh: installing $WHEELS/*.whl failed"; exit 2; }
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PYTHON" -c "import absl, ml_collections, clu, diffusers, torch" 2>/dev/null || {
  echo "gpu.sh: $PYTHON lacks absl/ml_collections/clu/diffusers/torch; on a machine with a" \
       "package registry run 'make gpu-wheels' and carry $WHEELS with the tree."; exit 2; }

# JAX and PyTorch share the device (the comparisons alternate in rounds): JAX takes part
# of the memory up front, PyTorch's allocator grows into the rest.
export XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.55}
export TF_CPP_MIN_LOG_LEVEL=${TF_CPP_MIN_LOG_LEVEL:-2}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm \
    --format=csv 2>/dev/null || echo "gpu.sh: no nvidia-smi"

left=$(( BUDGET_S - ($(date +%s) - start) ))
"$PYTHON" -m ldm_jax.benchmark.suite --plan="$PLAN" --out="$OUT_DIR" --budget_s="$left" \
    ${ONLY:+--only="$ONLY"} ${RESULTS:+--results="$RESULTS"}
