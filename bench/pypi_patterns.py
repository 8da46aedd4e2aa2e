#!/usr/bin/env python3
"""Forward latency of the public PyPI implementations of xarena's learnable and local
patterns, at xarena's shapes, scope and timing protocol.

Why this exists
---------------
xarena's `local`, `reformer`, `routing` and `sinkhorn` are its own implementations. The
claim to check is that each is at least as fast on the CPU as the implementation people
actually use: lucidrains' packages local-attention, reformer-pytorch, routing-transformer
and sinkhorn-transformer. This script times those packages; bench/compare_pypi.sh
interleaves it with `xarena run` and bench/compare_pypi_summary.py sets the two side by
side.

What is timed (scope `attention`, as xarena's)
----------------------------------------------
Each package exposes its algorithm as a core class that takes per-head q, k, v, so both
sides are wrapped in the same projections:

* x [batch, N, d] (d = heads * head_dim), drawn with randn in float32;
* fused QKV nn.Linear(d, 3d) with bias, `.view(b, n, 3, heads, head_dim)
  .permute(2, 0, 3, 1, 4)` -> q, k, v [b, heads, N, head_dim];
* the package's core (below), settings matched to xarena's defaults;
* `y.transpose(1, 2).reshape(b, n, d)` and the output projection nn.Linear(d, d).

The cores and their settings:

* local: local_attention.LocalAttention, blocks of min(128, N), one block looked at on
  each side, exact_windowsize=True so that query i sees exactly the keys with
  |i - j| <= 128, as xarena's window (the package's default, False, lets a query see
  the whole neighbouring blocks).
* reformer: reformer_pytorch.LSHAttention, bucket_size 64, 4 hash rounds, N / 64 buckets
  (the package always uses N / bucket_size), shared QK (q is passed as qk and v as v;
  the package normalises the keys itself), attend_across_buckets=False (xarena masks
  pairs in different buckets; the package's default True does not),
  allow_duplicate_attention=True (xarena counts a pair met in several rounds in each).
  It takes [batch * heads, N, head_dim], so q and v are reshaped to that.
* routing: routing_transformer.KmeansAttention, k = ceil(sqrt(N)) clusters, window
  ceil(N / k), no causal, no shared QK, no memory key/values. Being the core, it has no
  local heads (the package's self-attention module defaults to none as well).
* sinkhorn: sinkhorn_transformer.SinkhornAttention, blocks of 64, non_permutative=False
  (the Sinkhorn operator; True would use a differentiable top-k instead), 8 Sinkhorn
  iterations, temperature 0.75, no causal, the simple sort net (a learned linear map
  from block sums to destinations, as xarena's sorter; `--sinkhorn-sort-net attention`
  picks the package's default, block-mean q.k similarities).

Every record carries these settings and the known differences from xarena's algorithm
(`settings.differences_from_xarena`).

The timing protocol (bench/pytorch_baseline.py's, itself xarena's)
-----------------------------------------------------------------
The functions are imported from bench/pytorch_baseline.py so the protocol is the same
code: warm-up until --warmup seconds and at least 2 iterations have passed, estimate =
median of the warm-up times after the first, timed iterations = clamp(ceil(min_time /
estimate), min_iters, max_iters), each timed on its own with time.perf_counter(),
reported as median, p10, p90 (linear interpolation), mean, min, max. Forward steps run
under torch.no_grad() with the module in eval mode (no dropout, no k-means update), on
the CPU in float32 with torch.set_num_threads(--threads).

Before warming up, one call checks that the output is [batch, N, d] and finite; the
result is recorded (`output_check`). A case whose module fails is recorded with
`status: "error"` and its message, and the run goes on.

Like pytorch_baseline.py, all cases run in one process one after another, while xarena
runs each in a fresh worker process.

Usage
-----
  bash ci/setup-baselines.sh      # once: installs the packages into a cache
  PYTHONPATH=$(cat .libtorch-site) python3 bench/pypi_patterns.py \
      --variants local,reformer,routing,sinkhorn --seq 1024,2048,4096 --batch 1 \
      --heads 8 --head-dim 64 --threads 2 --min-time 1.0 --out pypi.jsonl

The packages are looked up in $XARENA_BASELINES, else in the cache that
ci/setup-baselines.sh fills (${XARENA_CACHE:-${XDG_CACHE_HOME:-~/.cache}/xarena}/baselines).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import inspect
import json
import math
import os
import sys
import traceback
from pathlib import Path
from typing import Callable

# The timing protocol and the torch import (from .libtorch-site) are pytorch_baseline's.
import pytorch_baseline as protocol

torch = protocol.torch
nn = torch.nn

VARIANTS = ("local", "reformer", "routing", "sinkhorn")
PACKAGES = {
    "local": "local-attention",
    "reformer": "reformer-pytorch",
    "routing": "routing-transformer",
    "sinkhorn": "sinkhorn-transformer",
}
SORT_NETS = ("simple", "attention")

# xarena's defaults for the four variants (variants/src/fixed/local.rs and
# variants/src/learnable/*.rs).
LOCAL_WINDOW = 128
REFORMER_BUCKET, REFORMER_ROUNDS = 64, 4
SINKHORN_BLOCK, SINKHORN_ITERS, SINKHORN_TEMPERATURE = 64, 8, 0.75


def baselines_dir() -> Path:
    """Where ci/setup-baselines.sh installs the packages (same rule as the script)."""
    if os.environ.get("XARENA_BASELINES"):
        return Path(os.environ["XARENA_BASELINES"])
    cache = os.environ.get("XARENA_CACHE")
    if not cache:
        xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        cache = str(Path(xdg) / "xarena")
    return Path(cache) / "baselines"


def add_baselines_to_path() -> None:
    # Appended, not prepended: torch must keep coming from .libtorch-site.
    site = baselines_dir()
    if not site.is_dir():
        print(f"pypi_patterns: warning: no {site}; run `bash ci/setup-baselines.sh` "
              "or set XARENA_BASELINES", file=sys.stderr)
    elif str(site) not in sys.path:
        sys.path.append(str(site))


# --------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------


def variant_name(text: str) -> str:
    if text not in VARIANTS:
        raise ValueError(f"unknown variant {text!r} (choose from {', '.join(VARIANTS)})")
    return text


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Time the PyPI implementations of xarena's local, reformer, routing "
        "and sinkhorn in xarena's projections, with xarena's timing protocol.",
    )
    comma, positive = protocol.comma_list, protocol.positive_int
    seconds = protocol.non_negative_float
    p.add_argument("--variants", type=comma(variant_name), default=list(VARIANTS),
                   help="comma list of local,reformer,routing,sinkhorn (default: all)")
    # The shape defaults are `xarena run`'s, so that bench/compare_pypi.sh's two sides
    # agree when the caller leaves them out.
    p.add_argument("--seq", type=comma(positive), default=[256, 512, 1024, 2048],
                   help="comma list of sequence lengths (default: 256,512,1024,2048)")
    p.add_argument("--batch", type=comma(positive), default=[2],
                   help="comma list of batch sizes (default: 2)")
    p.add_argument("--heads", type=positive, default=8)
    p.add_argument("--head-dim", type=positive, default=64)
    p.add_argument("--threads", type=positive, default=None,
                   help="intra-op threads (default: torch's default)")
    p.add_argument("--min-time", type=seconds, default=1.0,
                   help="timed iterations fill at least this many seconds (default 1.0)")
    p.add_argument("--warmup", type=seconds, default=0.2,
                   help="warm-up lasts at least this many seconds (default 0.2)")
    p.add_argument("--min-iters", type=positive, default=5)
    p.add_argument("--max-iters", type=positive, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sinkhorn-sort-net", choices=SORT_NETS, default="simple",
                   help="simple: linear map from block sums, as xarena's sorter (default); "
                   "attention: the package's default, block-mean q.k similarities")
    p.add_argument("--out", type=Path, default=None,
                   help="write one JSON line per case here (overwritten)")
    args = p.parse_args(argv)
    if args.max_iters < args.min_iters:
        p.error(f"--max-iters ({args.max_iters}) is below --min-iters ({args.min_iters})")
    return args


# --------------------------------------------------------------------------------------
# The cores: each returns (core, settings); core maps q, k, v [b, h, N, hd] to [b, h, N, hd]
# --------------------------------------------------------------------------------------


class LSHCore(nn.Module):
    """LSHAttention on xarena's per-head q, k, v: it wants [batch * heads, N, head_dim]."""

    def __init__(self, lsh: nn.Module):
        super().__init__()
        self.lsh = lsh

    def forward(self, q, k, v):
        # Shared QK: the queries are also the keys (xarena ignores k the same way).
        b, h, n, d = q.shape
        out, _attn, _buckets = self.lsh(q.reshape(b * h, n, d), v.reshape(b * h, n, d))
        return out.view(b, h, n, d)


