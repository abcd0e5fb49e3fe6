#!/bin/bash
# Multi-GPU supervised training: one process per GPU, with torchrun (DDP or DeepSpeed) or DeepSpeed's launcher.
#   bash launch/sft_multi_gpu.sh ddp       model=paper_228m data.dir=data/countdown_n4_paper data.solver=apr ...
#   bash launch/sft_multi_gpu.sh zero      ... # the same, ZeRO-2 (ZERO_STAGE=3 shards the weights too)
#   bash launch/sft_multi_gpu.sh deepspeed ... # DeepSpeed's own launcher (HOSTFILE=... for several nodes)
# runs (NGPUS = all visible GPUs unless set):
#   ddp:       torchrun --nnodes $NNODES --node_rank $NODE_RANK --nproc_per_node $NGPUS -m apr.cli.sft train.strategy=torch "$@"
#   zero:      torchrun ...                                                  -m apr.cli.sft train.strategy=deepspeed train.zero_stage=$ZERO_STAGE "$@"
#   deepspeed: deepspeed --num_gpus $NGPUS --module --no_local_rank apr.cli.sft train.strategy=deepspeed train.zero_stage=$ZERO_STAGE "$@"
# Resources assumed: one node with NGPUS CUDA GPUs (or NNODES nodes: run this on each with NODE_RANK and
# MASTER_ADDR set, e.g. from Slurm), the repository's .venv with a CUDA torch and the deepspeed extra.
# Batch: train.batch_rows rows per process x train.grad_accum_steps x processes (the paper: 256 rows).
# Cost: the paper's SFT (228M model, ~10 epochs of 500k N=4 APR traces, ~1.75B tokens per epoch) is of
# the order of a day on 8 A100-class GPUs (an estimate); a checkpoint every checkpoint.every_steps, and
# `resume=true` continues.
set -euo pipefail

MODE=${1:?usage: launch/sft_multi_gpu.sh ddp|zero|deepspeed [apr.cli.sft overrides...]}
shift
VENV=${VENV:-.venv}
NGPUS=${NGPUS:-$( (nvidia-smi -L 2>/dev/null || true) | wc -l)}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
ZERO_STAGE=${ZERO_STAGE:-2}
export WANDB_MODE=${WANDB_MODE:-offline}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
if [ "$NGPUS" -lt 1 ]; then
    echo "no CUDA GPU visible (set NGPUS, or train on CPU: python -m apr.cli.sft ...)" >&2
    exit 2
fi

TORCHRUN=("$VENV/bin/torchrun" --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$NGPUS"
          --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT")
case "$MODE" in
    ddp)
        exec "${TORCHRUN[@]}" -m apr.cli.sft train.strategy=torch "$@" ;;
    zero)
        exec "${TORCHRUN[@]}" -m apr.cli.sft train.strategy=deepspeed train.zero_stage="$ZERO_STAGE" "$@" ;;
    deepspeed)
        # --no_local_rank: Hydra would reject DeepSpeed's --local_rank argument (LOCAL_RANK is in the environment)
        HOSTS=()
        if [ -n "${HOSTFILE:-}" ]; then HOSTS=(--hostfile "$HOSTFILE"); fi
        exec "$VENV/bin/deepspeed" ${HOSTS[@]+"${HOSTS[@]}"} --num_gpus "$NGPUS" --master_port "$MASTER_PORT" \
            --module --no_local_rank apr.cli.sft train.strategy=deepspeed train.zero_stage="$ZERO_STAGE" "$@" ;;
    *)
        echo "unknown mode $MODE: ddp, zero or deepspeed" >&2
        exit 2 ;;
esac
