#!/usr/bin/env bash
# The whole GPU batch for a lent GPU machine, in one command within a time budget
# (docs/guides/gpu.md): the environment, the device check of every variant in bf16 and f16, the
# main sweep (ci/sweeps/gpu-batch.toml: every attention variant, bf16, forward and train,
# N = 1K..16K, batch 8) with the roofline measured first, the long sweep
# (ci/sweeps/gpu-batch-long.toml: 32K..64K), the report, and one archive of it all.
#
#   bash ci/gpu-pack.sh                                   # here: .gpu/xarena
#   bash ci/gpu-batch.sh /tmp/xarena-gpu "$OUT/xarena-gpu.tar.gz"   # there
#   bash ci/gpu-batch.sh --dry-run DIR ARCHIVE            # on the CPU: same steps, tiny cases
#
# Safe to cut short: every finished case is on disk in DIR as it ends, and the archive is
# rewritten after every step and on exit, so a timeout still brings back what ran. Run
# again with the same DIR to resume (finished cases are skipped).
# XARENA_BIN names the binary (default .gpu/xarena); XARENA_BATCH_BUDGET_S the budget;
# XARENA_BATCH_EXTRA adds `xarena run` flags to both sweeps (split on spaces).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

die() {
  printf 'ci/gpu-batch.sh: %s\n' "$*" >&2
  exit 2
}
dry=0
budget=${XARENA_BATCH_BUDGET_S:-540}
while [ $# -gt 0 ]; do
  case $1 in
  --dry-run) dry=1 ;;
  --budget) budget=${2:?--budget needs seconds}; shift ;;
  -*) die "unknown option $1" ;;
  *) break ;;
  esac
  shift
