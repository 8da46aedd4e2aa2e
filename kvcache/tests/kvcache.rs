//! The KV-cache track: the Llama decoder against an independent f64 reimplementation,
//! cached decoding against the uncached forward and against dense masked references,
//! every policy's choice against an independent computation, memory accounting,
//! config errors and checkpoints.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::rc::Rc;

use tch::{nn::VarStore, Device, Kind, Tensor};
use xarena_kvcache::model::llama::{self, CheckpointError};
use xarena_kvcache::policy::{
    AdaKv, ExpectedAttention, H2o, L2Norm, PyramidKv, Random, SnapKv, StreamingLlm, Tova,
    TovaScope, Window,
};
use xarena_kvcache::{
    build_policy, policy_names, CachePolicy, DecoderLm, KvLayerCache, LmConfig, Observation,
    Session, POLICIES,
};

/// Grouped-query attention: 4 query heads on 2 KV heads.
fn gqa() -> LmConfig {
    LmConfig {
        vocab_size: 50,
        hidden_size: 32,
        intermediate_size: 48,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        ..LmConfig::default()
    }
}

/// A model with weights large enough that attention is far from uniform (Hugging Face's
/// 0.02 initialisation makes every token look alike).
fn model(cfg: &LmConfig, seed: i64) -> (VarStore, DecoderLm) {
    tch::manual_seed(seed);
    let vs = VarStore::new(Device::Cpu);
    let lm = DecoderLm::new(&vs.root(), cfg).unwrap();
    tch::no_grad(|| {
        for (name, var) in vs.variables() {
            let size = var.size();
            let fresh = if name.ends_with("norm.weight") {
                Tensor::randn(&size, (Kind::Float, Device::Cpu)) * 0.1 + 1.0
            } else {
                let gain = if name.contains("q_proj") { 2.0 } else { 1.0 };
                Tensor::randn(&size, (Kind::Float, Device::Cpu)) * gain / (size[1] as f64).sqrt()
            };
            var.shallow_clone().copy_(&fresh);
        }
    });
    (vs, lm)
}

fn tokens(n: usize, vocab: i64, seed: i64) -> Vec<i64> {
    tch::manual_seed(seed);
    Vec::<i64>::try_from(Tensor::randint(
        vocab,
        [n as i64],
        (Kind::Int64, Device::Cpu),
    ))
    .unwrap()
}

fn ints(t: &Tensor) -> Vec<i64> {
    Vec::<i64>::try_from(t.to_device(Device::Cpu).contiguous()).unwrap()
}

fn floats(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).contiguous().view(-1)).unwrap()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double))
        .abs()
        .max()
        .double_value(&[])
}

/// Llama written again, in f64, from the parameters by name: per query head, KV head
/// `j / groups`, rotary turning feature `i` with feature `i + head_dim / 2`. Returns the
/// logits `[n, vocab]` and per layer the attention probabilities `[heads, n, n]`.
fn reference(vs: &VarStore, cfg: &LmConfig, toks: &[i64]) -> (Tensor, Vec<Tensor>) {
    let vars = vs.variables();
    let w = |name: &str| vars[name].to_kind(Kind::Double);
    let n = toks.len() as i64;
    let (hd, heads, groups) = (cfg.head_dim(), cfg.num_attention_heads, cfg.kv_groups());
    let half = hd / 2;
    let eps = cfg.rms_norm_eps;
    let norm = |x: &Tensor, weight: &Tensor| {
        x / (x.square().mean_dim(-1, true, Kind::Double) + eps).sqrt() * weight
    };
    let mut angles = Vec::new();
    for p in 0..n {
        for i in 0..half {
            angles.push(p as f64 * cfg.rope_theta.powf(-(2 * i) as f64 / hd as f64));
        }
    }
    let angles = Tensor::from_slice(&angles).view([n, half]);
    let (cos, sin) = (angles.cos(), angles.sin());
    let rope = |x: &Tensor| {
        let (a, b) = (x.narrow(1, 0, half), x.narrow(1, half, half));
        Tensor::cat(&[&a * &cos - &b * &sin, &b * &cos + &a * &sin], 1)
    };
    let future = Tensor::ones([n, n], (Kind::Bool, Device::Cpu)).triu(1);
    let mut x = w("model.embed_tokens.weight").index_select(0, &Tensor::from_slice(toks));
    let mut probs = Vec::new();
    for l in 0..cfg.num_hidden_layers {
        let p = |s: &str| w(&format!("model.layers.{l}.{s}.weight"));
        let h = norm(&x, &p("input_layernorm"));
        let (q, k, v) = (
            h.matmul(&p("self_attn.q_proj").tr()),
            h.matmul(&p("self_attn.k_proj").tr()),
            h.matmul(&p("self_attn.v_proj").tr()),
        );
        let mut outs = Vec::new();
        let mut layer_probs = Vec::new();
        for j in 0..heads {
            let g = j / groups;
            let qj = rope(&q.narrow(1, j * hd, hd));
            let kg = rope(&k.narrow(1, g * hd, hd));
            let s = qj.matmul(&kg.tr()) / (hd as f64).sqrt();
            let pr = s
                .masked_fill(&future, f64::NEG_INFINITY)
                .softmax(-1, Kind::Double);
            outs.push(pr.matmul(&v.narrow(1, g * hd, hd)));
            layer_probs.push(pr);
        }
        x = &x + Tensor::cat(&outs, 1).matmul(&p("self_attn.o_proj").tr());
        let h = norm(&x, &p("post_attention_layernorm"));
        let mlp = (h.matmul(&p("mlp.gate_proj").tr()).silu() * h.matmul(&p("mlp.up_proj").tr()))
            .matmul(&p("mlp.down_proj").tr());
        x = &x + mlp;
        probs.push(Tensor::stack(&layer_probs, 0));
    }
    let head = if cfg.tie_word_embeddings {
        w("model.embed_tokens.weight")
    } else {
        w("lm_head.weight")
    };
    (norm(&x, &w("model.norm.weight")).matmul(&head.tr()), probs)
}

#[test]
fn forward_matches_an_independent_llama() {
    for cfg in [
        gqa(),
        LmConfig {
            num_key_value_heads: 4,
            tie_word_embeddings: true,
            rope_theta: 500.0,
            ..gqa()
        },
    ] {
        let (vs, lm) = model(&cfg, 1);
        let toks = tokens(19, cfg.vocab_size, 2);
        let (want, _) = reference(&vs, &cfg, &toks);
        let got = lm
            .forward(&Tensor::from_slice(&toks).unsqueeze(0))
            .squeeze_dim(0);
        let err = max_diff(&got, &want);
        assert!(err < 1e-4, "{cfg:?}: {err}");
        assert!(
            want.abs().max().double_value(&[]) > 1.0,
            "logits too flat to test"
        );
    }
}

