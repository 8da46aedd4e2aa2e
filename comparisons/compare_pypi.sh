#!/usr/bin/env bash
# xarena's variants against the public PyPI implementations (comparisons/pypi_baselines.py:
# lucidrains' packages and others, each core wrapped in xarena's projections where the
# package has one), at the same shapes, scope, threads and timing protocol, forward,
# f32, on the CPU.
#
# A shared VM's speed drifts by 10-20% between runs, so the two sides are interleaved
# over ROUNDS rounds (xarena, packages, xarena, ...); comparisons/compare_pypi_summary.py sets
# them side by side in $OUT/summary.md.
#
#   bash comparisons/compare_pypi.sh --seq 256 --min-time 0.1
#   ROUNDS=3 THREADS=2 OUT=docs/results/pypi-compare bash comparisons/compare_pypi.sh \
#       --seq 1024,2048,4096 --batch 1
#   VARIANTS=linformer,performer,nystromformer,linear-transformer,set-transformer,switch,moe-top2 \
#       ROUNDS=3 THREADS=2 OUT=docs/results/pypi-compare-others bash comparisons/compare_pypi.sh \
#       --seq 1024,2048,4096 --batch 1
#
# VARIANTS (comma separated) picks the variants, default local,reformer,routing,sinkhorn.
# switch and moe-top2 are compared at scope `block` (a pre-norm block whose FFN is the
# mixture of experts), the others at scope `attention`; xarena runs once per scope in
# each round, into xarena-<r> (attention) and xarena-<r>-block (block).
#
# Extra arguments go to both sides, so they must be ones both take: --seq, --batch,
# --heads, --head-dim, --min-time, --warmup, --min-iters, --max-iters. Needs a release
# build (`cargo build --release`), `bash ci/setup.sh` and `bash ci/setup-baselines.sh`
# (run here if needed).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rounds=${ROUNDS:-3}
threads=${THREADS:-1}
out=${OUT:-results/pypi-compare}
variants=${VARIANTS:-local,reformer,routing,sinkhorn}

# Split the variants by scope (the Python side knows each variant's scope itself).
attention=() block=()
IFS=, read -r -a all <<<"$variants"
for v in "${all[@]}"; do
  case $v in
    switch | moe-top2) block+=("$v") ;;
    '') ;;
    *) attention+=("$v") ;;
  esac
done
join() { local IFS=,; echo "$*"; }

site=$(cat .libtorch-site)
XARENA_BASELINES=$(bash ci/setup-baselines.sh)
export XARENA_BASELINES
rm -rf "$out"
mkdir -p "$out"
for r in $(seq 1 "$rounds"); do
  if [ ${#attention[@]} -gt 0 ]; then
    ./target/release/xarena run --variants "$(join "${attention[@]}")" --scope attention \
      --threads "$threads" "$@" --out "$out/xarena-$r" --no-report
  fi
  if [ ${#block[@]} -gt 0 ]; then
    ./target/release/xarena run --variants "$(join "${block[@]}")" --scope block \
      --threads "$threads" "$@" --out "$out/xarena-$r-block" --no-report
  fi
  PYTHONPATH=$site python3 comparisons/pypi_baselines.py --variants "$variants" \
    --threads "$threads" "$@" --out "$out/pypi-$r.jsonl"
done
python3 comparisons/compare_pypi_summary.py "$out" "$rounds" | tee "$out/summary.md"
