//! Nystromformer and Synthesizer (low rank), Set Transformer and Perceiver (neural
//! memory): exact limits, convergence, the pieces against their definitions, gradients,
//! configuration errors, and a long sequence that an N x N tensor would make costly.

mod common;

use common::*;
use tch::{nn, Device, Kind, Tensor};
use xarena_variants::exact::vanilla::softmax_attention;
use xarena_variants::lowrank::nystromformer::{self, iterative_pinv, segment_means};
use xarena_variants::lowrank::synthesizer::{self, Logits, SynthesizerKind};
use xarena_variants::memory::{perceiver, set_transformer};
use xarena_variants::registry::AttentionVariant;
use xarena_variants::{build_layer, Attention, Scope, Shape, VariantError, VariantSpec};

const CPU: Device = Device::Cpu;

fn store() -> nn::VarStore {
    let mut vs = nn::VarStore::new(CPU);
    vs.set_kind(Kind::Double);
    vs
}

fn one_batch(n: i64, causal: bool) -> Shape {
    Shape {
        batch: 1,
        ..shape(n, causal)
    }
}

/// Overwrites a parameter in place, outside autograd.
fn set(param: &Tensor, value: &Tensor) {
    tch::no_grad(|| param.shallow_clone().copy_(value));
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    f64::try_from((a - b).abs().max()).unwrap()
}

fn nystrom(landmarks: i64, iterations: i64, conv_kernel: i64) -> nystromformer::Config {
    nystromformer::Config {
        landmarks,
        iterations,
        conv_kernel,
    }
}

// ---------------------------------------------------------------- Nystromformer

#[test]
fn segment_means_split_ragged_lengths_evenly() {
    let x = Tensor::arange(2 * 10 * 3, (Kind::Double, CPU)).view([1, 2, 10, 3]);
    // 10 tokens in 4 segments: 3, 3, 2, 2 tokens.
    let got = segment_means(&x, 4);
    let bounds = [(0, 3), (3, 6), (6, 8), (8, 10)];
    let want: Vec<Tensor> = bounds
        .iter()
        .map(|&(a, b)| x.narrow(2, a, b - a).mean_dim(2, true, None))
        .collect();
    assert!(max_abs(&got, &Tensor::cat(&want, 2)) < 1e-12);
    // When m divides N: the reference's reshape and mean.
    let got = segment_means(&x, 5);
    let want = x.view([1, 2, 5, 2, 3]).mean_dim(3, false, None);
    assert!(max_abs(&got, &want) < 1e-12);
    // One token per segment: the tokens themselves.
    assert!(max_abs(&segment_means(&x, 10), &x) < 1e-12);
}

fn pinv_err(a: &Tensor, iterations: i64) -> f64 {
    let want = a.linalg_pinv(1e-10, false);
    rel_err(&iterative_pinv(a, iterations), &want)
}

/// The iteration approaches the Moore-Penrose pseudo-inverse (torch's SVD-based one):
/// of softmax matrices (what it is used on), batched, and of a rank-deficient matrix,
/// where the inverse does not exist and the limit must be the pseudo-inverse. (On the
/// rank-deficient one, round-off outside its range later grows 3.25x per iteration, so
/// it is checked up to 12 iterations.)
#[test]
fn pinv_iteration_converges_to_the_pseudo_inverse() {
    let (a, low_rank) = seeded(1, || {
        let a = (Tensor::randn([2, 3, 8, 8], (Kind::Double, CPU)) * 0.5).softmax(-1, Kind::Double);
        let b = Tensor::rand([8, 3], (Kind::Double, CPU));
        let c = Tensor::rand([3, 8], (Kind::Double, CPU));
        (a, b.matmul(&c))
    });
    for (m, iterations) in [(&a, [1, 2, 4, 8, 16]), (&low_rank, [1, 2, 4, 8, 12])] {
        let errs: Vec<f64> = iterations.iter().map(|&i| pinv_err(m, i)).collect();
        for pair in errs.windows(2) {
            assert!(pair[1] <= pair[0], "errors {errs:?}");
        }
        assert!(errs[4] < 1e-10, "errors {errs:?}");
    }
    // The result is a generalised inverse: A Z A = A.
    let z = iterative_pinv(&low_rank, 12);
    assert!(max_abs(&low_rank.matmul(&z).matmul(&low_rank), &low_rank) < 1e-10);
}