#[test]
fn parameters_have_hugging_face_names() {
    for tied in [false, true] {
        let cfg = LmConfig {
            tie_word_embeddings: tied,
            ..gqa()
        };
        let vs = VarStore::new(Device::Cpu);
        DecoderLm::new(&vs.root(), &cfg).unwrap();
        let vars = vs.variables();
        let (d, hd) = (cfg.hidden_size, cfg.head_dim());
        let mut want = vec![
            ("model.embed_tokens.weight".to_string(), vec![50, d]),
            ("model.norm.weight".to_string(), vec![d]),
        ];
        if !tied {
            want.push(("lm_head.weight".into(), vec![50, d]));
        }
        for i in 0..2 {
            let a = format!("model.layers.{i}.self_attn");
            let m = format!("model.layers.{i}.mlp");
            want.extend([
                (format!("{a}.q_proj.weight"), vec![4 * hd, d]),
                (format!("{a}.k_proj.weight"), vec![2 * hd, d]),
                (format!("{a}.v_proj.weight"), vec![2 * hd, d]),
                (format!("{a}.o_proj.weight"), vec![d, 4 * hd]),
                (format!("{m}.gate_proj.weight"), vec![48, d]),
                (format!("{m}.up_proj.weight"), vec![48, d]),
                (format!("{m}.down_proj.weight"), vec![d, 48]),
                (format!("model.layers.{i}.input_layernorm.weight"), vec![d]),
                (
                    format!("model.layers.{i}.post_attention_layernorm.weight"),
                    vec![d],
                ),
            ]);
        }
        assert_eq!(vars.len(), want.len());
        for (name, size) in want {
            assert_eq!(vars.get(&name).map(|t| t.size()), Some(size), "{name}");
        }
    }
}

#[test]
fn full_cache_matches_uncached_forward() {
    for cfg in [
        gqa(),
        LmConfig {
            num_key_value_heads: 1,
            ..gqa()
        },
    ] {
        let (_vs, lm) = model(&cfg, 3);
        let toks = tokens(23, cfg.vocab_size, 4);
        let want = lm
            .forward(&Tensor::from_slice(&toks).unsqueeze(0))
            .squeeze_dim(0);
        let prompt = 15;
        for chunk in [1, 4, 7, 15, 64] {
            let mut s = Session::new(&lm, build_policy("full", None).unwrap());
            let last = s.prefill(&toks[..prompt], chunk);
            assert!(
                max_diff(&last, &want.get(prompt as i64 - 1)) < 1e-4,
                "chunk {chunk}"
            );
            for (i, &t) in toks.iter().enumerate().skip(prompt) {
                let got = s.step(t);
                assert!(
                    max_diff(&got, &want.get(i as i64)) < 1e-4,
                    "chunk {chunk}, token {i}"
                );
            }
            assert_eq!(s.stats().tokens_seen, 23);
            assert!(s.lens().iter().flatten().all(|&l| l == 23));
        }
        // One call returning every token's logits.
        let mut s = Session::new(&lm, build_policy("full", None).unwrap());
        let _ = s.prefill(&toks[..5], 2);
        let rest = s.extend(&toks[5..]);
        assert!(max_diff(&rest, &want.narrow(0, 5, 18)) < 1e-4);
    }
}

/// Per call, per layer, per KV head: the positions kept after the call.
type Kept = Rc<RefCell<Vec<Vec<Vec<Vec<i64>>>>>>;
type Check = Box<dyn FnMut(&Observation, &[Option<Tensor>])>;

/// Wraps a policy: checks each answer with `check` and records what each head kept.
struct Checked {
    inner: Box<dyn CachePolicy>,
    check: Check,
    kept: Kept,
}

fn checked(
    inner: Box<dyn CachePolicy>,
    check: impl FnMut(&Observation, &[Option<Tensor>]) + 'static,
) -> (Box<dyn CachePolicy>, Kept) {
    let kept: Kept = Rc::default();
    let policy = Checked {
        inner,
        check: Box::new(check),
        kept: kept.clone(),
    };
    (Box::new(policy), kept)
}

impl CachePolicy for Checked {
    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn reset(&mut self, layers: usize, kv_heads: usize) {
        self.inner.reset(layers, kv_heads);
        self.kept.borrow_mut().clear();
    }

    fn update(&mut self, obs: &Observation) -> Vec<Option<Tensor>> {
        let keep = self.inner.update(obs);
        (self.check)(obs, &keep);
        let after: Vec<Vec<i64>> = keep
            .iter()
            .zip(obs.positions)
            .map(|(k, p)| match k {
                Some(idx) => ints(&p.index_select(0, idx)),
                None => ints(p),
            })
            .collect();
        let mut kept = self.kept.borrow_mut();
        if obs.layer == 0 {
            kept.push(Vec::new());
        }
        kept.last_mut().unwrap().push(after);
        keep
    }
}

/// Decodes `toks` (the first `prompt` in chunks of `chunk`, then one by one) under
/// `policy` and checks every call's logits against the uncached forward masked to what
/// the cache held: call C's queries see the tokens kept after call C - 1 and, causally,
/// their own call.
fn matches_dense_reference(
    lm: &DecoderLm,
    policy: Box<dyn CachePolicy>,
    toks: &[i64],
    prompt: usize,
    chunk: usize,
) -> Vec<Vec<i64>> {
    let (policy, kept) = checked(policy, |_, _| {});
    let mut s = Session::new(lm, policy);
    let mut calls: Vec<(usize, usize)> = Vec::new();
    let mut got = Vec::new();
    for start in (0..prompt).step_by(chunk) {
        let end = (start + chunk).min(prompt);
        got.push(s.extend(&toks[start..end]).get((end - start - 1) as i64));
        calls.push((start, end));
    }
    for (i, &t) in toks.iter().enumerate().skip(prompt) {
        got.push(s.step(t));
        calls.push((i, i + 1));
    }
    let cfg = lm.config();
    let (n, kv) = (toks.len(), cfg.num_key_value_heads as usize);
    let kept = kept.borrow();
    let masks: Vec<Tensor> = (0..cfg.num_hidden_layers as usize)
        .map(|l| {
            let mut allowed = vec![false; kv * n * n];
            for g in 0..kv {
                for (c, &(a, b)) in calls.iter().enumerate() {
                    let before: HashSet<i64> = if c == 0 {
                        HashSet::new()
                    } else {
                        kept[c - 1][l][g].iter().copied().collect()
                    };
                    for i in a..b {
                        for j in 0..=i {
                            allowed[(g * n + i) * n + j] = before.contains(&(j as i64)) || j >= a;
                        }
                    }
                }
            }
            Tensor::from_slice(&allowed).view([kv as i64, n as i64, n as i64])
        })
        .collect();
    let want = lm
        .forward_masked(&Tensor::from_slice(toks).unsqueeze(0), Some(&masks))
        .squeeze_dim(0);
    for (c, &(_, b)) in calls.iter().enumerate() {
        let err = max_diff(&got[c], &want.get(b as i64 - 1));
        assert!(err < 1e-4, "call {c} (tokens to {b}): {err}");
    }
    // Lengths after the last call, per layer and head.
    kept.last()
        .unwrap()
        .iter()
        .flat_map(|l| l.iter().map(|h| h.to_vec()))
        .collect()
}

#[test]
fn observation_is_the_group_averaged_attention() {
    let cfg = gqa();
    let (vs, lm) = model(&cfg, 5);
    let toks = tokens(14, cfg.vocab_size, 6);
    let (_, probs) = reference(&vs, &cfg, &toks);
    let groups = cfg.kv_groups();
    let seen = Rc::new(RefCell::new(0usize));
    let count = seen.clone();
    let (policy, _) = checked(build_policy("full", None).unwrap(), move |obs, _| {
        let c = obs.attention[0].size()[0];
        let first = obs.now + 1 - c;
        for (g, att) in obs.attention.iter().enumerate() {
            assert_eq!(ints(&obs.positions[g]), (0..=obs.now).collect::<Vec<_>>());
            let want = probs[obs.layer]
                .narrow(0, g as i64 * groups, groups)
                .mean_dim(0, false, Kind::Double)
                .narrow(0, first, c)
                .narrow(1, 0, obs.now + 1);
            assert_eq!(att.kind(), Kind::Float);
            assert!(max_diff(att, &want) < 1e-5, "layer {} head {g}", obs.layer);
        }
        *count.borrow_mut() += 1;
    });
    let mut s = Session::new(&lm, policy);
    let _ = s.prefill(&toks[..9], 4);
    for &t in &toks[9..] {
        let _ = s.step(t);
    }
    // 3 chunks + 5 steps, 2 layers.
    assert_eq!(*seen.borrow(), 16);
}

