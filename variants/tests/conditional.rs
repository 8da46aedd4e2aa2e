//! The mixture-of-experts blocks (`switch`, `moe-top2`) against dense references built
//! from the same weights, and their routing, capacity, loss, gradients, FLOPs and configs.

mod common;

use std::collections::HashMap;

use common::*;
use tch::{nn, Device, Kind, Tensor};
use xarena_variants::conditional::moe_top2::{self, MoeTop2};
use xarena_variants::conditional::switch::{self, Switch};
use xarena_variants::conditional::{balance_loss, slots, Gate};
use xarena_variants::registry::LayerVariant;
use xarena_variants::{build_layer, Layer, Scope, Shape, VariantSpec};

fn small(n: i64, causal: bool) -> Shape {
    Shape {
        batch: 2,
        seq_len: n,
        heads: 2,
        head_dim: 8,
        causal,
    }
}

fn vars(vs: &nn::VarStore) -> HashMap<String, Tensor> {
    vs.variables()
}

fn get(vs: &nn::VarStore, name: &str) -> Tensor {
    vars(vs)
        .remove(name)
        .unwrap_or_else(|| panic!("no variable {name}"))
}

fn set(vs: &nn::VarStore, name: &str, value: &Tensor) {
    tch::no_grad(|| get(vs, name).copy_(value));
}

fn switch_layer(config: switch::Config, s: &Shape, seed: i64) -> (nn::VarStore, Switch) {
    seeded(seed, || {
        let mut vs = nn::VarStore::new(Device::Cpu);
        vs.set_kind(Kind::Double);
        let l = Switch::new(config, s, Scope::Block, vs.root()).unwrap();
        (vs, l)
    })
}

fn top2_layer(config: moe_top2::Config, s: &Shape, seed: i64) -> (nn::VarStore, MoeTop2) {
    seeded(seed, || {
        let mut vs = nn::VarStore::new(Device::Cpu);
        vs.set_kind(Kind::Double);
        let l = MoeTop2::new(config, s, Scope::Block, vs.root()).unwrap();
        (vs, l)
    })
}

fn input(s: &Shape, seed: i64) -> Tensor {
    seeded(seed, || {
        Tensor::randn(
            [s.batch, s.seq_len, s.d_model()],
            (Kind::Double, Device::Cpu),
        )
    })
}

fn max_abs(t: &Tensor) -> f64 {
    f64::try_from(t.abs().max()).unwrap()
}

/// x + Attn(LN1(x)) from the MoE block's own weights, through `sdpa`'s attention layer
/// and an explicit layer norm: the residual stream the FFN adds to.
fn residual(moe_vs: &nn::VarStore, s: &Shape, x: &Tensor) -> Tensor {
    let mut vs = nn::VarStore::new(Device::Cpu);
    vs.set_kind(Kind::Double);
    let attn = build_layer(&VariantSpec::new("sdpa"), s, Scope::Attention, vs.root()).unwrap();
    for name in [
        "attn.qkv.weight",
        "attn.qkv.bias",
        "attn.out.weight",
        "attn.out.bias",
    ] {
        set(&vs, name, &get(moe_vs, name));
    }
    let d = s.d_model();
    let ln = x.layer_norm(
        [d],
        Some(&get(moe_vs, "ln1.weight")),
        Some(&get(moe_vs, "ln1.bias")),
        1e-5,
        false,
    );
    x + attn.forward(&ln)
}

/// Routes every token to expert 0 with probability ~1: LN2 outputs the constant vector
/// `c` (zero weight, bias c) and only router row 0 points along it.
fn collapse_to_expert_0(vs: &nn::VarStore, d: i64, experts: i64) {
    let c = Tensor::linspace(-1.0, 1.0, d, (Kind::Double, Device::Cpu));
    set(
        vs,
        "ln2.weight",
        &Tensor::zeros([d], (Kind::Double, Device::Cpu)),
    );
    set(vs, "ln2.bias", &c);
    let w = Tensor::zeros([experts, d], (Kind::Double, Device::Cpu));
    tch::no_grad(|| w.get(0).copy_(&(&c * 50.0)));
    set(vs, "router.weight", &w);
}

