#!/usr/bin/env bash
# The prepared GPU check (see benchmarks/gpu_check.py for the cases and the JSON it writes).
#
# How to run, from anywhere:
#   bash benchmarks/gpu_check.sh --reference_repo /path/to/WF-VAE --budget_s 1200  # NVIDIA GPU machine, all cases
#   bash benchmarks/gpu_check.sh --reference_repo /path/to/WF-VAE --cases environment train_memory  # issue 16, < 9 min
#   bash benchmarks/gpu_check.sh --reference_repo none --out my_check        # without the original
#   bash benchmarks/gpu_check.sh --dry_run --out /tmp/gpu_check_dry          # no GPU: arguments + plan on the CPU
#
# On a GPU machine without internet whose Python has torch but not all of wfvae's requirements, carry them as
# wheels made by `bash benchmarks/gpu_carry.sh` (run where the package registry is reachable) and name the folder:
#   bash benchmarks/gpu_check.sh --wheels .gpu_carry/wheels --reference_repo .gpu_carry/WF-VAE --cases ...
# The wheels are installed (no index, no dependencies) into a scratch folder that only this run sees.
#
# Exit status: 0 passed, 1 a case failed, 2 usage error or no GPU visible (without --dry_run).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
    # the first of python, python3 that has PyTorch (some GPU images put torch only behind python3)
    for candidate in python python3; do
        if command -v "${candidate}" >/dev/null 2>&1 && "${candidate}" -c "import torch" >/dev/null 2>&1; then
            PYTHON="${candidate}"
            break
        fi
    done
    PYTHON="${PYTHON:-python3}"
fi
if ! command -v "${PYTHON}" >/dev/null 2>&1; then
    echo "gpu_check: no '${PYTHON}' on PATH; activate the environment where wfvae is installed, or set PYTHON=" >&2
    exit 2
fi

# --wheels DIR may stand anywhere among the arguments; the rest go to gpu_check.py
WHEELS=""
ARGS=()
while [[ $# -gt 0 ]]; do
    if [[ "$1" == --wheels ]]; then
        if [[ $# -lt 2 ]]; then
            echo "gpu_check: --wheels needs a folder of .whl files (make them with: bash benchmarks/gpu_carry.sh)" >&2
            exit 2
        fi
        WHEELS="$2"
        shift 2
    else
        ARGS+=("$1")
        shift
    fi
done

SITE=""
if [[ -n "${WHEELS}" ]]; then
    shopt -s nullglob
    files=("${WHEELS}"/*.whl)
    shopt -u nullglob
    if [[ ${#files[@]} -eq 0 ]]; then
        echo "gpu_check: --wheels ${WHEELS} holds no .whl files; make them with: bash benchmarks/gpu_carry.sh" >&2
        exit 2
    fi
    SITE="$(mktemp -d "${TMPDIR:-/tmp}/wfvae_gpu_site.XXXXXX")"
    trap 'rm -rf "${SITE}"' EXIT
    if ! PIP_ROOT_USER_ACTION=ignore "${PYTHON}" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
            --target "${SITE}" "${files[@]}"; then
        echo "gpu_check: installing the wheels in ${WHEELS} failed (see pip's message above)" >&2
        exit 2
    fi
    echo "gpu_check: using ${#files[@]} carried wheels from ${WHEELS}" >&2
fi
export PYTHONPATH="${REPO}/src${SITE:+:${SITE}}${PYTHONPATH:+:${PYTHONPATH}}"
"${PYTHON}" "${REPO}/benchmarks/gpu_check.py" ${ARGS[@]+"${ARGS[@]}"}
