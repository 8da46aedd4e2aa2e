//! Transformer-XL and the Compressive Transformer against dense float64 references and
//! their limits; the Funnel-Transformer's shapes, stages and exact limit; their errors.

mod common;

use std::collections::HashMap;

use common::*;
use tch::{nn, Device, Kind, Tensor};
use xarena_variants::downsampling::funnel::{self, Funnel};
use xarena_variants::recurrence::compressive::{self, Compressive};
use xarena_variants::registry::LayerVariant;
use xarena_variants::{build_layer, Layer, Scope, Shape, VariantSpec};

const F64: (Kind, Device) = (Kind::Double, Device::Cpu);

fn shape_of(n: i64, causal: bool) -> Shape {
    Shape {
        batch: 2,
        seq_len: n,
        heads: 2,
        head_dim: 8,
        causal,
    }
}

/// A float64 layer from a spec, every parameter redrawn (so that the biases u, v and the
/// norms matter), and a float64 input.
fn build(spec: &str, n: i64, scope: Scope, seed: i64) -> (Box<dyn Layer>, nn::VarStore, Tensor) {
    let s = shape_of(n, true);
    let mut vs = nn::VarStore::new(Device::Cpu);
    vs.set_kind(Kind::Double);
    let spec: VariantSpec = spec.parse().unwrap();
    let layer = build_layer(&spec.normalized().unwrap(), &s, scope, vs.root()).unwrap();
    let x = seeded(seed, || {
        randomize(&vs);
        Tensor::randn([s.batch, n, s.d_model()], F64)
    });
    (layer, vs, x)
}

fn randomize(vs: &nn::VarStore) {
    tch::no_grad(|| {
        for (_, mut t) in vs.variables() {
            let r = t.randn_like() * 0.3;
            t.copy_(&r);
        }
    });
}

fn params(vs: &nn::VarStore) -> HashMap<String, Tensor> {
    vs.variables()
        .into_iter()
        // tch joins path components with dots.
        .map(|(k, v)| (k.replace('.', "/"), v.detach().to_kind(Kind::Double)))
        .collect()
}

/// Sinusoids of `dist` (`[n, n]`): sin over the first half of the width, cos over the
/// second, frequencies 10000^(-2k/d).
fn sinusoid(dist: &Tensor, d: i64) -> Tensor {
    let k = Tensor::arange((d + 1) / 2, F64);
    let inv = (k * (-2.0 * 10000f64.ln() / d as f64)).exp();
    let angles = dist.unsqueeze(-1) * inv;
    Tensor::cat(&[angles.sin(), angles.cos()], -1).narrow(-1, 0, d)
}

/// One Transformer-XL layer on the whole sequence at once: every query against every key
/// it may see (`visible`, `[n, n]`), scores built pair by pair from the paper's formula
/// (q_i + u).k_j + (q_i + v).W_r R_{i-j}, then the pre-norm residual and FFN.
fn txl_layer_reference(
    p: &HashMap<String, Tensor>,
    name: &str,
    x: &Tensor,
    visible: &Tensor,
) -> Tensor {
    let w = |s: &str| p[&format!("{name}/{s}")].shallow_clone();
    let (b, n, d) = x.size3().unwrap();
    let (h, dh) = (2, 8);
    let ln = |x: &Tensor, which: &str| {
        x.layer_norm(
            [d],
            Some(w(&format!("{which}/weight"))),
            Some(w(&format!("{which}/bias"))),
            1e-5,
            false,
        )
    };
    let heads = |t: Tensor| t.view([b, n, h, dh]).transpose(1, 2);
    let hx = ln(x, "ln1");
    let q = heads(hx.matmul(&w("q/weight").tr()));
    let kv = hx.matmul(&w("kv/weight").tr());
    let k = heads(kv.narrow(2, 0, d));
    let v = heads(kv.narrow(2, d, d));
    let i = Tensor::arange(n, F64).view([n, 1]);
    let j = Tensor::arange(n, F64).view([1, n]);
    let dist = (i - j).clamp_min(0.0);
    let r = sinusoid(&dist, d)
        .matmul(&w("r/weight").tr())
        .view([n, n, h, dh]);
    let u = w("u").view([1, h, 1, dh]);
    let vb = w("v").view([1, h, 1, dh]);
    let content = (&q + u).matmul(&k.transpose(-2, -1));
    let position = Tensor::einsum("bhid,ijhd->bhij", &[&q + vb, r], None::<i64>);
    let scores = ((content + position) / (dh as f64).sqrt())
        .masked_fill(&visible.logical_not(), f64::NEG_INFINITY);
    let attn = scores
        .softmax(-1, Kind::Double)
        .matmul(&v)
        .transpose(1, 2)
        .reshape([b, n, d])
        .matmul(&w("out/weight").tr());
    let hid = x + attn;
    let f = (ln(&hid, "ln2").matmul(&w("ff1/weight").tr()) + w("ff1/bias"))
        .gelu("none")
        .matmul(&w("ff2/weight").tr())
        + w("ff2/bias");
    hid + f
}

