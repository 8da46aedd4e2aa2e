//! kvpress's presses (`random`, `snapkv`, `pyramidkv`, `adakv`, `expected-attention`)
//! on hand-made
//! observations: what each keeps equals a computation written here from its paper and
//! kvpress's definition, on f64 copies of the numbers the policy sees, and the budgets
//! hold per head (per layer for `adakv`, on the layers' mean for `pyramidkv`). The runs
//! in a session on a small model are in `kvcache.rs`.

use tch::Tensor;
use xarena_kvcache::policy::{AdaKv, ExpectedAttention, PyramidKv, Random, SnapKv};
use xarena_kvcache::{CachePolicy, Observation};

/// A deterministic stream of uniforms in `[0, 1)` for the hand-made attention (not the
/// policy's generator).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> f64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Causal attention `[t, t]` with far-from-uniform rows, rounded to f32 (what the policy
/// sees) and kept in f64 for the reference.
fn attention(t: usize, rng: &mut Lcg) -> Vec<Vec<f64>> {
    (0..t)
        .map(|q| {
            let raw: Vec<f64> = (0..t)
                .map(|k| {
                    if k <= q {
                        (4.0 * rng.next()).exp()
                    } else {
                        0.0
                    }
                })
                .collect();
            let sum: f64 = raw.iter().sum();
            raw.iter().map(|x| (x / sum) as f32 as f64).collect()
        })
        .collect()
}

/// A cache that holds, per layer and KV head, the positions a policy kept, and shows the
/// policy each call's rows of fixed full attention matrices restricted to them.
struct Sim {
    /// `[layer][head]`: attention over all positions, `[query][key]`.
    att: Vec<Vec<Vec<Vec<f64>>>>,
    /// `[layer][head]`: every position's key (`[position][feature]`).
    keys: Vec<Vec<Vec<Vec<f64>>>>,
    /// `[layer][head]`: the positions held.
    held: Vec<Vec<Vec<i64>>>,
    next: i64,
}

/// One call: per layer and head, the positions held before the policy answered (the
/// call's own included) and after.
type Call = Vec<Vec<(Vec<i64>, Vec<i64>)>>;

impl Sim {
    fn new(layers: usize, heads: usize, t: usize, seed: u64) -> Sim {
        let mut rng = Lcg(seed);
        Sim {
            att: (0..layers)
                .map(|_| (0..heads).map(|_| attention(t, &mut rng)).collect())
                .collect(),
            keys: vec![vec![vec![vec![0.0; 4]; t]; heads]; layers],
            held: vec![vec![Vec::new(); heads]; layers],
            next: 0,
        }
    }

    /// One layer whose heads' attention comes from queries and keys (`d` features, f32
    /// values): `softmax(q . k / sqrt(d))` over the positions up to the query's. Also
    /// answers the queries, `[head][position][feature]`.
    fn attending(heads: usize, t: usize, d: usize, seed: u64) -> (Sim, Vec<Vec<Vec<f64>>>) {
        let mut rng = Lcg(seed);
        let mut vectors = || -> Vec<Vec<f64>> {
            (0..t)
                .map(|_| {
                    (0..d)
                        .map(|_| (2.0 * rng.next() - 1.0) as f32 as f64)
                        .collect()
                })
                .collect()
        };
        let qs: Vec<Vec<Vec<f64>>> = (0..heads).map(|_| vectors()).collect();
        let ks: Vec<Vec<Vec<f64>>> = (0..heads).map(|_| vectors()).collect();
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        let att = (0..heads)
            .map(|h| {
                (0..t)
                    .map(|q| {
                        let e: Vec<f64> = (0..t)
                            .map(|k| {
                                if k <= q {
                                    (2.0 * dot(&qs[h][q], &ks[h][k]) / (d as f64).sqrt()).exp()
                                } else {
                                    0.0
                                }
                            })
                            .collect();
                        let sum: f64 = e.iter().sum();
                        e.iter().map(|x| (x / sum) as f32 as f64).collect()
                    })
                    .collect()
            })
            .collect();
        // The logits were scaled by 2: the queries the attention answers to.
        let qs = qs
            .iter()
            .map(|h| {
                h.iter()
                    .map(|q| q.iter().map(|x| 2.0 * x).collect())
                    .collect()
            })
            .collect();
        let sim = Sim {
            att: vec![att],
            keys: vec![ks],
            held: vec![vec![Vec::new(); heads]],
            next: 0,
        };
        (sim, qs)
    }

