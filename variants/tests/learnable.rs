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
        ("sinkhorn:temperature=0.0", "temperature must be positive"),
        ("sinkhorn:iterations=0", "iterations must be at least 1"),
        (
            "routing:clusters=40",
            "clusters must be 0 (sqrt(N)) or 1..=32",
        ),
        ("routing:decay=1.0", "decay must be in [0, 1)"),
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

mod sinkhorn_tests {
    use super::common::*;
    use tch::{nn, Device, Kind, Tensor};
    use xarena_variants::learnable::sinkhorn::{self, Sinkhorn};
    use xarena_variants::registry::AttentionVariant;
    use xarena_variants::{Attention, Shape};

    fn build(config: sinkhorn::Config, s: &Shape) -> (nn::VarStore, Sinkhorn) {
        seeded(41, || {
            let mut vs = nn::VarStore::new(Device::Cpu);
            vs.set_kind(Kind::Double);
            let core = Sinkhorn::new(config, s, vs.root()).unwrap();
            (vs, core)
        })
    }

    #[test]
    fn sinkhorn_iterations_make_a_doubly_stochastic_matrix() {
        let logits = seeded(42, || {
            Tensor::randn([3, 7, 7], (Kind::Double, Device::Cpu)) * 3.0
        });
        let p = sinkhorn::sinkhorn(&logits, 200);
        for dim in [-1, -2] {
            let sums = p.sum_dim_intlist(dim, false, None);
            let dev = f64::try_from((sums - 1.0).abs().max()).unwrap();
            // Columns are exact after the last step; rows converge geometrically.
            assert!(dev < 1e-6, "dim {dim}: {dev}");
        }
    }

    /// Query block i attends to its own block's keys (earlier ones, when causal) and to
    /// sum_j P[i, j] * block j (none for the first block, when causal).
    fn reference(
        core: &Sinkhorn,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        block: i64,
        causal: bool,
    ) -> Tensor {
        let (b, h, n, d) = q.size4().unwrap();
        let nb = (n + block - 1) / block;
        let p = core.permutation(k);
        let pad = |t: &Tensor| t.constant_pad_nd([0, 0, 0, nb * block - n]);
        let (k, v) = (pad(k), pad(v));
        let mut rows = Vec::new();
        for i in 0..n {
            let bi = i / block;
            let own = (bi * block..(bi + 1) * block).filter(|&j| j < n && !(causal && j > i));
            let own: Vec<i64> = own.collect();
            let idx = Tensor::from_slice(&own);
            let mut sorted_k = Tensor::zeros([b, h, block, d], (Kind::Double, Device::Cpu));
            let mut sorted_v = sorted_k.zeros_like();
            for j in 0..nb {
                let w = p.narrow(2, bi, 1).narrow(3, j, 1); // [b, h, 1, 1]
                sorted_k += k.narrow(2, j * block, block) * &w;
                sorted_v += v.narrow(2, j * block, block) * &w;
            }
            let (keys, values) = if causal && bi == 0 {
                (k.index_select(2, &idx), v.index_select(2, &idx))
            } else {
                (
                    Tensor::cat(&[k.index_select(2, &idx), sorted_k], 2),
                    Tensor::cat(&[v.index_select(2, &idx), sorted_v], 2),
                )
            };
            let qi = q.narrow(2, i, 1) / (d as f64).sqrt();
            let a = qi.matmul(&keys.transpose(-2, -1)).softmax(-1, Kind::Double);
            rows.push(a.matmul(&values));
        }
        Tensor::cat(&rows, 2)
    }

    #[test]
    fn sinkhorn_attention_equals_its_definition_with_padding() {
        for causal in [false, true] {
            for (n, block) in [(32, 8), (37, 8), (20, 5)] {
                let s = shape(n, causal);
                let config = sinkhorn::Config {
                    block,
                    ..Default::default()
                };
                let (_vs, core) = build(config, &s);
                let (q, k, v) = qkv(&s, 43);
                let want = reference(&core, &q, &k, &v, block, causal);
                let err = rel_err(&core.attend(&q, &k, &v), &want);
                assert!(err < 1e-10, "n={n} b={block} causal={causal}: {err}");
                if causal {
                    // Only strictly earlier blocks are sorted into a place.
                    let p = core.permutation(&k);
                    let nb = p.size()[2];
                    let allowed = Tensor::ones([nb, nb], (Kind::Double, Device::Cpu)).tril(-1);
                    let outside = p * (allowed.ones_like() - &allowed);
                    let leak = f64::try_from(outside.abs().max()).unwrap();
                    assert_eq!(leak, 0.0, "n={n} b={block}");
                }
            }
        }
    }

    #[test]
    fn sinkhorn_with_one_block_is_exact_and_its_sorter_learns() {
        let s = shape(24, false);
        let (vs, core) = build(
            sinkhorn::Config {
                block: 64,
                ..Default::default()
            },
            &s,
        );
        let (q, k, v) = qkv(&s, 44);
        let err = rel_err(&core.attend(&q, &k, &v), &reference_exact(&q, &k, &v));
        assert!(err < 1e-12, "{err}");
        // With several blocks the sorting network gets a gradient: the pattern is learned.
        let s = shape(32, false);
        let (vs2, core) = build(
            sinkhorn::Config {
                block: 8,
                ..Default::default()
            },
            &s,
        );
        let (q, k, v) = qkv(&s, 45);
        let loss = core.attend(&q, &k, &v).square().sum(Kind::Double);
        let grads = Tensor::run_backward(&[loss], &vs2.trainable_variables(), false, false);
        let norm = f64::try_from(grads[0].norm()).unwrap();
        assert!(norm > 0.0 && norm.is_finite(), "{norm}");
        drop(vs);
    }

