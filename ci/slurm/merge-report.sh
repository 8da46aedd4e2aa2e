#!/usr/bin/env bash
# Merges the shards of a sharded sweep and writes its report; submitted by
# ci/slurm/submit.sh to start after every array task succeeded. By hand:
#
#   sbatch --dependency=afterok:ARRAY_JOB ci/slurm/merge-report.sh RUN_DIR SHARDS
#
# Reads RUN_DIR/shard-0 .. shard-(SHARDS-1), writes RUN_DIR/merged (the run's results)
# and RUN_DIR/report (Markdown, HTML and SVG). Needs no GPU.
#SBATCH --job-name=xarena-merge
#SBATCH --ntasks=1
#SBATCH --cpus-per-task=2
#SBATCH --time=00:30:00
#SBATCH --output=slurm-%x-%j.out
set -euo pipefail

die() {
  printf 'ci/slurm/merge-report.sh: %s\n' "$*" >&2
  exit 2
}
[ $# -eq 2 ] || die "usage: ci/slurm/merge-report.sh RUN_DIR SHARDS"
run=$1
n=$2
[[ $n =~ ^[1-9][0-9]*$ ]] || die "SHARDS must be a positive integer, got '$n'"

cd "${SLURM_SUBMIT_DIR:-.}"
bin=${XARENA_BIN:-target/release/xarena}
[ -x "$bin" ] || die "no xarena binary at $bin: build it (cargo build --release -p xarena-cli) or set XARENA_BIN"
xarena() { "$bin" "$@"; }

shards=()
missing=()
for ((i = 0; i < n; i++)); do
  if [ -f "$run/shard-$i/results.jsonl" ]; then
    shards+=("$run/shard-$i")
  else
    missing+=("$run/shard-$i")
  fi
done
[ ${#missing[@]} -eq 0 ] || die "shards without results: ${missing[*]} (resubmit them; finished cases are kept)"
# Merged results are derived from the shards, but are not overwritten silently.
[ ! -e "$run/merged" ] || die "$run/merged exists: remove it to merge again"

xarena merge "$run/merged" "${shards[@]}"
xarena report "$run/merged" --out "$run/report" --force
echo "merged $n shard(s) into $run/merged; report in $run/report" >&2
