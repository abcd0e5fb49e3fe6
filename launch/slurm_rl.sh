#!/bin/bash
# RL of APR on a Slurm allocation: a Ray head on the first node, Ray workers on the others, then the driver.
#   sbatch launch/slurm_rl.sh +rl=paper init=runs/sft/paper_apr/final data.dir=data/countdown_n4_paper \
#       engine.device=cuda dist.num_rollout_workers=15 dist.worker_gpus=1 \
#       dist.learner_gpus=0.5 dist.ref_gpus=0.5 dist.placement.strategy=PACK
# runs, on the first node:  python -m apr.cli.rl "$@" dist=ray_cluster dist.address=<head>:6379
# Resources assumed (edit the #SBATCH lines): 2 nodes x 8 GPUs x 32 CPUs, 24 h; the repository (with
# .venv installed: `make install`, plus a CUDA torch) at the submit directory on a file system every
# node sees: actors read `init` and `data.dir` by path and the learner writes checkpoints into
# `run_dir` from whichever node it runs on. Cost: the paper's 150 GRPO steps of the 228M model take
# several hours on 16 GPUs (an estimate). `resume=true` in a re-submitted job continues the run; SIGTERM
# (preemption, scancel) stops the driver cleanly and the newest checkpoint stands.
#SBATCH --job-name=apr-rl
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail

cd "${SLURM_SUBMIT_DIR:-.}"
VENV=${VENV:-.venv}
PORT=${RAY_PORT:-6379}
CPUS=${SLURM_CPUS_PER_TASK:-32}
GPUS=${GPUS_PER_NODE:-8}
# Ray's token auth: one token, in ~/.ray/auth_token on the shared home directory, read by every node
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}
if [ "$RAY_AUTH_MODE" = token ]; then "$VENV/bin/ray" get-auth-token --generate >/dev/null; fi
export WANDB_MODE=${WANDB_MODE:-offline}

mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
HEAD=${NODES[0]}
HEAD_IP=$(srun --nodes=1 --ntasks=1 --overlap -w "$HEAD" hostname --ip-address | awk '{print $1}')
ADDRESS="$HEAD_IP:$PORT"
echo "[slurm_rl] Ray head $HEAD ($ADDRESS); workers: ${NODES[*]:1}"

# one long-lived `ray start --block` step per node; they end with the job
srun --nodes=1 --ntasks=1 --overlap -w "$HEAD" \
    "$VENV/bin/ray" start --head --node-ip-address="$HEAD_IP" --port="$PORT" \
    --num-cpus="$CPUS" --num-gpus="$GPUS" --include-dashboard=false --block &
sleep 15
for node in "${NODES[@]:1}"; do
    srun --nodes=1 --ntasks=1 --overlap -w "$node" \
        "$VENV/bin/ray" start --address="$ADDRESS" --num-cpus="$CPUS" --num-gpus="$GPUS" --block &
done

# wait until every node has joined (at most 5 minutes)
"$VENV/bin/python" - "$ADDRESS" "${#NODES[@]}" <<'EOF'
import sys, time
import ray
ray.init(address=sys.argv[1], logging_level="warning")
for _ in range(60):
    alive = [n for n in ray.nodes() if n["Alive"]]
    if len(alive) >= int(sys.argv[2]):
        print(f"[slurm_rl] {len(alive)} nodes, {ray.cluster_resources()}")
        sys.exit(0)
    time.sleep(5)
sys.exit(f"[slurm_rl] only {len(alive)} of {sys.argv[2]} nodes joined the Ray cluster")
EOF

# the driver runs here, on the head node; the cluster is left to the job's end (srun steps stop with it)
status=0
"$VENV/bin/python" -m apr.cli.rl "$@" dist=ray_cluster dist.address="$ADDRESS" || status=$?
"$VENV/bin/ray" stop --force >/dev/null 2>&1 || true
exit $status
