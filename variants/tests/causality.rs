//! Every variant that claims causal support: an output never depends on later inputs.
//! Changing the tokens from position t on leaves every output before t as it was.
//!
//! Except `reformer` and `routing`: as in their papers, they hash or cluster the whole
//! sequence and then mask, so later tokens can move the chunk or cluster boundaries of
//! earlier ones (which keys an earlier query meets), though no query ever attends to a
//! later key: learnable.rs checks their masks against dense definitions.

use tch::{nn, Device, Kind, Tensor};
use xarena_variants::{build_layer, registry, Scope, Shape};

#[test]
fn causal_outputs_ignore_the_future() {
    let n = 40;
    for entry in registry() {
        if !entry.info.supports_causal || ["reformer", "routing"].contains(&entry.info.name) {
            continue;
        }
        let s = Shape {
            batch: 2,
            seq_len: n,
            heads: 2,
            head_dim: 8,
            causal: true,
        };
        let mut vs = nn::VarStore::new(Device::Cpu);
        vs.set_kind(Kind::Double);
        // The variant's own small budgets, so that the patterns are sparse at N = 40.
        let spec = entry.test_spec();
        // Attention scope where there is one, else the variant's first scope.
        let scope = if entry.info.scopes.contains(&Scope::Attention) {
            Scope::Attention
        } else {
            entry.info.scopes[0]
        };
        let layer = build_layer(&spec, &s, scope, vs.root()).unwrap();
        let x = Tensor::randn([2, n, 16], (Kind::Double, Device::Cpu));
        for t in [1, 17, 32] {
            let changed = x.copy();
            changed
                .narrow(1, t, n - t)
                .copy_(&Tensor::randn([2, n - t, 16], (Kind::Double, Device::Cpu)));
            let (a, b) = tch::no_grad(|| (layer.forward(&x), layer.forward(&changed)));
            let diff = f64::try_from((a.narrow(1, 0, t) - b.narrow(1, 0, t)).abs().max()).unwrap();
            assert!(
                diff < 1e-9,
                "{}: output before {t} moved by {diff}",
                entry.info.name
            );
            // The future did change something, so the test can fail.
            let after =
                f64::try_from((a.narrow(1, t, n - t) - b.narrow(1, t, n - t)).abs().max()).unwrap();
            assert!(after > 1e-6, "{}", entry.info.name);
        }
    }
}