/// Which keys token t sees: its own segment up to itself and the `memory` tokens before
/// the segment.
fn txl_visible(n: i64, segment: i64, memory: i64) -> Tensor {
    let rows: Vec<Tensor> = (0..n)
        .map(|t| {
            let lo = (t / segment * segment - memory).max(0);
            let j = Tensor::arange(n, (Kind::Int64, Device::Cpu));
            j.ge(lo).logical_and(&j.le(t))
        })
        .collect();
    Tensor::stack(&rows, 0)
}

fn txl_reference(p: &HashMap<String, Tensor>, layers: i64, x: &Tensor, visible: &Tensor) -> Tensor {
    (0..layers).fold(x.shallow_clone(), |h, i| {
        txl_layer_reference(p, &format!("layer{i}"), &h, visible)
    })
}

#[test]
fn transformer_xl_equals_the_dense_relative_attention_reference() {
    let n = 23;
    // memory >= N: full causal relative attention over every earlier token; shorter
    // memories: the same, with keys before the memory hidden; memory 0: each segment
    // alone. Segments that divide N and that do not.
    for (segment, memory) in [(5, 100), (4, 23), (5, 3), (6, 7), (4, 0), (23, 0), (1, 2)] {
        for (scope, layers) in [(Scope::Block, 1), (Scope::Model, 2)] {
            let spec = format!("transformer-xl:segment={segment}:memory={memory}:layers={layers}");
            let (layer, vs, x) = build(&spec, n, scope, 1);
            let got = tch::no_grad(|| layer.forward(&x));
            let want = txl_reference(&params(&vs), layers, &x, &txl_visible(n, segment, memory));
            let err = rel_err(&got, &want);
            assert!(err < 1e-10, "{spec} at {scope}: {err}");
        }
    }
}

#[test]
fn the_reference_is_sensitive_to_the_memory() {
    // So that the test above can fail: a memory of 3 is not a memory of 100.
    let (layer, vs, x) = build("transformer-xl:segment=5:memory=3", 23, Scope::Block, 1);
    let got = tch::no_grad(|| layer.forward(&x));
    let wrong = txl_reference(&params(&vs), 1, &x, &txl_visible(23, 5, 100));
    assert!(rel_err(&got, &wrong) > 1e-3);
}

#[test]
fn transformer_xl_without_memory_runs_segments_independently() {
    let (segment, n) = (6, 22);
    let (layer, _vs, x) = build("transformer-xl:segment=6:memory=0", n, Scope::Model, 2);
    tch::no_grad(|| {
        let whole = layer.forward(&x);
        let parts: Vec<Tensor> = (0..n)
            .step_by(segment as usize)
            .map(|t| layer.forward(&x.narrow(1, t, segment.min(n - t))))
            .collect();
        let err = rel_err(&whole, &Tensor::cat(&parts, 1));
        assert!(err < 1e-12, "{err}");
    });
}

#[test]
fn the_memory_is_detached() {
    // One layer: an output of segment 1 depends on segment 0's tokens through the memory
    // in value, never in gradient.
    let (layer, _vs, x) = build("transformer-xl:segment=5:memory=5", 15, Scope::Block, 3);
    let x = x.set_requires_grad(true);
    let y = layer.forward(&x);
    y.narrow(1, 5, 5).sum(Kind::Double).backward();
    let g = x.grad();
    let before = f64::try_from(g.narrow(1, 0, 5).abs().max()).unwrap();
    let own = f64::try_from(g.narrow(1, 5, 5).abs().max()).unwrap();
    assert_eq!(before, 0.0);
    assert!(own > 0.0);
    // ...while the value does depend on it.
    let changed = x.detach().copy();
    let _ = changed.narrow(1, 0, 5).fill_(0.5);
    let moved = tch::no_grad(|| layer.forward(&changed).narrow(1, 5, 5));
    assert!(rel_err(&moved, &y.detach().narrow(1, 5, 5)) > 1e-6);
}

