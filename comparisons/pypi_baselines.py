#!/usr/bin/env python3
"""Forward latency of the public PyPI implementations of xarena's variants, at xarena's
shapes, scopes and timing protocol.

Why this exists
---------------
xarena's variants are its own implementations. The claim to check is that each is at
least as fast on the CPU as the implementation people actually use, mostly lucidrains'
packages. This script times those packages; comparisons/compare_pypi.sh interleaves it with
`xarena run` and comparisons/compare_pypi_summary.py sets the two side by side.

| variant            | package (pinned in ci/setup-baselines.sh) | what is timed             |
|--------------------|-------------------------------------------|---------------------------|
| local              | local-attention                           | core in xarena's projections |
| reformer           | reformer-pytorch                          | core in xarena's projections |
| routing            | routing-transformer                       | core in xarena's projections |
| sinkhorn           | sinkhorn-transformer                      | core in xarena's projections |
| linformer          | linformer                                 | the package's module (its own projections) |
| performer          | performer-pytorch                         | core in xarena's projections |
| nystromformer      | nystrom-attention                         | the package's module (its own projections) |
| linear-transformer | linear-attention-transformer              | core in xarena's projections |
| set-transformer    | isab-pytorch                              | the package's module (its own projections) |
| switch, moe-top2   | mixture-of-experts                        | pre-norm block (scope `block`) |

What is timed
-------------
Scope `attention`, a core in xarena's projections (as variants/src/attention.rs):

* x [batch, N, d] (d = heads * head_dim), drawn with randn in float32;
* fused QKV nn.Linear(d, 3d) with bias, `.view(b, n, 3, heads, head_dim)
  .permute(2, 0, 3, 1, 4)` -> q, k, v [b, heads, N, head_dim];
* the package's core (below), settings matched to xarena's defaults;
* `y.transpose(1, 2).reshape(b, n, d)` and the output projection nn.Linear(d, d).

Scope `attention`, the package's module: where a package has no separate core (the
algorithm is written inline in a module's forward), the module is timed whole, with its
own projections, which do the same per-token multiply-adds as xarena's (often without
bias). The record says so (`settings.timed`).

Scope `block`, for the mixture-of-experts variants (as variants/src/block.rs): the
pre-norm block x + Attn(LN1(x)), then h + MoE(LN2(h)), with Attn = xarena's projections
around torch.nn.functional.scaled_dot_product_attention (exact attention, as xarena's
MoE blocks) and the package's mixture_of_experts.MoE in place of the 4x GELU FFN.

The cores and modules, and their settings:

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
* linformer: linformer.LinformerSelfAttention (module), k = 256, share_kv=False,
  one_kv_head=False: keys and values projected along the sequence by [N, k] matrices
  shared across heads, as xarena's E, F.
* performer: performer_pytorch.FastAttention, 256 features (the package's default is
  head_dim * ln(head_dim), 266 at 64), positive softmax-kernel features (FAVOR+),
  orthogonal random projection with chi-distributed row norms (ortho_scaling=0), drawn
  once at construction; non-causal.
* nystromformer: nystrom_attention.NystromAttention (module), 64 landmarks (the
  package's default is 256) by segment means, 6 iterations of the Moore-Penrose
  pseudo-inverse, residual depthwise convolution on V with kernel 33.
* linear-transformer: linear_attention_transformer's non-causal global attention
  function `linear_attn`. Its feature map is NOT xarena's elu(x) + 1 (Katharopoulos et
  al.): the package has only softmax feature maps (Shen et al.'s efficient attention),
  the nearest it offers; the work has the same shape (a map on q and k, K^T V, Q (K^T V)).
* set-transformer: isab_pytorch.ISAB (module), 32 learned inducing points ("latents"),
  no latent self-attention, ordinary (not inverted) attention.
* switch: mixture_of_experts.MoE with 8 experts of hidden 4d, GELU,
  second_policy 'none' (only the top-1 expert), capacity factor 1.25.
* moe-top2: mixture_of_experts.MoE with 8 experts of hidden 4d, GELU,
  second_policy 'all' (both top-2 experts, subject to capacity; `--moe-second-policy
  random` picks GShard's random second expert), capacity factor 2.0
  (`--moe-top2-capacity-factor`) as xarena's moe-top2: both count one capacity for the
  first and second choices together (GShard's 2N/E).

Every record carries these settings and the known differences from xarena's algorithm
(`settings.differences_from_xarena`).

The timing protocol (comparisons/pytorch_baseline.py's, itself xarena's)
-----------------------------------------------------------------
The functions are imported from comparisons/pytorch_baseline.py so the protocol is the same
code: warm-up until --warmup seconds and at least 2 iterations have passed, estimate =
median of the warm-up times after the first, timed iterations = clamp(ceil(min_time /
estimate), min_iters, max_iters), each timed on its own with time.perf_counter(),
reported as median, p10, p90 (linear interpolation), mean, min, max. Forward steps run
under torch.no_grad() with the module in eval mode (no dropout, no k-means update, the
MoE gates' `*_eval` settings), on the CPU in float32 with torch.set_num_threads(--threads).

Before warming up, one call checks that the output is [batch, N, d] and finite; the
result is recorded (`output_check`). A case whose module fails is recorded with
`status: "error"` and its message, and the run goes on.

Like pytorch_baseline.py, all cases run in one process one after another, while xarena
runs each in a fresh worker process.

Usage
-----
  bash ci/setup-baselines.sh      # once: installs the packages into a cache
  PYTHONPATH=$(cat .libtorch-site) python3 comparisons/pypi_baselines.py \
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
import subprocess
import sys
import traceback
from pathlib import Path
from typing import Callable

# The timing protocol and the torch import (from .libtorch-site) are pytorch_baseline's.
import pytorch_baseline as protocol

torch = protocol.torch
nn = torch.nn
F = torch.nn.functional

# Each variant's package (its distribution name, for the version) and scope.
PACKAGES = {
    "local": "local-attention",
    "reformer": "reformer-pytorch",
    "routing": "routing-transformer",
    "sinkhorn": "sinkhorn-transformer",
    "linformer": "linformer",
    "performer": "performer-pytorch",
    "nystromformer": "nystrom-attention",
    "linear-transformer": "linear-attention-transformer",
    "set-transformer": "isab-pytorch",
    "switch": "mixture-of-experts",
    "moe-top2": "mixture-of-experts",
}
VARIANTS = tuple(PACKAGES)
BLOCK_VARIANTS = ("switch", "moe-top2")
SORT_NETS = ("simple", "attention")
SECOND_POLICIES = ("all", "random", "threshold")


def scope_of(variant: str) -> str:
    return "block" if variant in BLOCK_VARIANTS else "attention"


def xarena_defaults() -> dict[str, dict]:
    """Each variant's default parameters as the registry gives them (`xarena list --format
    json`), so that the packages are set up from xarena's own numbers rather than a copy.
    XARENA_DEFAULTS names a saved copy of that JSON; otherwise XARENA_BIN (default
    target/release/xarena, as comparisons/compare_pypi.sh builds it) is asked."""
    saved = os.environ.get("XARENA_DEFAULTS")
    if saved:
        text = Path(saved).read_text()
    else:
        binary = os.environ.get("XARENA_BIN", "target/release/xarena")
        try:
            text = subprocess.run([binary, "list", "--format", "json"], check=True,
                                  capture_output=True, text=True).stdout
        except (OSError, subprocess.CalledProcessError) as e:
            sys.exit(f"pypi_baselines: cannot read xarena's defaults from `{binary} list "
                     f"--format json` ({e}); build it (cargo build --release -p xarena-cli) "
                     "or set XARENA_BIN or XARENA_DEFAULTS")
    return {entry["info"]["name"]: entry["defaults"] for entry in json.loads(text)}


