//! The NAMM cache policy: its STFT features against a direct DFT, the backward
//! (counter-causal) attention of its scoring network against a loop implementation, the
//! all-zero parameters that keep everything, eviction by the sign of the score with the
//! newest token kept, per-token state that follows its token through evictions, the
//! running normalisation statistics, the shared-count and per-head selections, and its
//! configuration errors.

use std::f64::consts::PI;

use tch::{Device, Kind, Tensor};
use xarena_kvcache::policy::namm::{
    param_layout, recency_encoding, select, spectrogram, Namm, NammConfig, NormStats, Selection,
};
use xarena_kvcache::{CachePolicy, Observation};

/// A decoder's view of one layer: per head, the tokens it still caches and a fixed
/// attention matrix `[queries, tokens]` over every token ever made, causal, so that two
/// policies fed the same world see the same attention for the same token.
struct World {
    attention: Vec<Tensor>,
    tokens: Vec<Vec<i64>>,
    next: i64,
}

impl World {
    fn new(heads: usize, total: i64, seed: i64) -> World {
        tch::manual_seed(seed);
        let attention = (0..heads)
            .map(|_| {
                let a = Tensor::rand([total, total], (Kind::Float, Device::Cpu));
                // Uneven, so that the spectra differ between tokens.
                let a = a.square() * Tensor::rand([1, total], (Kind::Float, Device::Cpu));
                a.tril(0)
            })
            .collect();
        World {
            attention,
            tokens: vec![Vec::new(); heads],
            next: 0,
        }
    }

    /// One forward call of `q` new tokens; applies the policy's answer.
    fn step(&mut self, policy: &mut dyn CachePolicy, q: i64) -> Vec<Option<Tensor>> {
        let start = self.next;
        let mut attention = Vec::new();
        let mut positions = Vec::new();
        let mut keys = Vec::new();
        for (h, tokens) in self.tokens.iter_mut().enumerate() {
            tokens.extend(start..start + q);
            let idx = Tensor::from_slice(tokens.as_slice());
            attention.push(self.attention[h].narrow(0, start, q).index_select(1, &idx));
            keys.push(Tensor::zeros(
                [tokens.len() as i64, 4],
                (Kind::Float, Device::Cpu),
            ));
            positions.push(idx);
        }
        let keep = policy.update(&Observation {
            layer: 0,
            attention: &attention,
            keys: &keys,
            positions: &positions,
            now: start + q - 1,
        });
        assert_eq!(keep.len(), self.tokens.len());
        for (tokens, k) in self.tokens.iter_mut().zip(&keep) {
            if let Some(idx) = k {
                let idx = Vec::<i64>::try_from(idx).unwrap();
                assert!(idx.windows(2).all(|w| w[0] < w[1]), "indices ascend");
                *tokens = idx.iter().map(|&i| tokens[i as usize]).collect();
            }
        }
        self.next += q;
        keep
    }
}

fn small(update_every: i64, normalize: bool) -> NammConfig {
    NammConfig {
        update_every,
        normalize,
        ..NammConfig::default()
    }
}

fn zeros(cfg: &NammConfig) -> Vec<f32> {
    vec![0.0; Namm::num_params(cfg)]
}

/// Parameters that score `weight * x[feature] + bias`: the attention part is zero, so the
/// network's hidden state is its input.
fn linear_on(cfg: &NammConfig, feature: usize, weight: f32, bias: f32) -> Vec<f32> {
    let mut p = zeros(cfg);
    let layout = param_layout(cfg);
    let w = layout.iter().find(|b| b.name == "score.weight").unwrap();
    let b = layout.iter().find(|b| b.name == "score.bias").unwrap();
    p[w.offset + feature] = weight;
    p[b.offset] = bias;
    p
}

fn to_vec(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(&t.to_kind(Kind::Double).contiguous().view([-1])).unwrap()
}

fn hann(n: usize) -> Vec<f64> {
    (0..n)
        .map(|t| 0.5 - 0.5 * (2.0 * PI * t as f64 / n as f64).cos())
        .collect()
}