/// With one landmark per token, Q~ = Q and K~ = K, so all three kernels are the exact
/// softmax matrix S and F A+ B V = S S+ S V = S V: exact attention, once the
/// pseudo-inverse has converged (conv off).
#[test]
fn nystromformer_with_a_landmark_per_token_is_exact() {
    for n in [8, 24] {
        let s = shape(n, false);
        let (q, k, v) = qkv(&s, 3);
        let got = run_core::<nystromformer::Nystromformer>(
            nystrom(n, 60, 0),
            &s,
            Kind::Double,
            &q,
            &k,
            &v,
        );
        let err = rel_err(&got, &reference(&q, &k, &v, false));
        assert!(err < 1e-8, "n={n}: {err}");
        // More landmarks than tokens are clamped to one per token: the same result.
        let more = run_core::<nystromformer::Nystromformer>(
            nystrom(4 * n, 60, 0),
            &s,
            Kind::Double,
            &q,
            &k,
            &v,
        );
        assert!(max_abs(&more, &got) < 1e-12, "n={n}");
    }
}

/// Queries and keys that vary smoothly along the sequence (random walks, rescaled), where
/// segment means are meaningful landmarks, as for natural signals.
fn smooth_qkv(s: &Shape, seed: i64) -> (Tensor, Tensor, Tensor) {
    let (q, k, v) = qkv(s, seed);
    let walk = |x: Tensor| {
        let w = x.cumsum(2, Kind::Double);
        &w / w.std(true)
    };
    (walk(q), walk(k), v)
}

/// Mean relative error against exact attention, with the paper's 6 iterations (conv
/// off), on i.i.d. or on smooth inputs.
fn nystrom_error(landmarks: i64, smooth: bool) -> f64 {
    let s = shape(96, false);
    let seeds = 0..4;
    let total: f64 = seeds
        .clone()
        .map(|seed| {
            let (q, k, v) = if smooth {
                smooth_qkv(&s, 40 + seed)
            } else {
                qkv(&s, 40 + seed)
            };
            let got = run_core::<nystromformer::Nystromformer>(
                nystrom(landmarks, 6, 0),
                &s,
                Kind::Double,
                &q,
                &k,
                &v,
            );
            rel_err(&got, &reference(&q, &k, &v, false))
        })
        .sum();
    total / seeds.count() as f64
}

/// With the paper's 6 iterations the error falls steadily as landmarks are added, up to
/// one per token. (With a fully converged pseudo-inverse the error is not monotone for
/// few landmarks: the early stop regularises the inverse of an ill-conditioned A.)
#[test]
fn nystromformer_error_falls_as_landmarks_grow() {
    for smooth in [false, true] {
        let errs: Vec<f64> = [2, 8, 32, 96]
            .iter()
            .map(|&m| nystrom_error(m, smooth))
            .collect();
        for pair in errs.windows(2) {
            assert!(pair[1] < pair[0], "smooth={smooth}: errors {errs:?}");
        }
        assert!(errs[3] < errs[0] / 4.0, "smooth={smooth}: errors {errs:?}");
    }
}

