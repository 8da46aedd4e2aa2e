//! Fixed and combined patterns: exact limits, dense masked references of their own
//! pattern (written here from the papers' definitions, independently of the block code),
//! padding, and configuration errors.

mod common;

use common::*;
use tch::{nn, Device, Kind, Tensor};
use xarena_variants::combined::{axial, bigbird, longformer, sparse_transformer};
use xarena_variants::exact::vanilla::softmax_attention;
use xarena_variants::fixed::{blockwise, memory_compressed, strided};
use xarena_variants::registry::AttentionVariant;
use xarena_variants::{build_layer, Attention, Scope, Shape, VariantSpec};

/// `[N, N]` hidden mask from a visibility rule over positions.
fn dense(n: i64, causal: bool, visible: impl Fn(i64, i64) -> bool) -> Tensor {
    let mut hidden = Vec::with_capacity((n * n) as usize);
    for i in 0..n {
        for j in 0..n {
            hidden.push(!(visible(i, j) && !(causal && j > i)));
        }
    }
    Tensor::from_slice(&hidden).view([n, n])
}

fn build<V: AttentionVariant>(config: V::Config, s: &Shape) -> V {
    let mut vs = nn::VarStore::new(Device::Cpu);
    vs.set_kind(Kind::Double);
    V::new(config, s, vs.root()).expect("valid config")
}

/// The variant's output equals exact attention under `hidden`, and so does its block
/// pattern below the first `global_rows` rows (global queries are computed apart).
fn check_against(
    core: &dyn Attention,
    s: &Shape,
    hidden: &Tensor,
    pattern: &Tensor,
    global_rows: i64,
    what: &str,
) {
    let rest = s.seq_len - global_rows;
    assert!(
        pattern
            .narrow(0, global_rows, rest)
            .equal(&hidden.narrow(0, global_rows, rest)),
        "{what}: the pattern differs from its definition"
    );
    let (q, k, v) = qkv(s, 11);
    let want = softmax_attention(&q, &k, &v, Some(hidden));
    let err = rel_err(&core.attend(&q, &k, &v), &want);
    assert!(err < 1e-12, "{what}: {err}");
}

#[test]
fn blockwise_is_block_diagonal_and_exact_with_one_block() {
    for causal in [false, true] {
        for (n, block) in [(64, 16), (37, 8), (5, 1)] {
            let s = shape(n, causal);
            let core: blockwise::Blockwise = build(blockwise::Config { block }, &s);
            let hidden = dense(n, causal, |i, j| i / block == j / block);
            let what = format!("blockwise n={n} b={block} causal={causal}");
            check_against(&core, &s, &hidden, &core.pattern().dense_hidden(), 0, &what);
        }
        let s = shape(30, causal);
        let (q, k, v) = qkv(&s, 12);
        let core: blockwise::Blockwise = build(blockwise::Config { block: 64 }, &s);
        let err = rel_err(&core.attend(&q, &k, &v), &reference(&q, &k, &v, causal));
        assert!(err < 1e-12, "one block, causal={causal}: {err}");
    }
}

#[test]
fn longformer_is_window_plus_globals() {
    for causal in [false, true] {
        for (n, window, global) in [(45, 10, vec![0, 17]), (64, 16, vec![]), (33, 4, vec![32])] {
            let s = shape(n, causal);
            let config = longformer::Config {
                window,
                global: global.clone(),
            };
            let core: longformer::Longformer = build(config, &s);
            let r = window / 2;
            let g = |p: i64| global.contains(&p);
            let hidden = dense(n, causal, |i, j| (i - j).abs() <= r || g(i) || g(j));
            let what = format!("longformer n={n} w={window} g={global:?} causal={causal}");
            let (q, k, v) = qkv(&s, 13);
            let want = softmax_attention(&q, &k, &v, Some(&hidden));
            let err = rel_err(&core.attend(&q, &k, &v), &want);
            assert!(err < 1e-12, "{what}: {err}");
        }
    }
}

#[test]
fn longformer_exact_limits() {
    for causal in [false, true] {
        let s = shape(40, causal);
        let (q, k, v) = qkv(&s, 14);
        let exact = reference(&q, &k, &v, causal);
        let wide: longformer::Longformer = build(
            longformer::Config {
                window: 80,
                global: vec![],
            },
            &s,
        );
        assert!(
            rel_err(&wide.attend(&q, &k, &v), &exact) < 1e-12,
            "window 2N"
        );
        let all: longformer::Longformer = build(
            longformer::Config {
                window: 2,
                global: (0..40).collect(),
            },
            &s,
        );
        assert!(
            rel_err(&all.attend(&q, &k, &v), &exact) < 1e-12,
            "every token global"
        );
    }
}