/// Steps after `context` tokens reproduce the forward's rows; reset returns.
fn check_decoder(spec: &str, scope: Scope, context: i64, steps: i64) {
    let n = context + steps;
    let (layer, _vs, x) = build(spec, n, scope, 4);
    tch::no_grad(|| {
        let full = layer.forward(&x);
        let mut dec = layer.decoder(&x.narrow(1, 0, context), steps).unwrap();
        let bytes = dec.state_bytes();
        for t in context..n {
            let y = dec.step(&x.narrow(1, t, 1));
            let err = rel_err(&y, &full.narrow(1, t, 1));
            assert!(
                err < 1e-10,
                "{spec} at {scope}, context {context}: token {t} off by {err}"
            );
        }
        assert_eq!(
            dec.state_bytes(),
            bytes,
            "{spec}: the state is a fixed buffer"
        );
        dec.reset();
        let again = dec.step(&x.narrow(1, context, 1));
        assert!(
            rel_err(&again, &full.narrow(1, context, 1)) < 1e-10,
            "{spec}: reset"
        );
    });
}

#[test]
fn decoders_equal_the_forward_across_segment_boundaries() {
    let specs = [
        "transformer-xl:segment=4:memory=0",
        "transformer-xl:segment=4:memory=9",
        "transformer-xl:segment=5:memory=5",
        "compressive:segment=4:memory=4:compressed=2:compression=2",
        "compressive:segment=6:memory=3:compressed=5:compression=4",
        "compressive:segment=3:memory=0:compressed=1:compression=2",
        "compressive:segment=4:memory=4:compressed=0",
    ];
    for spec in specs {
        for scope in [Scope::Block, Scope::Model] {
            // Contexts ending on a segment boundary and inside a segment.
            for context in [12, 13] {
                check_decoder(spec, scope, context, 11);
            }
        }
    }
}

#[test]
fn compressive_without_compressed_memory_is_transformer_xl() {
    for scope in [Scope::Block, Scope::Model] {
        let (txl, txl_vs, x) = build("transformer-xl:segment=5:memory=4", 23, scope, 5);
        let (comp, mut comp_vs, _) =
            build("compressive:segment=5:memory=4:compressed=0", 23, scope, 6);
        comp_vs.copy(&txl_vs).unwrap();
        let err = tch::no_grad(|| rel_err(&comp.forward(&x), &txl.forward(&x)));
        assert!(err < 1e-12, "{scope}: {err}");
    }
}

#[test]
fn compressed_memory_changes_only_segments_after_a_compression() {
    // segment 4, memory 4, rate 2: tokens are first evicted for segment 2 (tokens 8..).
    let (txl, txl_vs, x) = build("transformer-xl:segment=4:memory=4", 20, Scope::Model, 7);
    let spec = "compressive:segment=4:memory=4:compressed=3:compression=2";
    let (comp, comp_vs, _) = build(spec, 20, Scope::Model, 8);
    // Same attention weights; the compressors keep their random values.
    tch::no_grad(|| {
        for (name, t) in txl_vs.variables() {
            comp_vs.variables()[&name].shallow_clone().copy_(&t);
        }
    });
    let (a, b) = tch::no_grad(|| (comp.forward(&x), txl.forward(&x)));
    assert!(rel_err(&a.narrow(1, 0, 8), &b.narrow(1, 0, 8)) < 1e-12);
    assert!(rel_err(&a.narrow(1, 8, 12), &b.narrow(1, 8, 12)) > 1e-4);
}

fn compressive(config: compressive::Config, n: i64) -> (Compressive, nn::VarStore) {
    let mut vs = nn::VarStore::new(Device::Cpu);
    vs.set_kind(Kind::Double);
    let c = Compressive::new(config, &shape_of(n, true), Scope::Model, vs.root()).unwrap();
    seeded(9, || randomize(&vs));
    (c, vs)
}

