//! The kernel family (linear-transformer, cosformer, performer) against explicit N x N
//! forms written in float64 from the papers' definitions: the chunked causal prefix sums,
//! the bidirectional factorisation, their gradients, the recurrent decoders, the state
//! size, FLOP counts and configuration errors.
//!
//! Performer's convergence to softmax attention as its features grow is tested in
//! exactness.rs; every registered variant's training in f32/bf16/f16, causality and
//! decoding through the layers are tested by precision_and_grad.rs, causality.rs and
//! decode.rs.

mod common;

use std::f64::consts::FRAC_PI_2;

use common::*;
use tch::{nn, Device, Kind, Tensor};
use xarena_variants::kernel::FeatureMap;
use xarena_variants::kernel::{cosformer, linear_transformer, performer};
use xarena_variants::registry::AttentionVariant;
use xarena_variants::{build_layer, Attention, Scope, Shape, VariantSpec};

/// The three variants, built in float64 at `s` with causal chunk `chunk`.
fn cores(s: &Shape, chunk: i64) -> Vec<(&'static str, Box<dyn Attention>)> {
    let mut vs = nn::VarStore::new(Device::Cpu);
    vs.set_kind(Kind::Double);
    let lt = linear_transformer::Config {
        chunk,
        ..Default::default()
    };
    let cos = cosformer::Config {
        chunk,
        ..Default::default()
    };
    let perf = performer::Config {
        features: 32,
        chunk,
    };
    let p = seeded(40, || {
        performer::Performer::new(perf, s, vs.root()).unwrap()
    });
    vec![
        (
            "linear-transformer",
            Box::new(linear_transformer::LinearTransformer::new(lt, s, vs.root()).unwrap()),
        ),
        (
            "cosformer",
            Box::new(cosformer::Cosformer::new(cos, s, vs.root()).unwrap()),
        ),
        ("performer", Box::new(p)),
    ]
}

/// The N x N score matrix of each variant, from its paper's definition.
fn scores(name: &str, s: &Shape, q: &Tensor, k: &Tensor) -> Tensor {
    match name {
        // phi(x) = elu(x) + 1.
        "linear-transformer" => {
            let phi = |x: &Tensor| x.elu() + 1.0;
            phi(q).matmul(&phi(k).transpose(-2, -1))
        }
        // relu(q_i).relu(k_j) cos(theta_i - theta_j), theta_i = pi i / (2 M), i = 1..M:
        // the re-weighting written directly, not through its decomposition.
        "cosformer" => {
            let n = q.size()[2];
            let theta = Tensor::arange_start(1, n + 1, (Kind::Double, Device::Cpu))
                * (FRAC_PI_2 / s.seq_len as f64);
            let cos = (theta.view([n, 1]) - theta.view([1, n])).cos();
            q.relu().matmul(&k.relu().transpose(-2, -1)) * cos
        }
        // Random features: the reference uses the variant's own (seeded as in `cores`).
        "performer" => {
            let mut vs = nn::VarStore::new(Device::Cpu);
            vs.set_kind(Kind::Double);
            let config = performer::Config {
                features: 32,
                chunk: 1,
            };
            let p = seeded(40, || {
                performer::Performer::new(config, s, vs.root()).unwrap()
            });
            p.features(q, true)
                .matmul(&p.features(k, false).transpose(-2, -1))
        }
        other => panic!("no reference for {other}"),
    }
}

/// Normalised weights times V, with each paper's guard of the denominator.
fn quadratic(name: &str, s: &Shape, q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
    let mut a = scores(name, s, q, k);
    if s.causal {
        a = a.tril(0);
    }
    let den = a.sum_dim_intlist(-1, true, None);
    let den = match name {
        "linear-transformer" => den + 1e-6,
        "cosformer" => den.clamp_min(1e-6),
        _ => den,
    };
    a.matmul(v) / den
}

#[test]
fn causal_chunks_equal_the_masked_quadratic_form() {
    // Multiples of the chunk and not, a single partial chunk, chunks of one token.
    for (n, chunk) in [(64, 16), (50, 16), (7, 64), (33, 1), (45, 8)] {
        let s = shape(n, true);
        let (q, k, v) = qkv(&s, 5);
        for (name, core) in cores(&s, chunk) {
            let want = quadratic(name, &s, &q, &k, &v);
            let err = rel_err(&core.attend(&q, &k, &v), &want);
            assert!(err < 1e-12, "{name} n={n} chunk={chunk}: {err}");
        }
    }
}

#[test]
fn bidirectional_equals_the_quadratic_form() {
    for n in [1, 37, 64] {
        let s = shape(n, false);
        let (q, k, v) = qkv(&s, 6);
        for (name, core) in cores(&s, 16) {
            let want = quadratic(name, &s, &q, &k, &v);
            let err = rel_err(&core.attend(&q, &k, &v), &want);
            assert!(err < 1e-12, "{name} n={n}: {err}");
        }
    }
}

