#!/usr/bin/env bash
# benchmarks/gpu_check.sh OUTDIR [--smoke]: the prepared GPU check (see benchmarks/gpu_check.py and the README,
# "Several GPUs and machines"). Offline; writes OUTDIR/gpu_check.json and OUTDIR/gpu_check.md; exit 1 when a check
# fails. --smoke (or HFTL_GPU_CHECK_SMOKE=1): tiny sizes on CPU, what CI runs.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: benchmarks/gpu_check.sh OUTDIR [--smoke]" >&2; exit 2; }
here=$(cd "$(dirname "$0")/.." && pwd)
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
exec "${PYTHON:-python}" "$here/benchmarks/gpu_check.py" "$@"
