//! Every variant that decodes: generating token by token after a context gives the rows
//! of its causal forward pass, `reset` returns to the end of the context, and the state
//! grows with the context as the variant claims (a KV cache linearly, a window or a
//! recurrent state not at all).

use tch::{nn, Device, Kind, Tensor};
use xarena_variants::{build_layer, registry, Layer, Scope, Shape, VariantSpec};

/// The variant's own small test configuration (its `TEST_PARAMS`): windows and states
/// smaller than the context, segment boundaries inside the context and the generated
/// tokens.
fn spec(name: &str) -> VariantSpec {
    xarena_variants::find(name).unwrap().test_spec()
}

fn layer(name: &str, n: i64, scope: Scope) -> (Box<dyn Layer>, nn::VarStore) {
    layer_of(&spec(name), n, scope)
}

fn layer_of(spec: &VariantSpec, n: i64, scope: Scope) -> (Box<dyn Layer>, nn::VarStore) {
    let s = Shape {
        batch: 2,
        seq_len: n,
        heads: 2,
        head_dim: 8,
        causal: true,
    };
    let mut vs = nn::VarStore::new(Device::Cpu);
    vs.set_kind(Kind::Double);
    let layer = build_layer(spec, &s, scope, vs.root()).unwrap();
    (layer, vs)
}

fn decoders() -> Vec<(&'static str, f64, &'static [Scope])> {
    registry()
        .into_iter()
        .filter_map(|e| {
            e.info
                .decode
                .map(|d| (e.info.name, d.exponent, e.info.scopes))
        })
        .filter(|(name, _, _)| *name != "empty")
        .collect()
}

#[test]
fn the_registry_has_decoders() {
    let names: Vec<_> = decoders().iter().map(|d| d.0).collect();
    for expected in ["vanilla", "sdpa", "local"] {
        assert!(names.contains(&expected), "{expected} decodes: {names:?}");
    }
}

/// Generates `steps` tokens after `context` and compares each with the forward pass.
fn check_decoding(spec: &VariantSpec, scope: Scope, context: i64, steps: i64) {
    let n = context + steps;
    let name = &spec.name;
    tch::manual_seed(11);
    let (layer, _vs) = layer_of(spec, n, scope);
    let x = Tensor::randn([2, n, 16], (Kind::Double, Device::Cpu));
    tch::no_grad(|| {
        let full = layer.forward(&x);
        let mut state = layer
            .decoder(&x.narrow(1, 0, context), steps)
            .unwrap_or_else(|| panic!("{name} claims a decoder"));
        for t in context..n {
            let y = state.step(&x.narrow(1, t, 1));
            let want = full.narrow(1, t, 1);
            let err = f64::try_from((&y - &want).abs().max()).unwrap();
            assert!(err < 1e-9, "{name} at {scope}: token {t} off by {err}");
        }
        // Back to the end of the context: the first generated token again.
        state.reset();
        let again = state.step(&x.narrow(1, context, 1));
        let err = f64::try_from((again - full.narrow(1, context, 1)).abs().max()).unwrap();
        assert!(err < 1e-9, "{name} at {scope}: after reset off by {err}");
    });
}

#[test]
fn token_by_token_equals_the_causal_forward() {
    for (name, _, scopes) in decoders() {
        for &scope in scopes {
            check_decoding(&spec(name), scope, 24, 8);
        }
    }
}

/// A context shorter than one segment: nothing is in the memory or compressed yet (the
/// benchmark's first case, N = 64 against segments of 128, once failed here).
#[test]
fn decoding_after_a_context_shorter_than_a_segment() {
    for s in [
        "transformer-xl:segment=32:memory=32",
        "compressive:segment=32:memory=32:compressed=4:compression=2",
    ] {
        let spec = s.parse::<VariantSpec>().unwrap().normalized().unwrap();
        check_decoding(&spec, Scope::Block, 20, 8);
    }
}

#[test]
fn state_grows_as_claimed() {
    for (name, exponent, scopes) in decoders() {
        let scope = scopes[0];
        let bytes = |context: i64| {
            let (layer, _vs) = layer(name, context + 1, scope);
            let x = Tensor::randn([2, context, 16], (Kind::Double, Device::Cpu));
            tch::no_grad(|| layer.decoder(&x, 1).unwrap().state_bytes())
        };
        let (small, large) = (bytes(64) as f64, bytes(256) as f64);
        assert!(small > 0.0, "{name}: empty state");
        // Four times the context: 4^exponent times the state, within a token's slack.
        let growth = (large / small).log(4.0);
        assert!(
            (growth - exponent).abs() < 0.05,
            "{name}: state grew as N^{growth:.3}, claimed N^{exponent}"
        );
    }
}