/// `|sum_t w[t] x[t] exp(-2 pi i k t / n)|` for `k` in `0..=n/2`.
fn dft_magnitudes(frame: &[f64]) -> Vec<f64> {
    let n = frame.len();
    let w = hann(n);
    (0..=n / 2)
        .map(|k| {
            let (mut re, mut im) = (0.0, 0.0);
            for (t, x) in frame.iter().enumerate() {
                let a = 2.0 * PI * (k * t) as f64 / n as f64;
                re += w[t] * x * a.cos();
                im -= w[t] * x * a.sin();
            }
            (re * re + im * im).sqrt()
        })
        .collect()
}

#[test]
fn parameter_count_and_layout() {
    let cfg = NammConfig::default();
    // qkv 25x96 + 96, out 32x50 + 50, score 25 + 1.
    assert_eq!(Namm::num_params(&cfg), 2400 + 96 + 1600 + 50 + 25 + 1);
    assert_eq!(Namm::num_params(&cfg), 4172);
    let layout = param_layout(&cfg);
    let mut offset = 0;
    for block in &layout {
        assert_eq!(
            block.offset, offset,
            "{} starts where the last ended",
            block.name
        );
        offset += block.len();
    }
    assert_eq!(offset, 4172);
    let other = NammConfig {
        n_fft: 16,
        hop: 8,
        recency_dim: 4,
        hidden_dim: 8,
        ..NammConfig::default()
    };
    let e = 4 + 9;
    assert_eq!(
        Namm::num_params(&other),
        e * 24 + 24 + 8 * 2 * e + 2 * e + e + 1
    );
}