#[test]
fn window_and_streaming_keep_the_promised_positions() {
    let cfg = gqa();
    let (_vs, lm) = model(&cfg, 7);
    let toks = tokens(30, cfg.vocab_size, 8);
    let expect_window = |now: i64| -> Vec<i64> { ((now - 4).max(0)..=now).collect() };
    let expect_stream = |now: i64| -> Vec<i64> {
        if now < 7 {
            (0..=now).collect()
        } else {
            (0..4).chain(now - 2..=now).collect()
        }
    };
    for (name, budget, expect) in [
        ("window", 5, &expect_window as &dyn Fn(i64) -> Vec<i64>),
        ("streaming-llm", 7, &expect_stream),
    ] {
        let mut s = Session::new(&lm, build_policy(name, Some(budget)).unwrap());
        let check = |s: &Session, now: i64| {
            for l in 0..2 {
                for g in 0..2 {
                    assert_eq!(ints(&s.positions(l, g)), expect(now), "{name} at {now}");
                }
            }
        };
        let _ = s.prefill(&toks[..3], 3);
        check(&s, 2);
        let _ = s.prefill(&toks[3..17], 4);
        check(&s, 16);
        for (i, &t) in toks.iter().enumerate().skip(17) {
            let _ = s.step(t);
            check(&s, i as i64);
        }
        matches_dense_reference(&lm, build_policy(name, Some(budget)).unwrap(), &toks, 17, 4);
    }
}

#[test]
fn h2o_keeps_recent_and_heaviest_accumulated_attention() {
    let cfg = gqa();
    let (_vs, lm) = model(&cfg, 9);
    let toks = tokens(32, cfg.vocab_size, 10);
    let (budget, recent) = (9usize, 4usize);
    // Accumulated attention per (layer, head, position), summed here from the
    // observations alone.
    let mut acc: HashMap<(usize, usize, i64), f64> = HashMap::new();
    let evictions = Rc::new(RefCell::new(0usize));
    let counted = evictions.clone();
    let (policy, _) = checked(
        Box::new(H2o::new(budget, recent).unwrap()),
        move |obs, keep| {
            for (g, att) in obs.attention.iter().enumerate() {
                let pos = ints(&obs.positions[g]);
                let received = floats(&att.sum_dim_intlist(0, false, Kind::Double));
                for (p, r) in pos.iter().zip(received) {
                    *acc.entry((obs.layer, g, *p)).or_default() += r;
                }
                if pos.len() <= budget {
                    assert!(keep[g].is_none());
                    continue;
                }
                *counted.borrow_mut() += 1;
                let (old, newest) = pos.split_at(pos.len() - recent);
                let mut old = old.to_vec();
                old.sort_by(|a, b| acc[&(obs.layer, g, *b)].total_cmp(&acc[&(obs.layer, g, *a)]));
                let mut want: Vec<i64> = old[..budget - recent].to_vec();
                want.extend(newest);
                want.sort();
                let kept = ints(&obs.positions[g].index_select(0, keep[g].as_ref().unwrap()));
                assert_eq!(kept, want, "layer {} head {g} at {}", obs.layer, obs.now);
            }
        },
    );
    let kept = matches_dense_reference(&lm, policy, &toks, 20, 6);
    // Calls: chunks of 6, 6, 6, 2, then 12 steps; from the second on all evict.
    assert_eq!(*evictions.borrow(), (3 + 12) * 2 * 2);
    assert!(kept.iter().all(|h| h.len() == budget));
    // The heads of a layer chose different tokens (the test would be weak otherwise).
    assert!(kept.windows(2).any(|w| w[0] != w[1]));
}

/// `got` (ascending row indices) keeps the newest row and the `budget - 1` earlier rows
/// that score highest in `score` (one per earlier row); rows whose scores tie to within
/// the policies' f32 rounding (relative 1e-5) may go either way.
fn assert_keeps_newest_and_best(got: &[i64], score: &[f64], budget: usize, what: &str) {
    let newest = score.len() as i64;
    assert_eq!(got.len(), budget, "{what}");
    assert_eq!(*got.last().unwrap(), newest, "{what}: the newest stays");
    assert!(got.windows(2).all(|w| w[0] < w[1]), "{what}: {got:?}");
    let kept_min = got[..budget - 1]
        .iter()
        .map(|&r| score[r as usize])
        .fold(f64::MAX, f64::min);
    let evicted_max = (0..score.len())
        .filter(|r| !got.contains(&(*r as i64)))
        .map(|r| score[r])
        .fold(f64::MIN, f64::max);
    assert!(
        kept_min >= evicted_max - 1e-5 * evicted_max.abs(),
        "{what}: kept a score {kept_min} below an evicted {evicted_max}"
    );
}

#[test]
fn l2_keeps_the_lowest_key_norms_and_the_newest() {
    let cfg = gqa();
    let (_vs, lm) = model(&cfg, 11);
    let toks = tokens(26, cfg.vocab_size, 12);
    let budget = 6;
    let (policy, _) = checked(Box::new(L2Norm::new(budget).unwrap()), move |obs, keep| {
        for (g, k) in obs.keys.iter().enumerate() {
            let len = k.size()[0] as usize;
            if len <= budget {
                assert!(keep[g].is_none());
                continue;
            }
            let norms = floats(&k.to_kind(Kind::Double).norm_scalaropt_dim(2, [1], false));
            // The lowest norms are the best.
            let score: Vec<f64> = norms[..len - 1].iter().map(|v| -v).collect();
            let got = ints(keep[g].as_ref().unwrap());
            assert_keeps_newest_and_best(&got, &score, budget, &format!("head {g}"));
        }
    });
    matches_dense_reference(&lm, policy, &toks, 14, 5);
}

#[test]
fn tova_drops_the_least_attended() {
    let cfg = gqa();
    let (_vs, lm) = model(&cfg, 13);
    let toks = tokens(26, cfg.vocab_size, 14);
    let budget = 7;
    for scope in [TovaScope::Layer, TovaScope::Head] {
        let (policy, _) = checked(
            Box::new(Tova::new(budget, scope).unwrap()),
            move |obs, keep| {
                let len = obs.attention[0].size()[1] as usize;
                if len <= budget {
                    assert!(keep.iter().all(Option::is_none));
                    return;
                }
                let last: Vec<Vec<f64>> = obs
                    .attention
                    .iter()
                    .map(|a| floats(&a.get(a.size()[0] - 1)))
                    .collect();
                for g in 0..obs.attention.len() {
                    let score: Vec<f64> = match scope {
                        TovaScope::Head => last[g].clone(),
                        TovaScope::Layer => (0..len)
                            .map(|j| last.iter().map(|r| r[j]).sum::<f64>())
                            .collect(),
                    };
                    // Drop the least attended, one at a time, sparing the newest.
                    let mut rows: Vec<usize> = (0..len).collect();
                    while rows.len() > budget {
                        let (at, _) = rows[..rows.len() - 1]
                            .iter()
                            .enumerate()
                            .min_by(|a, b| score[*a.1].total_cmp(&score[*b.1]))
                            .unwrap();
                        rows.remove(at);
                    }
                    let want: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
                    assert_eq!(ints(keep[g].as_ref().unwrap()), want, "{scope:?} head {g}");
                }
            },
        );
        let kept = matches_dense_reference(&lm, policy, &toks, 12, 5);
        if scope == TovaScope::Layer {
            assert!(kept.chunks(2).all(|l| l[0] == l[1]));
        }
    }
}