DEFAULTS = xarena_defaults()
LOCAL_WINDOW = DEFAULTS["local"]["window"]
REFORMER_BUCKET = DEFAULTS["reformer"]["bucket_size"]
REFORMER_ROUNDS = DEFAULTS["reformer"]["rounds"]
SINKHORN_BLOCK = DEFAULTS["sinkhorn"]["block"]
SINKHORN_ITERS = DEFAULTS["sinkhorn"]["iterations"]
SINKHORN_TEMPERATURE = DEFAULTS["sinkhorn"]["temperature"]
LINFORMER_K = DEFAULTS["linformer"]["k"]
PERFORMER_FEATURES = DEFAULTS["performer"]["features"]
NYSTROM_LANDMARKS = DEFAULTS["nystromformer"]["landmarks"]
NYSTROM_PINV_ITERS = DEFAULTS["nystromformer"]["iterations"]
NYSTROM_CONV_KERNEL = DEFAULTS["nystromformer"]["conv_kernel"]
ISAB_INDUCING = DEFAULTS["set-transformer"]["inducing"]
# isab_pytorch's Attention takes dim_head, but ISAB does not pass it on: it is 64 (the
# package's constant, not one of xarena's).
ISAB_HEAD_DIM = 64
MOE_EXPERTS = DEFAULTS["moe-top2"]["experts"]
MOE_FFN_MULT = DEFAULTS["moe-top2"]["ffn_mult"]
SWITCH_CAPACITY = DEFAULTS["switch"]["capacity_factor"]


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
        print(f"pypi_baselines: warning: no {site}; run `bash ci/setup-baselines.sh` "
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


def positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError(f"{text!r} is not positive")
    return value


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description="Time the PyPI implementations of xarena's variants at xarena's "
        "scope (each core in xarena's projections where the package has one), with "
        "xarena's timing protocol.",
    )
    comma, positive = protocol.comma_list, protocol.positive_int
    seconds = protocol.non_negative_float
    p.add_argument("--variants", type=comma(variant_name), default=list(VARIANTS),
                   help=f"comma list of {','.join(VARIANTS)} (default: all)")
    # The shape defaults are `xarena run`'s, so that comparisons/compare_pypi.sh's two sides
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
    p.add_argument("--moe-second-policy", choices=SECOND_POLICIES, default="all",
                   help="moe-top2's second expert: all: always, subject to capacity, as "
                   "a deterministic top-2 (default); random: GShard's, with probability "
                   "p2 / 0.2; threshold: when p2 > 0.2")
    p.add_argument("--moe-top2-capacity-factor", type=positive_float, default=2.0,
                   help="moe-top2's capacity factor in the package's sense (one capacity "
                   "int(N * f / experts) for first and second choices together; default "
                   "2.0, as xarena's moe-top2)")
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