#[test]
fn config_errors_name_the_problem() {
    let bad = [
        (
            NammConfig {
                update_every: 0,
                ..Default::default()
            },
            "update_every",
        ),
        (
            NammConfig {
                update_every: 100,
                ..Default::default()
            },
            "multiple of hop",
        ),
        (
            NammConfig {
                n_fft: 31,
                ..Default::default()
            },
            "n_fft must be even",
        ),
        (
            NammConfig {
                hop: 40,
                ..Default::default()
            },
            "hop (40) must not exceed",
        ),
        (
            NammConfig {
                ema_coeff: 1.0,
                ..Default::default()
            },
            "ema_coeff",
        ),
        (
            NammConfig {
                recency_dim: 7,
                ..Default::default()
            },
            "recency_dim",
        ),
        (
            NammConfig {
                recency_max_freq: 0.0,
                ..Default::default()
            },
            "recency_max_freq",
        ),
        (
            NammConfig {
                hidden_dim: 0,
                ..Default::default()
            },
            "hidden_dim",
        ),
    ];
    for (cfg, needle) in bad {
        let params = vec![0.0; Namm::num_params(&cfg).max(1)];
        let err = Namm::new(cfg, &params).err().expect("rejected").to_string();
        assert!(err.contains(needle), "`{err}` should mention `{needle}`");
    }
    let err = Namm::new(NammConfig::default(), &[0.0; 10])
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("4172") && err.contains("10"), "{err}");
    let mut params = zeros(&NammConfig::default());
    params[7] = f32::NAN;
    let err = Namm::new(NammConfig::default(), &params)
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("parameter 7"), "{err}");
    let stats = NormStats {
        mean: vec![0.0; 9],
        var: vec![1.0; 9],
        count: 5,
        frozen: true,
    };
    let err = Namm::with_stats(
        NammConfig::default(),
        &zeros(&NammConfig::default()),
        stats.shared(),
    )
    .err()
    .unwrap()
    .to_string();
    assert!(err.contains("9 bins") && err.contains("17"), "{err}");
    // Unknown fields are refused; missing ones take the defaults.
    assert!(serde_json::from_str::<NammConfig>(r#"{"budget": 3}"#).is_err());
    let cfg: NammConfig = serde_json::from_str(r#"{"update_every": 256}"#).unwrap();
    assert_eq!(
        cfg,
        NammConfig {
            update_every: 256,
            ..Default::default()
        }
    );
}

#[test]
fn spectrogram_matches_a_direct_dft() {
    tch::manual_seed(1);
    let series = Tensor::rand([3, 80], (Kind::Float, Device::Cpu));
    let mags = spectrogram(&series, 32, 16);
    assert_eq!(mags.size(), [3, 4, 17]);
    let rows: Vec<Vec<f64>> = (0..3).map(|r| to_vec(&series.get(r))).collect();
    for (r, row) in rows.iter().enumerate() {
        for f in 0..4 {
            let want = dft_magnitudes(&row[16 * f..16 * f + 32]);
            let got = to_vec(&mags.get(r as i64).get(f as i64));
            for (g, w) in got.iter().zip(&want) {
                assert!((g - w).abs() < 1e-4, "row {r} frame {f}: {g} vs {w}");
            }
        }
    }
    // And LibTorch's own STFT with the same choices agrees.
    let window = Tensor::hann_window_periodic(32, true, (Kind::Float, Device::Cpu));
    let stft = series
        .stft(32, 16, 32, Some(&window), false, true, true, false)
        .abs()
        .transpose(1, 2);
    assert!(stft.allclose(&mags, 1e-4, 1e-5, false));
}

#[test]
fn token_features_are_the_ema_of_the_spectrogram_across_updates() {
    // Calls of 20 rows with updates every 32: the first update leaves 8 rows for the next.
    let cfg = small(32, false);
    let mut policy = Namm::new(cfg.clone(), &zeros(&cfg)).unwrap();
    policy.reset(1, 1);
    let mut world = World::new(1, 100, 2);
    let mut processed = 0;
    for call in 0..5 {
        let keep = world.step(&mut policy, 20);
        assert!(keep.iter().all(Option::is_none), "zero parameters keep all");
        // Updates after 40 (32 used) and 80 rows (48 used); 100 leaves 20 pending.
        processed = match call {
            1 => 32,
            3 => 80,
            _ => processed,
        };
    }
    assert_eq!(processed, 80);
    let ema = policy.token_ema(0, 0).unwrap();
    assert_eq!(ema.size(), [80, 17]);
    // Directly: each token's attention over the first 80 queries on one timeline with 16
    // zeros in front, frames every 16, EMA a = 0.99^16 per frame.
    let a = 0.99f64.powi(16);
    let att = &world.attention[0];
    let frames = 80 / 16;
    for token in [0i64, 5, 31, 33, 47, 60, 79] {
        let mut series = vec![0.0; 16];
        series.extend(to_vec(&att.narrow(0, 0, 80).select(1, token)));
        let mut want = vec![0.0; 17];
        for f in 0..frames {
            let m = dft_magnitudes(&series[16 * f..16 * f + 32]);
            let w = a.powi((frames - 1 - f) as i32) * (1.0 - a);
            for (x, v) in want.iter_mut().zip(m) {
                *x += w * v;
            }
        }
        let got = to_vec(&ema.get(token));
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-4, "token {token}: {g} vs {w}");
        }
    }
}