#[test]
fn presses_decode_exactly_and_hold_their_budgets() {
    // The choices themselves are checked against their papers in `presses.rs`; here each
    // runs in a session, chunked prefill then steps, against the dense masked reference.
    let cfg = gqa();
    let (_vs, lm) = model(&cfg, 19);
    let toks = tokens(30, cfg.vocab_size, 20);
    let lens = |kept: &[Vec<i64>]| kept.iter().map(Vec::len).collect::<Vec<_>>();
    // [layer 0 head 0, layer 0 head 1, layer 1 head 0, layer 1 head 1].
    let kept = matches_dense_reference(&lm, Box::new(Random::new(7, 1).unwrap()), &toks, 17, 4);
    assert_eq!(lens(&kept), [7, 7, 7, 7]);
    let kept = matches_dense_reference(&lm, Box::new(SnapKv::new(7, 3, 5).unwrap()), &toks, 17, 4);
    assert_eq!(lens(&kept), [7, 7, 7, 7]);
    assert!(
        kept.iter().all(|h| h.ends_with(&[27, 28, 29])),
        "the window stays"
    );
    assert!(kept.windows(2).any(|w| w[0] != w[1]));
    // Budget 8, window 2, beta 2 on 30 tokens: min 4, max 12, so 12 and 4.
    let policy = PyramidKv::new(8, 2, 3, 2).unwrap();
    let kept = matches_dense_reference(&lm, Box::new(policy), &toks, 17, 4);
    assert_eq!(lens(&kept), [12, 12, 4, 4]);
    let kept = matches_dense_reference(
        &lm,
        Box::new(AdaKv::new(7, 2, 5, 0.2).unwrap()),
        &toks,
        17,
        4,
    );
    let l = lens(&kept);
    assert_eq!((l[0] + l[1], l[2] + l[3]), (14, 14));
    assert!(
        l.iter().all(|&n| n >= 2),
        "the window and the safeguard stay: {l:?}"
    );
    let policy = ExpectedAttention::new(7, 2, 6).unwrap();
    let kept = matches_dense_reference(&lm, Box::new(policy), &toks, 17, 4);
    assert_eq!(lens(&kept), [7, 7, 7, 7]);
    assert!(
        kept.iter().all(|h| h.starts_with(&[0, 1])),
        "the sinks stay"
    );
}

/// Drops, per head, the tokens at positions `p % (head + layer + 2) == 1` once they are
/// no longer the newest: heads end with different numbers of tokens.
struct Thinning;

impl CachePolicy for Thinning {
    fn describe(&self) -> String {
        "thinning".into()
    }

    fn reset(&mut self, _: usize, _: usize) {}

    fn update(&mut self, obs: &Observation) -> Vec<Option<Tensor>> {
        obs.positions
            .iter()
            .enumerate()
            .map(|(g, p)| {
                let m = (g + obs.layer + 2) as i64;
                let keep = p.remainder(m).ne(1).logical_or(&p.eq(obs.now));
                Some(keep.nonzero().squeeze_dim(1))
            })
            .collect()
    }
}

#[test]
fn heads_of_different_lengths_still_decode_exactly() {
    let cfg = gqa();
    let (_vs, lm) = model(&cfg, 15);
    let toks = tokens(28, cfg.vocab_size, 16);
    let kept = matches_dense_reference(&lm, Box::new(Thinning), &toks, 16, 5);
    let lens: Vec<usize> = kept.iter().map(Vec::len).collect();
    // Layer 0: every 2nd / 3rd token dropped; layer 1: every 3rd / 4th.
    assert_eq!(lens, vec![15, 19, 19, 21]);
    let mut s = Session::new(&lm, Box::new(Thinning));
    let _ = s.prefill(&toks, 5);
    assert!(!s.layer_cache(0).is_even());
    assert_eq!(
        s.stats().kv_bytes,
        lens.iter().sum::<usize>() as u64 * 8 * 2 * 4
    );
}

#[test]
fn kv_bytes_shrink_with_the_budget() {
    let cfg = gqa();
    let (_vs, lm) = model(&cfg, 17);
    let toks = tokens(40, cfg.vocab_size, 18);
    // 2 layers x 2 KV heads x (K and V) x head_dim 8 x f32.
    let row = 2 * 2 * 2 * 8 * 4u64;
    let run = |name: &str, budget: Option<usize>| {
        let mut s = Session::new(&lm, build_policy(name, budget).unwrap());
        let _ = s.prefill(&toks[..30], 10);
        for &t in &toks[30..] {
            let _ = s.step(t);
        }
        s.stats()
    };
    let full = run("full", None);
    assert_eq!(full.tokens_seen, 40);
    assert_eq!(full.calls, 13);
    assert_eq!(full.kv_bytes, 40 * row);
    assert_eq!(full.peak_kv_bytes, 40 * row);
    assert_eq!(full.mean_retained_fraction, 1.0);
    assert_eq!(full.retained_fraction, 1.0);
    for name in [
        "window",
        "streaming-llm",
        "h2o",
        "l2",
        "tova",
        "random",
        "snapkv",
        "pyramidkv",
        "adakv",
        "expected-attention",
    ] {
        // adakv's heads hold different numbers of tokens, 8 on average: the same bytes.
        let st = run(name, Some(8));
        assert_eq!(st.kv_bytes, 8 * row, "{name}");
        // One layer holds a chunk of 10 beside its 8 before evicting; the other 8.
        assert_eq!(st.peak_kv_bytes, (8 * row + 18 * row) / 2, "{name}");
        assert_eq!(st.peak_retained_fraction, 0.8, "{name}");
        assert_eq!(st.retained_fraction, 8.0 / 40.0, "{name}");
        // Sampled after each call: 8/10, 8/20, 8/30, then 8/31 .. 8/40.
        let samples: f64 = [10.0, 20.0, 30.0]
            .iter()
            .chain(&[31.0, 32.0, 33.0, 34.0, 35.0, 36.0, 37.0, 38.0, 39.0, 40.0])
            .map(|n: &f64| 8.0 / n)
            .sum();
        assert!(
            (st.mean_retained_fraction - samples / 13.0).abs() < 1e-12,
            "{name}"
        );
        assert!(st.policy_seconds > 0.0 && st.forward_seconds > 0.0);
    }
}

/// The cat-based cache this one replaced, per head: what its live views must equal.
struct CatCache {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    pos: Vec<Tensor>,
}

impl CatCache {
    fn append(&mut self, k: &Tensor, v: &Tensor, p: &Tensor) {
        for g in 0..self.k.len() {
            self.k[g] = Tensor::cat(&[&self.k[g], &k.get(g as i64)], 0);
            self.v[g] = Tensor::cat(&[&self.v[g], &v.get(g as i64)], 0);
            self.pos[g] = Tensor::cat(&[&self.pos[g], p], 0);
        }
    }

    fn retain(&mut self, keep: &[Option<Tensor>]) {
        for (g, o) in keep.iter().enumerate() {
            if let Some(t) = o {
                self.k[g] = self.k[g].index_select(0, t);
                self.v[g] = self.v[g].index_select(0, t);
                self.pos[g] = self.pos[g].index_select(0, t);
            }
        }
    }

