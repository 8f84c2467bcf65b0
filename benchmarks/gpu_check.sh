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
# wheels made by `bash benchmarks/gpu_carry.sh` and name the folder first:
#   bash benchmarks/gpu_check.sh --wheels .gpu_carry/wheels --reference_repo .gpu_carry/WF-VAE --cases ...
# The wheels are installed (no index, no dependencies) into a scratch folder that only this run sees.
#
# Exit status: 0 passed, 1 a case failed, 2 usage error or no GPU visible (without --dry_run).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
    PYTHON=python
    command -v python >/dev/null 2>&1 || PYTHON=python3  # images that ship only python3
fi
if ! command -v "${PYTHON}" >/dev/null 2>&1; then
    echo "gpu_check: no '${PYTHON}' on PATH; activate the environment where wfvae is installed, or set PYTHON=" >&2
    exit 2
fi

SITE=""
if [[ "${1:-}" == "--wheels" ]]; then
    WHEELS="${2:-}"
    shift 2 || { echo "gpu_check: --wheels needs a folder of .whl files" >&2; exit 2; }
    shopt -s nullglob
    files=("${WHEELS}"/*.whl)
    shopt -u nullglob
    if [[ ${#files[@]} -eq 0 ]]; then
        echo "gpu_check: --wheels ${WHEELS} holds no .whl files; make them with: bash benchmarks/gpu_carry.sh" >&2
        exit 2
    fi
    SITE="$(mktemp -d "${TMPDIR:-/tmp}/wfvae_gpu_site.XXXXXX")"
    trap 'rm -rf "${SITE}"' EXIT
    if ! "${PYTHON}" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
            --target "${SITE}" "${files[@]}"; then
        echo "gpu_check: installing the wheels in ${WHEELS} failed (see pip's message above)" >&2
        exit 2
    fi
    echo "gpu_check: using ${#files[@]} carried wheels from ${WHEELS}" >&2
fi
export PYTHONPATH="${REPO}/src${SITE:+:${SITE}}${PYTHONPATH:+:${PYTHONPATH}}"
"${PYTHON}" "${REPO}/benchmarks/gpu_check.py" "$@"
