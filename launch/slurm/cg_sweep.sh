#!/usr/bin/env bash
# The CG protocol as SLURM jobs: one `sbatch launch/slurm/train_1node.sbatch` job per target,
# each running `accelerate launch ... -m cgmed.cg cg.only=[TARGET] ...` on all GPUs of one node.
# Run it from the repository root on a login node:
#
#   launch/slurm/cg_sweep.sh ct_lung_cancer,mri_brain_diseases experiment=NAME data.root=/data/Med-MAT \
#       model.path=/models/llava-1.5-7b-hf train.precision=bf16 train.save_every=500
#
# The first argument lists the target names (cg.targets[*].name), comma-separated; the rest are
# Hydra overrides of cgmed.cg. Each target gets its own run directory, $SWEEP_DIR/TARGET
# (default runs/cg/TARGET, relative to the repository root): submitting the same command again after a failure continues there
# (cgmed-cg skips finished stages, trainings resume from their checkpoints). One report over the
# jobs, with the status of each target: cgmed-cg report runs=[$SWEEP_DIR] out=$SWEEP_DIR/report
#
# Environment: SWEEP_DIR, SBATCH_ARGS (extra sbatch options, e.g. "--partition=gpu --gpus-per-node=4"),
# ACCELERATE_CONFIG, CGMED_SETUP (passed on to train_1node.sbatch), CGMED_DRY_RUN=1 (print the
# sbatch commands instead of submitting them).
#
# One process per target instead (no accelerate): `cgmed-cg -m hydra/launcher=slurm ...`, see
# cgmed/conf/hydra/launcher/slurm.yaml and launch/README.md.
set -euo pipefail

if [[ $# -lt 1 || "$1" == -h || "$1" == --help ]]; then
    echo "usage: $0 TARGET[,TARGET...] [HYDRA OVERRIDES ...]" >&2
    exit 2
fi
IFS=, read -r -a targets <<<"$1"
shift
sweep_dir="${SWEEP_DIR:-runs/cg}"
read -r -a extra <<<"${SBATCH_ARGS:-}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

for target in "${targets[@]}"; do
    if [[ ! "$target" =~ ^[A-Za-z0-9_.-]+$ ]]; then
        echo "$0: '$target' is not a target name (letters, digits, _ . -)" >&2
        exit 2
    fi
    cmd=(
        sbatch
        --job-name "cg-$target"
        "--export=ALL,CGMED_ROOT=$root,CGMED_MODULE=cgmed.cg,RUN_DIR=$sweep_dir/$target"
        "${extra[@]}"
        "$here/train_1node.sbatch"
        "cg.only=[$target]"
        "$@"
    )
    if [[ "${CGMED_DRY_RUN:-0}" == 1 ]]; then
        printf '%q ' "${cmd[@]}"
        printf '\n'
    else
        "${cmd[@]}"
    fi
done