/// The skip adds, per head, the cross-correlation of V along the sequence with the
/// head's kernel, zero-padded by k / 2 on each side, to the landmark attention.
#[test]
fn nystromformer_conv_skip_is_a_centred_depthwise_convolution() {
    let (n, taps) = (20, 5);
    let s = shape(n, false);
    let (q, k, v) = qkv(&s, 5);
    let vs = store();
    let with = nystromformer::Nystromformer::new(nystrom(6, 6, taps), &s, vs.root()).unwrap();
    let without = nystromformer::Nystromformer::new(nystrom(6, 6, 0), &s, store().root()).unwrap();
    let w = vs.variables()["conv"].view([s.heads, taps]);
    let padded = v.constant_pad_nd([0, 0, taps / 2, taps / 2]);
    let mut conv = v.zeros_like();
    for t in 0..taps {
        let tap = w.select(1, t).view([1, s.heads, 1, 1]);
        conv += padded.narrow(2, t, n) * tap;
    }
    let got = with.attend(&q, &k, &v) - without.attend(&q, &k, &v);
    assert!(max_abs(&got, &conv) < 1e-12);
    assert!(f64::try_from(conv.abs().max()).unwrap() > 1e-3);
}

// ---------------------------------------------------------------- Set Transformer

fn set_core(
    s: &Shape,
    inducing: i64,
    seed: i64,
) -> (set_transformer::SetTransformer, nn::VarStore) {
    seeded(seed, || {
        let vs = store();
        let config = set_transformer::Config { inducing };
        let core = set_transformer::SetTransformer::new(config, s, vs.root()).unwrap();
        (core, vs)
    })
}

/// Exact limit: batch 1, m = N inducing points set to the queries Q, W_k = W_v = I.
/// Then H = Attn(Q, K, V) is exact attention E, and ISAB(Q, K, V) = Attn(Q, E, E) with
/// E = softmax_attention(Q, K, V): two exact attentions composed, both computed here
/// with `softmax_attention`.
#[test]
fn set_transformer_with_queries_as_inducing_points_composes_exact_attention() {
    let n = 30;
    let s = one_batch(n, false);
    let (q, k, v) = qkv(&s, 6);
    let (core, _vs) = set_core(&s, n, 7);
    let eye = Tensor::eye(s.head_dim, (Kind::Double, CPU)).expand([s.heads, -1, -1], false);
    set(&core.inducing, &q.get(0));
    set(&core.w_k, &eye);
    set(&core.w_v, &eye);
    let e = softmax_attention(&q, &k, &v, None);
    let want = softmax_attention(&q, &e, &e, None);
    let err = rel_err(&core.attend(&q, &k, &v), &want);
    assert!(err < 1e-12, "{err}");
}

/// Gradients of a squared-output loss reach `wrt`; returns their absolute sums.
fn grad_sums(out: &Tensor, wrt: &[&Tensor]) -> Vec<f64> {
    let loss = out.square().sum(Kind::Double);
    Tensor::run_backward(&[loss], wrt, false, false)
        .iter()
        .map(|g| {
            assert!(bool::try_from(g.isfinite().all()).unwrap());
            f64::try_from(g.abs().sum(Kind::Double)).unwrap()
        })
        .collect()
}

#[test]
fn set_transformer_depends_on_its_inducing_points() {
    let s = shape(40, false);
    let (q, k, v) = qkv(&s, 8);
    let (core, _vs) = set_core(&s, 6, 9);
    let out = core.attend(&q, &k, &v);
    for g in grad_sums(&out, &[&core.inducing, &core.w_k, &core.w_v]) {
        assert!(g > 1e-8, "a parameter got no gradient");
    }
    let before = out.detach();
    set(
        &core.inducing,
        &(&core.inducing + Tensor::randn_like(&core.inducing) * 0.5),
    );
    assert!(max_abs(&core.attend(&q, &k, &v).detach(), &before) > 1e-4);
}

// ---------------------------------------------------------------- Perceiver

fn perceiver_core(s: &Shape, latents: i64, layers: i64) -> (perceiver::Perceiver, nn::VarStore) {
    seeded(10, || {
        let vs = store();
        let config = perceiver::Config {
            latents,
            latent_layers: layers,
        };
        let core = perceiver::Perceiver::new(config, s, vs.root()).unwrap();
        (core, vs)
    })
}