    fn start(&mut self, policy: &mut dyn CachePolicy) {
        policy.reset(self.att.len(), self.att[0].len());
    }

    fn call(&mut self, policy: &mut dyn CachePolicy, q: i64) -> Call {
        let first = self.next;
        self.next += q;
        let now = self.next - 1;
        let mut out = Vec::new();
        for (layer, heads) in self.held.iter_mut().enumerate() {
            let mut attention = Vec::new();
            let mut keys = Vec::new();
            let mut positions = Vec::new();
            for (h, held) in heads.iter_mut().enumerate() {
                held.extend(first..=now);
                let rows: Vec<f32> = (first..=now)
                    .flat_map(|qp| {
                        let row = &self.att[layer][h][qp as usize];
                        held.iter().map(move |&k| row[k as usize] as f32)
                    })
                    .collect();
                let n = held.len() as i64;
                attention.push(Tensor::from_slice(&rows).view([q, n]));
                let k: Vec<f32> = held
                    .iter()
                    .flat_map(|&p| self.keys[layer][h][p as usize].iter().map(|&x| x as f32))
                    .collect();
                keys.push(Tensor::from_slice(&k).view([n, -1]));
                positions.push(Tensor::from_slice(held.as_slice()));
            }
            let keep = policy.update(&Observation {
                layer,
                attention: &attention,
                keys: &keys,
                positions: &positions,
                now,
            });
            assert_eq!(keep.len(), heads.len());
            let mut per_head = Vec::new();
            for (held, k) in heads.iter_mut().zip(&keep) {
                let before = held.clone();
                if let Some(idx) = k {
                    let idx = Vec::<i64>::try_from(idx).unwrap();
                    assert!(idx.windows(2).all(|w| w[0] < w[1]), "indices ascend");
                    *held = idx.iter().map(|&i| held[i as usize]).collect();
                }
                per_head.push((before, held.clone()));
            }
            out.push(per_head);
        }
        out
    }
}

/// SnapKV written from its definition: the window is the last `window` queries seen; a
/// token before the window scores its mean attention from them, average-pooled over its
/// neighbours in the cache (`kernel`, zero padding counted).
struct Snap {
    /// Scores of the rows before the window.
    pooled: Vec<f64>,
    /// Tokens of the window: the last `w` rows.
    w: usize,
}

fn snap(att: &[Vec<f64>], held: &[i64], now: i64, window: usize, kernel: usize) -> Snap {
    let queries: Vec<usize> = ((now + 1 - window as i64).max(0)..=now)
        .map(|q| q as usize)
        .collect();
    let w = queries.len().min(held.len());
    let prefix = held.len() - w;
    let mean: Vec<f64> = held[..prefix]
        .iter()
        .map(|&k| queries.iter().map(|&q| att[q][k as usize]).sum::<f64>() / queries.len() as f64)
        .collect();
    let half = (kernel / 2) as i64;
    let pooled = (0..prefix as i64)
        .map(|r| {
            (r - half..=r + half)
                .filter(|&j| j >= 0 && j < prefix as i64)
                .map(|j| mean[j as usize])
                .sum::<f64>()
                / kernel as f64
        })
        .collect();
    Snap { pooled, w }
}

/// The best `n` rows by score, highest first.
fn best(scores: &[f64], n: usize) -> Vec<usize> {
    let mut rows: Vec<usize> = (0..scores.len()).collect();
    rows.sort_by(|a, b| scores[*b].total_cmp(&scores[*a]));
    rows.truncate(n);
    rows
}

/// SnapKV's choice of positions at a budget.
fn snap_keep(
    att: &[Vec<f64>],
    held: &[i64],
    now: i64,
    window: usize,
    kernel: usize,
    budget: usize,
) -> Vec<i64> {
    if held.len() <= budget {
        return held.to_vec();
    }
    let s = snap(att, held, now, window, kernel);
    if s.w >= budget {
        return held[held.len() - budget..].to_vec();
    }
    let prefix = held.len() - s.w;
    let mut keep: Vec<i64> = best(&s.pooled, budget - s.w)
        .into_iter()
        .map(|r| held[r])
        .collect();
    keep.extend(&held[prefix..]);
    keep.sort();
    keep
}