/// The scoring network with loops over the flat parameters, in float64.
fn reference_scores(cfg: &NammConfig, p: &[f32], x: &[Vec<f64>]) -> Vec<f64> {
    let (e, h) = (cfg.input_dim() as usize, cfg.hidden_dim as usize);
    let p: Vec<f64> = p.iter().map(|&v| v as f64).collect();
    let linear = |x: &[f64], w: &[f64], b: &[f64], out: usize| -> Vec<f64> {
        (0..out)
            .map(|o| {
                b[o] + x
                    .iter()
                    .enumerate()
                    .map(|(i, v)| v * w[i * out + o])
                    .sum::<f64>()
            })
            .collect()
    };
    let (w_qkv, rest) = p.split_at(e * 3 * h);
    let (b_qkv, rest) = rest.split_at(3 * h);
    let (w_out, rest) = rest.split_at(h * 2 * e);
    let (b_out, rest) = rest.split_at(2 * e);
    let (w_s, b_s) = rest.split_at(e);
    let qkv: Vec<Vec<f64>> = x.iter().map(|t| linear(t, w_qkv, b_qkv, 3 * h)).collect();
    let n = x.len();
    (0..n)
        .map(|i| {
            let q = &qkv[i][..h];
            // Token i sees tokens i.. only.
            let logits: Vec<f64> = (i..n)
                .map(|j| {
                    let k = &qkv[j][h..2 * h];
                    q.iter().zip(k).map(|(a, b)| a * b).sum::<f64>() / (h as f64).sqrt()
                })
                .collect();
            let top = logits.iter().cloned().fold(f64::MIN, f64::max);
            let z: f64 = logits.iter().map(|l| (l - top).exp()).sum();
            let mut att = vec![0.0; h];
            for (j, l) in (i..n).zip(&logits) {
                for (a, v) in att.iter_mut().zip(&qkv[j][2 * h..]) {
                    *a += (l - top).exp() / z * v;
                }
            }
            let o = linear(&att, w_out, b_out, 2 * e);
            let hidden: Vec<f64> = (0..e).map(|c| x[i][c] * (1.0 + o[e + c]) + o[c]).collect();
            linear(&hidden, w_s, b_s, 1)[0]
        })
        .collect()
}

#[test]
fn scores_attend_backward_only() {
    let cfg = NammConfig::default();
    tch::manual_seed(3);
    let params: Vec<f32> =
        Vec::try_from(&(Tensor::randn([4172], (Kind::Float, Device::Cpu)) * 0.3)).unwrap();
    let mut policy = Namm::new(cfg.clone(), &params).unwrap();
    let x = Tensor::randn([7, 25], (Kind::Float, Device::Cpu));
    let s = policy.scores(&x);
    let rows: Vec<Vec<f64>> = (0..7).map(|i| to_vec(&x.get(i))).collect();
    let want = reference_scores(&cfg, &params, &rows);
    for (g, w) in to_vec(&s).iter().zip(&want) {
        assert!((g - w).abs() < 1e-3 * (1.0 + w.abs()), "{g} vs {w}");
    }
    // Changing earlier tokens leaves later scores alone.
    let earlier = x.copy();
    let _ = earlier.narrow(0, 0, 3).fill_(5.0);
    let s2 = to_vec(&policy.scores(&earlier));
    let s = to_vec(&s);
    for i in 3..7 {
        assert_eq!(s[i], s2[i], "token {i} does not see earlier tokens");
    }
    assert!((0..3).all(|i| (s[i] - s2[i]).abs() > 1e-6));
    // Changing a later token changes every earlier score.
    let later = x.copy();
    let _ = later.narrow(0, 5, 1).fill_(-2.0);
    let s3 = to_vec(&policy.scores(&later));
    for i in 0..5 {
        assert!((s[i] - s3[i]).abs() > 1e-6, "token {i} sees token 5");
    }
    assert_eq!(s[6], s3[6]);
}

#[test]
fn zero_parameters_keep_everything() {
    let cfg = small(32, true);
    let mut policy = Namm::new(cfg.clone(), &zeros(&cfg)).unwrap();
    let x = Tensor::randn([9, 25], (Kind::Float, Device::Cpu)) * 100.0;
    assert!(to_vec(&policy.scores(&x)).iter().all(|&s| s == 0.0));
    policy.reset(1, 2);
    let mut world = World::new(2, 300, 4);
    for q in [17, 1, 1, 40, 64, 3, 100, 1, 1, 64] {
        let keep = world.step(&mut policy, q);
        assert!(keep.iter().all(Option::is_none));
    }
    assert_eq!(world.tokens[0].len(), 292);
    // The last call (64 rows on 4 pending) updated: the state covers the whole cache.
    assert_eq!(policy.token_ema(0, 1).unwrap().size()[0], 292);
}

