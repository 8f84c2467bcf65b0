#!/usr/bin/env bash
# The prepared GPU check (see benchmarks/gpu_check.py for the cases and the JSON it writes).
#
# How to run, from anywhere:
#   bash benchmarks/gpu_check.sh --reference_repo /path/to/WF-VAE --budget_s 1200  # NVIDIA GPU machine, all cases
#   bash benchmarks/gpu_check.sh --reference_repo /path/to/WF-VAE --cases environment train_memory  # issue 16, < 9 min
#   bash benchmarks/gpu_check.sh --reference_repo none --out my_check        # without the original
#   bash benchmarks/gpu_check.sh --dry_run --out /tmp/gpu_check_dry          # no GPU: arguments + plan on the CPU
#
# Exit status: 0 passed, 1 a case failed, 2 usage error or no GPU visible (without --dry_run).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
if ! command -v "${PYTHON}" >/dev/null 2>&1; then
    echo "gpu_check: no '${PYTHON}' on PATH; activate the environment where wfvae is installed, or set PYTHON=" >&2
    exit 2
fi
export PYTHONPATH="${REPO}/src${PYTHONPATH:+:${PYTHONPATH}}"
exec "${PYTHON}" "${REPO}/benchmarks/gpu_check.py" "$@"
