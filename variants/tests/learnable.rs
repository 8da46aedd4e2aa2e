//! Learnable patterns against dense references written from the papers' definitions.

mod common;

use common::*;
use tch::{nn, Device, Kind, Tensor};
use xarena_variants::learnable::reformer;
use xarena_variants::registry::AttentionVariant;
use xarena_variants::{build_layer, Attention, Scope, Shape, VariantSpec};

fn build_reformer(config: reformer::Config, s: &Shape, seed: i64) -> reformer::Reformer {
    seeded(seed, || {
        let mut vs = nn::VarStore::new(Device::Cpu);
        vs.set_kind(Kind::Double);
        reformer::Reformer::new(config, s, vs.root()).unwrap()
    })
}

fn unit(q: &Tensor) -> Tensor {
    q / (q.square().sum_dim_intlist(-1, true, None).sqrt() + 1e-6)
}

/// LSH attention written densely, position by position: for every round, query i meets
/// key j when they share a bucket and j's chunk (in the order sorted by bucket, then
/// position) is i's chunk or the one before it (cyclically); i scores itself -1e5; the
/// rounds are weighted by their log-sum-exp.
fn lsh_reference(q: &Tensor, v: &Tensor, buckets: &Tensor, c: i64, causal: bool) -> Tensor {
    let (b, h, n, d) = q.size4().unwrap();
    let r = buckets.size()[2];
    let nc = (n + c - 1) / c;
    let k = unit(q);
    let scores = q.matmul(&k.transpose(-2, -1)) / (d as f64).sqrt(); // [b, h, n, n]
    let mut outs = Vec::new();
    let mut lses = Vec::new();
    for round in 0..r {
        let bk = buckets.select(2, round); // [b, h, n]
        let mut hidden = vec![true; (b * h * n * n) as usize];
        for bi in 0..b {
            for hi in 0..h {
                let row = Vec::<i64>::try_from(&bk.get(bi).get(hi)).unwrap();
                let mut order: Vec<i64> = (0..n).collect();
                order.sort_by_key(|&p| (row[p as usize], p));
                let mut chunk = vec![0; n as usize];
                for (rank, &p) in order.iter().enumerate() {
                    chunk[p as usize] = rank as i64 / c;
                }
                for i in 0..n {
                    for j in 0..n {
                        let (ci, cj) = (chunk[i as usize], chunk[j as usize]);
                        let near = cj == ci || cj == (ci - 1).rem_euclid(nc);
                        let ok = row[i as usize] == row[j as usize] && near && !(causal && j > i);
                        let at = (((bi * h + hi) * n + i) * n + j) as usize;
                        hidden[at] = !ok;
                    }
                }
            }
        }
        let hidden = Tensor::from_slice(&hidden).view([b, h, n, n]);
        let eye = Tensor::eye(n, (Kind::Bool, Device::Cpu));
        let s = scores
            .masked_fill(&eye, -1e5)
            .masked_fill(&hidden.logical_and(&eye.logical_not()), f64::NEG_INFINITY);
        let lse = s.logsumexp([-1], true);
        outs.push((s - &lse).exp().matmul(v));
        lses.push(lse);
    }
    let w = Tensor::stack(&lses, 0).softmax(0, Kind::Double);
    (Tensor::stack(&outs, 0) * w).sum_dim_intlist(0, false, None)
}

#[test]
fn reformer_equals_its_dense_lsh_definition() {
    for causal in [false, true] {
        for (n, c, rounds) in [(32, 8, 2), (48, 16, 3)] {
            let s = shape(n, causal);
            let config = reformer::Config {
                bucket_size: c,
                rounds,
                buckets: 0,
            };
            let core = build_reformer(config, &s, 31);
            let (q, _, v) = qkv(&s, 32);
            let buckets = core.hash(&unit(&q));
            let want = lsh_reference(&q, &v, &buckets, c, causal);
            let err = rel_err(&core.attend(&q, &q, &v), &want);
            assert!(err < 1e-10, "n={n} c={c} r={rounds} causal={causal}: {err}");
        }
    }
}

#[test]
fn reformer_with_one_bucket_holding_everything_is_shared_qk_attention() {
    for causal in [false, true] {
        // N = 37 with chunks of 64: one padded chunk.
        let s = shape(37, causal);
        let config = reformer::Config {
            bucket_size: 64,
            rounds: 2,
            buckets: 1,
        };
        let core = build_reformer(config, &s, 33);
        let (q, _, v) = qkv(&s, 34);
        let buckets = Tensor::zeros([2, 3, 2, 37], (Kind::Int64, Device::Cpu));
        let want = lsh_reference(&q, &v, &buckets, 64, causal);
        let err = rel_err(&core.attend(&q, &q, &v), &want);
        assert!(err < 1e-10, "causal={causal}: {err}");
    }
}

#[test]
fn reformer_buckets_are_balanced_enough_and_chunks_stay_fixed() {
    let s = shape(512, false);
    let core = build_reformer(reformer::Config::default(), &s, 35);
    let (q, _, _) = qkv(&s, 36);
    let buckets = core.hash(&unit(&q));
    // 8 buckets of expected size 64: every bucket used.
    let used = buckets.flatten(0, -1).bincount(None::<Tensor>, 0);
    assert_eq!(used.size()[0], 8);
    assert!(bool::try_from(used.gt(0).all()).unwrap());
    let wide = build_reformer(reformer::Config::default(), &shape(4096, false), 35);
    assert_eq!(core.chunk_len(), wide.chunk_len());
}

#[test]
fn reformer_configurations_are_checked() {
    let s = shape(32, false);
    for (spec, needle) in [
        ("reformer:rounds=0", "rounds must be at least 1"),
        ("reformer:bucket_size=0", "bucket_size must be at least 1"),
        ("reformer:buckets=3", "buckets must be 0"),
    ] {
        let spec: VariantSpec = spec.parse().unwrap();
        let vs = nn::VarStore::new(Device::Cpu);
        let err = match build_layer(&spec.normalized().unwrap(), &s, Scope::Attention, vs.root()) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{spec:?} should not build"),
        };
        assert!(err.contains(needle), "{spec:?}: {err}");
    }
}
