//! The approximation-quality proxy: how far each attention variant's output is from exact
//! softmax attention on the same inputs and the same projections, at its default budget.
//!
//! It costs no training, and it is only a proxy: the weights are random, so it says how
//! well a mechanism reproduces exact attention for these score distributions, not how a
//! trained model using it would score on a task (the LRA track measures that). With
//! tch's default (Kaiming-uniform) projections the exact scores q.k / sqrt(d) have a
//! standard deviation of about 2 (recorded as `score_std`); `qk_scale` multiplies the
//! scores (the Q and K projections by its square root each) to vary how peaked the
//! attention is.
//!
//! Both layers are built from the same seed and then share every parameter they have in
//! common (the Q/K/V and output projections), copied from the reference, so the only
//! difference is the mechanism. The reference runs in float64; the variant in the dtype
//! asked for. Error = ||y - y_exact|| / ||y_exact|| over the whole output.
//!
//! It runs in the `xarena` process itself, so sizes it cannot hold are refused before
//! anything is computed ([`check_fits`]), and a LibTorch error is an error, not a panic.

use std::panic::{catch_unwind, AssertUnwindSafe};

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};
use xarena_variants::{build_layer, find, Scope, Shape, VariantSpec};

/// One measured error.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QualityRecord {
    pub variant: String,
    pub label: String,
    pub params: serde_json::Map<String, serde_json::Value>,
    pub seq_len: i64,
    pub batch: i64,
    pub heads: i64,
    pub head_dim: i64,
    pub causal: bool,
    pub dtype: String,
    pub qk_scale: f64,
    /// ||y - y_exact|| / ||y_exact||.
    pub rel_error: f64,
    /// ||y - y_exact|| / ||y_self||, where y_self is each token's own value through the
    /// output projection: the error in units of a value vector. With flat attention
    /// y_exact is close to the mean value and its norm small, which inflates
    /// `rel_error`; this one stays comparable across score scales.
    pub value_error: f64,
    /// Standard deviation of the exact scores q.k / sqrt(d) (over up to 256 queries per
    /// head): how peaked the attention being approximated is.
    pub score_std: f64,
    /// Whether the variant claims to be exact (its error should be rounding only).
    pub exact: bool,
    pub reference: String,
}

/// What to compare.
#[derive(Debug, Clone)]
pub struct QualityCase {
    pub spec: VariantSpec,
    pub shape: Shape,
    pub kind: Kind,
    pub qk_scale: f64,
    pub seed: i64,
}

fn dtype_name(kind: Kind) -> &'static str {
    match kind {
        Kind::Float => "f32",
        Kind::BFloat16 => "bf16",
        Kind::Half => "f16",
        Kind::Double => "f64",
        _ => "other",
    }
}

/// Scales the Q and K thirds of the fused QKV weight (and bias) by sqrt(scale) each.
fn sharpen(vs: &nn::VarStore, d: i64, scale: f64) {
    let factor = scale.sqrt();
    for (name, t) in vs.variables() {
        if name.ends_with("qkv.weight") || name.ends_with("qkv.bias") {
            tch::no_grad(|| {
                let mut qk = t.narrow(0, 0, 2 * d);
                qk *= factor;
            });
        }
    }
}

/// The reference's parameter whose name ends with `suffix`.
fn param(vs: &nn::VarStore, suffix: &str) -> Result<Tensor, String> {
    vs.variables()
        .into_iter()
        .find(|(name, _)| name.ends_with(suffix))
        .map(|(_, t)| t)
        .ok_or_else(|| format!("reference has no parameter `*{suffix}`"))
}

/// Each token's value through the output projection, from the reference's parameters:
/// what attention returns when every token attends only to itself.
fn own_values(vs: &nn::VarStore, x: &Tensor, d: i64) -> Result<Tensor, String> {
    let get = |suffix: &str| param(vs, suffix);
    let (w, b) = (get("qkv.weight")?, get("qkv.bias")?);
    let (wo, bo) = (get("out.weight")?, get("out.bias")?);
    let v = x.linear(&w.narrow(0, 2 * d, d), Some(&b.narrow(0, 2 * d, d)));
    Ok(v.linear(&wo, Some(&bo)))
}