    fn check(&self, c: &KvLayerCache, at: &str) {
        let lens: Vec<i64> = self.pos.iter().map(|p| p.size()[0]).collect();
        assert_eq!(c.lens(), lens, "{at}");
        for (mine, theirs) in [
            (c.keys(), &self.k),
            (c.values(), &self.v),
            (c.positions(), &self.pos),
        ] {
            for (a, b) in mine.iter().zip(theirs) {
                assert!(
                    a.equal(b),
                    "{at}: a live view differs from the cat reference"
                );
            }
        }
        let bytes: i64 = lens.iter().sum::<i64>() * 2 * c.keys()[0].size()[1] * 4;
        assert_eq!(c.bytes(), bytes as u64, "{at}: live bytes");
    }
}

#[test]
fn the_cache_appends_and_evicts_in_place_and_equals_concatenation() {
    tch::manual_seed(23);
    let (heads, hd) = (2, 8);
    let opts = (Kind::Float, Device::Cpu);
    let mut c = KvLayerCache::new(heads, hd, Kind::Float, Device::Cpu);
    let empty = || (0..heads).map(|_| Tensor::zeros([0, hd], opts)).collect();
    let mut r = CatCache {
        k: empty(),
        v: empty(),
        pos: (0..heads)
            .map(|_| Tensor::zeros([0], (Kind::Int64, Device::Cpu)))
            .collect(),
    };
    let mut next = 0i64;
    let mut feed = |c: &mut KvLayerCache, r: &mut CatCache, n: i64| {
        let (k, v) = (
            Tensor::randn([heads, n, hd], opts),
            Tensor::randn([heads, n, hd], opts),
        );
        let p = Tensor::arange_start(next, next + n, (Kind::Int64, Device::Cpu));
        next += n;
        c.append(&k, &v, &p);
        r.append(&k, &v, &p);
    };
    // Room for 50 tokens ahead: one token at a time, the buffer never moves.
    c.reserve(50);
    let cap = c.capacity();
    assert!(cap >= 50);
    feed(&mut c, &mut r, 1);
    let ptr = c.keys()[0].data_ptr();
    for t in 1..30 {
        feed(&mut c, &mut r, 1);
        assert_eq!(
            c.keys()[0].data_ptr(),
            ptr,
            "token {t}: the buffer was reallocated"
        );
        r.check(&c, &format!("token {t}"));
    }
    // Evictions compact in place: heads of different lengths, then even again.
    let ragged = [Some(Tensor::from_slice(&[0i64, 3, 4, 10, 29])), None];
    c.retain(&ragged);
    r.retain(&ragged);
    assert!(!c.is_even());
    r.check(&c, "after a per-head eviction");
    for t in 0..10 {
        feed(&mut c, &mut r, 1);
        r.check(&c, &format!("ragged token {t}"));
    }
    let even = [
        Some(Tensor::from_slice(&[1i64, 2, 14])),
        Some(Tensor::from_slice(&[0i64, 20, 39])),
    ];
    c.retain(&even);
    r.retain(&even);
    assert!(c.is_even());
    r.check(&c, "after an eviction to equal lengths");
    feed(&mut c, &mut r, 4);
    let all = [
        Some(Tensor::from_slice(&[0i64, 2, 5])),
        Some(Tensor::from_slice(&[1i64, 3, 6])),
    ];
    c.retain(&all);
    r.retain(&all);
    r.check(&c, "after a batched eviction");
    assert_eq!(c.keys()[0].data_ptr(), ptr, "evictions reallocated");
    assert_eq!(c.capacity(), cap);
    // Past the capacity it grows by doubling (not per token), still equal to the cat.
    let mut moves = 0;
    let mut last = c.keys()[0].data_ptr();
    for t in 0..3 * cap {
        feed(&mut c, &mut r, 1);
        let now = c.keys()[0].data_ptr();
        moves += usize::from(now != last);
        last = now;
        if t % 17 == 0 {
            r.check(&c, &format!("growing, token {t}"));
        }
    }
    r.check(&c, "grown");
    assert_eq!(
        moves,
        2,
        "from {cap} rows: doubled twice for {} tokens",
        3 * cap + 3
    );
}

#[test]
fn a_reserved_session_decodes_without_reallocating() {
    let cfg = gqa();
    let (_vs, lm) = model(&cfg, 21);
    let toks = tokens(40, cfg.vocab_size, 22);
    let mut s = Session::new(&lm, build_policy("window", Some(8)).unwrap());
    s.reserve(12);
    let _ = s.prefill(&toks[..12], 12);
    let ptr = s.layer_cache(1).keys()[0].data_ptr();
    for &t in &toks[12..] {
        let _ = s.step(t);
        assert_eq!(s.layer_cache(1).keys()[0].data_ptr(), ptr);
    }
    assert_eq!(ints(&s.positions(1, 1)), (32..40).collect::<Vec<i64>>());
}

#[test]
fn generate_greedy_and_reuse_of_the_policy() {
    let cfg = gqa();
    let (_vs, lm) = model(&cfg, 19);
    let toks = tokens(12, cfg.vocab_size, 20);
    let mut s = Session::new(&lm, build_policy("h2o", Some(6)).unwrap());
    let _ = s.prefill(&toks, 4);
    let out = s.generate_greedy(5);
    assert_eq!(out.len(), 5);
    assert_eq!(s.stats().tokens_seen, 17);
    // Same sequence, the policy handed to a new session: same tokens (reset works).
    let policy = s.into_policy();
    assert_eq!(policy.describe(), "h2o:budget=6,recent=3");
    let mut again = Session::new(&lm, policy);
    let _ = again.prefill(&toks, 4);
    assert_eq!(again.generate_greedy(5), out);
    // Full cache: greedy equals argmax of the uncached forward, token by token.
    let mut s = Session::new(&lm, build_policy("full", None).unwrap());
    let _ = s.prefill(&toks, 5);
    let out = s.generate_greedy(4);
    let mut seq = toks.clone();
    for &t in &out {
        let logits = lm.forward(&Tensor::from_slice(&seq).unsqueeze(0));
        assert_eq!(
            logits
                .get(0)
                .get(seq.len() as i64 - 1)
                .argmax(-1, false)
                .int64_value(&[]),
            t
        );
        seq.push(t);
    }
}

#[test]
fn registry_builds_by_name_and_explains_refusals() {
    assert_eq!(
        policy_names(),
        [
            "full",
            "window",
            "streaming-llm",
            "h2o",
            "l2",
            "tova",
            "random",
            "snapkv",
            "pyramidkv",
            "adakv",
            "expected-attention",
            "namm"
        ]
    );
    // One table: each row's constructor builds the policy it names, with its budget rule.
    for p in POLICIES {
        let Some(build) = p.build else {
            assert_eq!(p.name, "namm");
            continue;
        };
        let built = build(if p.budgeted { 16 } else { 0 }).unwrap().describe();
        assert_eq!(built.split(':').next(), Some(p.name), "{built}");
        assert_eq!(p.budgeted, built.contains("budget="), "{built}");
    }
    for (name, want) in [
        ("window", "window:budget=16"),
        ("streaming-llm", "streaming-llm:budget=16,sinks=4"),
        ("h2o", "h2o:budget=16,recent=8"),
        ("l2", "l2:budget=16"),
        ("tova", "tova:budget=16"),
        ("random", "random:budget=16,seed=0"),
        ("snapkv", "snapkv:budget=16,window=64,kernel=5"),
        (
            "pyramidkv",
            "pyramidkv:budget=16,window=64,kernel=5,beta=20",
        ),
        ("adakv", "adakv:budget=16,window=64,kernel=5,alpha=0.2"),
        (
            "expected-attention",
            "expected-attention:budget=16,sinks=4,window=64",
        ),
    ] {
        assert_eq!(build_policy(name, Some(16)).unwrap().describe(), want);
        let err = build_policy(name, None).err().unwrap().to_string();
        assert!(err.contains("needs a budget"), "{err}");
    }
    assert_eq!(build_policy("full", None).unwrap().describe(), "full");
    let err = |r: Result<Box<dyn CachePolicy>, xarena_variants::VariantError>| {
        r.err().unwrap().to_string()
    };
    assert!(err(build_policy("full", Some(4))).contains("no budget"));
    assert!(err(build_policy("namm", Some(4))).contains("needs parameters"));
    let unknown = err(build_policy("snap-kv", Some(4)));
    assert!(
        unknown.contains("snap-kv") && unknown.contains("streaming-llm, h2o"),
        "{unknown}"
    );
    assert!(err(build_policy("window", Some(0))).contains("at least 1"));
    assert!(StreamingLlm::new(4, 4)
        .err()
        .unwrap()
        .to_string()
        .contains("at least 5"));
    assert!(H2o::new(4, 5).err().unwrap().to_string().contains("recent"));
    assert!(Window::new(3).is_ok());
}