#[test]
fn one_expert_with_room_for_every_token_is_the_dense_block() {
    for causal in [false, true] {
        let s = small(23, causal);
        let config = switch::Config {
            experts: 1,
            ..Default::default()
        };
        let (moe_vs, moe) = switch_layer(config, &s, 1);
        assert!(moe.capacity(s.batch * s.seq_len) >= s.batch * s.seq_len);
        let mut dense_vs = nn::VarStore::new(Device::Cpu);
        dense_vs.set_kind(Kind::Double);
        let dense =
            build_layer(&VariantSpec::new("sdpa"), &s, Scope::Block, dense_vs.root()).unwrap();
        // The dense block's FFN is expert 0; everything else has the same name.
        let expert = |name: &str| get(&moe_vs, name).get(0);
        for (name, _) in vars(&dense_vs) {
            let value = match name.as_str() {
                "block.ff1.weight" => expert("experts.w1").tr(),
                "block.ff1.bias" => expert("experts.b1").squeeze_dim(0),
                "block.ff2.weight" => expert("experts.w2").tr(),
                "block.ff2.bias" => expert("experts.b2").squeeze_dim(0),
                other => get(&moe_vs, other.trim_start_matches("block.")),
            };
            set(&dense_vs, &name, &value);
        }
        let x = input(&s, 2);
        let err = rel_err(&moe.forward(&x), &dense.forward(&x));
        assert!(err < 1e-12, "causal={causal}: {err}");
    }
}

#[test]
fn tokens_over_capacity_keep_the_residual_in_priority_order() {
    let s = small(10, false);
    let (t, d) = (s.batch * s.seq_len, s.d_model());
    // Capacity ceil(0.5 * 20 / 2) = 5 of the 20 tokens, all routed to expert 0.
    let config = switch::Config {
        experts: 2,
        capacity_factor: 0.5,
        ..Default::default()
    };
    let (vs, moe) = switch_layer(config, &s, 3);
    assert_eq!(moe.capacity(t), 5);
    collapse_to_expert_0(&vs, d, 2);
    let x = input(&s, 4);
    let h = residual(&vs, &s, &x);
    let y = moe.forward(&x);
    // Position-major priority: positions 0, 1 of both sequences, then position 2 of the
    // first sequence, take the five slots.
    for p in 0..s.seq_len {
        for b in 0..s.batch {
            let moved = max_abs(&(y.get(b).get(p) - h.get(b).get(p)));
            if p * s.batch + b < 5 {
                assert!(moved > 1e-3, "token ({b}, {p}) was routed: {moved}");
            } else {
                assert!(moved < 1e-12, "token ({b}, {p}) was dropped: {moved}");
            }
        }
    }
}

#[test]
fn slots_fill_in_list_order_after_the_offset() {
    let experts = Tensor::from_slice(&[1i64, 0, 1, 1, 0, 1, 2]).to_kind(Kind::Int64);
    let active = Tensor::from_slice(&[true, true, false, true, true, true, true]);
    let offset = Tensor::from_slice(&[0i64, 1, 0]).to_kind(Kind::Int64);
    let got = slots(&experts, &active, 3, 3, &offset);
    let position: Vec<i64> = Vec::try_from(got.position.narrow(0, 0, 7)).unwrap();
    let keep: Vec<bool> = Vec::try_from(got.keep).unwrap();
    let counts: Vec<i64> = Vec::try_from(got.counts).unwrap();
    // Expert 1 starts at 1; the inactive assignment takes no place.
    assert_eq!(position[0], 1);
    assert_eq!(position[1], 0);
    assert_eq!(position[3], 2);
    assert_eq!(position[4], 1);
    assert_eq!(position[5], 3);
    assert_eq!(position[6], 0);
    assert_eq!(keep, [true, true, false, true, true, false, true]);
    assert_eq!(counts, [2, 4, 1]);
}

