#!/usr/bin/env bash
# One run on a lent GPU: install offline, run the test suite natively on CUDA, then the benchmark table.
# Output is printed and, when $OUT is set (the device tool), saved there; well inside 8 minutes on an H100.
# Usage: bash bench/device_check.sh [--tune] [--counters] [--no-bench] [--no-training] [--no-memory] [--evidence]
#   --tune         also time each block size / warp count (python -m bench.tune)
#   --counters     also read the step's issue and DRAM counters with Nsight Compute, beside the static model's
#                  prediction (python -m bench.counters; up to 3.5 minutes: a second run, with --no-bench
#                  --no-training --no-memory, fits in the device tool's 10 minutes)
#   --no-bench     skip the benchmark table (its rows include 8-bit and bf16 states)
#   --no-training  skip whole training iterations (python -m bench --training --quick: GPT-2 small)
#   --no-memory    skip the memory table (python -m bench --memory --quick: GPT-2 small)
#   --evidence     also run examples/warmup_free.py's GPU-sized sweep (2 seeds, 400 steps, within five minutes)
# After the table, the static model's predictions (python -m bench.static) for comparison with what was measured.
set -uo pipefail
tune=0 counters=0 bench=1 training=1 memory=1 evidence=0
for option in "$@"; do
  case "$option" in
    --tune) tune=1 ;;
    --counters) counters=1 ;;
    --no-bench) bench=0 ;;
    --no-training) training=0 ;;
    --no-memory) memory=0 ;;
    --evidence) evidence=1 ;;
    *) echo "unknown option $option" >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."
out_dir=${OUT:-bench/results}
mkdir -p "$out_dir"
log="$out_dir/device_check.log"
export PYTHONUNBUFFERED=1

{
  echo "== device check $(date -u +%Y-%m-%dT%H:%MZ)"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  # Wheels carried in .whl/ (for example expecttest for torch's peer suite) when the image lacks them.
  if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
  fi
  python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v -i warning
  python3 -c "import torch, triton; print('torch', torch.__version__, '| triton', triton.__version__, '| cuda', torch.version.cuda)"
  # The stage limits are ceilings (9.5 minutes in all by default): a hung stage cannot take the run past the device
  # tool's 10 minutes per command. The table comes before the huge step, which only re-checks addressing.
  echo "== tests (native CUDA) $(date -u +%H:%M:%S)"
  # The gloo jobs of test_distributed.py run on CPU tensors on any machine, and CI runs them: left out here.
  # In: torch.compile with inductor and CUDA graphs (test_compile.py, test_cuda_graphs.py), GPU-only.
  timeout 200 python3 -m pytest -q -p no:cacheprovider tests --ignore=tests/test_distributed.py -rs 2>&1 | tail -30
  if [ "$tune" = 1 ]; then
    echo "== block size / warps $(date -u +%H:%M:%S)"
    timeout 120 python3 -m bench.tune
  fi
  if [ "$bench" = 1 ]; then
    echo "== benchmark $(date -u +%H:%M:%S)"
    timeout 130 python3 -m bench --quick --out "$out_dir"
  fi
  echo "== static model (predicted) $(date -u +%H:%M:%S)"
  # The configurations the benchmark measures (the whole model and its calibration take minutes).
  timeout 60 python3 -m bench.static --csv "$out_dir/static_model.csv" --configuration fp32 \
    --configuration "fp32 AMSGrad" --configuration bf16 --configuration "fp32 8-bit" --configuration "bf16 8-bit"
  if [ "$counters" = 1 ]; then
    echo "== hardware counters of the step (ncu) $(date -u +%H:%M:%S)"
    # ncu's CSVs stay in /tmp: $OUT brings back 8 files at most. Without counters, the timings above stand.
    if command -v ncu >/dev/null; then
      profiled=()
      mkdir -p /tmp/ncu_step
      for case in "GPT-2 small fp32" "GPT-2 small fp32 8-bit" "GPT-2 bf16 8-bit"; do
        profiled+=("/tmp/ncu_step/${case// /_}.csv")  # named as the case: the report finds its prediction so
        timeout 60 ncu --profile-from-start off --clock-control none --print-units base --csv \
          --metrics "$(python3 -m bench.counters --metrics)" --log-file "${profiled[-1]}" \
          python3 -m bench.counters --step "$case" >/dev/null 2>&1
      done
      timeout 30 python3 -m bench.counters --report "$out_dir/static_model.csv" "${profiled[@]}"
    else
      echo "ncu is not on this machine's PATH: the timings above are what was measured"
    fi
  fi
  if [ "$training" = 1 ]; then
    echo "== training iterations $(date -u +%H:%M:%S)"
    timeout 90 python3 -m bench --training --quick --out "$out_dir"
  fi
  if [ "$memory" = 1 ]; then
    echo "== memory $(date -u +%H:%M:%S)"
    timeout 60 python3 -m bench --memory --quick --out "$out_dir"
  fi
  echo "== one step past 2^31 elements $(date -u +%H:%M:%S)"
  timeout 30 python3 -m bench.huge_step
  if [ "$evidence" = 1 ]; then
    echo "== evidence: training without warmup $(date -u +%H:%M:%S)"
    timeout 330 python3 examples/warmup_free.py --device cuda --out "$out_dir" 2>&1 | grep -v "v0 from data"
  fi
  echo "== done $(date -u +%H:%M:%S)"
} 2>&1 | tee "$log"
