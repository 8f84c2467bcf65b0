#!/usr/bin/env bash
# Step 1 of validation: reconstruct a folder of videos with a trained VAE.
#
#   bash examples/gen_video.sh                                  # spec defaults below
#   CKPT=results/my_run DATASET_DIR=/data/k400_val bash examples/gen_video.sh
#   FORMAT=mkv bash examples/gen_video.sh                       # lossless FFV1 instead of H.264
#
# Every variable may be set from the environment. Output layout (read by examples/eval.sh):
#   video_gen/${EXP_NAME}_sr${SAMPLE_RATE}_nf${NUM_FRAMES}_res${RESOLUTION}_subset${SUBSET_SIZE}/<relative path>
#   .../origin/<relative path>   the ground truth exactly as fed to the model
# With several GPUs (or NPROC set) the work is sharded over processes with torchrun.
set -euo pipefail

# Experiment name
: "${EXP_NAME:=test}"
# Video parameters
: "${SAMPLE_RATE:=1}"
: "${NUM_FRAMES:=33}"
: "${RESOLUTION:=256}"
# Model weights (a model dir, a .ckpt or a .safetensors with CONFIG)
: "${CKPT:=ckpt}"
# Select subset size (0 for full set)
: "${SUBSET_SIZE:=0}"
# Dataset directory
: "${DATASET_DIR:=test_video}"
# Extras: output format (mp4 | mkv | png), encoder/decoder chunks, precision, in-memory metrics
: "${FORMAT:=mp4}"
: "${DTYPE:=fp32}"
: "${CHUNK_SIZE:=}"
: "${DECODE_CHUNK_SIZE:=}"
: "${METRICS:=}"
: "${CONFIG:=}"
# Python that has wfvae installed
: "${PYTHON:=python}"

OUT_DIR="video_gen/${EXP_NAME}_sr${SAMPLE_RATE}_nf${NUM_FRAMES}_res${RESOLUTION}_subset${SUBSET_SIZE}"

args=(
    --real_video_dir "${DATASET_DIR}"
    --generated_video_dir "${OUT_DIR}"
    --ckpt "${CKPT}"
    --sample_rate "${SAMPLE_RATE}"
    --num_frames "${NUM_FRAMES}"
    --resolution "${RESOLUTION}"
    --subset_size "${SUBSET_SIZE}"
    --format "${FORMAT}"
    --dtype "${DTYPE}"
    --sample_fps 24
    --output_origin
)
[[ -n "${CHUNK_SIZE}" ]] && args+=(--chunk_size "${CHUNK_SIZE}")
[[ -n "${DECODE_CHUNK_SIZE}" ]] && args+=(--decode_chunk_size "${DECODE_CHUNK_SIZE}")
[[ -n "${METRICS}" ]] && args+=(--metrics "${METRICS}")
[[ -n "${CONFIG}" ]] && args+=(--config "${CONFIG}")

if [[ -z "${NPROC:-}" ]]; then
    NPROC=$("${PYTHON}" -c "import torch; print(max(1, torch.cuda.device_count()))")
fi
if [[ "${NPROC}" -gt 1 ]]; then
    "${PYTHON}" -m torch.distributed.run --nproc_per_node "${NPROC}" -m wfvae.inference.reconstruct "${args[@]}" "$@"
else
    "${PYTHON}" -m wfvae.inference.reconstruct "${args[@]}" "$@"
fi