    fn reference_exact(q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
        super::common::reference(q, k, v, false)
    }
}

mod routing_tests {
    use super::common::*;
    use tch::{nn, Device, Kind, Tensor};
    use xarena_variants::learnable::routing::{self, Routing};
    use xarena_variants::registry::AttentionVariant;
    use xarena_variants::{Attention, Shape};

    fn build(config: routing::Config, s: &Shape) -> (nn::VarStore, Routing) {
        seeded(51, || {
            let mut vs = nn::VarStore::new(Device::Cpu);
            vs.set_kind(Kind::Double);
            let core = Routing::new(config, s, vs.root()).unwrap();
            (vs, core)
        })
    }

    /// Every cluster's queries attend to its keys (earlier ones, when causal); a query
    /// averages the clusters it is in, and gets zeros from a cluster whose keys all lie
    /// ahead of it, or from none.
    fn reference(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        iq: &Tensor,
        ik: &Tensor,
        causal: bool,
    ) -> Tensor {
        let (b, h, n, d) = q.size4().unwrap();
        let scale = (d as f64).powf(-0.5);
        let out = Tensor::zeros([b, h, n, d], (Kind::Double, Device::Cpu));
        for bi in 0..b {
            for hi in 0..h {
                let qs = Vec::<Vec<i64>>::try_from(&iq.get(bi).get(hi)).unwrap();
                let ks = Vec::<Vec<i64>>::try_from(&ik.get(bi).get(hi)).unwrap();
                let mut sum: Vec<Tensor> = (0..n)
                    .map(|_| Tensor::zeros([d], (Kind::Double, Device::Cpu)))
                    .collect();
                let mut count = vec![0.0; n as usize];
                for (cq, ck) in qs.iter().zip(&ks) {
                    for &i in cq {
                        let keys: Vec<i64> =
                            ck.iter().copied().filter(|&j| !causal || j <= i).collect();
                        if keys.is_empty() {
                            continue;
                        }
                        let idx = Tensor::from_slice(&keys);
                        let qi = q.get(bi).get(hi).get(i) * scale;
                        let kk = k.get(bi).get(hi).index_select(0, &idx);
                        let a = kk.matmul(&qi).softmax(0, Kind::Double);
                        let y = a
                            .unsqueeze(0)
                            .matmul(&v.get(bi).get(hi).index_select(0, &idx))
                            .squeeze();
                        sum[i as usize] = &sum[i as usize] + y;
                        count[i as usize] += 1.0;
                    }
                }
                for i in 0..n as usize {
                    let row = &sum[i] / f64::max(count[i], 1.0);
                    out.get(bi).get(hi).get(i as i64).copy_(&row);
                }
            }
        }
        out
    }

    #[test]
    fn routing_equals_its_cluster_definition() {
        for causal in [false, true] {
            for (n, clusters) in [(36, 6), (30, 4), (16, 0)] {
                let s = shape(n, causal);
                let (_vs, core) = build(
                    routing::Config {
                        clusters,
                        decay: 0.9,
                    },
                    &s,
                );
                let (q, k, v) = qkv(&s, 52);
                let (iq, ik) = core.route(&q, &k);
                let want = reference(&q, &k, &v, &iq, &ik, causal);
                let err = rel_err(&core.attend(&q, &k, &v), &want);
                assert!(err < 1e-10, "n={n} k={clusters} causal={causal}: {err}");
            }
        }
    }

    #[test]
    fn routing_with_one_cluster_is_exact() {
        for causal in [false, true] {
            let s = shape(20, causal);
            let (_vs, core) = build(
                routing::Config {
                    clusters: 1,
                    decay: 0.9,
                },
                &s,
            );
            let (q, k, v) = qkv(&s, 53);
            let err = rel_err(
                &core.attend(&q, &k, &v),
                &reference_exact(&q, &k, &v, causal),
            );
            assert!(err < 1e-12, "causal={causal}: {err}");
        }
    }

    fn reference_exact(q: &Tensor, k: &Tensor, v: &Tensor, causal: bool) -> Tensor {
        super::common::reference(q, k, v, causal)
    }

    #[test]
    fn centroids_move_only_when_training() {
        let s = shape(32, false);
        let (_vs, core) = build(
            routing::Config {
                clusters: 4,
                decay: 0.5,
            },
            &s,
        );
        let (q, k, v) = qkv(&s, 54);
        let before = core.centroids().copy();
        let _ = core.attend(&q, &k, &v);
        assert!(
            core.centroids().equal(&before),
            "inference must not move the centroids"
        );
        let q = q.set_requires_grad(true);
        let _ = core.attend(&q, &k, &v);
        assert!(
            !core.centroids().equal(&before),
            "training moves the centroids"
        );
        // Still unit length.
        let norms = core
            .centroids()
            .square()
            .sum_dim_intlist(-1, false, None)
            .sqrt();
        let dev = f64::try_from((norms - 1.0).abs().max()).unwrap();
        assert!(dev < 1e-5, "{dev}");
    }
}
