#!/usr/bin/env bash
# Runs a sweep on every GPU of one node: one `xarena run --shard i/N` per visible GPU, each
# shown only its GPU (CUDA_VISIBLE_DEVICES) as cuda:0, all at once, then merges the
# shards and writes the report.
#
#   bash ci/multi-gpu.sh SWEEP RUN_DIR [xarena run flags...]
#   CUDA_VISIBLE_DEVICES=0,1 bash ci/multi-gpu.sh ci/sweeps/nightly-gpu.toml results/node
#
# GPUs: those in CUDA_VISIBLE_DEVICES when it is set, else every GPU `nvidia-smi -L` lists.
# Shard i writes RUN_DIR/shard-i (its log: RUN_DIR/logs/shard-i.log). Running the same
# command again resumes shards that did not finish. XARENA_BIN names the binary (default:
# target/release/xarena).
set -euo pipefail

die() {
  printf 'ci/multi-gpu.sh: %s\n' "$*" >&2
  exit 2
}
[ $# -ge 2 ] || die "usage: ci/multi-gpu.sh SWEEP RUN_DIR [xarena run flags...]"
sweep=$1
run=$2
shift 2
[ -f "$sweep" ] || die "no sweep file $sweep"
bin=${XARENA_BIN:-target/release/xarena}
[ -x "$bin" ] || die "no xarena binary at $bin: build it (cargo build --release -p xarena-cli) or set XARENA_BIN"
xarena() { "$bin" "$@"; }

if [ -n "${CUDA_VISIBLE_DEVICES+set}" ]; then
  IFS=, read -ra gpus <<<"$CUDA_VISIBLE_DEVICES"
  # CUDA reads an invalid first entry (-1, NoDevFiles) as "no GPU".
  [[ ${gpus[0]:-} =~ ^(-1|NoDevFiles)?$ ]] && gpus=()
else
  command -v nvidia-smi >/dev/null || die "no CUDA_VISIBLE_DEVICES and no nvidia-smi: cannot count the GPUs"
  count=$(nvidia-smi -L | grep -c '^GPU ' || true)
  gpus=()
  for ((i = 0; i < count; i++)); do gpus+=("$i"); done
fi
n=${#gpus[@]}
[ "$n" -gt 0 ] || die "no GPU visible"
[ ! -e "$run/merged" ] || die "$run/merged exists: this run was merged already"

mkdir -p "$run/logs"
pids=()
# An interrupt stops the shards this script started; what they recorded stays.
trap 'kill "${pids[@]}" 2>/dev/null || true' INT TERM
for ((i = 0; i < n; i++)); do
  resume=()
  [ -f "$run/shard-$i/results.jsonl" ] && resume=(--resume)
  # Each shard sees one GPU, as cuda:0: the device is part of every case's key, so all
  # shards must name the same device for their slices to partition one sweep.
  CUDA_VISIBLE_DEVICES=${gpus[$i]} xarena run --sweep "$sweep" --shard "$i/$n" --device cuda:0 --out "$run/shard-$i" --reuse-worker --no-report "${resume[@]}" "$@" \
    >"$run/logs/shard-$i.log" 2>&1 &
  pids+=($!)
  echo "shard $i/$n on GPU ${gpus[$i]} (pid $!) -> $run/shard-$i" >&2
done

failed=()
for ((i = 0; i < n; i++)); do
  wait "${pids[$i]}" || failed+=("$i")
done
if [ ${#failed[@]} -gt 0 ]; then
  for i in "${failed[@]}"; do
    printf 'shard %s failed; its log: %s\n' "$i" "$run/logs/shard-$i.log" >&2
    tail -n 5 "$run/logs/shard-$i.log" >&2 || true
  done
  die "${#failed[@]} of $n shard(s) failed; nothing merged. Run the same command again to resume them"
fi

shards=()
for ((i = 0; i < n; i++)); do shards+=("$run/shard-$i"); done
xarena merge "$run/merged" "${shards[@]}"
xarena report "$run/merged" --out "$run/report" --force
echo "merged $n shard(s) into $run/merged; report in $run/report" >&2
