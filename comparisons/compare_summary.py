#!/usr/bin/env python3
"""Sets xarena and PyTorch side by side after comparisons/compare_pytorch.sh.

Two statistics per case and side, over the interleaved rounds:
* the median of the rounds' medians: the typical time, as the tables report it;
* the smallest p10 of any round: the time with the least interference. On a shared VM,
  noise only ever adds time, so this is the closer estimate of what the computation
  itself costs, and the fairer one for asking whether the harness adds anything.

    python3 comparisons/compare_summary.py results/pytorch-compare 5
"""

import json
import statistics
import sys
from pathlib import Path

FIELDS = ("variant", "seq_len", "batch", "heads", "head_dim", "causal", "dtype", "mode")


def collect(out: Path, rounds: int):
    xa, pt = {}, {}
    for r in range(1, rounds + 1):
        for line in open(out / f"xarena-{r}" / "results.jsonl"):
            rec = json.loads(line)
            if rec["status"] == "ok":
                key = tuple(rec["key"][f] for f in FIELDS)
                xa.setdefault(key, []).append(rec["latency"])
        for line in open(out / f"pytorch-{r}.jsonl"):
            rec = json.loads(line)
            pt.setdefault(tuple(rec[f] for f in FIELDS), []).append(rec["latency"])
    return xa, pt


def main() -> None:
    out, rounds = Path(sys.argv[1]), int(sys.argv[2])
    xa, pt = collect(out, rounds)
    print(f"{rounds} interleaved rounds. Typical: median of the rounds' medians. "
          "Best: smallest p10 of any round. Times in ms.\n")
    print("| variant | N | batch | dtype | mode | causal | xarena typical | PyTorch typical "
          "| ratio | xarena best | PyTorch best | ratio |")
    print("|---|---:|---:|---|---|---|---:|---:|---:|---:|---:|---:|")
    worst = {"typical": 0.0, "best": 0.0}
    for key in sorted(xa, key=lambda k: (k[1], k[0])):
        if key not in pt:
            continue
        typ = [statistics.median(l["median_s"] for l in side[key]) for side in (xa, pt)]
        best = [min(l["p10_s"] for l in side[key]) for side in (xa, pt)]
        worst["typical"] = max(worst["typical"], abs(typ[0] / typ[1] - 1))
        worst["best"] = max(worst["best"], abs(best[0] / best[1] - 1))
        v, n, batch, _, _, causal, dtype, mode = key
        print(f"| {v} | {n} | {batch} | {dtype} | {mode} | {'yes' if causal else 'no'} "
              f"| {typ[0] * 1e3:.2f} | {typ[1] * 1e3:.2f} | {typ[0] / typ[1]:.3f} "
              f"| {best[0] * 1e3:.2f} | {best[1] * 1e3:.2f} | {best[0] / best[1]:.3f} |")
    print(f"\nlargest |ratio - 1|: typical {worst['typical']:.3f}, best {worst['best']:.3f}")


if __name__ == "__main__":
    main()