#[test]
fn capacity_dropping_stays_causal() {
    // Little capacity, so that many tokens are dropped; earlier positions still never
    // see a later token take their slot.
    let s = small(24, true);
    for name in ["switch", "moe-top2"] {
        let spec: VariantSpec = format!("{name}:capacity_factor=0.4:experts=4")
            .parse()
            .unwrap();
        let mut vs = nn::VarStore::new(Device::Cpu);
        vs.set_kind(Kind::Double);
        let layer = seeded(5, || {
            build_layer(&spec.normalized().unwrap(), &s, Scope::Block, vs.root()).unwrap()
        });
        let x = input(&s, 6);
        let (a, b, changed) = tch::no_grad(|| {
            let changed = x.copy();
            let _ = changed.narrow(1, 12, 12).fill_(3.0);
            (layer.forward(&x), layer.forward(&changed), changed)
        });
        let before = max_abs(&(a.narrow(1, 0, 12) - b.narrow(1, 0, 12)));
        assert!(before < 1e-12, "{name}: earlier outputs moved by {before}");
        assert!(max_abs(&(a.narrow(1, 12, 12) - b.narrow(1, 12, 12))) > 1e-6);
        // And tokens were in fact dropped: some output equals its residual.
        let h = residual(&vs, &s, &changed);
        let untouched = (b - h).abs().amax([2], false).lt(1e-12);
        let dropped = i64::try_from(untouched.sum(Kind::Int64)).unwrap();
        assert!(dropped > 0, "{name}: nothing dropped");
    }
}

#[test]
fn top2_gates_sum_to_one_over_two_different_experts() {
    let probs = seeded(7, || {
        Tensor::randn([50, 6], (Kind::Double, Device::Cpu)).softmax(-1, Kind::Double)
    });
    let (e1, e2, g1, g2) = moe_top2::top2(&probs);
    assert!(bool::try_from(e1.ne_tensor(&e2).all()).unwrap());
    assert!(max_abs(&(&g1 + &g2 - 1.0)) < 1e-12);
    // e1 is the argmax and e2 the best of the rest.
    let sorted = probs.sort(-1, true).1;
    assert!(bool::try_from(e1.eq_tensor(&sorted.select(1, 0)).all()).unwrap());
    assert!(bool::try_from(e2.eq_tensor(&sorted.select(1, 1)).all()).unwrap());
    assert!(bool::try_from(g1.ge_tensor(&g2).all()).unwrap());
}

#[test]
fn top2_block_adds_the_gated_pair_of_experts() {
    // With room for everything, a token's FFN output is g1 E1(z) + g2 E2(z), computed
    // here expert by expert from the block's weights.
    let s = small(9, false);
    let e = 4;
    let config = moe_top2::Config {
        experts: e,
        capacity_factor: e as f64,
        ..Default::default()
    };
    let (vs, moe) = top2_layer(config, &s, 8);
    let x = input(&s, 9);
    let h = residual(&vs, &s, &x);
    let d = s.d_model();
    let z = h.layer_norm(
        [d],
        Some(&get(&vs, "ln2.weight")),
        Some(&get(&vs, "ln2.bias")),
        1e-5,
        false,
    );
    let probs = z
        .matmul(&get(&vs, "router.weight").tr())
        .softmax(-1, Kind::Double);
    let (e1, e2, g1, g2) = moe_top2::top2(&probs.view([-1, e]));
    let (w1, b1, w2, b2) = (
        get(&vs, "experts.w1"),
        get(&vs, "experts.b1"),
        get(&vs, "experts.w2"),
        get(&vs, "experts.b2"),
    );
    let ffn = |row: &Tensor, i: i64| {
        ((row.matmul(&w1.get(i)) + b1.get(i).squeeze_dim(0)).gelu("none")).matmul(&w2.get(i))
            + b2.get(i).squeeze_dim(0)
    };
    let zf = z.view([-1, d]);
    let hf = h.view([-1, d]);
    let want: Vec<Tensor> = (0..zf.size()[0])
        .map(|r| {
            let row = zf.get(r);
            let i1 = i64::try_from(e1.get(r)).unwrap();
            let i2 = i64::try_from(e2.get(r)).unwrap();
            hf.get(r) + ffn(&row, i1) * g1.get(r) + ffn(&row, i2) * g2.get(r)
        })
        .collect();
    let want = Tensor::stack(&want, 0).view([s.batch, s.seq_len, d]);
    let err = rel_err(&moe.forward(&x), &want);
    assert!(err < 1e-12, "{err}");
}