done
[ $# -eq 2 ] || die "usage: ci/gpu-batch.sh [--dry-run] [--budget SECONDS] WORK_DIR ARCHIVE.tar.gz"
work=$1
archive=$2
[[ $budget =~ ^[1-9][0-9]*$ ]] || die "the budget must be a positive whole number of seconds, got '$budget'"
[[ $archive == *.tar.gz ]] || die "the archive must end in .tar.gz, got '$archive'"
bin=${XARENA_BIN:-.gpu/xarena}
[ -x "$bin" ] || die "no xarena binary at $bin: run bash ci/gpu-pack.sh first, or set XARENA_BIN"
command -v python3 >/dev/null || die "python3 is needed (it reads the sweep files' variant lists)"
mkdir -p "$work" "$(dirname "$archive")"
work=$(cd "$work" && pwd)
archive=$(cd "$(dirname "$archive")" && pwd)/$(basename "$archive")
case $archive/ in "$work"/*) die "the archive must be outside WORK_DIR" ;; esac

start=$(date +%s)
deadline=$((start + budget))
# Kept back for the report and the archive after the sweeps.
reserve=$((budget / 12 + 10))
log=$work/batch.log
phases=$work/phases.tsv
[ -f "$phases" ] || printf 'step\tstatus\tseconds\n' >"$phases"
say() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*" | tee -a "$log" >&2; }

# The binary as each step calls it: through ci/gpu-run.sh (this machine's torch/lib) on the
# GPU machine, directly in the dry run (the build machine's rpath finds LibTorch).
if [ $dry = 1 ]; then
  x=("$bin")
else
  x=(bash ci/gpu-run.sh "$bin")
fi

pack() {
  tar -czf "$archive.partial" -C "$(dirname "$work")" "$(basename "$work")" && mv "$archive.partial" "$archive"
}
trap 'pack || true' EXIT
# The step running now: `timeout`, leader of its own process group (the run and its workers).
running=
stopped() {
  say "stopped by a signal"
  if [ -n "$running" ]; then
    kill -TERM -- "-$running" 2>/dev/null || kill -TERM "$running" 2>/dev/null || true
    wait "$running" 2>/dev/null || true
  fi
  exit 143
}
trap stopped TERM INT

# step NAME SECONDS STDOUT COMMAND...: runs within its time (stdout to the file STDOUT,
# or the log for -), records how it ended, re-archives.
step() {
  local name=$1 limit=$2 stdout=$3 rc=0 t0
  shift 3
  [ "$stdout" != - ] || stdout=$log
  t0=$(date +%s)
  if [ "$limit" -le 0 ]; then
    say "$name: skipped, no time left"
    printf '%s\tskipped\t0\n' "$name" >>"$phases"
    return 0
  fi
  say "$name: up to ${limit}s"
  # Without --foreground, timeout signals its whole process group on expiry: the run and
  # its workers, so the next step finds the device free.
  # In the background and waited for, so that a signal to this script is handled at once
  # (bash defers traps while a foreground command runs, and `timeout` sits in a process
  # group of its own, out of reach of a signal to ours).
  timeout --kill-after=10 "$limit" "$@" >>"$stdout" 2>>"$log" &
  running=$!
  wait "$running" || rc=$?
  running=
  local status=ok
  [ $rc -eq 0 ] || status="exit $rc"
  [ "$name" != check ] || [ $rc -ne 1 ] || status="some variants failed"
  [ $rc -ne 124 ] || status=timeout
  say "$name: $status after $(($(date +%s) - t0))s"
  printf '%s\t%s\t%s\n' "$name" "$status" "$(($(date +%s) - t0))" >>"$phases"
  pack
}
left() { echo $((deadline - $(date +%s) - reserve)); }

variants_of() {
  python3 -c 'import sys, tomllib; print(",".join(tomllib.load(open(sys.argv[1], "rb"))["variants"]))' "$1"
}

# The dry run takes the same steps on the CPU with tiny cases: the flags override the
# sweep files' fields.
tiny=()
check_shape=(--device cuda --dtype bf16,f16)
if [ $dry = 1 ]; then
  export XARENA_ROOFLINE_SIZE=${XARENA_ROOFLINE_SIZE:-128}
  tiny=(--device cpu --variants empty,vanilla,sdpa,local --seq 64,128 --batch 1 --heads 2
    --head-dim 16 --min-time 0.01 --warmup 0 --min-iters 2 --threads 1 --roofline on --check on)
  check_shape=(--device cpu --dtype bf16 --seq 64 --heads 2 --head-dim 16 --threads 1)
fi

# run ARGS for a sweep into a directory, resuming what an earlier call left there.
read -r -a extra <<<"${XARENA_BATCH_EXTRA:-}"
sweep_args() {
  printf '%s\n' run --sweep "$1" --reuse-worker --no-report --out "$2" "${tiny[@]}" "${extra[@]}"
  [ ! -f "$2/results.jsonl" ] || echo --resume
}

say "xarena GPU batch: $bin ($(cat "$(dirname "$bin")/COMMIT" 2>/dev/null || echo unknown commit)), budget ${budget}s, dry run: $dry"
rm -f "$work/env.json"
step environment 60 "$work/env.json" "${x[@]}" env
if [ $dry = 0 ] && command -v nvidia-smi >/dev/null; then
  nvidia-smi -q >"$work/nvidia-smi.txt" 2>&1 || true
fi
check_variants=$(variants_of ci/sweeps/gpu-batch.toml)
[ $dry = 0 ] || check_variants=vanilla,local,performer
limit=$(left)
rm -f "$work/check.txt"
step check $((limit < 90 ? limit : 90)) "$work/check.txt" "${x[@]}" check --variants "$check_variants" \
  "${check_shape[@]}" --reuse-worker --out "$work/check.jsonl"
mapfile -t args < <(sweep_args ci/sweeps/gpu-batch.toml "$work/sweep")
step sweep $(($(left) - 100)) - "${x[@]}" "${args[@]}"
mapfile -t args < <(sweep_args ci/sweeps/gpu-batch-long.toml "$work/long")
step long "$(left)" - "${x[@]}" "${args[@]}"
reports=()
for d in "$work/sweep" "$work/long"; do
  [ ! -s "$d/results.jsonl" ] || reports+=("$d")
done
if [ ${#reports[@]} -gt 0 ]; then
  step report $((deadline - $(date +%s) - 5)) - "${x[@]}" report "${reports[@]}" --out "$work/report" --force
fi
say "done in $(($(date +%s) - start))s; archive $archive"