/// The spread of the exact scores, from the reference's Q and K projections.
fn score_std(vs: &nn::VarStore, x: &Tensor, s: &Shape) -> Result<f64, String> {
    let get = |suffix: &str| param(vs, suffix);
    let (w, b) = (get("qkv.weight")?, get("qkv.bias")?);
    let d = s.d_model();
    let heads = |t: Tensor| {
        t.view([s.batch, s.seq_len, s.heads, s.head_dim])
            .transpose(1, 2)
    };
    let q = heads(x.linear(&w.narrow(0, 0, d), Some(&b.narrow(0, 0, d))));
    let k = heads(x.linear(&w.narrow(0, d, d), Some(&b.narrow(0, d, d))));
    let rows = s.seq_len.min(256);
    let scores = q.narrow(2, 0, rows).matmul(&k.transpose(-2, -1)) / (s.head_dim as f64).sqrt();
    f64::try_from(scores.std(true)).map_err(|e| e.to_string())
}

/// The memory the comparison at `shape` needs, in bytes (saturating), from its dominant
/// tensors: the reference's scores and their softmax, both float64 B x H x N x N and
/// alive together (`softmax_attention` in variants/src/exact/vanilla.rs), its causal mask
/// (N x N booleans), and the float64 input with its Q/K/V projection, attention output
/// and projected output (6 x B x N x d). The variant's own working memory comes and goes
/// before the reference runs. At N = 8192 (2 heads) the process's peak resident set grew
/// by 97% of this over N = 64.
pub fn estimated_bytes(shape: &Shape) -> u64 {
    let [b, n, h, d] = [shape.batch, shape.seq_len, shape.heads, shape.d_model()]
        .map(|v| u128::try_from(v).unwrap_or(0));
    let scores = (2 * 8u128)
        .saturating_mul(b * h)
        .saturating_mul(n.saturating_mul(n));
    let mask = if shape.causal { n.saturating_mul(n) } else { 0 };
    let tokens = (6 * 8u128)
        .saturating_mul(b)
        .saturating_mul(n)
        .saturating_mul(d);
    u64::try_from(scores.saturating_add(mask).saturating_add(tokens)).unwrap_or(u64::MAX)
}

/// Refuses a shape whose comparison cannot fit in the memory this process can still
/// take, naming N, the estimate and the limit.
pub fn check_fits(shape: &Shape, free: &xarena_measure::memory::Headroom) -> Result<(), String> {
    let need = estimated_bytes(shape);
    if need <= free.bytes {
        return Ok(());
    }
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    Err(format!(
        "N = {} (batch {}, {} heads x {}) needs about {:.1} GiB ({need} bytes: the \
         float64 reference's two B x H x N x N score matrices), more than the {:.1} GiB \
         ({} bytes) this process can take, set by {}; choose a smaller --seq, --batch or \
         --heads",
        shape.seq_len,
        shape.batch,
        shape.heads,
        shape.head_dim,
        gib(need),
        gib(free.bytes),
        free.bytes,
        free.limit
    ))
}

/// The relative error of one variant against exact attention. A LibTorch error (which
/// tch raises as a panic) is returned as an error, without the panic's report.
pub fn measure(case: &QualityCase) -> Result<QualityRecord, String> {
    catching(|| measure_unguarded(case))
}

/// Runs `f`, turning a panic into an error with its message (the first line of a LibTorch
/// error), and keeps the default panic report off the terminal meanwhile.
fn catching<T>(f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let result = catch_unwind(AssertUnwindSafe(f));
    std::panic::set_hook(hook);
    result.unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into());
        // tch's unwrap shows the error in Debug form, `Torch("...\\nException raised
        // from ...")`, with the C++ backtrace behind an escaped newline.
        let msg = crate::case::short_message(&msg);
        let msg = msg.split("\\nException raised from").next().unwrap_or(&msg);
        let msg = msg.strip_prefix("Torch(\"").unwrap_or(msg);
        Err(format!("LibTorch: {msg}"))
    })
}