def performer_core(n: int, heads: int, head_dim: int, args) -> tuple[nn.Module, dict]:
    from performer_pytorch import FastAttention

    kwargs = dict(dim_heads=head_dim, nb_features=PERFORMER_FEATURES, ortho_scaling=0,
                  causal=False, generalized_attention=False, no_projection=False)
    # FastAttention takes q, k, v [b, h, N, head_dim] as they are.
    core = FastAttention(**kwargs)
    settings = {
        "core": "performer_pytorch.FastAttention", "kwargs": kwargs,
        "changed_defaults": changed_defaults(FastAttention, kwargs),
        "features": PERFORMER_FEATURES,
        "projection": "orthogonal blocks of head_dim rows (QR of a Gaussian matrix), each "
                      "row scaled by the norm of an independent Gaussian vector "
                      "(ortho_scaling=0), drawn once at construction as xarena's; the "
                      "core alone never redraws it",
        "differences_from_xarena": [
            "1e-4 is added to the query and the key features after the stabiliser "
            "(xarena: 1e-6, to the query features only)",
            "the features are multiplied by features ** -0.5 (xarena leaves the constant "
            "out, since it cancels)",
            "the [features, head_dim] projection is repeated to [batch, heads, features, "
            "head_dim] on every call before an einsum (xarena: one matmul with the "
            "transposed matrix)",
            "the normaliser is inverted without a floor (xarena clamps it at 1e-30) and "
            "applied in a three-operand einsum",
        ],
    }
    return core, settings


class LinearAttnCore(nn.Module):
    """linear_attention_transformer's global attention function as a core."""

    def __init__(self, fn: Callable):
        super().__init__()
        self.fn = fn

    def forward(self, q, k, v):
        return self.fn(q, k, v)


def linear_core(n: int, heads: int, head_dim: int, args) -> tuple[nn.Module, dict]:
    from linear_attention_transformer.linear_attention_transformer import linear_attn

    settings = {
        "core": "linear_attention_transformer.linear_attention_transformer.linear_attn",
        "kwargs": {"kv_mask": None}, "changed_defaults": {},
        "feature_map": "softmax(q) over head_dim, scaled by head_dim ** -0.5; softmax(k) "
                       "over the sequence (Shen et al. 2021, efficient attention)",
        "local_heads": 0,
        "differences_from_xarena": [
            "a different feature map: the package has no elu(x) + 1 (Katharopoulos et al. "
            "2020, xarena's); its non-causal global attention applies softmax over the "
            "head dimension to q and over the sequence to k. The work has the same shape "
            "(a map on q and k, K^T V [head_dim x head_dim] per head, then Q (K^T V)), "
            "but the maps are exp plus reductions where elu + 1 is elementwise",
            "no normaliser: the softmaxes make the weights sum to one, so there is no "
            "division by q . sum(k) (xarena computes it, O(N d) per head)",
            "the package's SelfAttention module (bias-free q, k, v projections, optional "
            "local heads) is not used: its function is called in xarena's projections",
        ],
    }
    return LinearAttnCore(linear_attn), settings