class KmeansCore(nn.Module):
    """KmeansAttention, whose forward also returns the commitment loss (dropped here)."""

    def __init__(self, attn: nn.Module):
        super().__init__()
        self.attn = attn

    def forward(self, q, k, v):
        out, _aux_loss = self.attn(q, k, v)
        return out


def changed_defaults(cls, kwargs: dict) -> dict:
    """The constructor arguments set here that differ from the package's own defaults."""
    params = inspect.signature(cls.__init__).parameters
    return {
        name: {"package_default": params[name].default, "used": value}
        for name, value in kwargs.items()
        if name in params and params[name].default is not inspect.Parameter.empty
        and params[name].default != value
    }


def local_core(n: int, heads: int, head_dim: int, args) -> tuple[nn.Module, dict]:
    from local_attention import LocalAttention

    # xarena cuts the sequence into blocks of min(window, N) and looks one block each way.
    block = min(LOCAL_WINDOW, n)
    kwargs = dict(window_size=block, causal=False, look_backward=1, look_forward=1,
                  exact_windowsize=True, autopad=True, dropout=0.0, shared_qk=False)
    # No `dim`, so no rotary embedding; the package scales by head_dim ** -0.5.
    core = LocalAttention(**kwargs)
    differences = [
        "masked scores get -finfo(f32).max rather than -inf (same softmax)",
        "the window mask is built from position tensors on every call; xarena builds "
        "its band mask once, at construction",
    ]
    if n % block:
        differences.append("autopad pads keys with zeros that are not masked, so the "
                           "last block also attends to padding")
    settings = {"core": "local_attention.LocalAttention", "kwargs": kwargs,
                "changed_defaults": changed_defaults(LocalAttention, kwargs),
                "window": block, "block": block,
                "differences_from_xarena": differences}
    return core, settings


