#!/usr/bin/env bash
# Submits a sweep to Slurm in SHARDS shards, one GPU each (CPU nodes: see below), as a job
# array of ci/slurm/sweep-array.sh, and the merge + report job (ci/slurm/merge-report.sh)
# to run after all of them succeed. Run from a login node with the binary built:
#
#   cargo build --release -p xarena-cli
#   bash ci/slurm/submit.sh ci/sweeps/nightly-gpu.toml 8 results/cluster-1
#   SBATCH_PARTITION=gpu SBATCH_ACCOUNT=me bash ci/slurm/submit.sh SWEEP SHARDS
#
# RUN_DIR defaults to results/<UTC time>; any further arguments go to `xarena run` (not
# --shard, --device, --out: set here). Submitting again with the same RUN_DIR resumes the
# shards that did not finish.
#
# CPU nodes: XARENA_DEVICE=cpu runs every shard on the CPU and submits the array without
# the script's GPU request (--gres=none: Slurm refuses a job asking for a gres the cluster
# lacks); XARENA_SLURM_CPUS sets the CPUs per shard (the script's 8 can exceed a node,
# and the job then pends for ever):
#
#   XARENA_DEVICE=cpu XARENA_SLURM_CPUS=2 bash ci/slurm/submit.sh ci/sweeps/quick-cpu.toml 4
#
# XARENA_SLURM_GRES replaces the array's gres on any cluster (e.g. gpu:a100:1, or none).
set -euo pipefail

die() {
  printf 'ci/slurm/submit.sh: %s\n' "$*" >&2
  exit 2
}
[ $# -ge 2 ] || die "usage: ci/slurm/submit.sh SWEEP SHARDS [RUN_DIR [xarena run flags...]]"
sweep=$1
n=$2
run=${3:-results/$(date -u +%Y-%m-%dT%H-%M-%SZ)}
shift $(($# < 3 ? $# : 3))
[[ $n =~ ^[1-9][0-9]*$ ]] || die "SHARDS must be a positive integer, got '$n'"
[ -f "$sweep" ] || die "no sweep file $sweep"
command -v sbatch >/dev/null || die "sbatch not found: run this on a Slurm login node"

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$repo"
[ -x "${XARENA_BIN:-target/release/xarena}" ] ||
  die "no xarena binary at ${XARENA_BIN:-target/release/xarena}: cargo build --release -p xarena-cli first"
# The array's device and resources; the job inherits XARENA_DEVICE (sbatch exports the
# environment) so that sweep-array.sh runs on what was asked for here.
export XARENA_DEVICE=${XARENA_DEVICE:-cuda:0}
[[ $XARENA_DEVICE =~ ^(cpu|cuda(:[0-9]+)?)$ ]] ||
  die "XARENA_DEVICE must be cpu, cuda or cuda:N, got '$XARENA_DEVICE'"
gres=${XARENA_SLURM_GRES:-}
[ -z "$gres" ] && [ "$XARENA_DEVICE" = cpu ] && gres=none
resources=()
[ -z "$gres" ] || resources+=("--gres=$gres")
if [ -n "${XARENA_SLURM_CPUS:-}" ]; then
  [[ $XARENA_SLURM_CPUS =~ ^[1-9][0-9]*$ ]] ||
    die "XARENA_SLURM_CPUS must be a positive integer, got '$XARENA_SLURM_CPUS'"
  resources+=("--cpus-per-task=$XARENA_SLURM_CPUS")
fi
# Slurm does not create the directories of --output.
mkdir -p "$run/logs"
run=$(cd "$run" && pwd)

array=$(sbatch --parsable --chdir="$repo" --array="0-$((n - 1))" --output="$run/logs/shard-%a.out" \
  "${resources[@]}" ci/slurm/sweep-array.sh "$sweep" "$run" "$@")
array=${array%%;*} # --parsable prints "id" or "id;cluster"
merge=$(sbatch --parsable --chdir="$repo" --dependency="afterok:$array" --kill-on-invalid-dep=yes \
  --output="$run/logs/merge.out" ci/slurm/merge-report.sh "$run" "$n")
merge=${merge%%;*}
echo "sweep array job $array ($n shards) -> $run/shard-*; merge + report job $merge -> $run/merged, $run/report"
