#!/usr/bin/env bash
# One run on a lent GPU: install offline, run the test suite natively on CUDA, then the benchmark table.
# Output is printed and, when $OUT is set (the device tool), saved there; well inside 8 minutes on an H100.
# Usage: bash bench/device_check.sh [--tune]
set -uo pipefail
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
  echo "== tests (native CUDA)"
  timeout 240 python3 -m pytest -q -p no:cacheprovider tests 2>&1 | tail -25
  if [ "${1:-}" = "--tune" ]; then
    echo "== block size / warps"
    timeout 120 python3 -m bench.tune
  fi
  echo "== benchmark"
  timeout 240 python3 -m bench --quick --out "$out_dir"
} 2>&1 | tee "$log"