#[test]
fn gradients_equal_those_of_the_quadratic_form() {
    for causal in [false, true] {
        let s = shape(29, causal);
        let (q, k, v) = qkv(&s, 7);
        let g = seeded(8, || Tensor::randn(q.size(), (Kind::Double, Device::Cpu)));
        let grads = |f: &dyn Fn(&Tensor, &Tensor, &Tensor) -> Tensor| {
            let leaves: Vec<Tensor> = [&q, &k, &v]
                .iter()
                .map(|t| t.detach().set_requires_grad(true))
                .collect();
            let loss = (f(&leaves[0], &leaves[1], &leaves[2]) * &g).sum(Kind::Double);
            Tensor::run_backward(&[loss], &leaves, false, false)
        };
        for (name, core) in cores(&s, 8) {
            let got = grads(&|q, k, v| core.attend(q, k, v));
            let want = grads(&|q, k, v| quadratic(name, &s, q, k, v));
            for (which, (a, b)) in ["q", "k", "v"].iter().zip(got.iter().zip(&want)) {
                let err = rel_err(a, b);
                assert!(err < 1e-10, "{name} causal={causal} d{which}: {err}");
            }
        }
    }
}

#[test]
fn decoders_equal_the_causal_form_token_by_token() {
    // Contexts that end inside a chunk and on a chunk boundary.
    for (n, context) in [(40, 13), (40, 16), (12, 1)] {
        let s = shape(n, true);
        let (q, k, v) = qkv(&s, 9);
        // Later keys larger than the context's: Performer's running stabiliser must grow
        // and rescale its sums on the way.
        let k = Tensor::cat(
            &[
                k.narrow(2, 0, context) * 0.3,
                k.narrow(2, context, n - context) * 2.0,
            ],
            2,
        );
        for (name, core) in cores(&s, 8) {
            let full = core.attend(&q, &k, &v);
            let mut state = core
                .decoder(&k.narrow(2, 0, context), &v.narrow(2, 0, context), n)
                .unwrap_or_else(|| panic!("{name} decodes"));
            let step = |state: &mut Box<dyn xarena_variants::Decoder>, t: i64| {
                state.step(&q.narrow(2, t, 1), &k.narrow(2, t, 1), &v.narrow(2, t, 1))
            };
            for t in context..n {
                let err = rel_err(&step(&mut state, t), &full.narrow(2, t, 1));
                assert!(err < 1e-12, "{name} n={n} context={context} t={t}: {err}");
            }
            state.reset();
            let err = rel_err(&step(&mut state, context), &full.narrow(2, context, 1));
            assert!(err < 1e-12, "{name} after reset: {err}");
        }
    }
}

#[test]
fn decoding_state_is_the_running_sums_whatever_the_context() {
    let s = shape(300, true);
    let (_, k, v) = qkv(&s, 10);
    let (bh, d) = ((s.batch * s.heads) as u64, s.head_dim as u64);
    for (name, core) in cores(&s, 64) {
        let bytes = |n: i64| {
            core.decoder(&k.narrow(2, 0, n), &v.narrow(2, 0, n), 1)
                .unwrap()
                .state_bytes()
        };
        let (small, large) = (bytes(16), bytes(256));
        assert_eq!(small, large, "{name}: state grew with the context");
        // S (m x d) and z (m) per head in float64; Performer adds its stabiliser.
        let m = match name {
            "linear-transformer" => d,
            "cosformer" => 2 * d,
            _ => 32,
        };
        let extra = if name == "performer" { bh * 8 } else { 0 };
        assert_eq!(small, bh * (m * d + m) * 8 + extra, "{name}");
        // One step costs the same after any context.
        assert_eq!(core.decode_flops(16), core.decode_flops(256), "{name}");
    }
}

#[test]
fn flops_follow_the_closed_forms() {
    for causal in [false, true] {
        let s = shape(100, causal);
        let (bh, n, d) = ((s.batch * s.heads) as u64, 100u64, s.head_dim as u64);
        let products = |m: u64| {
            if causal {
                // Chunk 16: 7 chunks, 112 padded rows; states, reads, and inside chunks.
                let (c, np) = (16u64, 112u64);
                2 * bh * (m * np * d + np * m * d + np * m + np * m * c + np * c * d)
            } else {
                2 * bh * (m * n * d + n * m * d + n * m)
            }
        };
        for (name, core) in cores(&s, 16) {
            let (m, features) = match name {
                "linear-transformer" => (d, 0),
                "cosformer" => (2 * d, 0),
                _ => (32, 2 * (2 * bh * n * d * 32)),
            };
            let f = core.flops();
            assert_eq!(f.forward, products(m) + features, "{name} causal={causal}");
            // Performer's projection matrix is a buffer: its two feature projections have
            // one gradient product each (the input's), not two; 4 B H N d m in all.
            assert_eq!(f.backward, 2 * products(m) + features, "{name}");
        }
    }
}

