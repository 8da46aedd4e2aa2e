#!/usr/bin/env bash
# xarena's local, reformer, routing and sinkhorn against the public PyPI implementations
# (bench/pypi_patterns.py: local-attention, reformer-pytorch, routing-transformer,
# sinkhorn-transformer, each core wrapped in xarena's projections), at the same shapes,
# threads and timing protocol, forward, f32, on the CPU.
#
# A shared VM's speed drifts by 10-20% between runs, so the two sides are interleaved
# over ROUNDS rounds (xarena, packages, xarena, ...); bench/compare_pypi_summary.py sets
# them side by side in $OUT/summary.md.
#
#   bash bench/compare_pypi.sh --seq 256 --min-time 0.1
#   ROUNDS=3 THREADS=2 OUT=docs/results/pypi-compare bash bench/compare_pypi.sh \
#       --seq 1024,2048,4096 --batch 1
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
variants=local,reformer,routing,sinkhorn
site=$(cat .libtorch-site)
XARENA_BASELINES=$(bash ci/setup-baselines.sh)
export XARENA_BASELINES
rm -rf "$out"
mkdir -p "$out"
for r in $(seq 1 "$rounds"); do
  ./target/release/xarena run --variants "$variants" --threads "$threads" "$@" \
    --out "$out/xarena-$r" --no-report
  PYTHONPATH=$site python3 bench/pypi_patterns.py --variants "$variants" \
    --threads "$threads" "$@" --out "$out/pypi-$r.jsonl"
done
python3 bench/compare_pypi_summary.py "$out" "$rounds" | tee "$out/summary.md"