#[test]
fn negative_scores_are_evicted_and_the_newest_kept() {
    // score = cos(age): the first cosine of the age encoding has frequency 1.
    let cfg = small(32, true);
    let mut policy = Namm::new(cfg.clone(), &linear_on(&cfg, 4, 1.0, 0.0)).unwrap();
    assert_eq!(
        policy.describe(),
        "namm:update_every=32,selection=shared-count"
    );
    policy.reset(1, 1);
    let mut world = World::new(1, 64, 5);
    assert!(world.step(&mut policy, 20)[0].is_none(), "no update yet");
    let before = world.tokens[0].clone();
    let keep = world.step(&mut policy, 20).remove(0).expect("some evicted");
    let now = 39;
    let want: Vec<i64> = (0..before.len() as i64 + 20)
        .filter(|&p| ((now - p) as f64).cos() >= 0.0 || p == now)
        .collect();
    assert_eq!(Vec::<i64>::try_from(&keep).unwrap(), want);
    assert_eq!(world.tokens[0], want);
    // Every score negative: only the newest stays.
    let mut policy = Namm::new(cfg.clone(), &linear_on(&cfg, 4, 0.0, -1.0)).unwrap();
    policy.reset(1, 2);
    let mut world = World::new(2, 64, 5);
    let keep = world.step(&mut policy, 32);
    for k in keep {
        assert_eq!(Vec::<i64>::try_from(&k.unwrap()).unwrap(), vec![31]);
    }
    assert_eq!(policy.token_ema(0, 0).unwrap().size(), [1, 17]);
}

#[test]
fn per_token_state_follows_its_token_through_evictions() {
    // One policy evicts by cos(age), one keeps all; fed the same world, a token's EMA must
    // be the same in both, whatever was evicted around it (the EMA, the carried attention
    // tail and the rows left for the next update are all compacted).
    let cfg = small(32, false);
    let mut evicting = Namm::new(cfg.clone(), &linear_on(&cfg, 4, 1.0, 0.0)).unwrap();
    let mut keeping = Namm::new(cfg.clone(), &zeros(&cfg)).unwrap();
    evicting.reset(1, 2);
    keeping.reset(1, 2);
    let mut a = World::new(2, 200, 6);
    let mut b = World::new(2, 200, 6);
    let mut evicted = 0;
    for q in [20, 20, 20, 20, 1, 1, 1, 1, 16, 40] {
        let ka = a.step(&mut evicting, q);
        let kb = b.step(&mut keeping, q);
        assert!(kb.iter().all(Option::is_none));
        if ka.iter().all(Option::is_none) {
            continue;
        }
        evicted += 1;
        for h in 0..2 {
            let ema_a = evicting.token_ema(0, h).unwrap();
            let ema_b = keeping.token_ema(0, h).unwrap();
            // The keeping policy's rows are positions 0.. (it never evicts).
            let idx = Tensor::from_slice(a.tokens[h].as_slice());
            assert_eq!(ema_a.size()[0], a.tokens[h].len() as i64);
            let want = ema_b.index_select(0, &idx);
            assert!(
                ema_a.allclose(&want, 1e-5, 1e-6, false),
                "head {h}: state moved off its token"
            );
        }
    }
    assert!(evicted >= 3, "several updates evicted ({evicted})");
    assert!(a.tokens[0].len() < b.tokens[0].len());
}