#[test]
fn cosformer_in_f16_survives_a_query_that_meets_no_key() {
    // Query 0 is positive only where key 0 is negative: a zero denominator. With the
    // paper's eps of 1e-6, the gradient of its numerator would be g * 1e6, past f16.
    let s = Shape {
        batch: 1,
        heads: 1,
        seq_len: 4,
        head_dim: 2,
        causal: true,
    };
    let q = Tensor::from_slice(&[1.0f32, -1.0, 0.5, 0.5, 0.3, 0.2, 1.0, 1.0]).view([1, 1, 4, 2]);
    let k = Tensor::from_slice(&[-1.0f32, 1.0, 0.4, 0.6, 0.7, 0.1, 0.2, 0.9]).view([1, 1, 4, 2]);
    let v = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]).view([1, 1, 4, 2]);
    let mut vs = nn::VarStore::new(Device::Cpu);
    vs.set_kind(Kind::Half);
    let core = cosformer::Cosformer::new(Default::default(), &s, vs.root()).unwrap();
    let leaves: Vec<Tensor> = [&q, &k, &v]
        .iter()
        .map(|t| t.to_kind(Kind::Half).set_requires_grad(true))
        .collect();
    let y = core.attend(&leaves[0], &leaves[1], &leaves[2]);
    let row0 = f64::try_from(y.get(0).get(0).get(0).abs().max()).unwrap();
    assert_eq!(row0, 0.0, "query 0 attends to nothing");
    let loss = y.to_kind(Kind::Float).sum(Kind::Float);
    for g in Tensor::run_backward(&[loss], &leaves, false, false) {
        assert!(bool::try_from(g.isfinite().all()).unwrap(), "{g:?}");
    }
    // The other rows are what float64 gives (the floor only touches row 0).
    let want = quadratic(
        "cosformer",
        &s,
        &q.to_kind(Kind::Double),
        &k.to_kind(Kind::Double),
        &v.to_kind(Kind::Double),
    );
    let err = rel_err(&y.narrow(2, 1, 3), &want.narrow(2, 1, 3));
    assert!(err < 5e-3, "{err}");
}

#[test]
fn invalid_configurations_name_the_field() {
    let s = shape(64, true);
    let cases = [
        (
            "linear-transformer:chunk=0",
            "chunk must be at least 1, got 0",
        ),
        (
            "linear-transformer:eps=0",
            "eps must be a positive number, got 0",
        ),
        (
            "linear-transformer:eps=-1e-6",
            "eps must be a positive number",
        ),
        ("cosformer:chunk=-3", "chunk must be at least 1, got -3"),
        ("cosformer:eps=0.0", "eps must be a positive number, got 0"),
        ("performer:features=0", "features must be at least 1, got 0"),
        ("cosformer:features=4", "unknown field `features`"),
    ];
    for (spec, needle) in cases {
        let vs = nn::VarStore::new(Device::Cpu);
        let spec: VariantSpec = spec.parse().unwrap();
        let err = match spec
            .normalized()
            .and_then(|n| build_layer(&n, &s, Scope::Attention, vs.root()))
        {
            Ok(_) => panic!("{spec:?} should not build"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(needle), "{spec:?}: `{err}` lacks `{needle}`");
        let name = spec.name.as_str();
        assert!(err.contains(name), "`{err}` does not name {name}");
    }
}

#[test]
fn the_causal_chunk_mask_is_made_once_not_per_forward() {
    let s = shape(40, true);
    let mut vs = nn::VarStore::new(Device::Cpu);
    vs.set_kind(Kind::Double);
    let config = cosformer::Config {
        chunk: 16,
        ..Default::default()
    };
    let core = cosformer::Cosformer::new(config, &s, vs.root()).unwrap();
    let future = core.chunks().future();
    let want = Tensor::ones([16, 16], (Kind::Bool, Device::Cpu)).triu(1);
    assert!(future.equal(&want));
    let ptr = future.data_ptr();
    let (q, k, v) = qkv(&s, 2);
    let first = core.attend(&q, &k, &v);
    assert!(first.equal(&core.attend(&q, &k, &v)));
    assert_eq!(core.chunks().future().data_ptr(), ptr);
    // Buffers, not parameters: the VarStore holds nothing for cosFormer.
    assert!(vs.variables().is_empty());
}