#[test]
fn snapkv_keeps_the_window_and_its_pooled_favourites() {
    let (window, kernel, budget) = (4, 5, 10);
    let mut sim = Sim::new(1, 3, 40, 1);
    let mut policy = SnapKv::new(budget, window, kernel).unwrap();
    assert_eq!(policy.describe(), "snapkv:budget=10,window=4,kernel=5");
    sim.start(&mut policy);
    // A whole-prompt prefill (kvpress's protocol), then chunks and single steps.
    let mut evictions = 0;
    for q in [24, 5, 1, 1, 3, 1, 1] {
        let call = sim.call(&mut policy, q);
        let now = sim.next - 1;
        for (h, (before, after)) in call[0].iter().enumerate() {
            let want = snap_keep(&sim.att[0][h], before, now, window, kernel, budget);
            assert_eq!(after, &want, "head {h} at {now}");
            assert_eq!(after.len(), budget.min(before.len()));
            evictions += usize::from(before.len() > budget);
        }
    }
    assert_eq!(evictions, 7 * 3);
    // The heads chose differently (the check would be weak otherwise).
    let held = &sim.held[0];
    assert!(held[0] != held[1] && held[1] != held[2]);
    // A budget within the window keeps the newest.
    let mut sim = Sim::new(1, 2, 12, 2);
    let mut policy = SnapKv::new(3, 4, 5).unwrap();
    sim.start(&mut policy);
    let call = sim.call(&mut policy, 12);
    assert!(call[0].iter().all(|(_, a)| a == &[9, 10, 11]));
    assert!(SnapKv::new(8, 4, 4).is_err());
}

/// kvpress's PyramidKVPress budget, written again: `b` per head, `n` tokens seen.
fn pyramid_budget(b: f64, n: f64, window: f64, beta: f64, layers: usize, layer: usize) -> usize {
    let mut min = b / beta;
    let mut max = 2.0 * b - min;
    if max >= n - window {
        max = n - window;
        min = 2.0 * b - max;
    }
    if !(n >= max && max >= min && min >= window) {
        return b as usize;
    }
    let steps = (max - min) / (layers - 1) as f64;
    (max - layer as f64 * steps).round_ties_even() as usize
}

#[test]
fn pyramidkv_shrinks_the_budget_with_depth() {
    let (window, kernel, beta, budget, layers) = (2, 3, 2, 10, 3);
    let mut sim = Sim::new(layers, 2, 60, 3);
    let mut policy = PyramidKv::new(budget, window, kernel, beta).unwrap();
    sim.start(&mut policy);
    // min 5, max 15: 15, 10, 5 tokens per head, 10 on average.
    assert_eq!(
        (0..layers)
            .map(|l| pyramid_budget(10.0, 40.0, 2.0, 2.0, 3, l))
            .collect::<Vec<_>>(),
        [15, 10, 5]
    );
    // A short prompt: max clamped to n - window (n = 16: 14 and 6, so 14, 10, 6); at
    // n = 12 max and min meet (10 each); a window above min: SnapKV's uniform budget.
    assert_eq!(pyramid_budget(10.0, 16.0, 2.0, 2.0, 3, 0), 14);
    assert_eq!(pyramid_budget(10.0, 16.0, 2.0, 2.0, 3, 2), 6);
    assert_eq!(pyramid_budget(10.0, 12.0, 2.0, 2.0, 3, 0), 10);
    assert_eq!(pyramid_budget(10.0, 40.0, 8.0, 2.0, 3, 0), 10);
    for q in [40, 1, 1, 4, 1] {
        let call = sim.call(&mut policy, q);
        let now = sim.next - 1;
        let mut total = 0;
        for (l, heads) in call.iter().enumerate() {
            let b = pyramid_budget(budget as f64, (now + 1) as f64, 2.0, 2.0, layers, l);
            for (h, (before, after)) in heads.iter().enumerate() {
                let want = snap_keep(&sim.att[l][h], before, now, window, kernel, b);
                assert_eq!(after, &want, "layer {l} head {h} at {now}");
                assert_eq!(after.len(), b);
                total += after.len();
            }
        }
        // The layers keep the budget on average.
        assert_eq!(total, layers * 2 * budget, "at {now}");
    }
    // One layer, or kvpress's defaults at a small budget: SnapKV.
    let mut one = Sim::new(1, 2, 40, 4);
    let mut policy = PyramidKv::new(8, 4, 5, 20).unwrap();
    one.start(&mut policy);
    let call = one.call(&mut policy, 40);
    for (h, (before, after)) in call[0].iter().enumerate() {
        assert_eq!(after, &snap_keep(&one.att[0][h], before, 39, 4, 5, 8));
    }
}