CORES = {"local": local_core, "reformer": reformer_core, "routing": routing_core,
         "sinkhorn": sinkhorn_core, "performer": performer_core,
         "linear-transformer": linear_core}

PROJECTED = ("xarena's projections around the package's core: fused Linear(d, 3d) with "
             "bias, the core per head, Linear(d, d) with bias")


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
# Whole modules: each returns (module, settings); module maps x [b, N, d] to [b, N, d]
# --------------------------------------------------------------------------------------


class FirstOutput(nn.Module):
    """A module whose forward returns a tuple; keeps the sequence output."""

    def __init__(self, module: nn.Module):
        super().__init__()
        self.module = module

    def forward(self, x):
        return self.module(x)[0]


def linformer_layer(n: int, heads: int, head_dim: int, args) -> tuple[nn.Module, dict]:
    from linformer import LinformerSelfAttention

    d = heads * head_dim
    kwargs = dict(dim=d, seq_len=n, k=LINFORMER_K, heads=heads, dim_head=head_dim,
                  one_kv_head=False, share_kv=False, dropout=0.0)
    module = LinformerSelfAttention(**kwargs)
    settings = {
        "core": "linformer.LinformerSelfAttention", "kwargs": kwargs,
        "changed_defaults": changed_defaults(LinformerSelfAttention, kwargs),
        "timed": "the package's module with its own projections: to_q, to_k, to_v "
                 "Linear(d, d) without bias, proj_k, proj_v [N, k], to_out Linear(d, d) "
                 "with bias (the algorithm is inline in its forward; there is no core)",
        "k": LINFORMER_K, "share_kv": False,
        "differences_from_xarena": [
            "three bias-free d x d projections for q, k, v where xarena has one fused "
            "Linear(d, 3d) with bias (the same multiply-adds, three calls)",
            "E and F are stored [N, k] and applied to all heads at once by einsum "
            "'bnd,nk->bkd' before the heads are split (xarena: [k, N] @ per-head keys); "
            "the projected keys and values are then expanded (a view) across heads",
            "the attention is einsum, softmax, einsum (xarena: the same through its "
            "vanilla softmax attention)",
            "E and F start from U(-1/sqrt(k), 1/sqrt(k)) (xarena: U(-1/sqrt(N), "
            "1/sqrt(N))); the values do not change the work",
        ],
    }
    if n < LINFORMER_K:
        settings["differences_from_xarena"].append(
            f"N = {n} < k = {LINFORMER_K}: both project up to k rows")
    return module, settings


def nystromformer_layer(n: int, heads: int, head_dim: int, args) -> tuple[nn.Module, dict]:
    from nystrom_attention import NystromAttention

    d = heads * head_dim
    kwargs = dict(dim=d, dim_head=head_dim, heads=heads, num_landmarks=NYSTROM_LANDMARKS,
                  pinv_iterations=NYSTROM_PINV_ITERS, residual=True,
                  residual_conv_kernel=NYSTROM_CONV_KERNEL, eps=1e-8, dropout=0.0)
    module = NystromAttention(**kwargs)
    differences = [
        "to_qkv is Linear(d, 3d) without bias (xarena's fused qkv has one); to_out "
        "Linear(d, d) has one, as xarena's",
        "q is scaled by head_dim ** -0.5 before the landmarks are taken (the same "
        "scores)",
        "the pseudo-inverse's starting point divides A^T by the largest row sum times "
        "the largest column sum taken over the whole batch and all heads (one "
        "torch.max over everything)",
        "the skip is Conv2d(heads, heads, (33, 1), groups=heads, no bias) on V [b, h, N, "
        "head_dim]: one 33-tap kernel per head, shared by its head_dim channels",
        "the output is sliced to the last N rows (a view) after the output projection",
    ]
    if n % NYSTROM_LANDMARKS:
        differences.append(
            f"N = {n} is not a multiple of {NYSTROM_LANDMARKS}: the package pads x with "
            "zero rows at the front, which take part in the landmarks and softmaxes")
    settings = {
        "core": "nystrom_attention.NystromAttention", "kwargs": kwargs,
        "changed_defaults": changed_defaults(NystromAttention, kwargs),
        "timed": "the package's module with its own projections: to_qkv Linear(d, 3d) "
                 "without bias, to_out Linear(d, d) with bias (the algorithm is inline in "
                 "its forward; there is no core)",
        "landmarks": NYSTROM_LANDMARKS, "segment": math.ceil(n / NYSTROM_LANDMARKS),
        "differences_from_xarena": differences,
    }
    return module, settings