/// With no latent layers and identity read-out maps, the Perceiver is its definition:
/// Z = L + Attn(L, K, V), out = Attn(Q, Z, Z).
#[test]
fn perceiver_without_latent_layers_is_cross_attention_then_read_out() {
    let s = shape(33, false);
    let (q, k, v) = qkv(&s, 11);
    let (core, _vs) = perceiver_core(&s, 7, 0);
    let eye = Tensor::eye(s.head_dim, (Kind::Double, CPU)).expand([s.heads, -1, -1], false);
    set(&core.read_k, &eye);
    set(&core.read_v, &eye);
    let l = core.latents.unsqueeze(0);
    let z = softmax_attention(&l, &k, &v, None) + &l;
    let want = softmax_attention(&q, &z, &z, None);
    let err = rel_err(&core.attend(&q, &k, &v), &want);
    assert!(err < 1e-12, "{err}");
}

#[test]
fn perceiver_depends_on_its_latents_and_latent_layers() {
    let s = shape(40, false);
    let (q, k, v) = qkv(&s, 12);
    let (core, vs) = perceiver_core(&s, 8, 2);
    let out = core.attend(&q, &k, &v);
    let params = vs.trainable_variables();
    assert_eq!(
        params.len(),
        1 + 2 * 3 + 2,
        "latents, 2 x 3 layer maps, 2 read maps"
    );
    let wrt: Vec<&Tensor> = params.iter().collect();
    for g in grad_sums(&out, &wrt) {
        assert!(g > 1e-10, "a parameter got no gradient");
    }
    let before = out.detach();
    set(
        &core.latents,
        &(&core.latents + Tensor::randn_like(&core.latents) * 0.5),
    );
    assert!(max_abs(&core.attend(&q, &k, &v).detach(), &before) > 1e-4);
    // The latent layers change the result: the same parameters with none of them.
    let (shallow, shallow_vs) = perceiver_core(&s, 8, 0);
    let mut shallow_vs = shallow_vs;
    shallow_vs.copy(&vs).unwrap();
    assert!(max_abs(&shallow.attend(&q, &k, &v), &core.attend(&q, &k, &v)) > 1e-6);
}

// ---------------------------------------------------------------- Synthesizer

fn synth(
    s: &Shape,
    mode: SynthesizerKind,
    rank: i64,
    trainable: bool,
) -> (synthesizer::Synthesizer, nn::VarStore) {
    seeded(13, || {
        let vs = store();
        let config = synthesizer::Config {
            mode,
            rank,
            trainable,
        };
        (
            synthesizer::Synthesizer::new(config, s, vs.root()).unwrap(),
            vs,
        )
    })
}

/// Exact limit: batch 1, `random` logits R set to Q K^T / sqrt(d) of the input give
/// softmax attention, causal or not.
#[test]
fn synthesizer_random_logits_set_to_the_scores_are_exact() {
    for causal in [false, true] {
        let s = one_batch(25, causal);
        let (q, k, v) = qkv(&s, 14);
        let (core, _vs) = synth(&s, SynthesizerKind::Random, 8, true);
        let Logits::Random { r } = &core.logits else {
            panic!("random logits")
        };
        let scores = q.get(0).matmul(&k.get(0).transpose(-2, -1)) / (s.head_dim as f64).sqrt();
        set(r, &scores);
        let err = rel_err(&core.attend(&q, &k, &v), &reference(&q, &k, &v, causal));
        assert!(err < 1e-12, "causal={causal}: {err}");
    }
}