#[test]
fn compressed_memory_has_the_expected_length() {
    let config = |segment, memory, compressed, compression| compressive::Config {
        segment,
        memory: Some(memory),
        compressed: Some(compressed),
        compression,
        layers: 1,
    };
    // Slots = min(compressed, floor(evicted / rate)), evicted = start - memory.
    let cases = [
        (
            config(6, 6, 4, 3),
            vec![(0, 0), (6, 0), (12, 2), (18, 4), (24, 4), (60, 4)],
        ),
        (config(6, 6, 100, 3), vec![(12, 2), (18, 4), (60, 18)]),
        // A remainder waits: 6 evicted tokens at rate 4 make one slot.
        (config(6, 6, 100, 4), vec![(12, 1), (18, 3), (24, 4)]),
        (config(5, 0, 2, 2), vec![(0, 0), (5, 2), (10, 2)]),
    ];
    for (config, expected) in cases {
        let (c, _vs) = compressive(config.clone(), 64);
        for (start, slots) in expected {
            assert_eq!(c.compressed_len(start), slots, "{config:?} at {start}");
        }
    }
}

#[test]
fn reconstruction_loss_trains_the_compressor_only() {
    let config = compressive::Config {
        segment: 4,
        memory: Some(4),
        compressed: Some(2),
        compression: 2,
        layers: 2,
    };
    let (c, vs) = compressive(config, 20);
    let x = seeded(10, || Tensor::randn([2, 20, 16], F64));
    // Nothing is evicted before token 8, so a short input has no loss.
    assert!(c.reconstruction_loss(&x.narrow(1, 0, 8)).is_none());
    let loss = c.reconstruction_loss(&x).unwrap();
    assert!(f64::try_from(&loss).unwrap() > 0.0);
    let vars = vs.variables();
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    let wrt: Vec<Tensor> = names.iter().map(|n| vars[*n].shallow_clone()).collect();
    let grads = Tensor::run_backward(&[loss], &wrt, false, false);
    let mut compressors = 0;
    for (name, g) in names.iter().zip(grads) {
        if name.contains("compressor") {
            compressors += 1;
            assert!(g.defined(), "{name}: no gradient");
            let norm = f64::try_from(g.norm()).unwrap();
            assert!(norm.is_finite() && norm > 0.0, "{name}: gradient {norm}");
        } else {
            // The attention weights and the hidden states are detached.
            assert!(
                !g.defined() || f64::try_from(g.abs().max()).unwrap() == 0.0,
                "{name} gets a gradient from the reconstruction loss"
            );
        }
    }
    assert_eq!(compressors, 4, "weight and bias of two layers' compressors");
}

fn funnel_layer(spec: &str, n: i64, seed: i64) -> (Box<dyn Layer>, nn::VarStore, Tensor) {
    let s = shape_of(n, false);
    let mut vs = nn::VarStore::new(Device::Cpu);
    vs.set_kind(Kind::Double);
    let spec: VariantSpec = spec.parse().unwrap();
    let layer = build_layer(&spec.normalized().unwrap(), &s, Scope::Model, vs.root()).unwrap();
    let x = seeded(seed, || {
        randomize(&vs);
        Tensor::randn([s.batch, n, s.d_model()], F64)
    });
    (layer, vs, x)
}

#[test]
fn funnel_keeps_the_shape_and_halves_its_stages() {
    for n in [32, 45, 7, 1] {
        let (layer, vs, x) = funnel_layer("funnel", n, 11);
        let x = x.set_requires_grad(true);
        let y = layer.forward(&x);
        assert_eq!(y.size(), x.size(), "n={n}");
        // Gradients reach the input and every parameter.
        y.square().sum(Kind::Double).backward();
        assert!(f64::try_from(x.grad().norm()).unwrap() > 0.0);
        for (name, t) in vs.variables() {
            let g = t.grad();
            assert!(g.defined(), "n={n}: {name} has no gradient");
            assert!(bool::try_from(g.isfinite().all()).unwrap(), "{name}");
        }
        // The stages' lengths: n, ceil(n / 2), ceil(n / 4).
        let mut vs2 = nn::VarStore::new(Device::Cpu);
        vs2.set_kind(Kind::Double);
        let f = Funnel::new(
            Default::default(),
            &shape_of(n, false),
            Scope::Model,
            vs2.root(),
        )
        .unwrap();
        let lengths: Vec<i64> = f.encode(&x.detach()).iter().map(|t| t.size()[1]).collect();
        assert_eq!(lengths, funnel::stage_lengths(n, 3));
        let want = [n, (n + 1) / 2, (n + 3) / 4];
        assert_eq!(lengths, want, "n={n}");
    }
}