def set_transformer_layer(n: int, heads: int, head_dim: int,
                          args) -> tuple[nn.Module, dict]:
    from isab_pytorch import ISAB

    if head_dim != ISAB_HEAD_DIM:
        raise ValueError(f"isab-pytorch's ISAB fixes head_dim at {ISAB_HEAD_DIM} (its "
                         f"Attention's default, not passed on); asked for {head_dim}")
    d = heads * head_dim
    kwargs = dict(dim=d, heads=heads, num_latents=ISAB_INDUCING, latent_self_attend=False,
                  inverted_attention=False)
    # ISAB's forward returns (output, latents after the first attention).
    module = FirstOutput(ISAB(**kwargs))
    settings = {
        "core": "isab_pytorch.ISAB", "kwargs": kwargs,
        "changed_defaults": changed_defaults(ISAB, kwargs),
        "timed": "the package's module with its own projections, all without bias: "
                 "attn1 = Attention(latents, x) with to_q on the 32 latents, to_kv "
                 "Linear(d, 2d) on x, to_out on 32 rows; attn2 = Attention(x, attn1's "
                 "output) with to_q Linear(d, d) on x, to_kv on 32 rows, to_out Linear(d, "
                 "d) on x's N rows. Per token, the same multiply-adds as xarena's fused "
                 "qkv and out",
        "inducing_points": ISAB_INDUCING,
        "differences_from_xarena": [
            "the projections have no bias (xarena's fused qkv and out have)",
            "the inducing points are [32, d] in model space and go through attn1's to_q "
            "(a 32 x d x d product), and H goes through attn1's to_out before attn2's "
            "to_kv (another 32 x d x d product): small extra products next to xarena's "
            "H W_k, H W_v",
            "the latents are repeated over the batch (einops.repeat) on every call",
            "attention is einsum, softmax, einsum; masked scores would use "
            "-finfo.max (no mask is passed here)",
            "no LayerNorm or row-wise feed-forward inside the ISAB (the Set Transformer "
            "paper's MAB has them; xarena's H = Attn(I, K, V), out = Attn(Q, H W_k, "
            "H W_v) has none either)",
        ],
    }
    return module, settings


class SdpaCore(nn.Module):
    def forward(self, q, k, v):
        return F.scaled_dot_product_attention(q, k, v)


class MoEBlock(nn.Module):
    """xarena's pre-norm block with exact attention and a routed FFN: x + Attn(LN1(x)),
    then h + MoE(LN2(h)). The MoE's auxiliary (load-balancing) loss is dropped."""

    def __init__(self, heads: int, head_dim: int, moe: nn.Module):
        super().__init__()
        d = heads * head_dim
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = Projected(heads, head_dim, SdpaCore())
        self.moe = moe

    def forward(self, x):
        h = x + self.attn(self.ln1(x))
        f, _aux_loss = self.moe(self.ln2(h))
        return h + f


