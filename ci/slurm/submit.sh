#!/usr/bin/env bash
# Submits a sweep to Slurm in SHARDS shards, one GPU each (ci/slurm/sweep-array.sh as a job
# array), and the merge + report job (ci/slurm/merge-report.sh) to run after all of them
# succeed. Run from a login node with the binary built:
#
#   cargo build --release -p xarena-bench
#   bash ci/slurm/submit.sh ci/sweeps/nightly-gpu.toml 8 results/cluster-1
#   SBATCH_PARTITION=gpu SBATCH_ACCOUNT=me bash ci/slurm/submit.sh SWEEP SHARDS
#
# RUN_DIR defaults to results/<UTC time>; any further arguments go to `xarena run` (not
# --shard, --device, --out: set here). Submitting again with the same RUN_DIR resumes the
# shards that did not finish.
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
  die "no xarena binary at ${XARENA_BIN:-target/release/xarena}: cargo build --release -p xarena-bench first"
# Slurm does not create the directories of --output.
mkdir -p "$run/logs"
run=$(cd "$run" && pwd)

array=$(sbatch --parsable --chdir="$repo" --array="0-$((n - 1))" --output="$run/logs/shard-%a.out" \
  ci/slurm/sweep-array.sh "$sweep" "$run" "$@")
array=${array%%;*} # --parsable prints "id" or "id;cluster"
merge=$(sbatch --parsable --chdir="$repo" --dependency="afterok:$array" --kill-on-invalid-dep=yes \
  --output="$run/logs/merge.out" ci/slurm/merge-report.sh "$run" "$n")
merge=${merge%%;*}
echo "sweep array job $array ($n shards) -> $run/shard-*; merge + report job $merge -> $run/merged, $run/report"
