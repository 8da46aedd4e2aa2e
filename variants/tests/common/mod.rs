//! Helpers shared by the variant tests.
#![allow(dead_code)]

use std::sync::Mutex;

use tch::{nn, Device, Kind, Tensor};
use xarena_variants::exact::vanilla::softmax_attention;
use xarena_variants::registry::AttentionVariant;
use xarena_variants::Shape;

pub fn shape(n: i64, causal: bool) -> Shape {
    Shape {
        batch: 2,
        heads: 3,
        seq_len: n,
        head_dim: 16,
        causal,
    }
}

/// Tests run on threads of one process and LibTorch's generator is global: whoever seeds
/// it holds this until done drawing, so every test sees its own sequence.
pub static RNG: Mutex<()> = Mutex::new(());

pub fn seeded<T>(seed: i64, f: impl FnOnce() -> T) -> T {
    let _guard = RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(seed);
    f()
}

/// Fresh random per-head q, k, v in float64.
pub fn qkv(s: &Shape, seed: i64) -> (Tensor, Tensor, Tensor) {
    let _guard = RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(seed);
    let dims = [s.batch, s.heads, s.seq_len, s.head_dim];
    let t = || Tensor::randn(dims, (Kind::Double, Device::Cpu));
    (t(), t(), t())
}

pub fn future_mask(n: i64) -> Tensor {
    Tensor::ones([n, n], (Kind::Bool, Device::Cpu)).triu(1)
}

/// Exact attention in float64, causal or not.
pub fn reference(q: &Tensor, k: &Tensor, v: &Tensor, causal: bool) -> Tensor {
    let mask = causal.then(|| future_mask(q.size()[2]));
    softmax_attention(q, k, v, mask.as_ref())
}

pub fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_kind(Kind::Double);
    let b = b.to_kind(Kind::Double);
    assert!(
        bool::try_from(a.isfinite().all()).unwrap(),
        "non-finite output"
    );
    f64::try_from((&a - &b).norm()).unwrap() / f64::try_from(b.norm()).unwrap()
}

/// Builds an attention core in `kind` and runs it on float64 inputs cast to `kind`.
pub fn run_core<V: AttentionVariant>(
    config: V::Config,
    s: &Shape,
    kind: Kind,
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
) -> Tensor {
    let mut vs = nn::VarStore::new(Device::Cpu);
    vs.set_kind(kind);
    let core = V::new(config, s, vs.root()).expect("valid config");
    core.attend(&q.to_kind(kind), &k.to_kind(kind), &v.to_kind(kind))
}