#[test]
fn synthesizer_shapes_and_rank() {
    let s = shape(30, false);
    let (q, k, v) = qkv(&s, 15);
    let (core, vs) = synth(&s, SynthesizerKind::FactorizedRandom, 5, true);
    let Logits::Factorized { r1, r2 } = &core.logits else {
        panic!("factorised logits")
    };
    assert_eq!(r1.size(), [s.heads, s.seq_len, 5]);
    assert_eq!(r2.size(), [s.heads, s.seq_len, 5]);
    assert_eq!(vs.trainable_variables().len(), 2);
    let scores = core.scores(&q);
    assert_eq!(scores.size(), [1, s.heads, s.seq_len, s.seq_len]);
    let ranks = Vec::<i64>::try_from(scores.get(0).linalg_matrix_rank(1e-8, false)).unwrap();
    assert_eq!(ranks, vec![5; s.heads as usize]);
    assert_eq!(core.attend(&q, &k, &v).size(), q.size());
    // Dense: per-input logits with one column per position.
    let (dense, _vs) = synth(&s, SynthesizerKind::Dense, 5, true);
    assert_eq!(
        dense.scores(&q).size(),
        [s.batch, s.heads, s.seq_len, s.seq_len]
    );
    assert_eq!(dense.attend(&q, &k, &v).size(), q.size());
    // Fixed random logits are a buffer, not a parameter.
    let (_fixed, fixed_vs) = synth(&s, SynthesizerKind::Random, 5, false);
    assert!(fixed_vs.trainable_variables().is_empty());
    assert_eq!(
        fixed_vs.variables()["r"].size(),
        [s.heads, s.seq_len, s.seq_len]
    );
}

/// No mode reads the keys: logits come from the query alone or from nothing.
#[test]
fn synthesizer_ignores_the_keys() {
    for mode in [
        SynthesizerKind::Dense,
        SynthesizerKind::Random,
        SynthesizerKind::FactorizedRandom,
    ] {
        let s = shape(20, false);
        let (q, k, v) = qkv(&s, 16);
        let (core, _vs) = synth(&s, mode, 4, true);
        let other = Tensor::randn_like(&k);
        assert!(max_abs(&core.attend(&q, &k, &v), &core.attend(&q, &other, &v)) < 1e-12);
    }
}

/// Causal: outputs before t do not move when queries and values from t on change, and
/// the weights are the softmax of the synthesised logits over positions j <= i.
#[test]
fn synthesizer_causal_masks_the_future() {
    let n = 24;
    for mode in [
        SynthesizerKind::Dense,
        SynthesizerKind::Random,
        SynthesizerKind::FactorizedRandom,
    ] {
        let s = shape(n, true);
        let (q, k, v) = qkv(&s, 17);
        let (core, _vs) = synth(&s, mode, 4, true);
        let out = core.attend(&q, &k, &v);
        let want = core
            .scores(&q)
            .masked_fill(&future_mask(n), f64::NEG_INFINITY)
            .softmax(-1, Kind::Double)
            .matmul(&v);
        assert!(max_abs(&out, &want) < 1e-12, "{mode:?}");
        for t in [1, 10] {
            let (q2, v2) = (q.copy(), v.copy());
            q2.narrow(2, t, n - t)
                .copy_(&Tensor::randn([2, 3, n - t, 16], (Kind::Double, CPU)));
            v2.narrow(2, t, n - t)
                .copy_(&Tensor::randn([2, 3, n - t, 16], (Kind::Double, CPU)));
            let changed = core.attend(&q2, &k, &v2);
            let before = max_abs(&out.narrow(2, 0, t), &changed.narrow(2, 0, t));
            assert!(
                before < 1e-12,
                "{mode:?}: output before {t} moved by {before}"
            );
            assert!(max_abs(&out, &changed) > 1e-6, "{mode:?}");
        }
    }
}

// ---------------------------------------------------------------- configuration

fn build_error(spec: &str, causal: bool) -> VariantError {
    let s = shape(64, causal);
    let vs = nn::VarStore::new(CPU);
    let spec: VariantSpec = spec.parse().unwrap();
    let spec = match spec.normalized() {
        Ok(s) => s,
        Err(e) => return e,
    };
    match build_layer(&spec, &s, Scope::Attention, vs.root()) {
        Ok(_) => panic!("{spec:?} should not build"),
        Err(e) => e,
    }
}

