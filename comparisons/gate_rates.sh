#!/usr/bin/env bash
# The regression gate of `xarena compare`, measured on this machine: how often it
# flags a regression between two runs of the same commit (A/A: false alarms), and how
# often it catches a known slowdown of 10%, 20% and 50% (power), with rounds (the
# intervals decide) and without (the single-round spread rule, from each run's first
# round). The slowdown is injected by the worker's test knob XARENA_TEST_SLOWDOWN
# (bench/src/worker.rs): after every timed step it spins for that fraction of the step.
#
#   bash comparisons/gate_rates.sh                    # 20 pairs, 3 rounds
#   PAIRS=30 ROUNDS=5 OUT=results/gate bash comparisons/gate_rates.sh
#
# Each pair: one BASE run, then NEW runs at slowdowns 0 (A/A), 0.1, 0.2 and 0.5, each
# compared with BASE. Needs a release build (`cargo build --release`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
pairs=${PAIRS:-20}
rounds=${ROUNDS:-3}
out=${OUT:-results/gate}
bin=${XARENA:-./target/release/xarena}
variants=vanilla,local
run() { # DIR [SLOWDOWN]
  local spec=""
  if [ -n "${2:-}" ]; then
    spec=$(echo "$variants" | tr ',' '\n' | sed "s/^/$2@/" | paste -sd, -)
  fi
  XARENA_TEST_SLOWDOWN=$spec "$bin" run --variants "$variants" --seq 256,512 --batch 1 \
    --threads 1 --min-time 0.1 --warmup 0.05 --rounds "$rounds" --out "$1" --no-report \
    2>/dev/null
}
rm -rf "$out"
mkdir -p "$out/runs" "$out/compare"
for p in $(seq 1 "$pairs"); do
  run "$out/runs/$p-base"
  for s in 0 0.1 0.2 0.5; do
    run "$out/runs/$p-$s" "$s"
    # Single-round views of both runs (each case's first round alone).
    for side in base "$s"; do
      python3 comparisons/gate_summary.py first-round "$out/runs/$p-$side" \
        "$out/runs/$p-$side-r0"
    done
    for t in 0 2 5 10; do
      "$bin" compare "$out/runs/$p-base" "$out/runs/$p-$s" --rounds-threshold "$t" \
        --format json >"$out/compare/$p-$s-rounds-$t.json" || true
    done
    for t in 10 20 50; do
      "$bin" compare "$out/runs/$p-base-r0" "$out/runs/$p-$s-r0" --threshold "$t" \
        --format json >"$out/compare/$p-$s-single-$t.json" || true
    done
  done
  echo "gate_rates: pair $p of $pairs done" >&2
done
python3 comparisons/gate_summary.py summary "$out" "$pairs" "$rounds" | tee "$out/summary.md"
