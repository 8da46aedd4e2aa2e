//! Every variant runs forward and backward in f32, bf16 and f16, causal where supported
//! (and only causal for the recurrent language models), at block scope or, for variants
//! without one, at their first scope.

use tch::{nn, Device, Kind, Tensor};
use xarena_variants::{build_layer, registry, Scope, Shape};

/// Language models that reject a non-causal shape.
const CAUSAL_ONLY: &[&str] = &["transformer-xl", "compressive"];

#[test]
fn every_variant_trains_in_every_precision() {
    for entry in registry() {
        for kind in [Kind::Float, Kind::BFloat16, Kind::Half] {
            for causal in [false, true] {
                if causal && !entry.info.supports_causal {
                    continue;
                }
                if !causal && CAUSAL_ONLY.contains(&entry.info.name) {
                    continue;
                }
                let s = Shape {
                    batch: 2,
                    seq_len: 45,
                    heads: 2,
                    head_dim: 8,
                    causal,
                };
                let mut vs = nn::VarStore::new(Device::Cpu);
                vs.set_kind(kind);
                // The variant's own small test configuration: several segments at
                // N = 45, memories that fill and compress, budgets below the length.
                let spec = entry.test_spec();
                let scope = if entry.info.scopes.contains(&Scope::Block) {
                    Scope::Block
                } else {
                    entry.info.scopes[0]
                };
                let layer = build_layer(&spec, &s, scope, vs.root()).unwrap();
                let x = Tensor::randn([2, 45, 16], (kind, Device::Cpu)).set_requires_grad(true);
                let y = layer.forward(&x);
                let what = format!("{} {kind:?} causal={causal}", entry.info.name);
                assert_eq!(y.size(), x.size(), "{what}");
                assert_eq!(y.kind(), kind, "{what}");
                let loss = y.to_kind(Kind::Float).square().mean(Kind::Float);
                // The compressive transformer's compressors are trained by their own
                // reconstruction loss only (the paper's stop-gradient), so the task loss
                // leaves them without a gradient; recurrence.rs tests theirs.
                let mut wrt: Vec<Tensor> = vs
                    .variables()
                    .into_iter()
                    .filter(|(name, t)| t.requires_grad() && !name.contains("compressor"))
                    .map(|(_, t)| t)
                    .collect();
                wrt.push(x.shallow_clone());
                let grads = Tensor::run_backward(&[loss], &wrt, false, false);
                for g in grads {
                    let finite = bool::try_from(g.isfinite().all()).unwrap();
                    assert!(finite, "{what}: non-finite gradient");
                }
            }
        }
    }
}