#[test]
fn bigbird_is_window_random_and_global_blocks() {
    for (n, block, random, globals) in [(70, 8, 2, 1), (64, 8, 3, 2), (48, 16, 1, 0)] {
        let s = shape(n, false);
        let config = bigbird::Config {
            block,
            window_blocks: 3,
            random_blocks: random,
            global_blocks: globals,
        };
        let core: bigbird::BigBird = seeded(21, || build(config, &s));
        let picks = core.random_blocks().to_vec();
        // Random blocks avoid the window and the global blocks, and are distinct.
        for (qb, p) in picks.iter().enumerate() {
            let qb = qb as i64;
            let mut sorted = p.clone();
            sorted.dedup();
            assert_eq!(sorted.len(), p.len());
            assert!(
                p.iter().all(|&b| (b - qb).abs() > 1 && b >= globals),
                "{p:?}"
            );
        }
        let gl = globals * block;
        let hidden = dense(n, false, |i, j| {
            let (qb, kb) = (i / block, j / block);
            i < gl || j < gl || (qb - kb).abs() <= 1 || picks[qb as usize].contains(&kb)
        });
        let what = format!("bigbird n={n} b={block} r={random} g={globals}");
        let pattern = core.pattern().dense_hidden();
        check_against(&core, &s, &hidden, &pattern, gl.min(n), &what);
    }
}

#[test]
fn bigbird_with_every_block_global_is_exact() {
    let s = shape(40, false);
    let (q, k, v) = qkv(&s, 15);
    let config = bigbird::Config {
        block: 8,
        window_blocks: 1,
        random_blocks: 0,
        global_blocks: 5,
    };
    let core: bigbird::BigBird = build(config, &s);
    let err = rel_err(&core.attend(&q, &k, &v), &reference(&q, &k, &v, false));
    assert!(err < 1e-12, "{err}");
}

#[test]
fn pattern_configurations_are_checked() {
    let s = shape(32, false);
    let cases = [
        ("blockwise:block=0", false, "block must be at least 1"),
        (
            "bigbird:window_blocks=2",
            false,
            "window_blocks must be odd",
        ),
        ("bigbird:random_blocks=-1", false, "must be >= 0"),
        ("bigbird", true, "does not support causal"),
        ("longformer:window=0", false, "window must be at least 1"),
        (
            "longformer:global=[40]",
            false,
            "global position 40 is outside 0..32",
        ),
    ];
    for (spec, causal, needle) in cases {
        let spec: VariantSpec = spec.parse().unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let shape = Shape { causal, ..s };
        let err = match spec.normalized() {
            Err(e) => e,
            Ok(spec) => match build_layer(&spec, &shape, Scope::Attention, vs.root()) {
                Err(e) => e,
                Ok(_) => panic!("{spec:?} should not build"),
            },
        };
        assert!(err.to_string().contains(needle), "{spec:?}: {err}");
    }
}

#[test]
fn no_pattern_tensor_grows_as_n_squared() {
    // The gathered width per query block stays fixed as N grows: 4x N, same width.
    let width = |n: i64| {
        let s = shape(n, false);
        let lf: longformer::Longformer = build(longformer::Config::default(), &s);
        let bb: bigbird::BigBird = build(bigbird::Config::default(), &s);
        let bw: blockwise::Blockwise = build(blockwise::Config::default(), &s);
        (
            lf.pattern().width(),
            bb.pattern().width(),
            bw.pattern().width(),
        )
    };
    assert_eq!(width(2048), width(8192));
}

#[test]
fn strided_sees_every_s_th_key_and_is_exact_at_stride_one() {
    for causal in [false, true] {
        for (n, stride) in [(64, 8), (37, 5), (50, 0), (9, 20)] {
            let s = shape(n, causal);
            let core: strided::Strided = build(strided::Config { stride }, &s);
            let st = core.stride();
            let hidden = dense(n, causal, |i, j| (i - j).rem_euclid(st) == 0);
            let (q, k, v) = qkv(&s, 16);
            let want = softmax_attention(&q, &k, &v, Some(&hidden));
            let err = rel_err(&core.attend(&q, &k, &v), &want);
            assert!(
                err < 1e-12,
                "strided n={n} s={stride} causal={causal}: {err}"
            );
        }
        let s = shape(33, causal);
        let (q, k, v) = qkv(&s, 17);
        let core: strided::Strided = build(strided::Config { stride: 1 }, &s);
        let err = rel_err(&core.attend(&q, &k, &v), &reference(&q, &k, &v, causal));
        assert!(err < 1e-12, "stride 1 causal={causal}: {err}");
    }
}

#[test]
fn sparse_transformer_splits_heads_between_local_and_strided() {
    for causal in [false, true] {
        for (n, l) in [(49, 7), (40, 6)] {
            let s = shape(n, causal);
            let config = sparse_transformer::Config {
                stride: l,
                local_heads: 2,
            };
            let core: sparse_transformer::SparseTransformer = build(config, &s);
            let (q, k, v) = qkv(&s, 18);
            let heads = |t: &Tensor, a: i64, len: i64| t.narrow(1, a, len);
            let band = dense(n, causal, |i, j| (i - j).abs() < l);
            let stride = dense(n, causal, |i, j| (i - j).rem_euclid(l) == 0);
            let want = Tensor::cat(
                &[
                    softmax_attention(
                        &heads(&q, 0, 2),
                        &heads(&k, 0, 2),
                        &heads(&v, 0, 2),
                        Some(&band),
                    ),
                    softmax_attention(
                        &heads(&q, 2, 1),
                        &heads(&k, 2, 1),
                        &heads(&v, 2, 1),
                        Some(&stride),
                    ),
                ],
                1,
            );
            let err = rel_err(&core.attend(&q, &k, &v), &want);
            assert!(err < 1e-12, "n={n} l={l} causal={causal}: {err}");
        }
    }
}