def moe_block(variant: str, n: int, heads: int, head_dim: int,
              args) -> tuple[nn.Module, dict]:
    from mixture_of_experts import MoE

    d = heads * head_dim
    top2 = variant == "moe-top2"
    policy = args.moe_second_policy if top2 else "none"
    capacity = args.moe_top2_capacity_factor if top2 else SWITCH_CAPACITY
    # Train and eval settings alike, so that the mode cannot change the routing.
    kwargs = dict(dim=d, num_experts=MOE_EXPERTS, hidden_dim=MOE_FFN_MULT * d,
                  activation=nn.GELU, second_policy_train=policy,
                  second_policy_eval=policy, second_threshold_train=0.2,
                  second_threshold_eval=0.2, capacity_factor_train=capacity,
                  capacity_factor_eval=capacity, loss_coef=1e-2)
    module = MoEBlock(heads, head_dim, MoE(**kwargs))
    expert_capacity = max(4, min(n, int(n * capacity / MOE_EXPERTS)))
    differences = [
        "dispatch and combine are dense one-hot einsums over [batch, N, experts, "
        "capacity] tensors ('bnd,bnec->ebcd' and 'ebcd,bnec->bnd', from Mesh "
        "TensorFlow): O(N x experts x capacity x d) multiply-adds each, and capacity "
        "grows with N, so they are quadratic in N (a gather/scatter dispatch is linear)",
        "the gating tensors (one-hot masks, cumulative positions, the combine tensor) "
        "are built in float32 from one-hot encodings on every call",
        "every expert runs on all its capacity slots, empty ones included (zeros)",
        "each sequence is its own routing group: capacity is per batch row, "
        "max(4, min(N, int(N x factor / 8)))",
        "the experts have no biases (w1 [8, d, 4d], w2 [8, 4d, d]); the activation is "
        "GELU (the package's default is ReLU); the gate is a bias-free [d, 8] matrix",
        "the load-balancing loss is computed on every call (returned, dropped here)",
    ]
    if top2:
        differences += [
            f"second_policy '{policy}'" + (
                ": every token's second choice is dispatched unless its expert is full "
                "(a deterministic top-2)" if policy == "all" else
                ": GShard's stochastic second expert (kept with probability p2 / 0.2)"
                if policy == "random" else ": the second expert is kept when p2 > 0.2"),
            "one capacity serves first and second choices together, first choices "
            f"placed first: factor {capacity}, as xarena's moe-top2 (GShard's 2N/E, one "
            "capacity for both choices)",
            "the two gate weights are renormalised to p1 / (p1 + p2), p2 / (p1 + p2)",
        ]
    else:
        differences += [
            "top-1 through second_policy 'none': the second choice is computed and then "
            "masked out",
            "the top-1 weight is still renormalised by the top-2 sum, p1 / (p1 + p2 + "
            "1e-9), where Switch scales by p1: a per-token output scale, not more work",
        ]
    settings = {
        "core": "mixture_of_experts.MoE", "kwargs": kwargs,
        "changed_defaults": changed_defaults(MoE, kwargs),
        "timed": "a pre-norm block (scope block): x + out(SDPA(qkv(LN1(x)))), then h + "
                 "MoE(LN2(h)); LayerNorm eps 1e-5 with affine, fused qkv Linear(d, 3d) "
                 "and out Linear(d, d) with bias, torch.nn.functional."
                 "scaled_dot_product_attention, the package's MoE as the FFN",
        "experts": MOE_EXPERTS, "expert_hidden": MOE_FFN_MULT * d,
        "routing": "top-2" if top2 else "top-1", "second_policy": policy,
        "capacity_factor": capacity, "expert_capacity": expert_capacity,
        "differences_from_xarena": differences,
    }
    return module, settings


LAYERS = {
    "linformer": linformer_layer,
    "nystromformer": nystromformer_layer,
    "set-transformer": set_transformer_layer,
    "switch": lambda *a: moe_block("switch", *a),
    "moe-top2": lambda *a: moe_block("moe-top2", *a),
}
assert set(CORES) | set(LAYERS) == set(VARIANTS) and not set(CORES) & set(LAYERS)


# --------------------------------------------------------------------------------------
# One case
# --------------------------------------------------------------------------------------


def build_step(variant: str, n: int, batch: int, args) -> tuple[Callable, dict, dict]:
    """The forward step, its settings and the output check; all allocation happens here."""
    torch.manual_seed(args.seed)
    if variant in CORES:
        core, settings = CORES[variant](n, args.heads, args.head_dim, args)
        settings = {**settings, "timed": PROJECTED}
        model = Projected(args.heads, args.head_dim, core)
    else:
        model, settings = LAYERS[variant](n, args.heads, args.head_dim, args)
    model = model.eval()
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


def json_default(value):
    """Settings may hold classes (an activation): record their qualified names."""
    if isinstance(value, type):
        return f"{value.__module__}.{value.__qualname__}"
    return repr(value)


def measure_case(variant: str, n: int, batch: int, args) -> dict:
    record = {
        "variant": variant, "package": PACKAGES[variant], "package_version": None,
        "seq_len": n, "batch": batch, "heads": args.heads, "head_dim": args.head_dim,
        "causal": False, "dtype": "f32", "device": "cpu", "mode": "forward",
        "scope": scope_of(variant), "threads": torch.get_num_threads(),
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
    head = (f"{record['variant']:>18} ({record['package']} {record['package_version']}) "
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
                        out.write(json.dumps(record, default=json_default) + "\n")
                        out.flush()
                    print(progress(record), file=sys.stderr, flush=True)
    finally:
        if out is not None:
            out.close()
    if failed:
        print(f"pypi_baselines: {failed} case(s) failed; see the records' messages",
              file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