#[test]
fn random_routing_drops_second_experts_in_proportion_to_their_gate() {
    let s = small(64, false);
    let probs = seeded(10, || {
        (Tensor::randn([s.batch * s.seq_len, 8], (Kind::Double, Device::Cpu)) * 2.0)
            .softmax(-1, Kind::Double)
    });
    let gate = moe_top2::Top2 {
        random_routing: true,
    };
    let t = s.batch * s.seq_len;
    let mut dispatched = 0.0;
    let rounds = 50;
    for seed in 0..rounds {
        let routed = seeded(seed, || gate.route(&probs, false));
        // First choices always go, second ones sometimes.
        let active = routed.active.to_kind(Kind::Double);
        assert_eq!(
            f64::try_from(active.narrow(0, 0, t).sum(Kind::Double)).unwrap(),
            t as f64
        );
        dispatched += f64::try_from(active.narrow(0, t, t).sum(Kind::Double)).unwrap();
    }
    let (_, _, _, g2) = moe_top2::top2(&probs);
    let expected = f64::try_from((g2 * 2.0).clamp_max(1.0).sum(Kind::Double)).unwrap();
    let rate = dispatched / rounds as f64;
    assert!(
        rate < t as f64 * 0.95,
        "some second choices dropped: {rate}"
    );
    assert!(
        (rate - expected).abs() < 0.05 * expected,
        "dispatched {rate} per round, expected {expected}"
    );
}

#[test]
fn balance_loss_is_alpha_when_uniform_and_grows_when_collapsed() {
    // The bare loss: 1 for uniform routing, E when everything goes to one expert.
    let (t, e) = (40, 4);
    let uniform = Tensor::full([t, e], 0.25, (Kind::Double, Device::Cpu));
    let spread = Tensor::arange(t, (Kind::Int64, Device::Cpu)).remainder(e);
    let loss = f64::try_from(balance_loss(&uniform, &spread)).unwrap();
    assert!((loss - 1.0).abs() < 1e-12, "{loss}");
    let onehot = Tensor::zeros([t, e], (Kind::Double, Device::Cpu));
    let _ = onehot.narrow(1, 0, 1).fill_(1.0);
    let all_first = Tensor::zeros([t], (Kind::Int64, Device::Cpu));
    let loss = f64::try_from(balance_loss(&onehot, &all_first)).unwrap();
    assert!((loss - e as f64).abs() < 1e-12, "{loss}");

    // In the block: a zero router gives exactly uniform probabilities, so alpha.
    let s = small(12, false);
    let alpha = 0.03;
    for experts in [2, 4] {
        let config = switch::Config {
            experts,
            alpha,
            ..Default::default()
        };
        let (vs, moe) = switch_layer(config, &s, 11);
        assert!(moe.aux_loss().is_none());
        set(
            &vs,
            "router.weight",
            &Tensor::zeros([experts, s.d_model()], (Kind::Double, Device::Cpu)),
        );
        let x = input(&s, 12);
        let (_, aux) = moe.forward_with_loss(&x);
        let aux = f64::try_from(aux).unwrap();
        assert!((aux - alpha).abs() < 1e-12, "uniform: {aux}");
        // Collapsed onto expert 0: close to alpha * E.
        collapse_to_expert_0(&vs, s.d_model(), experts);
        let _ = moe.forward(&x);
        let collapsed = f64::try_from(moe.aux_loss().unwrap()).unwrap();
        assert!(
            collapsed > 0.99 * alpha * experts as f64,
            "collapsed over {experts}: {collapsed}"
        );
        // Top-2's loss is the same form.
        let (vs2, top2) = top2_layer(
            moe_top2::Config {
                experts,
                alpha,
                ..Default::default()
            },
            &s,
            13,
        );
        collapse_to_expert_0(&vs2, s.d_model(), experts);
        let (_, aux) = top2.forward_with_loss(&x);
        assert!(f64::try_from(aux).unwrap() > 0.99 * alpha * experts as f64);
    }
}

