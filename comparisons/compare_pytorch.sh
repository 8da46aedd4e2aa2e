#!/usr/bin/env bash
# xarena's vanilla and sdpa against the same computation in PyTorch from Python
# (comparisons/pytorch_baseline.py), at the same shapes, threads and timing protocol.
#
# A shared VM's speed drifts by 10-20% between runs, so the two sides are interleaved
# over ROUNDS rounds (xarena, PyTorch, xarena, ...); comparisons/compare_summary.py sets them
# side by side.
#
#   bash comparisons/compare_pytorch.sh --seq 256,512,1024,2048 --batch 2
#   ROUNDS=5 THREADS=2 OUT=results/pytorch-compare bash comparisons/compare_pytorch.sh --seq 1024
#
# Extra arguments go to `xarena run` (shapes, dtype, mode, --causal); needs a release
# build (`cargo build --release`) and `bash ci/setup.sh`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rounds=${ROUNDS:-3}
threads=${THREADS:-1}
out=${OUT:-results/pytorch-compare}
site=$(cat .libtorch-site)
rm -rf "$out"
mkdir -p "$out"
for r in $(seq 1 "$rounds"); do
  ./target/release/xarena run --variants vanilla,sdpa --threads "$threads" "$@" \
    --out "$out/xarena-$r" --no-report
  PYTHONPATH=$site python3 comparisons/pytorch_baseline.py --threads "$threads" \
    --compare "$out/xarena-$r/results.jsonl" --out "$out/pytorch-$r.jsonl" >/dev/null
done
python3 comparisons/compare_summary.py "$out" "$rounds" | tee "$out/summary.md"
