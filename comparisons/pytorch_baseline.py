#!/usr/bin/env python3
"""PyTorch-from-Python reference timings for xarena's `vanilla` and `sdpa` variants.

Why this exists
---------------
xarena measures attention through Rust (tch) bindings to LibTorch, with its own timing
harness. A reader may fairly ask whether that harness distorts the numbers. This script
runs the same computation with the same timing protocol in plain PyTorch, so the two
medians can be set side by side: close agreement (within about 10%) says the Rust
harness adds nothing of note; a larger gap has to be explained.

The computation (scope `attention` only)
----------------------------------------
* Input x: [batch, seq, d_model], d_model = heads * head_dim, drawn with randn in float32
  on the CPU, then cast to the dtype and moved to the device (as xarena draws it).
* Fused QKV projection nn.Linear(d, 3d) (with bias), then
  `.view(b, n, 3, heads, head_dim).permute(2, 0, 3, 1, 4)`: q, k, v [b, heads, n, hd].
* Core `vanilla`: `scores = (q * hd**-0.5) @ k.transpose(-2, -1)`; when causal,
  `scores.masked_fill(future, -inf)` with `future = ones(n, n, bool).triu(1)` built once
  before timing; then `scores.softmax(-1) @ v`.
* Core `sdpa`: `F.scaled_dot_product_attention(q, k, v, is_causal=causal)`.
* `y.transpose(1, 2).reshape(b, n, d)` and the output projection nn.Linear(d, d).
* Parameters are cast to the dtype (model.to(dtype)).
* Mode `forward`: one step is `model(x)` under torch.no_grad(), output dropped.
* Mode `train`: x requires grad; g, fixed random data shaped like the output, is drawn
  once; one step is `loss = (model(x) * g).sum(float32)` and
  `torch.autograd.grad(loss, params + [x])` (gradients returned, never accumulated, so
  every step does the same work). The sum is taken in float32 because xarena's step
  does `sum(Kind::Float)`.

The timing protocol (xarena's measure/src/timing.rs)
----------------------------------------------------
* Intra-op threads: --threads when given, else torch's default; the count in use is
  recorded.
* Every iteration is timed on its own with time.perf_counter(); on CUDA the device is
  synchronised before and after each one.
* Warm-up runs steps until at least --warmup seconds AND at least 2 iterations have
  passed. The per-iteration estimate is the median of the warm-up times after the first.
* Timed iterations: clamp(ceil(min_time / estimate), min_iters, max_iters).
* Reported: median, p10, p90 (linear interpolation between closest ranks, as
  numpy.percentile's default), mean, min, max, iteration counts.

One difference is inherent: xarena runs each case in a fresh worker process, while this
script runs all cases in one process one after another.

Usage
-----
  PYTHONPATH=$(cat .libtorch-site) python3 comparisons/pytorch_baseline.py \
      --variants vanilla,sdpa --seq 256,512,1024,2048 --out pytorch.jsonl
  PYTHONPATH=$(cat .libtorch-site) python3 comparisons/pytorch_baseline.py \
      --compare results/xarena.jsonl --threads 2

With --compare, the cases come from xarena's results file (every `ok` record of scope
`attention` whose variant is vanilla or sdpa, at its exact key, device included), and a
Markdown table of xarena's median against PyTorch's goes to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Callable

REPO_ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("vanilla", "sdpa")
MODES = ("forward", "train")
DTYPE_NAMES = ("f32", "bf16", "f16")
WARMUP_MIN_ITERS = 2


def import_torch():
    """Imports torch, preferring the copy xarena's LibTorch came from when it is known.

    `.libtorch-site` (written by xarena's setup) names a site-packages directory; using
    it keeps the Python and Rust sides on the same torch build.
    """
    site_file = REPO_ROOT / ".libtorch-site"
    if site_file.is_file():
        site = site_file.read_text().strip()
        if site and Path(site).is_dir() and site not in sys.path:
            sys.path.insert(0, site)
    try:
        with warnings.catch_warnings():
            # The torch wheel warns when numpy is absent; nothing here needs numpy.
            warnings.filterwarnings("ignore", message=".*NumPy.*")
            import torch
    except ImportError as e:
        sys.exit(
            f"pytorch_baseline: cannot import torch ({e}). Install PyTorch, or run with "
            f"PYTHONPATH=$(cat .libtorch-site) from the repository root."
        )
    return torch


torch = import_torch()
nn = torch.nn
F = torch.nn.functional


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def comma_list(kind: Callable[[str], object]) -> Callable[[str], list]:
    """An argparse type for `a,b,c`, each item parsed by `kind`."""

    def parse(text: str) -> list:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError("empty list")
        try:
            return [kind(t) for t in items]
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def variant_name(text: str) -> str:
    if text not in VARIANTS:
        raise ValueError(f"unknown variant {text!r} (choose from {', '.join(VARIANTS)})")
    return text


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError(f"must be at least 1, got {value}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not (value >= 0.0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Time xarena's vanilla and sdpa attention in PyTorch from Python, "
        "with xarena's timing protocol.",
    )
    p.add_argument("--variants", type=comma_list(variant_name), default=list(VARIANTS),
                   help="comma list of vanilla,sdpa (default: both)")
    p.add_argument("--seq", type=comma_list(positive_int), default=[256, 512, 1024, 2048],
                   help="comma list of sequence lengths (default: 256,512,1024,2048)")
    p.add_argument("--batch", type=positive_int, default=2)
    p.add_argument("--heads", type=positive_int, default=8)
    p.add_argument("--head-dim", type=positive_int, default=64)
    p.add_argument("--dtype", choices=DTYPE_NAMES, default="f32")
    p.add_argument("--mode", choices=MODES, default="forward")
    p.add_argument("--causal", action="store_true", help="mask future keys")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="intra-op threads (default: torch's default)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:index] (default: cpu)")
    p.add_argument("--min-time", type=non_negative_float, default=1.0,
                   help="timed iterations fill at least this many seconds (default 1.0)")
    p.add_argument("--warmup", type=non_negative_float, default=0.2,
                   help="warm-up lasts at least this many seconds (default 0.2)")
    p.add_argument("--min-iters", type=positive_int, default=5)
    p.add_argument("--max-iters", type=positive_int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None,
                   help="write one JSON line per case here (overwritten)")
    p.add_argument("--compare", type=Path, default=None, metavar="XARENA_RESULTS.jsonl",
                   help="take the cases from xarena's results and print a comparison "
                   "table; --variants, --seq, --batch, --heads, --head-dim, --dtype, "
                   "--mode, --causal and --device are then ignored")
    args = p.parse_args(argv)
    if args.max_iters < args.min_iters:
        p.error(f"--max-iters ({args.max_iters}) is below --min-iters ({args.min_iters})")
    try:
        torch.device(args.device)
    except RuntimeError as e:
        p.error(f"--device: {e}")
    return args


# --------------------------------------------------------------------------------------
# The model
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Case:
    """Everything that defines one measurement (xarena's key, less params and scope)."""

    variant: str
    seq_len: int
    batch: int
    heads: int
    head_dim: int
    causal: bool
    dtype: str
    device: str
    mode: str


def torch_dtype(name: str):
    return {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[name]


def vanilla_core(q, k, v, future):
    """Softmax attention that materialises the N x N scores, as xarena's `vanilla`."""
    # Scaling q (N x d) rather than the scores (N x N), as xarena does.
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
    if future is not None:
        scores = scores.masked_fill(future, float("-inf"))
    return scores.softmax(-1) @ v


class MultiHeadAttention(nn.Module):
    """Fused QKV projection, a per-head core, output projection (xarena's wrapper)."""

    def __init__(self, case: Case):
        super().__init__()
        d = case.heads * case.head_dim
        self.heads, self.head_dim = case.heads, case.head_dim
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.variant, self.causal = case.variant, case.causal
        # Built once, outside the timed step, as xarena's vanilla builds it.
        future = None
        if case.variant == "vanilla" and case.causal:
            n = case.seq_len
            future = torch.ones(n, n, dtype=torch.bool).triu(1)
        self.register_buffer("future", future, persistent=False)

    def forward(self, x):
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        if self.variant == "vanilla":
            y = vanilla_core(q, k, v, self.future)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


def sdpa_backend(case: Case, device) -> str | None:
    """The kernel SDPA picks at this shape (xarena records the same), if torch says."""
    if case.variant != "sdpa":
        return None
    names = {0: "math", 1: "flash", 2: "memory-efficient", 3: "cudnn", 4: "overrideable"}
    shape = (case.batch, case.heads, case.seq_len, case.head_dim)
    probe = torch.empty(shape, dtype=torch_dtype(case.dtype), device=device)
    try:
        choice = torch.ops.aten._fused_sdp_choice(probe, probe, probe, None, 0.0, case.causal)
    except (RuntimeError, AttributeError, TypeError):
        return None  # a private op; its absence must not stop the measurement
    return names.get(int(choice), f"unknown({int(choice)})")


def build_step(case: Case, seed: int) -> Callable[[], None]:
    """The model, inputs and one iteration's work for `case`; all allocation happens here."""
    device = torch.device(case.device)
    dtype = torch_dtype(case.dtype)
    torch.manual_seed(seed)
    model = MultiHeadAttention(case).to(device=device, dtype=dtype)
    # xarena reseeds and draws x in float32 on the CPU, then casts and moves it.
    torch.manual_seed(seed)
    d = case.heads * case.head_dim
    x = torch.randn(case.batch, case.seq_len, d).to(dtype).to(device)

    if case.mode == "forward":

        def forward_step() -> None:
            with torch.no_grad():
                model(x)

        return forward_step

    x.requires_grad_(True)
    g = torch.randn(x.shape, dtype=dtype, device=device)
    wrt = list(model.parameters()) + [x]

    def train_step() -> None:
        loss = (model(x) * g).sum(dtype=torch.float32)
        torch.autograd.grad(loss, wrt)

    return train_step


# --------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------


def synchroniser(device_name: str) -> Callable[[], None]:
    device = torch.device(device_name)
    if device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_once(step: Callable[[], None], sync: Callable[[], None]) -> float:
    """One iteration's wall time, with the device idle before and after it."""
    sync()
    start = time.perf_counter()
    step()
    sync()
    return time.perf_counter() - start


def warm_up(step, sync, warmup_s: float) -> tuple[float, int]:
    """Runs until warmup_s and WARMUP_MIN_ITERS have both passed.

    Returns the typical iteration time (median after the first, which pays for lazy
    initialisation) and the number of warm-up iterations.
    """
    start = time.perf_counter()
    times: list[float] = []
    while len(times) < WARMUP_MIN_ITERS or time.perf_counter() - start < warmup_s:
        times.append(time_once(step, sync))
    steady = times[1:] or times
    return statistics.median(steady), len(times)


def iterations_for(per_iter: float, min_time: float, min_iters: int, max_iters: int) -> int:
    wanted = math.ceil(min_time / per_iter) if per_iter > 0 else max_iters
    return max(min_iters, min(max_iters, wanted))


def quantile(sorted_samples: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy.percentile's default)."""
    pos = min(max(q, 0.0), 1.0) * (len(sorted_samples) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_samples[lo] + (sorted_samples[hi] - sorted_samples[lo]) * (pos - lo)


def summarise(samples: list[float], warmup_iterations: int) -> dict:
    s = sorted(samples)
    return {
        "median_s": quantile(s, 0.5),
        "p10_s": quantile(s, 0.1),
        "p90_s": quantile(s, 0.9),
        "mean_s": sum(s) / len(s),
        "min_s": s[0],
        "max_s": s[-1],
        "iterations": len(s),
        "warmup_iterations": warmup_iterations,
    }


def measure_case(case: Case, args: argparse.Namespace) -> dict:
    """Builds, warms up and times one case; returns its JSON record."""
    step = build_step(case, args.seed)
    sync = synchroniser(case.device)
    per_iter, warmup_count = warm_up(step, sync, args.warmup)
    n = iterations_for(per_iter, args.min_time, args.min_iters, args.max_iters)
    samples = [time_once(step, sync) for _ in range(n)]
    record = dataclasses.asdict(case)
    record.update(
        scope="attention",
        threads=torch.get_num_threads(),
        torch_version=torch.__version__,
        backend=sdpa_backend(case, torch.device(case.device)),
        latency=summarise(samples, warmup_count),
    )
    return record


# --------------------------------------------------------------------------------------
# xarena's results
# --------------------------------------------------------------------------------------


class CompareError(Exception):
    """A problem with the --compare file, already phrased for the user."""


KEY_FIELDS = {
    "variant": str, "seq_len": int, "batch": int, "heads": int, "head_dim": int,
    "causal": bool, "dtype": str, "device": str, "mode": str, "scope": str,
}


def field(obj: dict, name: str, kind: type, where: str):
    """obj[name], checked to be of `kind` (bool is not an int here)."""
    if not isinstance(obj, dict) or name not in obj:
        raise CompareError(f"{where}: missing field {name!r}")
    value = obj[name]
    ok = isinstance(value, kind) and not (kind is int and isinstance(value, bool))
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if value is None:
        raise CompareError(f"{where}: field {name!r} is null")
    if not ok:
        raise CompareError(f"{where}: field {name!r} should be {kind.__name__}, got {value!r}")
    return value


def parse_record(line: str, where: str) -> tuple[Case, float, int | None] | None:
    """(case, xarena median, xarena threads) for a record to compare; None to skip it."""
    try:
        rec = json.loads(line)
    except json.JSONDecodeError as e:
        raise CompareError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(rec, dict):
        raise CompareError(f"{where}: expected a JSON object")
    key = field(rec, "key", dict, where)
    status = field(rec, "status", str, where)
    k = {name: field(key, name, kind, f"{where}: key") for name, kind in KEY_FIELDS.items()}
    if status != "ok" or k["scope"] != "attention" or k["variant"] not in VARIANTS:
        return None
    if k["dtype"] not in DTYPE_NAMES or k["mode"] not in MODES:
        raise CompareError(f"{where}: unknown dtype {k['dtype']!r} or mode {k['mode']!r}")
    median = field(field(rec, "latency", dict, where), "median_s", float, f"{where}: latency")
    env = rec.get("env")
    threads = env.get("threads") if isinstance(env, dict) else None
    del k["scope"]
    return Case(**k), float(median), threads if isinstance(threads, int) else None


def load_xarena(path: Path) -> list[tuple[Case, float, int | None]]:
    """The records to compare, one per case (the last one wins, as on a resumed run)."""
    try:
        text = path.read_text()
    except OSError as e:
        raise CompareError(f"{path}: cannot read ({e.strerror or e})") from None
    found: dict[Case, tuple[Case, float, int | None]] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            parsed = parse_record(line, f"{path}:{number}")
            if parsed is not None:
                found[parsed[0]] = parsed
    if not found:
        raise CompareError(
            f"{path}: no record with status ok, scope attention and variant vanilla or sdpa"
        )
    return list(found.values())


def markdown_table(rows: list[tuple[Case, float, float]]) -> str:
    """xarena's median against PyTorch's, one row per case, and the worst disagreement."""
    lines = [
        "| variant | N | batch | causal | dtype | mode | xarena median ms "
        "| PyTorch median ms | ratio (xarena / PyTorch) |",
        "|---|---:|---:|---|---|---|---:|---:|---:|",
    ]
    worst = 0.0
    for case, xarena_s, torch_s in rows:
        ratio = xarena_s / torch_s if torch_s > 0 else math.inf
        worst = max(worst, abs(ratio - 1.0))
        lines.append(
            f"| {case.variant} | {case.seq_len} | {case.batch} | {'yes' if case.causal else 'no'} "
            f"| {case.dtype} | {case.mode} | {xarena_s * 1e3:.3f} | {torch_s * 1e3:.3f} "
            f"| {ratio:.3f} |"
        )
    lines.append("")
    lines.append(f"max |ratio - 1| = {worst:.3f}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------


def cases_from_args(args: argparse.Namespace) -> list[Case]:
    return [
        Case(v, n, args.batch, args.heads, args.head_dim, args.causal, args.dtype,
             args.device, args.mode)
        for v in args.variants
        for n in args.seq
    ]


def check_device(device_name: str) -> None:
    if torch.device(device_name).type == "cuda" and not torch.cuda.is_available():
        sys.exit(f"pytorch_baseline: device {device_name} asked for, but CUDA is not available")


def progress(record: dict) -> str:
    lat = record["latency"]
    return (
        f"{record['variant']:>7} N={record['seq_len']:<6} {record['dtype']} {record['mode']}"
        f"{' causal' if record['causal'] else ''} on {record['device']}: "
        f"median {lat['median_s'] * 1e3:.3f} ms "
        f"(p10 {lat['p10_s'] * 1e3:.3f}, p90 {lat['p90_s'] * 1e3:.3f}, {lat['iterations']} it)"
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.compare is not None:
        try:
            wanted = load_xarena(args.compare)
        except CompareError as e:
            print(f"pytorch_baseline: {e}", file=sys.stderr)
            return 1
    else:
        wanted = [(case, None, None) for case in cases_from_args(args)]
    for device_name in sorted({case.device for case, _, _ in wanted}):
        check_device(device_name)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    mismatched = {t for _, _, t in wanted if t not in (None, 0, torch.get_num_threads())}
    if mismatched:
        print(f"pytorch_baseline: warning: xarena ran with {sorted(mismatched)} threads, "
              f"this run uses {torch.get_num_threads()}; pass --threads to match",
              file=sys.stderr)

    out = args.out.open("w") if args.out is not None else None
    rows = []
    try:
        for case, xarena_median, _ in wanted:
            record = measure_case(case, args)
            if out is not None:
                out.write(json.dumps(record) + "\n")
                out.flush()
            print(progress(record), file=sys.stderr, flush=True)
            if xarena_median is not None:
                rows.append((case, xarena_median, record["latency"]["median_s"]))
    finally:
        if out is not None:
            out.close()
    if rows:
        print(markdown_table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