#[test]
fn gradients_reach_the_router_and_the_routed_experts_only() {
    let s = small(10, true);
    let experts = 3;
    let config = switch::Config {
        experts,
        ..Default::default()
    };
    let (vs, moe) = switch_layer(config, &s, 14);
    // Everything to expert 0, with a router probability below 1 so that it carries a
    // gradient.
    collapse_to_expert_0(&vs, s.d_model(), experts);
    let w = get(&vs, "router.weight");
    set(&vs, "router.weight", &(w * 0.02));
    let x = input(&s, 15);
    let loss = moe.forward(&x).square().sum(Kind::Double);
    let names = ["router.weight", "experts.w1", "experts.b2"];
    let wrt: Vec<Tensor> = names.iter().map(|n| get(&vs, n)).collect();
    let grads = Tensor::run_backward(&[loss], &wrt, false, false);
    assert!(max_abs(&grads[0]) > 1e-8, "router has no gradient");
    for (g, name) in grads.iter().zip(names).skip(1) {
        assert!(
            max_abs(&g.get(0)) > 1e-8,
            "{name}: routed expert has no gradient"
        );
        for i in 1..experts {
            assert_eq!(
                max_abs(&g.get(i)),
                0.0,
                "{name}: idle expert {i} has a gradient"
            );
        }
    }
}

fn flops_and_params(spec: &str, s: &Shape) -> (u64, i64) {
    let vs = nn::VarStore::new(Device::Cpu);
    let spec: VariantSpec = spec.parse().unwrap();
    let l = build_layer(&spec.normalized().unwrap(), s, Scope::Block, vs.root()).unwrap();
    let params = vs
        .trainable_variables()
        .iter()
        .map(|t| t.numel() as i64)
        .sum();
    (l.flops().forward, params)
}

#[test]
fn flops_follow_the_routed_tokens_while_parameters_follow_the_experts() {
    // T = 128 tokens: E x capacity = 160 rows for every E below (capacity factor 1.25).
    let s = small(64, false);
    let (t, d) = ((s.batch * s.seq_len) as u64, s.d_model() as u64);
    let (dense, dense_params) = flops_and_params("sdpa", &s);
    let ffn_row = 2 * (2 * d * 4 * d);
    // Each expert is a 4x FFN (8 d^2 + 5 d) plus its router row (d).
    let expert_params = (8 * d * d + 5 * d) as i64;
    for e in [2u64, 4, 8, 16] {
        let (f, p) = flops_and_params(&format!("switch:experts={e}"), &s);
        // Dense block minus its T FFN rows, plus 1.25 T rows and the router.
        assert_eq!(
            f,
            dense - t * ffn_row + 160 * ffn_row + 2 * t * d * e,
            "E={e}"
        );
        let want = dense_params - expert_params + e as i64 * (expert_params + d as i64);
        assert_eq!(p, want, "E={e}");
        // Top-2: capacity factor 2 gives 2 T rows, the router the same.
        let (f2, p2) = flops_and_params(&format!("moe-top2:experts={e}"), &s);
        assert_eq!(
            f2,
            dense - t * ffn_row + 2 * t * ffn_row + 2 * t * d * e,
            "E={e}"
        );
        assert_eq!(p2, p);
    }
}