#[test]
fn pooling_averages_pairs_and_keeps_an_odd_last_token() {
    let x = seeded(12, || Tensor::randn([2, 5, 4], F64));
    let p = funnel::pool(&x);
    assert_eq!(p.size(), [2, 3, 4]);
    let pair = (x.narrow(1, 2, 1) + x.narrow(1, 3, 1)) * 0.5;
    assert!(rel_err(&p.narrow(1, 1, 1), &pair) < 1e-15);
    assert!(rel_err(&p.narrow(1, 2, 1), &x.narrow(1, 4, 1)) < 1e-15);
}

#[test]
fn pool_query_block_attends_from_pooled_queries_to_all_tokens() {
    let n = 13;
    let mut vs = nn::VarStore::new(Device::Cpu);
    vs.set_kind(Kind::Double);
    let config = funnel::Config {
        blocks: vec![1, 1],
        decoder_blocks: 0,
    };
    let f = Funnel::new(config, &shape_of(n, false), Scope::Model, vs.root()).unwrap();
    let x = seeded(13, || {
        randomize(&vs);
        Tensor::randn([2, n, 16], F64)
    });
    let p = params(&vs);
    let stages = tch::no_grad(|| f.encode(&x));
    // The pool-query-only block by hand: q from LN(pool(h)), k and v from LN(h).
    let w = |s: &str| p[&format!("stage1/block0/{s}")].shallow_clone();
    let h = &stages[0];
    let ln = |t: &Tensor, which: &str| {
        t.layer_norm(
            [16],
            Some(w(&format!("{which}/weight"))),
            Some(w(&format!("{which}/bias"))),
            1e-5,
            false,
        )
    };
    let lin = |t: &Tensor, which: &str| {
        t.matmul(&w(&format!("{which}/weight")).tr()) + w(&format!("{which}/bias"))
    };
    let heads = |t: Tensor| {
        let (b, m, _) = t.size3().unwrap();
        t.view([b, m, 2, 8]).transpose(1, 2)
    };
    let pooled = funnel::pool(h);
    let q = heads(lin(&ln(&pooled, "ln1"), "q"));
    let kv = lin(&ln(h, "ln1"), "kv");
    let (k, v) = (heads(kv.narrow(2, 0, 16)), heads(kv.narrow(2, 16, 16)));
    let attn = reference(&q, &k, &v, false)
        .transpose(1, 2)
        .reshape([2, 7, 16]);
    let hid = &pooled + lin(&attn, "out");
    let want = &hid + lin(&lin(&ln(&hid, "ln2"), "ff1").gelu("none"), "ff2");
    let err = rel_err(&stages[1], &want);
    assert!(err < 1e-12, "{err}");
}

#[test]
fn one_stage_funnel_is_a_stack_of_sdpa_blocks() {
    let n = 19;
    let (funnel, fvs, x) = funnel_layer("funnel:blocks=[2]:decoder_blocks=0", n, 14);
    let s = shape_of(n, false);
    let blocks: Vec<(Box<dyn Layer>, nn::VarStore)> = (0..2)
        .map(|j| {
            let mut vs = nn::VarStore::new(Device::Cpu);
            vs.set_kind(Kind::Double);
            let l = build_layer(&VariantSpec::new("sdpa"), &s, Scope::Block, vs.root()).unwrap();
            let fvars = fvs.variables();
            tch::no_grad(|| {
                for (name, mut t) in vs.variables() {
                    t.copy_(&fvars[&format!("stage0.block{j}.{name}")]);
                }
            });
            (l, vs)
        })
        .collect();
    tch::no_grad(|| {
        let want = blocks
            .iter()
            .fold(x.shallow_clone(), |h, (l, _)| l.forward(&h));
        let err = rel_err(&funnel.forward(&x), &want);
        assert!(err < 1e-12, "{err}");
    });
}

fn flops(spec: &str, n: i64, causal: bool, scope: Scope) -> u64 {
    let vs = nn::VarStore::new(Device::Cpu);
    let spec: VariantSpec = spec.parse().unwrap();
    build_layer(
        &spec.normalized().unwrap(),
        &shape_of(n, causal),
        scope,
        vs.root(),
    )
    .unwrap()
    .flops()
    .forward
}