#[test]
fn invalid_configurations_name_what_is_wrong() {
    let cases = [
        (
            "nystromformer:landmarks=0",
            false,
            "landmarks must be at least 1, got 0",
        ),
        (
            "nystromformer:iterations=0",
            false,
            "iterations must be at least 1, got 0",
        ),
        (
            "nystromformer:conv_kernel=32",
            false,
            "conv_kernel must be 0 (off) or odd, got 32",
        ),
        (
            "nystromformer:conv_kernel=-1",
            false,
            "conv_kernel must be 0 (off) or odd, got -1",
        ),
        (
            "set-transformer:inducing=0",
            false,
            "inducing must be at least 1, got 0",
        ),
        (
            "perceiver:latents=0",
            false,
            "latents must be at least 1, got 0",
        ),
        (
            "perceiver:latent_layers=-1",
            false,
            "latent_layers must be at least 0, got -1",
        ),
        (
            "synthesizer:rank=0",
            false,
            "rank must be at least 1, got 0",
        ),
        ("synthesizer:mode=sparse", false, "unknown variant `sparse`"),
        (
            "synthesizer:mode=factorized-random:rank=-3",
            true,
            "rank must be at least 1, got -3",
        ),
        ("nystromformer", true, "does not support causal"),
        ("set-transformer", true, "does not support causal"),
        ("perceiver", true, "does not support causal"),
    ];
    for (spec, causal, needle) in cases {
        let msg = build_error(spec, causal).to_string();
        assert!(msg.contains(needle), "{spec}: `{msg}` lacks `{needle}`");
    }
    // The modes' names as written in a sweep.
    for mode in ["dense", "random", "factorized-random"] {
        let spec: VariantSpec = format!("synthesizer:mode={mode}").parse().unwrap();
        assert!(spec.normalized().is_ok(), "{mode}");
    }
}

// ---------------------------------------------------------------- complexity

/// By construction, at N = 16384 (an N x N float32 score matrix would be 1 GiB per head,
/// several per forward): the sub-quadratic cores run with their defaults and give finite
/// outputs of the right shape. No timing is asserted.
#[test]
fn sub_quadratic_cores_run_at_a_long_sequence() {
    let s = Shape {
        batch: 1,
        seq_len: 16384,
        heads: 1,
        head_dim: 16,
        causal: false,
    };
    let (q, k, v) = qkv(&s, 18);
    let (q, k, v) = (
        q.to_kind(Kind::Float),
        k.to_kind(Kind::Float),
        v.to_kind(Kind::Float),
    );
    tch::no_grad(|| {
        let outs = [
            run_core::<nystromformer::Nystromformer>(
                Default::default(),
                &s,
                Kind::Float,
                &q,
                &k,
                &v,
            ),
            run_core::<set_transformer::SetTransformer>(
                Default::default(),
                &s,
                Kind::Float,
                &q,
                &k,
                &v,
            ),
            run_core::<perceiver::Perceiver>(Default::default(), &s, Kind::Float, &q, &k, &v),
        ];
        for out in outs {
            assert_eq!(out.size(), q.size());
            assert!(bool::try_from(out.isfinite().all()).unwrap());
        }
    });
}

/// The FLOP counts follow the budgets: below exact attention at N = 1024, growing with
/// the budget, and linear in N at a fixed budget.
#[test]
fn flops_follow_the_budgets() {
    let flops = |spec: &str, n: i64| {
        let s = Shape {
            batch: 1,
            seq_len: n,
            heads: 2,
            head_dim: 16,
            causal: false,
        };
        let vs = nn::VarStore::new(CPU);
        let spec: VariantSpec = spec.parse().unwrap();
        let l = build_layer(&spec.normalized().unwrap(), &s, Scope::Attention, vs.root()).unwrap();
        l.flops().forward
    };
    let vanilla = flops("vanilla", 1024);
    for (small, large) in [
        ("nystromformer:landmarks=16", "nystromformer:landmarks=64"),
        ("set-transformer:inducing=8", "set-transformer:inducing=32"),
        ("perceiver:latents=16", "perceiver:latents=64"),
    ] {
        assert!(flops(small, 1024) < flops(large, 1024), "{small}");
        assert!(flops(large, 1024) < vanilla, "{large}");
        // Doubling N at a fixed budget at most doubles the count (projections included).
        assert!(flops(large, 2048) <= 2 * flops(large, 1024), "{large}");
    }
    // The synthesizer is quadratic by design: close to 4x for 2x the length.
    for spec in [
        "synthesizer",
        "synthesizer:mode=random",
        "synthesizer:mode=factorized-random",
    ] {
        let (a, b) = (flops(spec, 512), flops(spec, 1024));
        assert!(b > 3 * a, "{spec}: {a} -> {b}");
    }
}

