"""The gate measurement's two helpers (comparisons/gate_rates.sh).

first-round RUN OUT: OUT/results.jsonl holds RUN's records as a single-round run would
have written them: each case's first round's latency, no rounds.

summary DIR PAIRS ROUNDS: the false-alarm rate (A/A) and the power at each slowdown, per
rule and threshold, as a Markdown table, from DIR/compare/*.json; every case comparison
also goes to DIR/comparisons.csv (one row each: pair, slowdown, rule, threshold, case,
ratio, verdict).
"""
import json
import math
import os
import sys


def first_round(run, out):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(run, "results.jsonl")) as f, open(
        os.path.join(out, "results.jsonl"), "w"
    ) as g:
        for line in f:
            r = json.loads(line)
            rounds = r.pop("rounds", None)
            if rounds:
                first = min(rounds["visits"], key=lambda v: v["round"])
                r["latency"] = first["latency"]
                r["machine"] = first.get("machine")
                if r["machine"] is None:
                    del r["machine"]
            g.write(json.dumps(r) + "\n")


def wilson(k, n, z=1.96):
    """95% Wilson interval of a proportion k/n."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


def summary(d, pairs, rounds):
    rules = [("rounds", t) for t in (0, 2, 5, 10)] + [("single", t) for t in (10, 20, 50)]
    slowdowns = ["0", "0.1", "0.2", "0.5"]
    print(f"Pairs: {pairs}; rounds per run: {rounds}; cases per run: the sweep's.\n")
    head = "| rule | threshold | false alarms (A/A) | caught at +10% | caught at +20% | caught at +50% | median ratio seen at +20% |"
    print(head)
    print("|" + "---|" * 7)
    rows = open(os.path.join(d, "comparisons.csv"), "w")
    rows.write("pair,slowdown,rule,threshold_percent,case,ratio,verdict\n")
    for rule, t in rules:
        cells = []
        ratios20 = []
        for s in slowdowns:
            k = n = 0
            for p in range(1, pairs + 1):
                path = os.path.join(d, "compare", f"{p}-{s}-{rule}-{t}.json")
                if not os.path.exists(path):
                    continue
                c = json.load(open(path))
                for case in c["cases"]:
                    lat = case.get("latency")
                    if lat is None:
                        continue
                    n += 1
                    k += lat["verdict"] == "regression"
                    rows.write(
                        f'{p},{s},{rule},{t},"{case["case"]}",{lat["ratio"]:.4f},{lat["verdict"]}\n'
                    )
                    if s == "0.2":
                        ratios20.append(lat["ratio"])
            lo, hi = wilson(k, n)
            cells.append(f"{k}/{n} = {100 * k / max(n, 1):.0f}% [{100 * lo:.0f}-{100 * hi:.0f}]")
        ratios20.sort()
        med = ratios20[len(ratios20) // 2] if ratios20 else float("nan")
        name = "rounds (intervals)" if rule == "rounds" else "single round (spread)"
        print(f"| {name} | {t}% | " + " | ".join(cells) + f" | {med:.3f} |")
    print(
        "\nEach cell: case comparisons flagged as a regression / case comparisons, with the "
        "95% Wilson interval of the rate in brackets. A/A: two runs of the same commit; "
        "+X%: NEW's every timed step slowed by X% (XARENA_TEST_SLOWDOWN)."
    )


if __name__ == "__main__":
    if sys.argv[1] == "first-round":
        first_round(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "summary":
        summary(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
    else:
        sys.exit(f"unknown command {sys.argv[1]}")
