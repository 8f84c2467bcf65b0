#!/usr/bin/env bash
# Packs what the prepared GPU check needs on a GPU machine that has PyTorch but no internet (such as this
# project's lent H200, whose image lacks platformdirs, lpips, PyAV and diffusers): pinned wheels of wfvae's
# missing requirements, and the original WF-VAE's package for the side-by-side cases. Everything lands in
# .gpu_carry/ (ignored by git), which the device tool carries with the working tree.
#
#   bash benchmarks/gpu_carry.sh --reference_repo /path/to/WF-VAE            # issue 16's cases, with the original
#   bash benchmarks/gpu_carry.sh --with_av --reference_repo none             # the cases that need real video files
#
# Then, on the GPU machine, from the repository root (the script prints the exact line):
#   bash benchmarks/gpu_check.sh --wheels .gpu_carry/wheels --reference_repo .gpu_carry/WF-VAE --out /tmp/gpu_check \
#       --cases environment chunk_budget train_memory; rc=$?; tar -czf "$OUT/gpu_check.tgz" -C /tmp gpu_check; \
#       cat /tmp/gpu_check/gpu_check.json; exit $rc
#
# Options:
#   --reference_repo DIR|none   checkout of the original WF-VAE (its causalvideovae/ is copied, diffusers is packed)
#   --with_av                   also pack PyAV (35 MB) for bf16_psnr, train_resume, train_fp16, bench_train_step
#   --python X.Y                the GPU machine's Python (default 3.12, the lent H200's)
#   --limit_mib N               what one device call may carry with the working tree (default 64)
# The versions are the ones the test suite runs with here; PyAV's wheel is abi3, so one file serves 3.11+.
# Exit status: 0 packed, 2 a usage error, a failed download, or more than --limit_mib to carry (in the last two
# cases an earlier .gpu_carry/ is left as it was).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY_VERSION=3.12
REFERENCE=none
WITH_AV=0
LIMIT_MIB=64
usage() { echo "gpu_carry: $1" >&2; echo "usage: bash benchmarks/gpu_carry.sh [--reference_repo DIR|none] [--with_av] [--python X.Y] [--limit_mib N]" >&2; exit 2; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --reference_repo) [[ $# -ge 2 ]] || usage "--reference_repo needs a folder or none"; REFERENCE="$2"; shift 2 ;;
        --with_av) WITH_AV=1; shift ;;
        --python) [[ $# -ge 2 && "$2" =~ ^3\.[0-9]+$ ]] || usage "--python needs a version such as 3.12"; PY_VERSION="$2"; shift 2 ;;
        --limit_mib) [[ $# -ge 2 && "$2" =~ ^[0-9]+$ ]] || usage "--limit_mib needs a whole number"; LIMIT_MIB="$2"; shift 2 ;;
        -h|--help) sed -n '2,22p' "${BASH_SOURCE[0]}"; exit 0 ;;
        *) usage "unknown argument '$1'" ;;
    esac
done
if [[ "${REFERENCE}" != none && ! -d "${REFERENCE}/causalvideovae" ]]; then
    usage "--reference_repo ${REFERENCE} is not a checkout of the original WF-VAE (no causalvideovae/ folder); pass its path, or none"
fi

# wfvae's requirements that the GPU image lacks (PyTorch, numpy, scipy, safetensors, huggingface_hub, ... it has)
PINS=(platformdirs==4.14.9 lpips==0.1.4)
if [[ "${REFERENCE}" != none ]]; then  # the original imports diffusers; diffusers imports importlib_metadata
    PINS+=(diffusers==0.42.1 importlib_metadata==10.2.0 lazy-importer==0.1.0)
fi
if [[ "${WITH_AV}" == 1 ]]; then
    PINS+=(av==18.1.0)
fi

CARRY="${REPO}/.gpu_carry"
# packed beside the old pack and swapped in only when complete: a failed download leaves the old one as it was
NEW="$(mktemp -d "${REPO}/.gpu_carry.new.XXXXXX")"
trap 'rm -rf "${NEW}"' EXIT
chmod 755 "${NEW}"
mkdir -p "${NEW}/wheels"
PLATFORMS=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
    PLATFORMS+=(--platform "$p")
done
if ! python3 -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --implementation cp \
        --python-version "${PY_VERSION}" "${PLATFORMS[@]}" -d "${NEW}/wheels" "${PINS[@]}"; then
    echo "gpu_carry: downloading ${PINS[*]} failed (see pip's message above); this step needs the package registry" >&2
    exit 2
fi
if [[ "${REFERENCE}" != none ]]; then
    mkdir -p "${NEW}/WF-VAE"
    (cd "${REFERENCE}" && tar --exclude=__pycache__ --exclude='*.pyc' -cf - causalvideovae) | tar -xf - -C "${NEW}/WF-VAE"
    if [[ -f "${REFERENCE}/LICENSE" ]]; then cp "${REFERENCE}/LICENSE" "${NEW}/WF-VAE/"; fi
    if git -C "${REFERENCE}" rev-parse HEAD >/dev/null 2>&1; then
        git -C "${REFERENCE}" rev-parse HEAD >"${NEW}/WF-VAE/COMMIT"
    fi
fi

# what one device call carries: the working tree that travels (tracked and untracked-not-ignored files) plus this
tree_bytes=$(cd "${REPO}" && git ls-files -z -co --exclude-standard | xargs -0 -r stat -c %s 2>/dev/null \
             | awk '{s += $1} END {print s + 0}')
carry_bytes=$(du -sb "${NEW}" | cut -f1)
total_mib=$(( (tree_bytes + carry_bytes + 1048575) / 1048576 ))
if [[ "${REFERENCE}" != none ]]; then
    echo "gpu_carry: packed ${PINS[*]} and the original's causalvideovae/ from ${REFERENCE}"
else
    echo "gpu_carry: packed ${PINS[*]}"
fi
echo "gpu_carry: working tree $(( tree_bytes / 1048576 )) MiB + .gpu_carry $(( carry_bytes / 1048576 )) MiB = ${total_mib} MiB to carry (limit ${LIMIT_MIB} MiB)"
if (( total_mib > LIMIT_MIB )); then
    echo "gpu_carry: that is over the ${LIMIT_MIB} MiB one call may carry; pack PyAV and the original for separate calls" \
         "(--with_av --reference_repo none, then --reference_repo DIR without --with_av)" >&2
    exit 2
fi
rm -rf "${CARRY}"
mv "${NEW}" "${CARRY}"
ref_arg=none
[[ "${REFERENCE}" != none ]] && ref_arg=.gpu_carry/WF-VAE
if [[ "${WITH_AV}" == 1 ]]; then
    cases="environment bf16_psnr train_resume train_fp16"
else
    cases="environment chunk_budget train_memory"
fi
# the device tool brings back at most 8 files from $OUT: the check writes its folder elsewhere and one archive
# of it comes back (gpu_check.json is also printed, so the summary is in the command's output either way)
echo "gpu_carry: on the GPU machine (carry .gpu_carry), from the repository root:"
echo "  bash benchmarks/gpu_check.sh --wheels .gpu_carry/wheels --reference_repo ${ref_arg} --out /tmp/gpu_check" \
     "--cases ${cases}; rc=\$?; tar -czf \"\$OUT/gpu_check.tgz\" -C /tmp gpu_check; cat /tmp/gpu_check/gpu_check.json; exit \$rc"
