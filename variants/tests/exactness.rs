//! Variants against a float64 reference and against their own exact limits.

mod common;

use common::*;
use tch::{nn, Device, Kind, Tensor};
use xarena_variants::exact::vanilla::softmax_attention;
use xarena_variants::registry::AttentionVariant;
use xarena_variants::{build_layer, exact, fixed, kernel, lowrank, Attention, Scope, VariantSpec};

#[test]
fn vanilla_and_sdpa_match_the_float64_reference() {
    for causal in [false, true] {
        let s = shape(67, causal);
        let (q, k, v) = qkv(&s, 1);
        let want = reference(&q, &k, &v, causal);
        let got =
            run_core::<exact::vanilla::Vanilla>(Default::default(), &s, Kind::Float, &q, &k, &v);
        assert!(rel_err(&got, &want) < 1e-5, "vanilla causal={causal}");
        let got = run_core::<exact::sdpa::Sdpa>(Default::default(), &s, Kind::Float, &q, &k, &v);
        assert!(rel_err(&got, &want) < 1e-5, "sdpa causal={causal}");
        // Half precision lands within its own rounding.
        for kind in [Kind::BFloat16, Kind::Half] {
            let got = run_core::<exact::sdpa::Sdpa>(Default::default(), &s, kind, &q, &k, &v);
            assert!(rel_err(&got, &want) < 2e-2, "sdpa {kind:?} causal={causal}");
        }
    }
}

#[test]
fn sdpa_layer_equals_vanilla_layer_with_the_same_weights() {
    for scope in [Scope::Attention, Scope::Block] {
        for causal in [false, true] {
            let s = shape(50, causal);
            let layer = |name: &str| {
                let vs = nn::VarStore::new(Device::Cpu);
                let l = build_layer(&VariantSpec::new(name), &s, scope, vs.root()).unwrap();
                (vs, l)
            };
            let (vanilla_vs, vanilla) = layer("vanilla");
            let (mut sdpa_vs, sdpa) = layer("sdpa");
            sdpa_vs.copy(&vanilla_vs).unwrap();
            let x = seeded(8, || {
                Tensor::randn(
                    [s.batch, s.seq_len, s.d_model()],
                    (Kind::Float, Device::Cpu),
                )
            });
            let err = rel_err(&sdpa.forward(&x), &vanilla.forward(&x));
            assert!(err < 1e-5, "scope {scope} causal={causal}: {err}");
        }
    }
}

#[test]
fn local_with_a_window_of_at_least_n_is_exact() {
    for causal in [false, true] {
        for window in [40, 41, 1000] {
            let s = shape(40, causal);
            let (q, k, v) = qkv(&s, 2);
            let got = run_core::<fixed::local::Local>(
                fixed::local::Config { window },
                &s,
                Kind::Double,
                &q,
                &k,
                &v,
            );
            let err = rel_err(&got, &reference(&q, &k, &v, causal));
            assert!(err < 1e-12, "window {window} causal={causal}: {err}");
        }
    }
}

/// The pattern as a dense mask: key j hidden from query i when |i - j| > w (or j > i).
fn band_reference(q: &Tensor, k: &Tensor, v: &Tensor, window: i64, causal: bool) -> Tensor {
    let n = q.size()[2];
    let i = Tensor::arange(n, (Kind::Int64, Device::Cpu)).view([n, 1]);
    let j = Tensor::arange(n, (Kind::Int64, Device::Cpu)).view([1, n]);
    let dist = &i - &j;
    let mut hidden = dist.abs().gt(window);
    if causal {
        hidden = hidden.logical_or(&dist.lt(0));
    }
    softmax_attention(q, k, v, Some(&hidden))
}

#[test]
fn local_equals_its_dense_banded_reference_with_padding() {
    for causal in [false, true] {
        // Lengths that are and are not multiples of the window, and windows of 1.
        for (n, window) in [(64, 16), (70, 16), (37, 5), (9, 1), (33, 32)] {
            let s = shape(n, causal);
            let (q, k, v) = qkv(&s, 3);
            let got = run_core::<fixed::local::Local>(
                fixed::local::Config { window },
                &s,
                Kind::Double,
                &q,
                &k,
                &v,
            );
            let err = rel_err(&got, &band_reference(&q, &k, &v, window, causal));
            assert!(err < 1e-12, "n={n} window={window} causal={causal}: {err}");
        }
    }
}

#[test]
fn linformer_with_identity_projections_is_exact() {
    let s = shape(24, false);
    let (q, k, v) = qkv(&s, 4);
    let mut vs = nn::VarStore::new(Device::Cpu);
    vs.set_kind(Kind::Double);
    let config = lowrank::linformer::Config {
        k: s.seq_len,
        share_kv: false,
    };
    let core = lowrank::linformer::Linformer::new(config, &s, vs.root()).unwrap();
    tch::no_grad(|| {
        for (_, mut p) in vs.variables() {
            p.copy_(&Tensor::eye(s.seq_len, (Kind::Double, Device::Cpu)));
        }
    });
    let err = rel_err(&core.attend(&q, &k, &v), &reference(&q, &k, &v, false));
    assert!(err < 1e-12, "{err}");
}

/// Relative error of Performer against exact attention, averaged over seeds.
fn performer_error(features: i64, causal: bool) -> f64 {
    let s = shape(64, causal);
    let seeds = 0..4;
    let total: f64 = seeds
        .clone()
        .map(|seed| {
            let (q, k, v) = qkv(&s, 100 + seed);
            // Moderate logits, as after a trained model's layer norm.
            let (q, k) = (q * 0.5, k * 0.5);
            let config = kernel::performer::Config {
                features,
                chunk: 16,
            };
            let got = seeded(200 + seed, || {
                run_core::<kernel::performer::Performer>(config, &s, Kind::Double, &q, &k, &v)
            });
            rel_err(&got, &reference(&q, &k, &v, causal))
        })
        .sum();
    total / seeds.count() as f64
}

#[test]
fn performer_error_falls_as_features_grow() {
    for causal in [false, true] {
        let errs: Vec<f64> = [8, 64, 512, 4096]
            .iter()
            .map(|&m| performer_error(m, causal))
            .collect();
        for pair in errs.windows(2) {
            assert!(pair[1] < pair[0], "causal={causal}: errors {errs:?}");
        }
        // Monte Carlo error shrinks as 1/sqrt(m): 512x the features, well under a tenth.
        assert!(errs[3] < errs[0] / 8.0, "causal={causal}: errors {errs:?}");
    }
}

#[test]
fn performer_causal_chunks_equal_the_masked_quadratic_form() {
    // The chunked prefix sums against phi(Q) phi(K)^T masked densely, same features.
    for (n, chunk) in [(64, 16), (50, 16), (7, 64), (33, 1)] {
        let s = shape(n, true);
        let (q, k, v) = qkv(&s, 5);
        let mut vs = nn::VarStore::new(Device::Cpu);
        vs.set_kind(Kind::Double);
        let config = kernel::performer::Config {
            features: 32,
            chunk,
        };
        let p = kernel::performer::Performer::new(config, &s, vs.root()).unwrap();
        let (qf, kf) = (p.features(&q, true), p.features(&k, false));
        let a = qf.matmul(&kf.transpose(-2, -1)).tril(0);
        let want = a.matmul(&v) / a.sum_dim_intlist(-1, true, None);
        let err = rel_err(&p.attend(&q, &k, &v), &want);
        assert!(err < 1e-12, "n={n} chunk={chunk}: {err}");
    }
}