#[test]
fn adakv_shares_the_layer_budget_across_heads() {
    let (window, kernel, budget, alpha) = (3, 5, 10, 0.5);
    let heads = 4;
    let safe: usize = 5; // floor(0.5 x 10)
    let mut sim = Sim::new(2, heads, 50, 5);
    let mut policy = AdaKv::new(budget, window, kernel, alpha).unwrap();
    assert_eq!(
        policy.describe(),
        "adakv:budget=10,window=3,kernel=5,alpha=0.5"
    );
    sim.start(&mut policy);
    let mut uneven = false;
    for q in [30, 1, 6, 1, 1] {
        let call = sim.call(&mut policy, q);
        let now = sim.next - 1;
        for (l, layer) in call.iter().enumerate() {
            // The reference: per head the window's tokens and the head's best
            // `safe - w` are kept first; then the best scores across all heads.
            let mut forced: Vec<(usize, i64)> = Vec::new();
            let mut open: Vec<(f64, usize, i64)> = Vec::new();
            for (h, (before, _)) in layer.iter().enumerate() {
                let s = snap(&sim.att[l][h], before, now, window, kernel);
                let prefix = before.len() - s.w;
                let protect = best(&s.pooled, safe.saturating_sub(s.w));
                for (r, &p) in before.iter().enumerate() {
                    if r >= prefix || protect.contains(&r) {
                        forced.push((h, p));
                    } else {
                        open.push((s.pooled[r], h, p));
                    }
                }
            }
            let held: usize = layer.iter().map(|(b, _)| b.len()).sum();
            let total = heads * budget;
            let mut want: Vec<Vec<i64>> = vec![Vec::new(); heads];
            if held <= total {
                for (h, (before, _)) in layer.iter().enumerate() {
                    want[h] = before.clone();
                }
            } else {
                assert!(forced.len() <= total);
                open.sort_by(|a, b| b.0.total_cmp(&a.0));
                for &(h, p) in &forced {
                    want[h].push(p);
                }
                for &(_, h, p) in &open[..total - forced.len()] {
                    want[h].push(p);
                }
                want.iter_mut().for_each(|w| w.sort());
            }
            let got: Vec<Vec<i64>> = layer.iter().map(|(_, a)| a.clone()).collect();
            assert_eq!(got, want, "layer {l} at {now}");
            let kept: usize = got.iter().map(Vec::len).sum();
            assert_eq!(kept, held.min(total), "layer {l} at {now}");
            assert!(got.iter().all(|g| g.len() >= safe), "layer {l} at {now}");
            uneven |= got.iter().any(|g| g.len() != budget);
        }
    }
    // Heads were given different shares (else this is SnapKV).
    assert!(uneven);
    // A budget below the window: each head keeps its newest `budget` tokens.
    let mut sim = Sim::new(1, 3, 20, 8);
    let mut policy = AdaKv::new(4, 6, 5, 0.2).unwrap();
    sim.start(&mut policy);
    let call = sim.call(&mut policy, 20);
    assert!(call[0].iter().all(|(_, a)| a == &[16, 17, 18, 19]));
    assert!(AdaKv::new(8, 4, 5, 1.5).is_err());
}

/// SplitMix64 (Steele, Lea and Flood 2014), written again: the policy's stated stream.
struct SplitMix(u64);

