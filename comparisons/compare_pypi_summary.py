#!/usr/bin/env python3
"""Sets xarena and the PyPI packages side by side after comparisons/compare_pypi.sh.

comparisons/compare_summary.py does the same for PyTorch, but it reads `pytorch-<r>.jsonl`,
labels its columns PyTorch and has no place for a package's name or failures, so this is
its counterpart for `pypi-<r>.jsonl`. The statistics are the same, per case and side,
over the rounds:
* typical: the median of the rounds' medians, the time the tables report;
* best: the smallest p10 of any round, the time with the least interference (on a
  shared VM noise only ever adds time).
Ratios are xarena / package: below 1, xarena is faster. A case that failed on a side is
listed with the reason, so that nothing drops out silently. The scope is part of a case's
key: xarena's results of a round are read from xarena-<r> and, where there is one,
xarena-<r>-block (comparisons/compare_pypi.sh runs xarena once per scope).

    python3 comparisons/compare_pypi_summary.py docs/results/pypi-compare 3
"""

import json
import statistics
import sys
from pathlib import Path

FIELDS = ("variant", "scope", "seq_len", "batch", "heads", "head_dim")


def collect(out: Path, rounds: int):
    """Latencies per case and side, failures per case, and one package record per variant."""
    xa, pkg, failed, info = {}, {}, {}, {}
    for r in range(1, rounds + 1):
        runs = [out / name / "results.jsonl" for name in (f"xarena-{r}", f"xarena-{r}-block")]
        runs = [path for path in runs if path.is_file()]
        if not runs:
            sys.exit(f"compare_pypi_summary: no xarena-{r}/results.jsonl or "
                     f"xarena-{r}-block/results.jsonl in {out}")
        for line in (line for path in runs for line in open(path)):
            rec = json.loads(line)
            key = tuple(rec["key"][f] for f in FIELDS)
            if rec["status"] == "ok":
                xa.setdefault(key, []).append(rec["latency"])
            else:
                why = f"xarena {rec['status']}: {rec.get('message') or ''}".rstrip(": ")
                failed.setdefault(key, set()).add(why)
        for line in open(out / f"pypi-{r}.jsonl"):
            rec = json.loads(line)
            key = tuple(rec[f] for f in FIELDS)
            # One record per variant for its name and settings, preferably one with settings.
            if "settings" not in info.get(rec["variant"], {}):
                info[rec["variant"]] = rec
            if rec["status"] == "ok":
                pkg.setdefault(key, []).append(rec["latency"])
            else:
                failed.setdefault(key, set()).add(f"package: {rec['message']}")
    return xa, pkg, failed, info


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.2f}"


def main() -> None:
    out, rounds = Path(sys.argv[1]), int(sys.argv[2])
    xa, pkg, failed, info = collect(out, rounds)
    print(f"{rounds} interleaved rounds, forward, f32, CPU. Typical: median of the rounds' "
          "medians. Best: smallest p10 of any round. Times in ms; ratio = xarena / "
          "package (below 1: xarena faster).\n")
    print("| variant | scope | package | N | batch | xarena typical | package typical "
          "| ratio | xarena best | package best | ratio |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    faster = compared = 0
    for key in sorted(set(xa) | set(pkg) | set(failed)):
        v, scope, n, batch, _, _ = key
        rec = info.get(v)
        name = f"{rec['package']} {rec['package_version']}" if rec else "?"
        if key not in xa or key not in pkg:
            why = "; ".join(sorted(failed.get(key, {"missing on one side"})))
            print(f"| {v} | {scope} | {name} | {n} | {batch} | {why} | | | | | |")
            continue
        typ = [statistics.median(l["median_s"] for l in side[key]) for side in (xa, pkg)]
        best = [min(l["p10_s"] for l in side[key]) for side in (xa, pkg)]
        compared += 1
        faster += typ[0] <= typ[1]
        print(f"| {v} | {scope} | {name} | {n} | {batch} | {ms(typ[0])} | {ms(typ[1])} "
              f"| {typ[0] / typ[1]:.3f} | {ms(best[0])} | {ms(best[1])} "
              f"| {best[0] / best[1]:.3f} |")
    print(f"\nxarena's typical time is at most the package's in {faster} of {compared} cases.")
    # Failures in only some rounds leave a row computed from the others: list them all.
    for key in sorted(failed):
        print(f"- failed at {dict(zip(FIELDS, key))}: {'; '.join(sorted(failed[key]))}")
    print("\nPackage settings (sizes at the N shown, the records have every N; "
          "`differences_from_xarena` in the records lists what still differs):\n")
    for v in sorted(info):
        s = info[v].get("settings")
        if s:
            kwargs = ", ".join(f"{k}={val}" for k, val in s["kwargs"].items())
            print(f"- {v} (scope {info[v]['scope']}), N={info[v]['seq_len']}: "
                  f"{s['core']}({kwargs})")
            if s.get("timed"):
                print(f"  timed: {s['timed']}")


if __name__ == "__main__":
    main()