#[test]
fn config_checks_name_the_bad_field() {
    let bad = |cfg: LmConfig| cfg.check().err().unwrap().to_string();
    let e = bad(LmConfig {
        hidden_size: 30,
        ..gqa()
    });
    assert!(
        e.contains("num_attention_heads (4) must divide hidden_size (30)"),
        "{e}"
    );
    let e = bad(LmConfig {
        num_key_value_heads: 3,
        ..gqa()
    });
    assert!(e.contains("num_key_value_heads (3)"), "{e}");
    let e = bad(LmConfig {
        hidden_size: 20,
        ..gqa()
    });
    assert!(e.contains("must be even"), "{e}");
    let e = bad(LmConfig {
        vocab_size: 0,
        ..gqa()
    });
    assert!(e.contains("vocab_size"), "{e}");
    let e = bad(LmConfig {
        rope_theta: -1.0,
        ..gqa()
    });
    assert!(e.contains("rope_theta"), "{e}");
    let vs = VarStore::new(Device::Cpu);
    assert!(DecoderLm::new(
        &vs.root(),
        &LmConfig {
            num_key_value_heads: 3,
            ..gqa()
        }
    )
    .is_err());

    // Hugging Face's keys; unknown ones ignored, absent ones at LlamaConfig's defaults.
    let json = r#"{"vocab_size": 50, "hidden_size": 32, "intermediate_size": 48,
        "num_hidden_layers": 2, "num_attention_heads": 4, "rope_theta": 500000,
        "bos_token_id": 1, "torch_dtype": "bfloat16", "model_type": "llama",
        "hidden_act": "silu", "head_dim": 8, "rope_scaling": null}"#;
    let cfg: LmConfig = serde_json::from_str(json).unwrap();
    assert_eq!(cfg.num_key_value_heads, 4);
    assert_eq!(cfg.rope_theta, 500000.0);
    assert_eq!(cfg.rms_norm_eps, 1e-6);
    assert!(!cfg.tie_word_embeddings);
    let reject = |extra: &str| {
        let j = json.replace("\"bos_token_id\": 1", extra);
        serde_json::from_str::<LmConfig>(&j)
            .err()
            .unwrap()
            .to_string()
    };
    assert!(reject(r#""bos_token_id": 1, "attention_bias": true"#).contains("bias"));
    let j = json.replace("\"llama\"", "\"qwen2\"");
    assert!(serde_json::from_str::<LmConfig>(&j)
        .err()
        .unwrap()
        .to_string()
        .contains("qwen2"));
    let j = json.replace("\"silu\"", "\"gelu\"");
    assert!(serde_json::from_str::<LmConfig>(&j)
        .err()
        .unwrap()
        .to_string()
        .contains("gelu"));
    let j = json.replace("\"head_dim\": 8", "\"head_dim\": 16");
    assert!(serde_json::from_str::<LmConfig>(&j)
        .err()
        .unwrap()
        .to_string()
        .contains("head_dim"));
    let j = json.replace("null", r#"{"rope_type": "yarn", "factor": 4.0}"#);
    let cfg: LmConfig = serde_json::from_str(&j).unwrap();
    assert!(cfg.check().err().unwrap().to_string().contains("yarn"));
}

/// transformers 5 writes the rotary base and scaling as `rope_parameters`, with no
/// top-level `rope_theta` (it was once read as 10000 silently); a top-level one wins.
#[test]
fn transformers_5_rope_parameters_are_read_and_unknown_scalings_refused() {
    let base = r#"{"vocab_size": 8, "hidden_size": 128, "intermediate_size": 8,
        "num_hidden_layers": 1, "num_attention_heads": 2, PARAMS}"#;
    let parse = |params: &str| {
        let j = base.replace("PARAMS", params);
        serde_json::from_str::<LmConfig>(&j).and_then(|cfg| {
            cfg.check()
                .map_err(|e| serde::de::Error::custom(e.to_string()))
                .map(|_| cfg)
        })
    };
    let cfg =
        parse(r#""rope_parameters": {"rope_theta": 500000.0, "rope_type": "default"}"#).unwrap();
    assert_eq!(cfg.rope_theta, 500000.0);
    assert_eq!(cfg.rope_scaling, None);
    let cfg = parse(r#""rope_parameters": {"rope_theta": 100000.0}"#).unwrap();
    assert_eq!(cfg.rope_theta, 100000.0);
    // A top-level rope_theta is read first.
    let cfg = parse(r#""rope_theta": 1000.0, "rope_parameters": {"rope_theta": 5.0}"#).unwrap();
    assert_eq!(cfg.rope_theta, 1000.0);
    // Neither: LlamaConfig's default.
    let cfg = parse(r#""tie_word_embeddings": false"#).unwrap();
    assert_eq!(cfg.rope_theta, 10_000.0);
    // Scaling in rope_parameters, as Llama 3.2's config is written by transformers 5.
    let cfg = parse(
        r#""rope_parameters": {"rope_theta": 500000.0, "rope_type": "llama3",
        "factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192}"#,
    )
    .unwrap();
    let s = cfg.rope_scaling.as_ref().unwrap();
    assert_eq!(
        (s.rope_type.as_str(), s.factor, cfg.rope_theta),
        ("llama3", Some(32.0), 500000.0)
    );
    let legacy = parse(
        r#""rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 32.0,
        "high_freq_factor": 4.0, "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192}"#,
    )
    .unwrap();
    assert_eq!(cfg, legacy);
    let cfg =
        parse(r#""rope_parameters": {"rope_theta": 1e4, "rope_type": "linear", "factor": 2.0}"#)
            .unwrap();
    assert_eq!(cfg.rope_scaling.unwrap().factor, Some(2.0));
    // Scalings the decoder does not implement are refused by name, in either form.
    for t in ["yarn", "dynamic", "longrope"] {
        let e = parse(&format!(
            r#""rope_parameters": {{"rope_theta": 1e4, "rope_type": "{t}", "factor": 4.0}}"#
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(&format!("`{t}`")) && e.contains("rope_parameters"),
            "{e}"
        );
        let e = parse(&format!(
            r#""rope_scaling": {{"rope_type": "{t}", "factor": 4.0}}"#
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains(&format!("`{t}`")), "{e}");
    }
}

#[test]
fn llama3_rope_scaling_matches_hugging_face_formula() {
    // Llama 3.2's settings on a head of 64: wavelengths below 8192/4 unchanged, above
    // 8192 divided by the factor, smooth between.
    let j = r#"{"vocab_size": 8, "hidden_size": 128, "intermediate_size": 8,
        "num_hidden_layers": 1, "num_attention_heads": 2, "rope_theta": 500000.0,
        "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
        "original_max_position_embeddings": 8192, "rope_type": "llama3"}}"#;
    let cfg: LmConfig = serde_json::from_str(j).unwrap();
    cfg.check().unwrap();
    let plain = LmConfig {
        rope_scaling: None,
        ..cfg.clone()
    }
    .inv_freq();
    let scaled = cfg.inv_freq();
    for (p, s) in plain.iter().zip(&scaled) {
        let wavelen = 2.0 * std::f64::consts::PI / p;
        if wavelen < 2048.0 {
            assert_eq!(p, s);
        } else if wavelen > 8192.0 {
            assert!((p / 32.0 - s).abs() < 1e-15);
        } else {
            assert!(*s < *p && *s > p / 32.0);
        }
    }
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xarena-kvcache-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn logits_of(lm: &DecoderLm, toks: &[i64]) -> Tensor {
    lm.forward(&Tensor::from_slice(toks).unsqueeze(0))
}

#[test]
fn checkpoint_round_trip_gives_identical_logits() {
    let cfg = LmConfig {
        tie_word_embeddings: true,
        ..gqa()
    };
    let (vs, lm) = model(&cfg, 21);
    let toks = tokens(11, cfg.vocab_size, 22);
    let dir = temp_dir("roundtrip");
    llama::save_checkpoint(&dir, &vs, &cfg).unwrap();
    let (vs2, lm2, cfg2) = llama::load_checkpoint(&dir, Device::Cpu).unwrap();
    assert_eq!(cfg2, cfg);
    assert_eq!(vs2.variables().len(), vs.variables().len());
    assert!(logits_of(&lm, &toks).equal(&logits_of(&lm2, &toks)));
    // What Hugging Face needs to read it back.
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("config.json")).unwrap()).unwrap();
    assert_eq!(json["model_type"], "llama");
    assert_eq!(json["architectures"][0], "LlamaForCausalLM");
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    assert_eq!(header["__metadata__"]["format"], "pt");
    assert_eq!(header["model.embed_tokens.weight"]["dtype"], "F32");

    // Sharded, with an index, as large Hugging Face checkpoints come.
    let sharded = temp_dir("sharded");
    std::fs::create_dir_all(&sharded).unwrap();
    std::fs::copy(dir.join("config.json"), sharded.join("config.json")).unwrap();
    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let (one, two) = named.split_at(named.len() / 2);
    let mut map = serde_json::Map::new();
    for (file, part) in [
        ("model-00001-of-00002.safetensors", one),
        ("model-00002-of-00002.safetensors", two),
    ] {
        llama::write_safetensors(sharded.join(file), part).unwrap();
        for (name, _) in part {
            map.insert(name.clone(), file.into());
        }
    }
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": map});
    std::fs::write(
        sharded.join("model.safetensors.index.json"),
        index.to_string(),
    )
    .unwrap();
    let (_, lm3, _) = llama::load_checkpoint(&sharded, Device::Cpu).unwrap();
    assert!(logits_of(&lm, &toks).equal(&logits_of(&lm3, &toks)));
    // A shard missing.
    std::fs::remove_file(sharded.join("model-00002-of-00002.safetensors")).unwrap();
    let e = llama::load_checkpoint(&sharded, Device::Cpu).err().unwrap();
    assert!(matches!(e, CheckpointError::MissingFile { .. }), "{e}");
    assert!(
        e.to_string().contains("model-00002-of-00002.safetensors"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&sharded).unwrap();
}

#[test]
fn bf16_checkpoint_loads_as_f32() {
    let cfg = gqa();
    let (vs, _) = model(&cfg, 23);
    let dir = temp_dir("bf16");
    std::fs::create_dir_all(&dir).unwrap();
    llama::save_checkpoint(&dir, &vs, &cfg).unwrap();
    let bf16: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .map(|(n, t)| (n, t.to_kind(Kind::BFloat16)))
        .collect();
    llama::write_safetensors(dir.join("model.safetensors"), &bf16).unwrap();
    let (vs2, lm2, _) = llama::load_checkpoint(&dir, Device::Cpu).unwrap();
    let vars2 = vs2.variables();
    for (name, t) in &bf16 {
        assert_eq!(vars2[name].kind(), Kind::Float, "{name}");
        assert!(vars2[name].equal(&t.to_kind(Kind::Float)), "{name}");
    }
    // The same values in f32, through save and load: identical logits.
    let toks = tokens(9, cfg.vocab_size, 24);
    let (vs3, _) = model(&cfg, 23);
    tch::no_grad(|| {
        for (name, var) in vs3.variables() {
            var.shallow_clone().copy_(&vars2[&name]);
        }
    });
    let dir3 = temp_dir("bf16-as-f32");
    llama::save_checkpoint(&dir3, &vs3, &cfg).unwrap();
    let (_, lm3, _) = llama::load_checkpoint(&dir3, Device::Cpu).unwrap();
    assert!(logits_of(&lm2, &toks).equal(&logits_of(&lm3, &toks)));
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&dir3).unwrap();
}

#[test]
fn checkpoint_errors_name_what_is_missing() {
    let cfg = gqa();
    let (vs, _) = model(&cfg, 25);
    let dir = temp_dir("errors");
    let load = || llama::load_checkpoint(&dir, Device::Cpu).err().unwrap();
    std::fs::create_dir_all(&dir).unwrap();
    let e = load();
    assert!(
        matches!(e, CheckpointError::MissingFile { .. }) && e.to_string().contains("config.json"),
        "{e}"
    );
    llama::save_checkpoint(&dir, &vs, &cfg).unwrap();
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    let e = load();
    assert!(e.to_string().contains("model.safetensors"), "{e}");

    let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let gone = "model.layers.1.mlp.up_proj.weight";
    let without: Vec<(String, Tensor)> = named
        .iter()
        .filter(|(n, _)| n != gone)
        .map(|(n, t)| (n.clone(), t.shallow_clone()))
        .collect();
    llama::write_safetensors(dir.join("model.safetensors"), &without).unwrap();
    let e = load();
    assert!(
        matches!(&e, CheckpointError::MissingTensor { name, .. } if name == gone),
        "{e}"
    );
    assert!(e.to_string().contains(gone));

    let reshaped: Vec<(String, Tensor)> = named
        .iter()
        .map(|(n, t)| {
            let t = if n == gone {
                t.narrow(0, 0, 10)
            } else {
                t.shallow_clone()
            };
            (n.clone(), t)
        })
        .collect();
    llama::write_safetensors(dir.join("model.safetensors"), &reshaped).unwrap();
    let e = load().to_string();
    assert!(
        e.contains(gone) && e.contains("[10, 32]") && e.contains("[48, 32]"),
        "{e}"
    );

    std::fs::write(dir.join("config.json"), "{\"vocab_size\": 50}").unwrap();
    let e = load().to_string();
    assert!(
        e.contains("config.json") && e.contains("hidden_size"),
        "{e}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// kvpress's protocol: the whole prompt in one call and one compression, then decoding
/// with the cache growing. The positions kept are kvpress's: StreamingLLMPress (the first
/// 4 and the newest), TOVAPress (the newest, then the last query's attention averaged over
/// every query head, the newest itself left out) and KnormPress (the lowest key norms),
/// except that `l2` always keeps the newest token, which KnormPress may drop.
#[test]
fn the_kvpress_protocol_compresses_once_then_the_cache_grows() {
    use xarena_datasets::lm_tasks::LmExample;
    use xarena_kvcache::eval::{decode_under, Protocol};
    let cfg = gqa();
    let (_vs, lm) = model(&cfg, 21);
    let n = 24usize;
    let budget = 9usize;
    let toks = tokens(n, cfg.vocab_size, 22);
    // Per KV head, the score each earlier token is ranked by (higher kept), or `None` for
    // a rule of positions alone.
    type Scores = Box<dyn Fn(&Observation) -> Option<Vec<Vec<f64>>>>;
    let streaming: Scores = Box::new(|_| None);
    let tova: Scores = Box::new(move |obs| {
        // The last query's attention to every earlier token, mean over all query heads
        // (the group averages weigh equal groups equally), the same for every head.
        let heads = obs.attention.len();
        let last: Vec<Vec<f64>> = obs
            .attention
            .iter()
            .map(|a| floats(&a.get(a.size()[0] - 1)))
            .collect();
        let score: Vec<f64> = (0..n - 1)
            .map(|j| last.iter().map(|r| r[j]).sum::<f64>() / heads as f64)
            .collect();
        Some(vec![score; heads])
    });
    let knorm: Scores = Box::new(move |obs| {
        Some(
            obs.keys
                .iter()
                .map(|k| {
                    let norms = floats(&k.to_kind(Kind::Double).norm_scalaropt_dim(2, [1], false));
                    norms[..n - 1].iter().map(|v| -v).collect()
                })
                .collect(),
        )
    });
    // StreamingLLMPress: the first 4 and the newest. The scored presses: the newest, then
    // the budget - 1 best scores.
    let check =
        move |name: &str, obs: &Observation, got: &[Vec<i64>], scores: Option<Vec<Vec<f64>>>| {
            let Some(scores) = scores else {
                let want: Vec<i64> = (0..4).chain((n - (budget - 4)) as i64..n as i64).collect();
                for g in got {
                    assert_eq!(g, &want, "{name} layer {}", obs.layer);
                }
                return;
            };
            for (h, (g, score)) in got.iter().zip(&scores).enumerate() {
                let what = format!("{name} layer {} head {h}", obs.layer);
                assert_keeps_newest_and_best(g, score, budget, &what);
            }
        };
    let answer = 5usize;
    let example = LmExample {
        prompt: toks.iter().map(|&t| t as u32).collect(),
        answer: vec![1; answer],
        given: vec![true; answer],
    };
    for (name, policy, expect) in [
        (
            "streaming-llm",
            Box::new(StreamingLlm::new(budget, 4).unwrap()) as Box<dyn CachePolicy>,
            streaming,
        ),
        (
            "tova",
            Box::new(Tova::new(budget, TovaScope::Layer).unwrap()),
            tova,
        ),
        ("l2", Box::new(L2Norm::new(budget).unwrap()), knorm),
    ] {
        let calls = Rc::new(RefCell::new(0usize));
        let seen = calls.clone();
        let (policy, kept) = checked(policy, move |obs, keep| {
            *seen.borrow_mut() += 1;
            // One observation of the whole prompt.
            assert_eq!(obs.now, n as i64 - 1, "{name}");
            let got: Vec<Vec<i64>> = keep
                .iter()
                .zip(obs.positions)
                .map(|(k, p)| ints(&p.index_select(0, k.as_ref().unwrap())))
                .collect();
            check(name, obs, &got, expect(obs));
        });
        let (decoded, _) = decode_under(&lm, policy, &example, 4, Protocol::Kvpress);
        // Once per layer, after the prefill; never while decoding.
        assert_eq!(*calls.borrow(), cfg.num_hidden_layers as usize, "{name}");
        assert_eq!(kept.borrow().len(), 1, "{name}");
        // The cache grew by the decoded tokens: budget + answer per KV head at the end.
        let tokens_seen = (n + answer) as f64;
        let want = (budget + answer) as f64 / tokens_seen;
        assert!(
            (decoded.stats.retained_fraction - want).abs() < 1e-9,
            "{name}: retained {} after decoding, want {want}",
            decoded.stats.retained_fraction
        );
    }
}

/// One prefill shared by every policy (`kv bench --protocol kvpress`) decodes as each
/// policy's own prefill does: the same answers, scores, retained fractions and peak
/// bytes, for every policy of the table (token and text prompts).
#[test]
fn a_shared_prefill_decodes_as_each_policy_alone() {
    use xarena_datasets::lm_tasks::LmExample;
    use xarena_kvcache::eval::{
        decode_all_shared, decode_all_under, decode_text_all_shared, decode_text_all_under,
        Protocol, TextPrompt,
    };
    let cfg = gqa();
    let (_vs, lm) = model(&cfg, 31);
    let budget = 9usize;
    let build = || -> Vec<Box<dyn CachePolicy>> {
        POLICIES
            .iter()
            .filter(|p| p.build.is_some())
            .map(|p| build_policy(p.name, p.budgeted.then_some(budget)).unwrap())
            .collect()
    };
    let examples: Vec<LmExample> = (0..3)
        .map(|i| {
            let toks = tokens(20 + 4 * i, cfg.vocab_size, 40 + i as i64);
            LmExample {
                prompt: toks.iter().map(|&t| t as u32).collect(),
                // Decoded greedily but the second token, given.
                answer: vec![3, 7, 1, 4],
                given: vec![false, true, false, false],
            }
        })
        .collect();
    let (shared, _) = decode_all_shared(&lm, build(), &examples);
    for (policy, got) in build().into_iter().zip(&shared) {
        let name = policy.describe();
        let (want, _) = decode_all_under(&lm, policy, &examples, 4, Protocol::Kvpress);
        assert_eq!(got.examples, want.examples, "{name}");
        assert_eq!(got.score_sum, want.score_sum, "{name}");
        assert_eq!(got.decode_steps, want.decode_steps, "{name}");
        assert_eq!(got.peak_kv_bytes, want.peak_kv_bytes, "{name}");
        for (g, w, what) in [
            (
                got.mean_retained_sum,
                want.mean_retained_sum,
                "mean retained",
            ),
            (
                got.final_retained_sum,
                want.final_retained_sum,
                "final retained",
            ),
            (got.peak_retained, want.peak_retained, "peak retained"),
        ] {
            assert!((g - w).abs() < 1e-12, "{name}: {what} {g} vs {want:?}");
        }
    }
    let prompts: Vec<TextPrompt> = examples
        .iter()
        .map(|ex| TextPrompt {
            tokens: ex.prompt.clone(),
            answers: vec!["7".into()],
            max_new: 6,
        })
        .collect();
    let detok = |ids: &[u32]| format!("{ids:?}");
    let stop = [5u32];
    let (shared, _) = decode_text_all_shared(&lm, build(), &prompts, &stop, &detok);
    let mut differ = 0;
    for (policy, (got, outputs)) in build().into_iter().zip(&shared) {
        let name = policy.describe();
        let (want, want_outputs, _) =
            decode_text_all_under(&lm, policy, &prompts, 4, Protocol::Kvpress, &stop, &detok);
        assert_eq!(outputs, &want_outputs, "{name}");
        assert_eq!(got.peak_kv_bytes, want.peak_kv_bytes, "{name}");
        assert!((got.final_retained_sum - want.final_retained_sum).abs() < 1e-12);
        differ += usize::from(outputs != &shared[0].1);
    }
    // The policies do change what is decoded, so equal outputs are not vacuous.
    assert!(differ > 0, "every policy decoded as the full cache");
}