fn measure_unguarded(case: &QualityCase) -> Result<QualityRecord, String> {
    let spec = case.spec.normalized().map_err(|e| e.to_string())?;
    let entry = find(&spec.name).map_err(|e| e.to_string())?;
    entry
        .check_scope(Scope::Attention)
        .map_err(|e| format!("{e}: the proxy compares attention modules"))?;
    entry
        .check(&serde_json::Value::Object(spec.params.clone()), &case.shape)
        .map_err(|e| e.to_string())?;
    let s = case.shape;
    let build = |spec: &VariantSpec, kind: Kind| {
        tch::manual_seed(case.seed);
        let mut vs = nn::VarStore::new(Device::Cpu);
        vs.set_kind(kind);
        let layer = build_layer(spec, &s, Scope::Attention, vs.root()).map_err(|e| e.to_string());
        layer.map(|l| (l, vs))
    };
    let reference = VariantSpec::new("vanilla");
    let (exact, exact_vs) = build(&reference, Kind::Double)?;
    let (layer, vs) = build(&spec, case.kind)?;
    // Share the projections: copy every parameter both have, by name.
    let source = exact_vs.variables();
    for (name, t) in vs.variables() {
        if let Some(src) = source.get(&name) {
            if src.size() == t.size() {
                tch::no_grad(|| {
                    let mut dst = t;
                    dst.copy_(src);
                });
            }
        }
    }
    sharpen(&exact_vs, s.d_model(), case.qk_scale);
    sharpen(&vs, s.d_model(), case.qk_scale);
    let x = xarena_datasets::inputs::hidden_states(
        s.batch,
        s.seq_len,
        s.d_model(),
        Kind::Double,
        Device::Cpu,
        case.seed,
    );
    let (y, want) = tch::no_grad(|| {
        (
            layer.forward(&x.to_kind(case.kind)).to_kind(Kind::Double),
            exact.forward(&x),
        )
    });
    let norm = |t: &Tensor| f64::try_from(t.norm()).map_err(|e| e.to_string());
    let err = norm(&(&y - &want))?;
    let y_self = tch::no_grad(|| own_values(&exact_vs, &x, s.d_model()))?;
    let score_std = tch::no_grad(|| score_std(&exact_vs, &x, &s))?;
    let (rel, value_error) = (err / norm(&want)?, err / norm(&y_self)?);
    Ok(QualityRecord {
        variant: spec.name.clone(),
        label: spec.label(),
        params: spec.params.clone(),
        seq_len: s.seq_len,
        batch: s.batch,
        heads: s.heads,
        head_dim: s.head_dim,
        causal: s.causal,
        dtype: dtype_name(case.kind).into(),
        qk_scale: case.qk_scale,
        rel_error: rel,
        value_error,
        score_std,
        exact: entry.info.exact,
        reference: "vanilla in float64, same projections".into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn case(name: &str, n: i64) -> QualityCase {
        QualityCase {
            spec: name.parse().unwrap(),
            shape: Shape {
                batch: 1,
                seq_len: n,
                heads: 2,
                head_dim: 16,
                causal: false,
            },
            kind: Kind::Float,
            qk_scale: 1.0,
            seed: 5,
        }
    }

    #[test]
    fn a_libtorch_error_is_an_error_not_a_panic() {
        let e = catching(|| {
            let t = Tensor::zeros([2, 3], (Kind::Float, Device::Cpu)).view([5]);
            Ok(t.numel())
        })
        .unwrap_err();
        assert!(e.starts_with("LibTorch: ") && e.contains("shape"), "{e}");
        assert!(!e.contains("Exception raised from"), "{e}");
    }

    #[test]
    fn sizes_that_cannot_fit_are_refused_naming_n_and_the_limit() {
        let mut shape = case("vanilla", 64).shape;
        let free = xarena_measure::memory::Headroom {
            bytes: 1 << 30,
            limit: "a test limit".into(),
        };
        assert!(check_fits(&shape, &free).is_ok());
        // 2 heads x 16384^2 x 8 bytes x 2 = 8 GiB.
        shape.seq_len = 16384;
        assert!(estimated_bytes(&shape) >= 8 << 30);
        let e = check_fits(&shape, &free).unwrap_err();
        assert!(e.contains("N = 16384") && e.contains("a test limit"), "{e}");
        shape.seq_len = i64::MAX;
        assert_eq!(estimated_bytes(&shape), u64::MAX);
    }

    #[test]
    fn exact_variants_have_rounding_error_only() {
        for name in ["vanilla", "sdpa", "local:window=64"] {
            let r = measure(&case(name, 64)).unwrap();
            assert!(r.rel_error < 1e-5, "{name}: {}", r.rel_error);
        }
    }

    #[test]
    fn approximations_have_an_error() {
        // A window of 4 at N = 64 cannot equal full attention.
        let r = measure(&case("local:window=4", 64)).unwrap();
        assert!(r.rel_error > 1e-3, "{}", r.rel_error);
    }

    #[test]
    fn the_scale_changes_the_scores_not_exactness() {
        let mut sharp = case("sdpa", 64);
        sharp.qk_scale = 100.0;
        assert!(measure(&sharp).unwrap().rel_error < 1e-5);
        // If the scale did nothing, a window's error would not move.
        let flat = case("local:window=4", 64);
        let mut peaked = flat.clone();
        peaked.qk_scale = 100.0;
        let (a, b) = (measure(&flat).unwrap(), measure(&peaked).unwrap());
        assert!(
            (a.rel_error - b.rel_error).abs() > 0.1 * a.rel_error,
            "{} vs {}",
            a.rel_error,
            b.rel_error
        );
    }
}