#[test]
fn axial_sums_row_and_column_attention() {
    for causal in [false, true] {
        for (n, width) in [(36, 6), (37, 7), (20, 0), (10, 3)] {
            let s = shape(n, causal);
            let core: axial::Axial = build(axial::Config { width }, &s);
            let (_, c) = core.grid();
            let (q, k, v) = qkv(&s, 19);
            // Causal: j <= i along either axis is exactly j <= i in sequence order here.
            let rows = dense(n, causal, |i, j| i / c == j / c);
            let cols = dense(n, causal, |i, j| i % c == j % c);
            let want = softmax_attention(&q, &k, &v, Some(&rows))
                + softmax_attention(&q, &k, &v, Some(&cols));
            let err = rel_err(&core.attend(&q, &k, &v), &want);
            assert!(
                err < 1e-12,
                "axial n={n} width={width} causal={causal}: {err}"
            );
        }
    }
}

/// The strided convolution written out: slot t = sum over u < c of W[:, :, u] x[t c + u].
fn compress_by_hand(x: &Tensor, w: &Tensor, c: i64) -> Tensor {
    let (b, h, n, d) = x.size4().unwrap();
    let slots = (n + c - 1) / c;
    let x = x
        .constant_pad_nd([0, 0, 0, slots * c - n])
        .view([b, h, slots, c, d]);
    (0..c)
        .map(|u| x.select(3, u).matmul(&w.select(2, u).transpose(0, 1)))
        .fold(
            Tensor::zeros([b, h, slots, d], (Kind::Double, Device::Cpu)),
            |acc, t| acc + t,
        )
}

#[test]
fn memory_compressed_is_local_heads_beside_compressed_heads() {
    for causal in [false, true] {
        for (n, c, block) in [(36, 3, 8), (37, 4, 10), (20, 1, 5)] {
            let s = shape(n, causal);
            let config = memory_compressed::Config {
                compression: c,
                block,
                local_heads: 1,
            };
            let core: memory_compressed::MemoryCompressed = build(config, &s);
            let (wk, wv) = core.conv_weights();
            let (q, k, v) = qkv(&s, 20);
            let heads = |t: &Tensor, a: i64, len: i64| t.narrow(1, a, len);
            let local = dense(n, causal, |i, j| i / block == j / block);
            let want_local = softmax_attention(
                &heads(&q, 0, 1),
                &heads(&k, 0, 1),
                &heads(&v, 0, 1),
                Some(&local),
            );
            let (qc, kc, vc) = (
                heads(&q, 1, 2),
                compress_by_hand(&heads(&k, 1, 2), wk, c),
                compress_by_hand(&heads(&v, 1, 2), wv, c),
            );
            let slots = kc.size()[2];
            // Slot t summarises positions t c .. t c + c - 1: visible once all are past.
            let mut hidden = Vec::new();
            let mut sees = Vec::new();
            for i in 0..n {
                let row: Vec<bool> = (0..slots).map(|t| causal && (t + 1) * c - 1 > i).collect();
                sees.push(if row.iter().all(|&h| h) { 0.0 } else { 1.0 });
                hidden.extend(row.iter().map(|&h| h && !row.iter().all(|&x| x)));
            }
            let hidden = Tensor::from_slice(&hidden).view([n, slots]);
            let sees = Tensor::from_slice(&sees).view([n, 1]);
            let want_compressed = softmax_attention(&qc, &kc, &vc, Some(&hidden)) * sees;
            let want = Tensor::cat(&[want_local, want_compressed], 1);
            let err = rel_err(&core.attend(&q, &k, &v), &want);
            assert!(err < 1e-12, "n={n} c={c} b={block} causal={causal}: {err}");
        }
    }
}

#[test]
fn memory_compressed_with_identity_compression_and_one_block_is_exact() {
    let s = shape(24, false);
    let config = memory_compressed::Config {
        compression: 1,
        block: 24,
        local_heads: 1,
    };
    let core: memory_compressed::MemoryCompressed = build(config, &s);
    tch::no_grad(|| {
        let (wk, wv) = core.conv_weights();
        let eye = Tensor::eye(16, (Kind::Double, Device::Cpu)).unsqueeze(2);
        wk.shallow_clone().copy_(&eye);
        wv.shallow_clone().copy_(&eye);
    });
    let (q, k, v) = qkv(&s, 22);
    let err = rel_err(&core.attend(&q, &k, &v), &reference(&q, &k, &v, false));
    assert!(err < 1e-12, "{err}");
}