#[test]
fn normalisation_statistics_are_shared_and_freeze() {
    let cfg = small(32, true);
    let stats = NormStats::default().shared();
    let mut one = Namm::with_stats(cfg.clone(), &zeros(&cfg), stats.clone()).unwrap();
    one.reset(1, 2);
    let mut world = World::new(2, 64, 7);
    world.step(&mut one, 32);
    // The statistics are those of both heads' EMA features together.
    let all = Tensor::cat(
        &[one.token_ema(0, 0).unwrap(), one.token_ema(0, 1).unwrap()],
        0,
    )
    .to_kind(Kind::Double);
    let snapshot = stats.lock().unwrap().clone();
    assert_eq!(snapshot.count, 64);
    let mean = to_vec(&all.mean_dim(0, false, Kind::Double));
    let var = to_vec(&all.var_dim(0, false, false));
    for i in 0..17 {
        assert!((snapshot.mean[i] - mean[i]).abs() < 1e-9);
        assert!((snapshot.var[i] - var[i]).abs() < 1e-9);
    }
    // A second policy on the same statistics adds to them (pairwise merge).
    let mut two = Namm::with_stats(cfg.clone(), &zeros(&cfg), stats.clone()).unwrap();
    two.reset(1, 2);
    let mut other = World::new(2, 64, 8);
    other.step(&mut two, 32);
    let merged = stats.lock().unwrap().clone();
    assert_eq!(merged.count, 128);
    let both = Tensor::cat(
        &[
            all,
            two.token_ema(0, 0).unwrap().to_kind(Kind::Double),
            two.token_ema(0, 1).unwrap().to_kind(Kind::Double),
        ],
        0,
    );
    let var = to_vec(&both.var_dim(0, false, false));
    for (i, v) in var.iter().enumerate() {
        assert!((merged.var[i] - v).abs() < 1e-9);
    }
    // Frozen: read, never changed; round-trips through serde.
    stats.lock().unwrap().freeze(true);
    world.step(&mut one, 32);
    assert_eq!(
        *stats.lock().unwrap(),
        NormStats {
            frozen: true,
            ..merged.clone()
        }
    );
    let json = serde_json::to_string(&*stats.lock().unwrap()).unwrap();
    assert_eq!(
        serde_json::from_str::<NormStats>(&json).unwrap(),
        *stats.lock().unwrap()
    );

    // The score sees the normalised feature: score = bin 3's z-score.
    let frozen = stats.lock().unwrap().clone();
    let mut scorer = Namm::with_stats(
        cfg.clone(),
        &linear_on(&cfg, 8 + 3, 1.0, 0.0),
        stats.clone(),
    )
    .unwrap();
    scorer.reset(1, 1);
    let mut world = World::new(1, 64, 9);
    let keep = world.step(&mut scorer, 32).remove(0).expect("some evicted");
    let mut clean = Namm::new(cfg.clone(), &zeros(&cfg)).unwrap();
    clean.reset(1, 1);
    World::new(1, 64, 9).step(&mut clean, 32);
    let bin3 = to_vec(&clean.token_ema(0, 0).unwrap().select(1, 3));
    let want: Vec<i64> = (0..32)
        .filter(|&i| (bin3[i as usize] - frozen.mean[3]) / frozen.var[3].sqrt() >= 0.0 || i == 31)
        .collect();
    assert_eq!(Vec::<i64>::try_from(&keep).unwrap(), want);
}

#[test]
fn recency_encoding_is_sines_then_cosines() {
    let age = Tensor::from_slice(&[0i64, 1, 1000, 30000]);
    let enc = recency_encoding(&age, 8, 50000.0);
    assert_eq!(enc.size(), [4, 8]);
    for (r, a) in [0.0f64, 1.0, 1000.0, 30000.0].iter().enumerate() {
        let row = to_vec(&enc.get(r as i64));
        for i in 0..4 {
            let f = 50000f64.powf(-(i as f64) / 4.0);
            assert!((row[i] - (a * f).sin()).abs() < 1e-6);
            assert!((row[4 + i] - (a * f).cos()).abs() < 1e-6);
        }
    }
}

fn idx(t: &Option<Tensor>) -> Option<Vec<i64>> {
    t.as_ref().map(|t| Vec::<i64>::try_from(t).unwrap())
}