#[test]
fn flop_counts_follow_the_structure() {
    // Transformer-XL: once the memory is full, every further segment costs the same.
    let txl = |n| flops("transformer-xl:segment=8:memory=8", n, true, Scope::Model);
    assert_eq!(txl(32) - txl(24), txl(24) - txl(16));
    // The first segment has no memory: the second costs more (the table, once per
    // layer, is smaller than the memory's keys and scores here).
    let one = |n| flops("transformer-xl:segment=8:memory=8", n, true, Scope::Block);
    assert!(one(16) - one(8) > one(8), "{} {}", one(8), one(16));
    // Without memory, segments are independent (the relative table is once per layer).
    let none = |n| flops("transformer-xl:segment=8:memory=0", n, true, Scope::Block);
    assert_eq!(none(32) - none(24), none(16) - none(8));
    // Compressed memory adds keys and the compression.
    let comp = flops("compressive:segment=8:memory=8", 64, true, Scope::Model);
    let plain = flops(
        "compressive:segment=8:memory=8:compressed=0",
        64,
        true,
        Scope::Model,
    );
    assert!(comp > plain);
    assert_eq!(plain, txl(64));
    // Funnel: one stage without decoder is two sdpa blocks; pooling saves work.
    let sdpa = flops("sdpa", 64, false, Scope::Block);
    let one = flops(
        "funnel:blocks=[2]:decoder_blocks=0",
        64,
        false,
        Scope::Model,
    );
    assert_eq!(one, 2 * sdpa);
    let pooled = flops(
        "funnel:blocks=[2,2,2]:decoder_blocks=0",
        64,
        false,
        Scope::Model,
    );
    let flat = flops(
        "funnel:blocks=[6]:decoder_blocks=0",
        64,
        false,
        Scope::Model,
    );
    // About (2 + 2/2 + 2/4) / 6 of the work (quadratic terms shrink faster, the
    // pool-query blocks' keys stay at the longer length).
    assert!(pooled * 5 < flat * 3, "{pooled} vs {flat}");
    assert!(pooled * 2 > flat, "{pooled} vs {flat}");
}

fn error(spec: &str, causal: bool, scope: Scope) -> String {
    let vs = nn::VarStore::new(Device::Cpu);
    let spec = match spec.parse::<VariantSpec>().and_then(|s| s.normalized()) {
        Ok(s) => s,
        Err(e) => return e.to_string(),
    };
    match build_layer(&spec, &shape_of(16, causal), scope, vs.root()) {
        Ok(_) => panic!("{spec:?} should not build"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn invalid_configurations_name_what_is_wrong() {
    let (b, m) = (Scope::Block, Scope::Model);
    let cases = [
        (
            "transformer-xl:segment=0",
            true,
            b,
            "segment must be at least 1, got 0",
        ),
        (
            "transformer-xl:memory=-1",
            true,
            b,
            "memory must be at least 0, got -1",
        ),
        (
            "transformer-xl:layers=0",
            true,
            m,
            "layers must be at least 1, got 0",
        ),
        ("transformer-xl", false, b, "causal language model"),
        (
            "transformer-xl",
            true,
            Scope::Attention,
            "cannot run at scope `attention`",
        ),
        (
            "compressive:compression=0",
            true,
            b,
            "compression must be at least 1, got 0",
        ),
        (
            "compressive:compressed=-2",
            true,
            b,
            "compressed must be at least 0, got -2",
        ),
        (
            "compressive:segment=0",
            true,
            m,
            "segment must be at least 1",
        ),
        ("compressive", false, m, "causal language model"),
        (
            "funnel:blocks=[]",
            false,
            m,
            "blocks must list at least one stage",
        ),
        (
            "funnel:blocks=[2,0]",
            false,
            m,
            "blocks[1] must be at least 1, got 0",
        ),
        (
            "funnel:decoder_blocks=-1",
            false,
            m,
            "decoder_blocks must be at least 0, got -1",
        ),
        ("funnel", true, m, "does not support causal"),
        ("funnel", false, b, "cannot run at scope `block`"),
    ];
    for (spec, causal, scope, needle) in cases {
        let msg = error(spec, causal, scope);
        assert!(msg.contains(needle), "{spec}: `{msg}` lacks `{needle}`");
    }
}
