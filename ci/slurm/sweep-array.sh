#!/usr/bin/env bash
# One shard of a sweep per Slurm array task, one GPU per task. ci/slurm/submit.sh submits
# it with --array=0-(N-1) and the merge job after it; by hand:
#
#   sbatch --array=0-3 ci/slurm/sweep-array.sh SWEEP RUN_DIR [xarena run flags...]
#
# Task i of N runs `xarena run --shard i/N` into RUN_DIR/shard-i on the GPU Slurm gave
# it (cuda:0: Slurm sets CUDA_VISIBLE_DEVICES to that one GPU). A requeued or resubmitted
# task resumes its shard: cases already recorded are skipped, none is lost.
# XARENA_BIN names the binary (default: target/release/xarena of the submit directory).
# XARENA_DEVICE names the device (default cuda:0); on CPU nodes set XARENA_DEVICE=cpu and
# submit without the GPU this script asks for (ci/slurm/submit.sh does both, see there).
#
# Partition, account and limits: edit the lines below or set SBATCH_PARTITION,
# SBATCH_ACCOUNT, SBATCH_TIMELIMIT (sbatch reads them).
#SBATCH --job-name=xarena-sweep
#SBATCH --ntasks=1
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --requeue
#SBATCH --output=slurm-%x-%A_%a.out
set -euo pipefail

die() {
  printf 'ci/slurm/sweep-array.sh: %s\n' "$*" >&2
  exit 2
}
[ $# -ge 2 ] || die "usage: sbatch --array=0-(N-1) ci/slurm/sweep-array.sh SWEEP RUN_DIR [xarena run flags...]"
sweep=$1
run=$2
shift 2

[ -n "${SLURM_ARRAY_TASK_ID:-}" ] || die "not a Slurm array task: submit with sbatch --array=0-(N-1), or use ci/slurm/submit.sh"
i=$SLURM_ARRAY_TASK_ID
n=${SLURM_ARRAY_TASK_COUNT:?}
# --shard i/N covers the sweep only if the tasks are exactly 0..N-1.
if [ "${SLURM_ARRAY_TASK_MIN:-0}" != 0 ] || [ "${SLURM_ARRAY_TASK_MAX:-$((n - 1))}" != $((n - 1)) ]; then
  die "the array must be 0-$((n - 1)) with step 1 (got ${SLURM_ARRAY_TASK_MIN:-?}-${SLURM_ARRAY_TASK_MAX:-?} for $n tasks): shards would be missed"
fi

# sbatch runs a copy of this script from its spool directory: paths are relative to the
# directory the job was submitted from.
cd "${SLURM_SUBMIT_DIR:-.}"
bin=${XARENA_BIN:-target/release/xarena}
[ -x "$bin" ] || die "no xarena binary at $bin: build it (cargo build --release -p xarena-cli) or set XARENA_BIN"
[ -f "$sweep" ] || die "no sweep file $sweep"
xarena() { "$bin" "$@"; }
# Every shard must name the same device: it is part of a case's key, and the merge
# combines slices of one sweep.
device=${XARENA_DEVICE:-cuda:0}

out=$run/shard-$i
resume=()
[ -f "$out/results.jsonl" ] && resume=(--resume)
echo "xarena shard $i/$n on $device (CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-?}, $(hostname)) -> $out" >&2
xarena run --sweep "$sweep" --shard "$i/$n" --device "$device" --out "$out" --reuse-worker --no-report "${resume[@]}" "$@"