#[test]
fn shared_count_keeps_as_many_as_the_head_that_evicts_least() {
    let inf = f32::INFINITY;
    let heads = |rows: &[&[f32]]| -> Vec<Option<Tensor>> {
        rows.iter().map(|r| Some(Tensor::from_slice(r))).collect()
    };
    let scores = heads(&[
        &[-1.0, 2.0, -3.0, 0.5, 0.0, inf],   // 2 below zero: evicts least
        &[-1.0, -2.0, -3.0, 1.0, -0.5, inf], // 4 below
        &[0.3, -0.2, -0.1, -5.0, -4.0, inf], // 4 below
    ]);
    // d = 2: every head drops its 2 lowest and keeps 4 (the first head's count), in
    // order, some below zero.
    let kept: Vec<_> = select(&scores, Selection::SharedCount)
        .iter()
        .map(idx)
        .collect();
    assert_eq!(
        kept,
        vec![
            Some(vec![1, 3, 4, 5]),
            Some(vec![0, 3, 4, 5]),
            Some(vec![0, 1, 2, 5]),
        ]
    );
    // Per head: each keeps exactly its scores >= 0 (today's behaviour, unchanged).
    let kept: Vec<_> = select(&scores, Selection::PerHead)
        .iter()
        .map(idx)
        .collect();
    assert_eq!(
        kept,
        vec![Some(vec![1, 3, 4, 5]), Some(vec![3, 5]), Some(vec![0, 5])]
    );
    // One head with nothing below zero: nobody evicts under the shared count.
    let scores = heads(&[&[1.0, 0.0, inf], &[-1.0, -1.0, inf]]);
    let kept: Vec<_> = select(&scores, Selection::SharedCount)
        .iter()
        .map(idx)
        .collect();
    assert_eq!(kept, vec![None, None]);
    let kept: Vec<_> = select(&scores, Selection::PerHead)
        .iter()
        .map(idx)
        .collect();
    assert_eq!(kept, vec![None, Some(vec![2])]);
    // Ties at the cut keep the later token; an empty head stays empty.
    let scores = vec![
        Some(Tensor::from_slice(&[-1.0f32, -1.0, -1.0, inf])),
        Some(Tensor::from_slice(&[-2.0f32, 1.0, 1.0, inf])),
        None,
    ];
    let kept: Vec<_> = select(&scores, Selection::SharedCount)
        .iter()
        .map(idx)
        .collect();
    assert_eq!(kept, vec![Some(vec![1, 2, 3]), Some(vec![1, 2, 3]), None]);
}

#[test]
fn selection_through_the_policy() {
    // score = spectrogram bin 1 - 0.1 (unnormalised): the heads' attention differs, so
    // they score differently.
    let cfg = small(32, false);
    let per_head = NammConfig {
        selection: Selection::PerHead,
        ..cfg.clone()
    };
    assert_eq!(NammConfig::default().selection, Selection::SharedCount);
    let p = linear_on(&cfg, 9, 10.0, -0.5);
    let mut shared = Namm::new(cfg.clone(), &p).unwrap();
    let mut each = Namm::new(per_head.clone(), &p).unwrap();
    assert!(each.describe().ends_with(",selection=per-head"));
    shared.reset(1, 3);
    each.reset(1, 3);
    let mut a = World::new(3, 200, 8);
    let mut b = World::new(3, 200, 8);
    let mut differed = false;
    for q in [32, 32, 32, 32, 32] {
        a.step(&mut shared, q);
        b.step(&mut each, q);
        let la: Vec<usize> = a.tokens.iter().map(Vec::len).collect();
        let lb: Vec<usize> = b.tokens.iter().map(Vec::len).collect();
        assert!(la.iter().all(|&l| l == la[0]), "shared count: {la:?}");
        differed |= lb.iter().any(|&l| l != lb[0]);
    }
    assert!(differed, "per head, the heads kept different counts");
    assert!(a.tokens[0].len() < 160, "the shared count evicted");
    // A configuration without the field reads as the reference's.
    let c: NammConfig = serde_json::from_str("{}").unwrap();
    assert_eq!(c.selection, Selection::SharedCount);
    let c: NammConfig = serde_json::from_str(r#"{"selection":"per-head"}"#).unwrap();
    assert_eq!(
        c,
        NammConfig {
            selection: Selection::PerHead,
            ..NammConfig::default()
        }
    );
}