def reformer_core(n: int, heads: int, head_dim: int, args) -> tuple[nn.Module, dict]:
    from reformer_pytorch import LSHAttention

    kwargs = dict(bucket_size=REFORMER_BUCKET, n_hashes=REFORMER_ROUNDS, causal=False,
                  attend_across_buckets=False, allow_duplicate_attention=True,
                  rehash_each_round=True, random_rotations_per_head=False,
                  dropout=0.0, drop_for_hash_rate=0.0, return_attn=False)
    core = LSHCore(LSHAttention(**kwargs))
    settings = {
        "core": "reformer_pytorch.LSHAttention", "kwargs": kwargs,
        "changed_defaults": changed_defaults(LSHAttention, kwargs),
        "buckets": n // REFORMER_BUCKET, "shared_qk": True,
        "input": "q and v reshaped to [batch * heads, N, head_dim]",
        "differences_from_xarena": [
            "fresh random rotations are drawn on every call (xarena: fixed per layer)",
            "all rounds are sorted as one sequence, so the first chunk of a round looks "
            "back into the last chunk of the previous round (xarena: within the round)",
            "a position's score for itself is -5e4 (xarena: -1e5)",
            "N must be a multiple of 2 * bucket_size",
        ],
    }
    return core, settings


def routing_core(n: int, heads: int, head_dim: int, args) -> tuple[nn.Module, dict]:
    from routing_transformer import KmeansAttention

    clusters = max(1, math.ceil(math.sqrt(n)))
    window = math.ceil(n / clusters)
    kwargs = dict(num_clusters=clusters, window_size=window, num_heads=heads,
                  head_dim=head_dim, causal=False, dropout=0.0, ema_decay=0.999,
                  commitment=1e-4, shared_qk=False, num_mem_kv=0, receives_context=False)
    core = KmeansCore(KmeansAttention(**kwargs))
    settings = {
        "core": "routing_transformer.KmeansAttention", "kwargs": kwargs,
        "changed_defaults": changed_defaults(KmeansAttention, kwargs),
        "clusters": clusters, "window": window, "local_heads": 0,
        "differences_from_xarena": [
            "every call also computes the k-means commitment loss (an MSE between the "
            "unit q, k and their routed centroids), which the forward returns and this "
            "wrapper drops",
            "the centroids are initialised from the first call's q and k by 10 k-means "
            "iterations (done before timing); xarena starts from random unit vectors",
            "routing scores are taken for the concatenation [q; k] in one product",
            "a query in several clusters is averaged by scatter-mean with eps 1e-5 "
            "(xarena divides by the count clamped to 1)",
        ],
    }
    return core, settings


