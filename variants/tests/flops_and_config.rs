//! FLOP counts against closed forms, and configuration errors.

use tch::{nn, Device};
use xarena_variants::{build_layer, registry, Scope, Shape, VariantError, VariantSpec};

fn shape(causal: bool) -> Shape {
    Shape {
        batch: 3,
        seq_len: 100,
        heads: 4,
        head_dim: 8,
        causal,
    }
}

fn layer_flops(spec: &str, s: &Shape, scope: Scope) -> (u64, u64) {
    let vs = nn::VarStore::new(Device::Cpu);
    let spec: VariantSpec = spec.parse().unwrap();
    let l = build_layer(&spec.normalized().unwrap(), s, scope, vs.root()).unwrap();
    let f = l.flops();
    (f.forward, f.train())
}

#[test]
fn vanilla_flops_equal_the_closed_form() {
    for causal in [false, true] {
        let s = shape(causal);
        let (b, n, h, dh) = (3u64, 100u64, 4u64, 8u64);
        let d = h * dh;
        // Q, K, V and output projections: 4 products of (n x d) by (d x d).
        let projections = 2 * b * n * d * (4 * d);
        // QK^T and AV, per head: two products of n x n x dh; the masked product is dense.
        let attention = 2 * (2 * b * h * n * n * dh);
        let (fwd, train) = layer_flops("vanilla", &s, Scope::Attention);
        assert_eq!(fwd, projections + attention);
        assert_eq!(train, 3 * (projections + attention));
        // The block adds the 4x FFN: two products of n x d x 4d.
        let ffn = 2 * (2 * b * n * d * 4 * d);
        assert_eq!(
            layer_flops("vanilla", &s, Scope::Block).0,
            projections + attention + ffn
        );
    }
}

#[test]
fn sparse_and_low_rank_counts_follow_their_budget() {
    let s = shape(false);
    let (vanilla, _) = layer_flops("vanilla", &s, Scope::Attention);
    // Below N, the budgets do less work than exact attention...
    for spec in ["local:window=8", "linformer:k=16", "performer:features=16"] {
        assert!(
            layer_flops(spec, &s, Scope::Attention).0 < vanilla,
            "{spec}"
        );
    }
    // ...and a larger budget costs more.
    assert!(
        layer_flops("local:window=4", &s, Scope::Attention).0
            < layer_flops("local:window=16", &s, Scope::Attention).0
    );
    assert!(
        layer_flops("linformer:k=8", &s, Scope::Attention).0
            < layer_flops("linformer:k=32", &s, Scope::Attention).0
    );
    // The fused causal kernel is credited with the lower triangle only.
    let (sdpa_causal, _) = layer_flops("sdpa", &shape(true), Scope::Attention);
    let (sdpa_full, _) = layer_flops("sdpa", &s, Scope::Attention);
    assert!(sdpa_causal < sdpa_full);
}

/// The attention core's train FLOPs: the layer's minus its projections (forward and the
/// default 2x backward).
fn core_train(spec: &str, s: &Shape) -> (u64, u64) {
    let (fwd, train) = layer_flops(spec, s, Scope::Attention);
    let (b, n, d) = (s.batch as u64, s.seq_len as u64, s.d_model() as u64);
    let projections = 2 * b * n * d * (4 * d);
    (fwd - projections, train - 3 * projections)
}

