#!/usr/bin/env bash
# Step 2 of validation: metrics between the reconstructions written by examples/gen_video.sh and
# the ground truth it saved alongside them (in <generated dir>/origin).
#
# How to run (from the repository root):
#   bash examples/eval.sh                                   # defaults below
#   EXP_NAME=myexp METRIC=psnr,ssim,lpips bash examples/eval.sh
#   METRIC=fvd FVD_WEIGHTS=/weights/i3d_torchscript.pt bash examples/eval.sh
#
# Every variable can be set from the environment. Output: one "<metric>: <value>" line per metric
# (dataset value), plus a JSON file with per-video values.
set -euo pipefail

# Experiment name
: "${EXP_NAME:=test}"
# Video parameters (must match the ones gen_video.sh used)
: "${SAMPLE_RATE:=1}"
: "${NUM_FRAMES:=33}"
: "${RESOLUTION:=256}"
# Evaluation metric: psnr, ssim, lpips, fvd, or a comma list such as psnr,ssim,lpips
: "${METRIC:=lpips}"
# Select subset size (0 for full set)
: "${SUBSET_SIZE:=0}"
# Reconstructed videos (gen_video.sh's output folder)
: "${GENERATED_DATASET_DIR:=video_gen/${EXP_NAME}_sr${SAMPLE_RATE}_nf${NUM_FRAMES}_res${RESOLUTION}_subset${SUBSET_SIZE}}"
# Path to the ground truth videos, which can be saved during video reconstruction by setting `--output_origin`
: "${REAL_DATASET_DIR:=video_gen/${EXP_NAME}_sr${SAMPLE_RATE}_nf${NUM_FRAMES}_res${RESOLUTION}_subset${SUBSET_SIZE}/origin}"
# Frame step on the real side. The saved origin/ videos are already subsampled, so they are read
# with step 1; a raw dataset folder is read with SAMPLE_RATE.
if [[ "${REAL_DATASET_DIR%/}" == "${GENERATED_DATASET_DIR%/}/origin" ]]; then
    : "${REAL_SAMPLE_RATE:=1}"
else
    : "${REAL_SAMPLE_RATE:=${SAMPLE_RATE}}"
fi
# Optional: LPIPS trunk (alex|vgg) and local weights for it and for the FVD detector
# (empty: downloaded once into the cache; WFVAE_OFFLINE=1 forbids downloads)
: "${LPIPS_NET:=alex}"
: "${LPIPS_BACKBONE_PATH:=}"
: "${FVD_VARIANT:=styleganv}"
: "${FVD_WEIGHTS:=${WFVAE_I3D_PATH:-}}"
# Device (cuda / cpu; empty = cuda if available), videos per I3D forward, decoding workers
: "${DEVICE:=}"
: "${BATCH_SIZE:=4}"
: "${NUM_WORKERS:=2}"
# Per-video and dataset values
: "${JSON_OUT:=${GENERATED_DATASET_DIR}/metrics_${METRIC//,/_}.json}"
# Python that has wfvae installed
: "${PYTHON:=python}"

echo "real: ${REAL_DATASET_DIR}"
echo "generated: ${GENERATED_DATASET_DIR}"

args=(
    --real_video_dir "${REAL_DATASET_DIR}"
    --generated_video_dir "${GENERATED_DATASET_DIR}"
    --metric "${METRIC}"
    --sample_rate "${REAL_SAMPLE_RATE}"
    --num_frames "${NUM_FRAMES}"
    --resolution "${RESOLUTION}"
    --subset_size "${SUBSET_SIZE}"
    --batch_size "${BATCH_SIZE}"
    --num_workers "${NUM_WORKERS}"
    --lpips_net "${LPIPS_NET}"
    --fvd_variant "${FVD_VARIANT}"
    --json "${JSON_OUT}"
)
[[ -n "${DEVICE}" ]] && args+=(--device "${DEVICE}")
[[ -n "${LPIPS_BACKBONE_PATH}" ]] && args+=(--lpips_backbone_path "${LPIPS_BACKBONE_PATH}")
[[ -n "${FVD_WEIGHTS}" ]] && args+=(--fvd_weights "${FVD_WEIGHTS}")

exec "${PYTHON}" -m wfvae evaluate "${args[@]}"
