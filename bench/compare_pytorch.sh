#!/usr/bin/env bash
# xarena's vanilla and sdpa against the same computation in PyTorch from Python
# (bench/pytorch_baseline.py), at the same shapes, threads and timing protocol.
#
# A shared VM's speed drifts by 10-20% between runs, so the two sides are interleaved
# over ROUNDS rounds (xarena, PyTorch, xarena, ...) and each case's median is taken over
# the rounds' medians.
#
#   bash bench/compare_pytorch.sh --seq 256,512,1024,2048 --batch 2
#   ROUNDS=5 THREADS=2 OUT=results/pytorch-compare bash bench/compare_pytorch.sh --seq 1024
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
  PYTHONPATH=$site python3 bench/pytorch_baseline.py --threads "$threads" \
    --compare "$out/xarena-$r/results.jsonl" --out "$out/pytorch-$r.jsonl" >/dev/null
done
python3 - "$out" "$rounds" <<'PY' | tee "$out/summary.md"
import json, statistics, sys
from pathlib import Path

out, rounds = Path(sys.argv[1]), int(sys.argv[2])
fields = ("variant", "seq_len", "batch", "heads", "head_dim", "causal", "dtype", "mode")
xa, pt = {}, {}
for r in range(1, rounds + 1):
    for line in open(out / f"xarena-{r}" / "results.jsonl"):
        rec = json.loads(line)
        if rec["status"] == "ok":
            key = tuple(rec["key"][f] for f in fields)
            xa.setdefault(key, []).append(rec["latency"]["median_s"])
    for line in open(out / f"pytorch-{r}.jsonl"):
        rec = json.loads(line)
        pt.setdefault(tuple(rec[f] for f in fields), []).append(rec["latency"]["median_s"])
print(f"Median over {rounds} interleaved rounds of each side's median per-iteration time.\n")
print("| variant | N | batch | dtype | mode | causal | xarena ms | PyTorch ms | xarena / PyTorch |")
print("|---|---:|---:|---|---|---|---:|---:|---:|")
worst = 0.0
for key in sorted(xa, key=lambda k: (k[1], k[0])):
    if key not in pt:
        continue
    a, b = statistics.median(xa[key]), statistics.median(pt[key])
    worst = max(worst, abs(a / b - 1))
    v, n, batch, _, _, causal, dtype, mode = key
    print(f"| {v} | {n} | {batch} | {dtype} | {mode} | {'yes' if causal else 'no'} "
          f"| {a * 1e3:.2f} | {b * 1e3:.2f} | {a / b:.3f} |")
print(f"\nlargest |ratio - 1|: {worst:.3f}")
PY
