#!/usr/bin/env bash
# Train a WF-VAE (or CausalVAE) with DDP on every visible GPU, or on CPU processes when there is none.
#
# How to run:
#   bash examples/train_ddp.sh                                   # edit VIDEO_PATH / EVAL_VIDEO_PATH below first
#   bash examples/train_ddp.sh --report_to none --max_steps 20   # extra arguments override the ones below
#   NPROC_PER_NODE=2 bash examples/train_ddp.sh ...              # choose the number of processes
#   # several nodes: run on every node with the usual torchrun rendezvous variables
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 MASTER_PORT=29500 bash examples/train_ddp.sh
#   # a generator that does not fit per GPU under DDP: shard it with FSDP (same checkpoints; see README "Scale-out")
#   bash examples/train_ddp.sh --fsdp
#   # activations that do not fit (long clips, high resolution): recompute each block in the backward pass
#   bash examples/train_ddp.sh --gradient_checkpointing
#   # CPU training: give host memory each step frees back to the OS (lower peak RSS; small tensors get slower)
#   bash examples/train_ddp.sh --release_host_memory
#   # CPU training in fp32: compute convolution gradients in whichever layout is faster on this CPU (timed once)
#   bash examples/train_ddp.sh --mix_precision fp32 --conv_backward auto
#   # after a crash or pre-emption, continue from the newest checkpoint of the run:
#   bash examples/train_ddp.sh --resume_from_checkpoint latest
#
# The arguments are validated once (paths, frame count, resolution, model config) before any worker starts.
set -euo pipefail

# W&B reads these itself; WANDB_MODE=offline or disabled works too. Use --report_to none to skip W&B.
export WANDB_PROJECT="${WANDB_PROJECT:-WFVAE}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export MKL_NUM_THREADS="${MKL_NUM_THREADS:-1}"

EXP_NAME=WFVAE
VIDEO_PATH=/path/to/train_videos
EVAL_VIDEO_PATH=/path/to/val_videos

ARGS=(
    --exp_name "${EXP_NAME}"
    --video_path "${VIDEO_PATH}"
    --eval_video_path "${EVAL_VIDEO_PATH}"
    --model_name WFVAE
    --model_config examples/configs/wfvae-large-16chn.json
    --resolution 256
    --num_frames 25
    --batch_size 1
    --lr 0.00001
    --epochs 4
    --disc_start 0
    --save_ckpt_step 5000
    --eval_steps 1000
    --eval_batch_size 1
    --eval_num_frames 33
    --eval_sample_rate 1
    --eval_subset_size 1000
    --eval_lpips
    --ema
    --ema_decay 0.999
    --perceptual_weight 1.0
    --loss_type l1
    --sample_rate 1
    --disc_cls causalvideovae.model.losses.LPIPSWithDiscriminator3D
    --wavelet_loss
    --wavelet_weight 0.1
)

# Run from the repository root so the relative paths above resolve.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python}"

# Processes per node: one per visible GPU; without a GPU, CPU processes (gloo).
if [[ -z "${NPROC_PER_NODE:-}" ]]; then
    NGPU=$("${PYTHON}" -c "import torch; print(torch.cuda.device_count())")
    if [[ "${NGPU}" -gt 0 ]]; then
        NPROC_PER_NODE=${NGPU}
    else
        NPROC_PER_NODE=${CPU_PROCS:-2}
    fi
fi

# Fail on bad arguments here, before torchrun starts any worker. Later arguments override earlier ones.
"${PYTHON}" -m wfvae.train "${ARGS[@]}" "$@" --check_only

exec "${PYTHON}" -m torch.distributed.run \
    --nnodes="${NNODES:-1}" \
    --node_rank="${NODE_RANK:-0}" \
    --nproc_per_node="${NPROC_PER_NODE}" \
    --master_addr="${MASTER_ADDR:-127.0.0.1}" \
    --master_port="${MASTER_PORT:-29512}" \
    -m wfvae.train "${ARGS[@]}" "$@"
