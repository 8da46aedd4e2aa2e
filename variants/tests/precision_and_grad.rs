//! Every variant runs forward and backward in f32, bf16 and f16, causal where supported.

use tch::{nn, Device, Kind, Tensor};
use xarena_variants::{build_layer, registry, Scope, Shape, VariantSpec};

#[test]
fn every_variant_trains_in_every_precision() {
    for entry in registry() {
        for kind in [Kind::Float, Kind::BFloat16, Kind::Half] {
            for causal in [false, true] {
                if causal && !entry.info.supports_causal {
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
                let spec = VariantSpec::new(entry.info.name).normalized().unwrap();
                let layer = build_layer(&spec, &s, Scope::Block, vs.root()).unwrap();
                let x = Tensor::randn([2, 45, 16], (kind, Device::Cpu)).set_requires_grad(true);
                let y = layer.forward(&x);
                let what = format!("{} {kind:?} causal={causal}", entry.info.name);
                assert_eq!(y.size(), x.size(), "{what}");
                assert_eq!(y.kind(), kind, "{what}");
                let loss = y.to_kind(Kind::Float).square().mean(Kind::Float);
                let mut wrt = vs.trainable_variables();
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