// ---------------------------------------------------------------- precision

/// Builds `V` with the weights of `seed`, in float64 and then converted to each kind;
/// every kind's output stays near the float64 output, and the backward pass gives finite
/// gradients for the inputs it uses and every parameter. Returns the errors per kind.
fn precision_errors<V: AttentionVariant>(config: impl Fn() -> V::Config, s: &Shape) -> Vec<f64> {
    let (q, k, v) = qkv(s, 19);
    let build = || {
        seeded(20, || {
            let vs = store();
            let core = V::new(config(), s, vs.root()).unwrap();
            (core, vs)
        })
    };
    let (core, _vs) = build();
    let want = tch::no_grad(|| core.attend(&q, &k, &v));
    [Kind::Float, Kind::BFloat16, Kind::Half]
        .iter()
        .map(|&kind| {
            let (core, mut vs) = build();
            vs.set_kind(kind);
            let inputs: Vec<Tensor> = [&q, &k, &v]
                .iter()
                .map(|t| t.to_kind(kind).set_requires_grad(true))
                .collect();
            let out = core.attend(&inputs[0], &inputs[1], &inputs[2]);
            assert_eq!(out.kind(), kind);
            let loss = out.to_kind(Kind::Float).square().mean(Kind::Float);
            let mut wrt = vs.trainable_variables();
            let params = wrt.len();
            wrt.extend(inputs.iter().map(Tensor::shallow_clone));
            let grads = Tensor::run_backward(&[loss], &wrt, false, false);
            for (i, g) in grads.iter().enumerate() {
                // An input the core ignores (the synthesizer's keys) gets no gradient.
                if i >= params && !g.defined() {
                    continue;
                }
                assert!(bool::try_from(g.isfinite().all()).unwrap(), "{kind:?}");
            }
            rel_err(&out, &want)
        })
        .collect()
}

fn assert_precise(what: &str, errs: &[f64]) {
    assert!(errs[0] < 1e-4, "{what}: f32 error {errs:?}");
    assert!(
        errs[1] < 5e-2 && errs[2] < 2e-2,
        "{what}: half errors {errs:?}"
    );
}

/// The configurations the registry-wide precision test does not reach: ragged landmark
/// segments, every synthesizer mode, causal and not.
#[test]
fn every_configuration_trains_near_float64_in_each_precision() {
    let s = shape(45, false);
    for (landmarks, conv_kernel) in [(8, 33), (45, 0), (7, 3)] {
        let errs = precision_errors::<nystromformer::Nystromformer>(
            || nystrom(landmarks, 6, conv_kernel),
            &s,
        );
        assert_precise(&format!("nystromformer m={landmarks}"), &errs);
    }
    for causal in [false, true] {
        let s = shape(45, causal);
        for mode in [
            SynthesizerKind::Dense,
            SynthesizerKind::Random,
            SynthesizerKind::FactorizedRandom,
        ] {
            for trainable in [true, false] {
                let config = || synthesizer::Config {
                    mode,
                    rank: 8,
                    trainable,
                };
                let errs = precision_errors::<synthesizer::Synthesizer>(config, &s);
                assert_precise(&format!("synthesizer {mode:?} causal={causal}"), &errs);
            }
        }
    }
    let errs = precision_errors::<set_transformer::SetTransformer>(Default::default, &s);
    assert_precise("set-transformer", &errs);
    let config = || perceiver::Config {
        latents: 16,
        latent_layers: 2,
    };
    assert_precise(
        "perceiver",
        &precision_errors::<perceiver::Perceiver>(config, &s),
    );
}