def sinkhorn_core(n: int, heads: int, head_dim: int, args) -> tuple[nn.Module, dict]:
    from sinkhorn_transformer.sinkhorn_transformer import SinkhornAttention

    block = min(SINKHORN_BLOCK, n)
    kwargs = dict(bucket_size=block, dim=heads * head_dim, dim_heads=head_dim, heads=heads,
                  max_seq_len=n, temperature=SINKHORN_TEMPERATURE, non_permutative=False,
                  sinkhorn_iter=SINKHORN_ITERS, n_sortcut=0, dropout=0.0,
                  use_simple_sort_net=args.sinkhorn_sort_net == "simple", n_top_buckets=1)
    core = SinkhornAttention(**kwargs)
    sort_net = ("SimpleSortNet: ReLU([sum of q block; sum of k block] @ W), "
                "W [2 * head_dim, N / block] per head"
                if args.sinkhorn_sort_net == "simple" else
                "AttentionSortNet: ReLU(mean q block . mean k block / sqrt(head_dim))")
    settings = {
        "core": "sinkhorn_transformer.SinkhornAttention", "kwargs": kwargs,
        "changed_defaults": changed_defaults(SinkhornAttention, kwargs),
        "block": block, "sort_net": sort_net,
        "differences_from_xarena": [
            "Gumbel noise is added to the log sort scores on every call, in eval mode "
            "too (gumbel_sinkhorn); xarena adds none",
            "the sort scores go through ReLU and log(x + 1e-6) before the temperature",
            "xarena's sorter reads only the key block sums ([d, N / block]); the simple "
            "sort net reads query and key block sums ([2d, N / block])",
            "the package's non-sortcut path takes the sorted values from the sorted keys "
            "(`b_v_r = b_k_r.reshape(...)`, a bug); the sorted values are still computed, "
            "so the work matches",
            "padding is not handled: N must be a multiple of the block",
        ],
    }
    return core, settings


CORES = {"local": local_core, "reformer": reformer_core, "routing": routing_core,
         "sinkhorn": sinkhorn_core}