#[test]
fn constant_operands_have_no_second_gradient() {
    for causal in [false, true] {
        let s = shape(causal);
        let (bh, n, d) = (12u64, 100u64, 8u64);
        // Performer: the two feature projections (n x d x m) against a fixed matrix.
        let m = 16;
        let (fwd, train) = core_train(&format!("performer:features={m}"), &s);
        let features = 2 * (2 * bh * n * d * m);
        assert_eq!(train, 3 * fwd - features, "performer causal={causal}");
        // The over-count was 4 B H N d m, as the issue reports.
        assert_eq!(features, 4 * bh * n * d * m);

        // Reformer: hashing (np x d x r nb/2) feeds an argmax, no backward at all.
        let (fwd, train) = core_train("reformer:bucket_size=16:rounds=2", &s);
        let (np, nb) = (112u64, 8u64); // 7 chunks of 16; 7 buckets, rounded up to even
        let hashing = 2 * bh * np * d * (2 * nb / 2);
        let chunks = 2 * (2 * bh * 2 * np * d * 32);
        assert_eq!(fwd, hashing + chunks, "reformer causal={causal}");
        assert_eq!(train, hashing + 3 * chunks, "reformer causal={causal}");

        // Routing: 10 clusters of 10; routing feeds top-k indices, no backward.
        let (fwd, train) = core_train("routing", &s);
        let (k, w) = (10u64, 10u64);
        let routing = 2 * (2 * bh * n * d * k);
        let attention = 2 * (2 * bh * k * w * d * w);
        assert_eq!(fwd, routing + attention, "routing causal={causal}");
        assert_eq!(train, routing + 3 * attention, "routing causal={causal}");
    }
    // Synthesizer: fixed random logits leave V's gradient only; trainable ones both.
    let s = shape(false);
    let (bh, h, n, d, k) = (12u64, 4u64, 100u64, 8u64, 8u64);
    let apply = 2 * bh * n * n * d;
    let factor = 2 * h * n * k * n;
    for (spec, train) in [
        ("synthesizer:mode=random", 3 * apply),
        ("synthesizer:mode=random:trainable=false", 2 * apply),
        (
            "synthesizer:mode=factorized-random:rank=8",
            3 * (apply + factor),
        ),
        (
            "synthesizer:mode=factorized-random:rank=8:trainable=false",
            2 * apply + factor,
        ),
    ] {
        assert_eq!(core_train(spec, &s).1, train, "{spec}");
    }
}

fn build_error(spec: &str, causal: bool) -> VariantError {
    let vs = nn::VarStore::new(Device::Cpu);
    let spec: VariantSpec = match spec.parse() {
        Ok(s) => s,
        Err(e) => return e,
    };
    let spec = match spec.normalized() {
        Ok(s) => s,
        Err(e) => return e,
    };
    match build_layer(&spec, &shape(causal), Scope::Attention, vs.root()) {
        Ok(_) => panic!("{spec:?} should not build"),
        Err(e) => e,
    }
}

#[test]
fn invalid_configurations_name_what_is_wrong() {
    let cases = [
        ("local:window=0", false, "window must be at least 1"),
        ("linformer:k=0", false, "k must be at least 1"),
        ("performer:features=0", false, "features must be at least 1"),
        ("performer:chunk=0", true, "chunk must be at least 1"),
        ("local:windw=3", false, "unknown field `windw`"),
        ("local:window=big", false, "invalid type"),
        ("local:window", false, "not key=value"),
        ("nosuch", false, "unknown variant `nosuch`"),
        ("linformer", true, "does not support causal"),
    ];
    for (spec, causal, needle) in cases {
        let msg = build_error(spec, causal).to_string();
        assert!(msg.contains(needle), "{spec}: `{msg}` lacks `{needle}`");
    }
}

#[test]
fn registry_names_are_unique_and_metadata_complete() {
    let entries = registry();
    let mut names: Vec<_> = entries.iter().map(|e| e.info.name).collect();
    names.sort();
    names.dedup();
    assert_eq!(names.len(), entries.len());
    for e in &entries {
        assert!(
            !e.info.paper.is_empty() && e.info.time.starts_with("O("),
            "{}",
            e.info.name
        );
        // Defaults round-trip through the config.
        assert_eq!(e.normalize(&e.defaults()).unwrap(), e.defaults());
    }
}

#[test]
fn labels_show_only_non_default_parameters() {
    let spec: VariantSpec = "local:window=32".parse().unwrap();
    assert_eq!(spec.normalized().unwrap().label(), "local(window=32)");
    let spec: VariantSpec = "local".parse().unwrap();
    assert_eq!(spec.normalized().unwrap().label(), "local");
}