impl SplitMix {
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[test]
fn random_keeps_the_seeded_draws_best() {
    let budget = 6;
    let run = |seed: u64| {
        let mut sim = Sim::new(2, 2, 30, 6);
        let mut policy = Random::new(budget, seed).unwrap();
        sim.start(&mut policy);
        let mut stream = SplitMix(seed);
        for q in [10, 1, 1, 5, 1] {
            let call = sim.call(&mut policy, q);
            for (l, layer) in call.iter().enumerate() {
                for (h, (before, after)) in layer.iter().enumerate() {
                    if before.len() <= budget {
                        assert_eq!(after, before);
                        continue;
                    }
                    let draws: Vec<f64> = before.iter().map(|_| stream.uniform()).collect();
                    let mut want: Vec<i64> = best(&draws, budget)
                        .into_iter()
                        .map(|r| before[r])
                        .collect();
                    want.sort();
                    assert_eq!(after, &want, "layer {l} head {h}");
                }
            }
        }
        sim.held
    };
    let a = run(0);
    assert_eq!(a, run(0), "seeded: the same choice again");
    assert_ne!(a, run(7), "another seed, another choice");
    assert_eq!(
        Random::new(4, 3).unwrap().describe(),
        "random:budget=4,seed=3"
    );
}

/// Expected attention written from its definition, with the true queries: the last
/// `window` queries past the sinks give a mean `mu` and covariance `S` (over their
/// number); a key scores `mu . k / sqrt(d) + k' S k / (2 d)`; the sinks stay.
fn expected_keep(
    queries: &[Vec<f64>],
    keys: &[Vec<f64>],
    held: &[i64],
    now: i64,
    sinks: usize,
    window: usize,
    budget: usize,
) -> Vec<i64> {
    if held.len() <= budget {
        return held.to_vec();
    }
    let d = keys[0].len();
    let used: Vec<&Vec<f64>> = ((now + 1 - window as i64).max(sinks as i64)..=now)
        .map(|p| &queries[p as usize])
        .collect();
    let m = used.len() as f64;
    let mu: Vec<f64> = (0..d)
        .map(|i| used.iter().map(|q| q[i]).sum::<f64>() / m)
        .collect();
    let cov: Vec<Vec<f64>> = (0..d)
        .map(|i| {
            (0..d)
                .map(|j| {
                    used.iter()
                        .map(|q| (q[i] - mu[i]) * (q[j] - mu[j]))
                        .sum::<f64>()
                        / m
                })
                .collect()
        })
        .collect();
    let sinks = sinks.min(budget);
    let score: Vec<f64> = held[sinks..]
        .iter()
        .map(|&p| {
            let k = &keys[p as usize];
            let mean: f64 = (0..d).map(|i| mu[i] * k[i]).sum::<f64>() / (d as f64).sqrt();
            let var: f64 = (0..d)
                .flat_map(|i| (0..d).map(move |j| (i, j)))
                .map(|(i, j)| k[i] * cov[i][j] * k[j])
                .sum();
            mean + var / (2 * d) as f64
        })
        .collect();
    let mut keep: Vec<i64> = held[..sinks].to_vec();
    keep.extend(
        best(&score, budget - sinks)
            .into_iter()
            .map(|r| held[sinks + r]),
    );
    keep.sort();
    keep
}

#[test]
fn expected_attention_keeps_what_the_fitted_queries_will_attend() {
    let (sinks, window, budget, d) = (4, 8, 12, 4);
    let (mut sim, queries) = Sim::attending(3, 48, d, 7);
    let mut policy = ExpectedAttention::new(budget, sinks, window).unwrap();
    assert_eq!(
        policy.describe(),
        "expected-attention:budget=12,sinks=4,window=8"
    );
    sim.start(&mut policy);
    for q in [30, 1, 1, 6, 1, 1] {
        let call = sim.call(&mut policy, q);
        let now = sim.next - 1;
        for (h, (before, after)) in call[0].iter().enumerate() {
            let want = expected_keep(
                &queries[h],
                &sim.keys[0][h],
                before,
                now,
                sinks,
                window,
                budget,
            );
            assert_eq!(after, &want, "head {h} at {now}");
        }
        // The queries it holds are the true ones (one query head per KV head).
        for (h, true_queries) in queries.iter().enumerate() {
            let got = Vec::<f64>::try_from(policy.queries(0, h).unwrap().reshape(-1)).unwrap();
            let want: Vec<f64> = (now + 1 - window as i64..=now)
                .flat_map(|p| true_queries[p as usize].clone())
                .collect();
            let err = got
                .iter()
                .zip(&want)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(err < 1e-4, "head {h}: queries recovered to {err}");
        }
    }
    let held = &sim.held[0];
    assert!(held[0] != held[1] && held[1] != held[2]);
    assert!(held.iter().all(|h| h.starts_with(&[0, 1, 2, 3])));
}