class Projected(nn.Module):
    """xarena's attention scope around a per-head core: fused QKV, core, output."""

    def __init__(self, heads: int, head_dim: int, core: nn.Module):
        super().__init__()
        d = heads * head_dim
        self.heads, self.head_dim = heads, head_dim
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.core = core

    def forward(self, x):
        b, n, d = x.shape
        qkv = self.qkv(x).view(b, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        y = self.core(qkv[0], qkv[1], qkv[2])
        return self.out(y.transpose(1, 2).reshape(b, n, d))


# --------------------------------------------------------------------------------------
# One case
# --------------------------------------------------------------------------------------


def build_step(variant: str, n: int, batch: int, args) -> tuple[Callable, dict, dict]:
    """The forward step, its settings and the output check; all allocation happens here."""
    torch.manual_seed(args.seed)
    core, settings = CORES[variant](n, args.heads, args.head_dim, args)
    model = Projected(args.heads, args.head_dim, core).eval()
    # As xarena and pytorch_baseline.py: reseed, then draw x in float32.
    torch.manual_seed(args.seed)
    x = torch.randn(batch, n, args.heads * args.head_dim)

    def step() -> None:
        with torch.no_grad():
            model(x)

    with torch.no_grad():
        y = model(x)
    check = {"shape": list(y.shape), "finite": bool(torch.isfinite(y).all())}
    if tuple(y.shape) != tuple(x.shape) or not check["finite"]:
        raise RuntimeError(f"bad output: shape {check['shape']}, finite {check['finite']}")
    return step, settings, check


def measure_case(variant: str, n: int, batch: int, args) -> dict:
    record = {
        "variant": variant, "package": PACKAGES[variant], "package_version": None,
        "seq_len": n, "batch": batch, "heads": args.heads, "head_dim": args.head_dim,
        "causal": False, "dtype": "f32", "device": "cpu", "mode": "forward",
        "scope": "attention", "threads": torch.get_num_threads(),
        "torch_version": torch.__version__,
    }
    try:
        record["package_version"] = importlib.metadata.version(PACKAGES[variant])
        step, settings, check = build_step(variant, n, batch, args)
        record.update(settings=settings, output_check=check)
        sync = protocol.synchroniser("cpu")
        per_iter, warmup_count = protocol.warm_up(step, sync, args.warmup)
        iters = protocol.iterations_for(per_iter, args.min_time, args.min_iters,
                                        args.max_iters)
        samples = [protocol.time_once(step, sync) for _ in range(iters)]
        record.update(status="ok", latency=protocol.summarise(samples, warmup_count))
    except Exception as e:  # a package failing at one shape must not stop the others
        traceback.print_exc(file=sys.stderr)
        record.update(status="error", message=f"{type(e).__name__}: {e}")
    return record


def progress(record: dict) -> str:
    head = (f"{record['variant']:>8} ({record['package']} {record['package_version']}) "
            f"N={record['seq_len']:<5} b={record['batch']}")
    if record["status"] != "ok":
        return f"{head}: {record['status']}: {record['message']}"
    lat = record["latency"]
    return (f"{head}: median {lat['median_s'] * 1e3:.2f} ms (p10 {lat['p10_s'] * 1e3:.2f}, "
            f"p90 {lat['p90_s'] * 1e3:.2f}, {lat['iterations']} it)")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    add_baselines_to_path()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out = args.out.open("w") if args.out is not None else None
    failed = 0
    try:
        for variant in args.variants:
            for n in args.seq:
                for batch in args.batch:
                    record = measure_case(variant, n, batch, args)
                    failed += record["status"] != "ok"
                    if out is not None:
                        out.write(json.dumps(record) + "\n")
                        out.flush()
                    print(progress(record), file=sys.stderr, flush=True)
    finally:
        if out is not None:
            out.close()
    if failed:
        print(f"pypi_patterns: {failed} case(s) failed; see the records' messages",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