#[test]
fn invalid_configurations_name_what_is_wrong() {
    let s = small(16, false);
    let cases = [
        ("switch:experts=0", "experts must be at least 1, got 0"),
        (
            "switch:capacity_factor=0",
            "capacity_factor must be a positive number, got 0",
        ),
        (
            "switch:capacity_factor=-1.5",
            "capacity_factor must be a positive number, got -1.5",
        ),
        ("switch:ffn_mult=0", "ffn_mult must be at least 1, got 0"),
        (
            "switch:alpha=-1",
            "alpha must be a non-negative number, got -1",
        ),
        ("moe-top2:experts=1", "experts must be at least 2"),
        ("moe-top2:experts=0", "experts must be at least 1, got 0"),
        (
            "moe-top2:capacity_factor=0",
            "capacity_factor must be a positive number",
        ),
        ("moe-top2:random_routing=3", "invalid type"),
        ("switch:top_k=2", "unknown field `top_k`"),
    ];
    for (spec, needle) in cases {
        let vs = nn::VarStore::new(Device::Cpu);
        let spec: VariantSpec = spec.parse().unwrap();
        let msg = match spec
            .normalized()
            .and_then(|n| build_layer(&n, &s, Scope::Block, vs.root()))
        {
            Ok(_) => panic!("{spec:?} should not build"),
            Err(e) => e.to_string(),
        };
        assert!(msg.contains(needle), "{spec:?}: `{msg}` lacks `{needle}`");
    }
    // Block scope only: they replace the block's FFN.
    let vs = nn::VarStore::new(Device::Cpu);
    let err = build_layer(&VariantSpec::new("switch"), &s, Scope::Attention, vs.root())
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("cannot run at scope `attention`"), "{err}");
}

#[test]
fn decoding_keeps_the_experts_fill_across_steps() {
    // Small capacity: generated tokens find experts filled by the context, as in the
    // causal forward.
    let s = small(20, true);
    // Half the tokens fit (top-2 makes two assignments per token).
    for (name, params) in [
        ("switch", "capacity_factor=0.5:experts=2"),
        ("moe-top2", "capacity_factor=1.0:experts=4"),
    ] {
        let spec: VariantSpec = format!("{name}:{params}").parse().unwrap();
        let mut vs = nn::VarStore::new(Device::Cpu);
        vs.set_kind(Kind::Double);
        let layer = seeded(16, || {
            build_layer(&spec.normalized().unwrap(), &s, Scope::Block, vs.root()).unwrap()
        });
        let x = input(&s, 17);
        tch::no_grad(|| {
            let full = layer.forward(&x);
            let h = residual(&vs, &s, &x);
            let mut state = layer.decoder(&x.narrow(1, 0, 8), 12).unwrap();
            // Twice: `reset` must also return the fill counts to the context's.
            for round in 0..2 {
                let mut dropped = 0;
                for t in 8..20 {
                    let y = state.step(&x.narrow(1, t, 1));
                    let err = max_abs(&(&y - full.narrow(1, t, 1)));
                    assert!(err < 1e-10, "{name} round {round}: token {t} off by {err}");
                    let unchanged = (&y - h.narrow(1, t, 1)).abs().amax([2], false).lt(1e-12);
                    dropped += i64::try_from(unchanged.sum(Kind::Int64)).unwrap();
                }
                // Some generated tokens got a slot and some did not.
                assert!(dropped > 0, "{name}: no generated token was dropped");
                assert!(dropped < 24, "{name}: every generated token was dropped");
                state.reset();
            }
        });
    }
}
