#!/usr/bin/env bash
# The torchrun command of ONE node of a multi-node cgmed run, built from environment variables.
#
#   launch/slurm/torchrun_cmd.sh [--print] [HYDRA OVERRIDES ...]
#
# Without --print it execs the command; with --print it prints it (shell-quoted, one line) and
# exits. train_multinode.sbatch runs it once per node through srun; outside SLURM the same
# script starts each node by hand (tests/test_launch.py runs 2 "nodes" on 127.0.0.1 this way).
#
# Every input has a SLURM default, and an explicit variable wins over it:
#   NNODES         number of nodes                 ${SLURM_NNODES:-1}
#   NODE_RANK      this node's rank                ${SLURM_NODEID:-${SLURM_PROCID:-0}}
#                  (informational: the c10d rendezvous assigns the ranks itself)
#   MASTER_ADDR    rendezvous host                 first host of $SLURM_JOB_NODELIST, else 127.0.0.1
#   MASTER_PORT    rendezvous port                 20000 + SLURM_JOB_ID % 20000, else 29500
#   GPUS_PER_NODE  processes per node              $SLURM_GPUS_ON_NODE, the count in
#                                                  $SLURM_GPUS_PER_NODE ("h100:8" -> 8), else 1
#   RDZV_ID        rendezvous id                   ${SLURM_JOB_ID:-cgmed-local}
#   DISTRIBUTED    the distributed=... group       deepspeed_zero3 (set it empty to leave the
#                                                  group out, i.e. DDP)
#   CGMED_MODULE   the module torchrun starts      cgmed.train (cgmed.cg and cgmed.eval work too)
#   TORCHRUN       the torchrun executable         torchrun
#   LOCAL_ADDR     optional --local_addr: the address this node advertises to the others
#                  (set it when the host name does not resolve to a reachable address)
#
# The script can also be sourced (train_multinode.sbatch does): it then only defines the
# functions below and runs nothing.

# Fill and export the settings shared by all nodes (not NODE_RANK: each node computes its own).
cgmed_job_env() {
    NNODES="${NNODES:-${SLURM_NNODES:-1}}"
    if [[ -z "${MASTER_ADDR:-}" ]]; then
        if [[ -n "${SLURM_JOB_NODELIST:-}" ]]; then
            # all of the output, then its first line: `| head -n 1` could end scontrol with SIGPIPE,
            # which pipefail turns into a failure
            MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST")"
            MASTER_ADDR="${MASTER_ADDR%%$'\n'*}"
        else
            MASTER_ADDR=127.0.0.1
        fi
    fi
    if [[ -z "${MASTER_PORT:-}" ]]; then
        if [[ -n "${SLURM_JOB_ID:-}" ]]; then
            # a port per job: two jobs sharing a node do not collide
            MASTER_PORT=$((20000 + SLURM_JOB_ID % 20000))
        else
            MASTER_PORT=29500
        fi
    fi
    if [[ -z "${GPUS_PER_NODE:-}" ]]; then
        if [[ -n "${SLURM_GPUS_ON_NODE:-}" ]]; then
            GPUS_PER_NODE="$SLURM_GPUS_ON_NODE"
        elif [[ -n "${SLURM_GPUS_PER_NODE:-}" ]]; then
            GPUS_PER_NODE="${SLURM_GPUS_PER_NODE##*:}"
        else
            GPUS_PER_NODE=1
        fi
    fi
    RDZV_ID="${RDZV_ID:-${SLURM_JOB_ID:-cgmed-local}}"
    export NNODES MASTER_ADDR MASTER_PORT GPUS_PER_NODE RDZV_ID
}

# Fill the array CGMED_CMD with this node's torchrun command; the arguments are Hydra overrides.
cgmed_torchrun_cmd() {
    cgmed_job_env
    local node_rank="${NODE_RANK:-${SLURM_NODEID:-${SLURM_PROCID:-0}}}"
    CGMED_CMD=(
        "${TORCHRUN:-torchrun}"
        --nnodes "$NNODES"
        --nproc_per_node "$GPUS_PER_NODE"
        --node_rank "$node_rank"
        --rdzv_backend c10d
        --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT"
        --rdzv_id "$RDZV_ID"
    )
    if [[ -n "${LOCAL_ADDR:-}" ]]; then
        CGMED_CMD+=(--local_addr "$LOCAL_ADDR")
    fi
    CGMED_CMD+=(-m "${CGMED_MODULE:-cgmed.train}")
    local group="${DISTRIBUTED-deepspeed_zero3}"
    if [[ -n "$group" ]]; then
        CGMED_CMD+=("distributed=$group")
    fi
    CGMED_CMD+=("$@")
}

cgmed_torchrun_main() {
    local print=0
    if [[ "${1:-}" == "--print" ]]; then
        print=1
        shift
    fi
    cgmed_torchrun_cmd "$@"
    if ((print)); then
        printf '%q ' "${CGMED_CMD[@]}"
        printf '\n'
    else
        exec "${CGMED_CMD[@]}"
    fi
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    set -euo pipefail
    cgmed_torchrun_main "$@"
fi
