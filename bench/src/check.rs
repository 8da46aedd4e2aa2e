//! The correctness check on the device, before any timing: the case's layer, at a small N,
//! runs forward and backward on the case's device and dtype. Every output and gradient
//! must be finite, and an exact variant's output and input gradient must equal the CPU
//! float32 result within the dtype's tolerance. A case that fails is recorded as `error`
//! and not timed (`xarena run --check`); `xarena check` runs the check alone.
//!
//! The reference is the same layer built on the CPU in float32 with the case's seed; the
//! device layer gets its weights copied from it, and both see the same input and output
//! gradient. Weights and inputs are rounded to the dtype once, before the reference runs,
//! so both sides start from the same numbers and the comparison measures the device's
//! arithmetic, not the storage rounding every implementation shares.

use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};
use xarena_reports::grid::{Grid, GridCell};
use xarena_reports::schema::{CaseKey, DeviceCheck, Dtype, Mode, Scope, Status};
use xarena_reports::table::Format;
use xarena_variants::{build_layer, find, Layer, Shape, VariantSpec};

use crate::case::{short_message, Request};
use crate::sweep::{Case, Sweep};
use crate::worker::{injected_fault, Supervisor};
use xarena_measure::device::{tch_device, tch_kind};
use xarena_measure::timing::TimingConfig;

/// The largest length the check runs at: long enough that the default windows, blocks
/// and buckets (64-256) split the sequence, short enough that the CPU float32 reference
/// takes milliseconds.
pub const CHECK_SEQ: i64 = 256;

/// The check runs at most this batch: a batch adds no code path.
pub const CHECK_BATCH: i64 = 2;

/// Largest |device - reference| allowed, relative to the reference's largest magnitude.
///
/// The errors the check is for (a wrong mask, scale or layout, an overflow) are of order
/// 0.1 to 1; rounding is of order the dtype's unit roundoff u per rounded step, and a
/// forward and backward round a value a handful of times. So each tolerance sits about
/// ten u above rounding and well below a real fault: bf16 (u = 2^-8 = 3.9e-3) 4e-2, f16
/// (u = 2^-11 = 4.9e-4) 5e-3, f32 2e-3, which allows TF32 matmuls (u = 2^-11 like f16)
/// should they be switched on. Measured on the CPU at N = 256 (vanilla and sdpa, causal
/// or not): bf16 0.5-1.2e-2, f16 0.7-1.6e-3 for one layer. A model stacks layers whose
/// rounding adds up like a random walk (measured: 1.8x for six), so its tolerance is
/// sqrt(layers) times larger.
pub fn tolerance(dtype: Dtype, scope: Scope) -> f64 {
    let layer = match dtype {
        Dtype::Bf16 => 4e-2,
        Dtype::F16 => 5e-3,
        Dtype::F32 => 2e-3,
    };
    match scope {
        Scope::Model => layer * (xarena_variants::block::MODEL_LAYERS as f64).sqrt(),
        Scope::Attention | Scope::Block => layer,
    }
}

/// `--check`: when `xarena run` checks a case before timing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Policy {
    /// On CUDA devices only, so CPU runs keep their speed.
    #[default]
    Auto,
    On,
    Off,
}

impl Policy {
    /// Whether a case on `device` (normalised: `cpu` or `cuda:N`) is checked.
    pub fn applies(self, device: &str) -> bool {
        match self {
            Policy::On => true,
            Policy::Off => false,
            Policy::Auto => device.starts_with("cuda"),
        }
    }
}

fn shape_at(case: &Case, seq_len: i64) -> Shape {
    let k = &case.key;
    Shape {
        batch: k.batch.min(CHECK_BATCH),
        seq_len,
        heads: k.heads,
        head_dim: k.head_dim,
        causal: k.causal,
    }
}

/// The length the check runs at: the case's own when it is at most [`CHECK_SEQ`], else
/// the first of 256, 512, ... below it that the variant's parameters accept (a routing
/// variant's clusters or longformer's global positions may need more tokens), else the
/// case's own.
pub fn check_seq_len(case: &Case) -> i64 {
    let n = case.key.seq_len;
    if n <= CHECK_SEQ {
        return n;
    }
    let Ok(entry) = find(&case.key.variant) else {
        return n;
    };
    let params = serde_json::Value::Object(case.key.params.clone());
    let mut m = CHECK_SEQ;
    while m < n {
        if entry.check(&params, &shape_at(case, m)).is_ok() {
            return m;
        }
        m *= 2;
    }
    n
}

/// One side's forward and backward: the output and the gradients of (output * g).sum()
/// with respect to the parameters (by name) and the input.
struct Pass {
    out: Tensor,
    params: Vec<(String, Tensor)>,
    input: Tensor,
}

fn forward_backward(
    layer: &dyn Layer,
    vs: &nn::VarStore,
    x: &Tensor,
    g: &Tensor,
    nan: bool,
) -> Pass {
    let x = x.detach().set_requires_grad(true);
    let mut out = layer.forward(&x);
    if nan {
        // XARENA_FAULT=nan@VARIANT: the failure a broken kernel would show.
        out = out.g_mul_scalar(f64::NAN);
    }
    let loss = (&out * g).sum(Kind::Float);
    let mut named: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(_, t)| t.requires_grad())
        .collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let mut wrt: Vec<Tensor> = named.iter().map(|(_, t)| t.shallow_clone()).collect();
    wrt.push(x.shallow_clone());
    let mut grads = Tensor::run_backward(&[loss], &wrt, false, false);
    let input = grads.pop().expect("one gradient per input");
    let params = named
        .into_iter()
        .zip(grads)
        .map(|((name, _), grad)| (name, grad))
        .collect();
    Pass {
        out: out.detach(),
        params,
        input,
    }
}

fn finite(t: &Tensor) -> bool {
    // A parameter the loss does not reach has no gradient (an undefined tensor).
    !t.defined() || bool::try_from(t.isfinite().all()).unwrap_or(false)
}

/// max |a - reference| / max |reference|, in float64 on the CPU.
pub fn max_rel_err(a: &Tensor, reference: &Tensor) -> f64 {
    let a = a.to_device(Device::Cpu).to_kind(Kind::Double);
    let r = reference.to_device(Device::Cpu).to_kind(Kind::Double);
    let diff = f64::try_from((&a - &r).abs().max()).unwrap_or(f64::INFINITY);
    let scale = f64::try_from(r.abs().max()).unwrap_or(0.0);
    if scale > 0.0 {
        diff / scale
    } else {
        diff
    }
}

/// The check's figures and, when it failed, why.
#[derive(Debug, Clone)]
pub struct Checked {
    pub check: DeviceCheck,
    pub failure: Option<String>,
}

/// Round to `kind` and back, in place: the reference starts from what the device holds.
fn round_to(t: &mut Tensor, kind: Kind) {
    if t.is_floating_point() {
        let rounded = t.to_kind(kind).to_kind(t.kind());
        tch::no_grad(|| t.copy_(&rounded));
    }
}

/// Runs the check; `Err` when the layer cannot be built or LibTorch fails.
pub fn check(case: &Case) -> Result<Checked, String> {
    let key = &case.key;
    let device = tch_device(&key.device);
    let kind = tch_kind(key.dtype);
    let seq_len = check_seq_len(case);
    let shape = shape_at(case, seq_len);
    let scope = key.scope;
    let spec = VariantSpec {
        name: key.variant.clone(),
        params: key.params.clone(),
    };
    let seed = crate::case::seed(case);
    let build = |vs: &nn::VarStore| {
        tch::manual_seed(seed);
        build_layer(&spec, &shape, scope, vs.root())
            .map_err(|e| format!("cannot build at N={seq_len}: {e}"))
    };

    // The reference: CPU float32, on weights and inputs rounded to the dtype.
    let reference_vs = nn::VarStore::new(Device::Cpu);
    let reference_layer = build(&reference_vs)?;
    for (_, mut v) in reference_vs.variables() {
        round_to(&mut v, kind);
    }
    let x = xarena_datasets::inputs::hidden_states(
        shape.batch,
        seq_len,
        shape.d_model(),
        Kind::Float,
        Device::Cpu,
        seed,
    );
    let g = Tensor::randn(x.size(), (Kind::Float, Device::Cpu));
    let (x, g) = (
        x.to_kind(kind).to_kind(Kind::Float),
        g.to_kind(kind).to_kind(Kind::Float),
    );
    let reference = forward_backward(reference_layer.as_ref(), &reference_vs, &x, &g, false);

    // The device: the same weights, input and output gradient.
    let mut vs = nn::VarStore::new(device);
    vs.set_kind(kind);
    let layer = build(&vs)?;
    vs.copy(&reference_vs)
        .map_err(|e| format!("copying the weights to {}: {e}", key.device))?;
    let to_device = |t: &Tensor| t.to_kind(kind).to_device(device);
    let nan = injected_fault(&key.variant).as_deref() == Some("nan");
    let run = forward_backward(layer.as_ref(), &vs, &to_device(&x), &to_device(&g), nan);

    let mut not_finite = Vec::new();
    if !finite(&run.out) {
        not_finite.push("the output".to_string());
    }
    if !finite(&run.input) {
        not_finite.push("the input's gradient".to_string());
    }
    not_finite.extend(
        run.params
            .iter()
            .filter(|(_, grad)| !finite(grad))
            .map(|(name, _)| format!("the gradient of {name}")),
    );
    let is_finite = not_finite.is_empty();
    let tol = case.claims.exact.then(|| tolerance(key.dtype, key.scope));
    // The output and the input's gradient: what the next layer sees, forward and back.
    let err = match tol {
        Some(_) if is_finite => Some(
            max_rel_err(&run.out, &reference.out).max(max_rel_err(&run.input, &reference.input)),
        ),
        _ => None,
    };
    let failure = failure(seq_len, &not_finite, err, tol, key.dtype);
    Ok(Checked {
        check: DeviceCheck {
            seq_len,
            finite: is_finite,
            max_rel_err: err,
            tolerance: tol,
        },
        failure,
    })
}

/// Why a check failed, if it did: a non-finite tensor (at most three named), or an exact
/// variant beyond its tolerance.
pub fn failure(
    seq_len: i64,
    not_finite: &[String],
    err: Option<f64>,
    tol: Option<f64>,
    dtype: Dtype,
) -> Option<String> {
    if !not_finite.is_empty() {
        let shown: Vec<&str> = not_finite.iter().take(3).map(String::as_str).collect();
        let more = match not_finite.len().saturating_sub(3) {
            0 => String::new(),
            n => format!(" and {n} more"),
        };
        return Some(format!(
            "non-finite values at N={seq_len} in {}{more}",
            shown.join(", ")
        ));
    }
    match (err, tol) {
        (Some(e), Some(t)) if e.is_nan() || e > t => Some(format!(
            "at N={seq_len} the output or input gradient differs from the CPU float32 result \
             by {e:.2e} of its largest magnitude (tolerance {t:.1e} for {dtype})"
        )),
        _ => None,
    }
}

/// The check as the worker runs it before timing: its figures (where it got that far)
/// and, when the case must not be timed, the message its `error` record carries.
pub fn before_timing(case: &Case) -> (Option<DeviceCheck>, Option<String>) {
    let result = catch_unwind(AssertUnwindSafe(|| check(case))).unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into());
        Err(short_message(&msg))
    });
    match result {
        Ok(c) => (
            Some(c.check),
            c.failure.map(|f| format!("device check failed: {f}")),
        ),
        Err(e) => (None, Some(format!("device check failed: {e}"))),
    }
}

/// `xarena check`: the correctness check alone, for every variant x dtype x device.
#[derive(Args)]
pub struct CheckArgs {
    /// Variants, comma separated, with parameters as in `run`.
    #[arg(long, value_delimiter = ',', required = true)]
    variants: Vec<VariantSpec>,
    #[arg(long, value_delimiter = ',', value_enum, default_values_t = [Dtype::Bf16, Dtype::F16])]
    dtype: Vec<Dtype>,
    /// cpu, cuda or cuda:N.
    #[arg(long, value_delimiter = ',', default_value = "cuda")]
    device: Vec<String>,
    /// The cases' lengths; each is checked at min(N, 256) or the next length its
    /// parameters accept, as `run --check` would check it.
    #[arg(long, value_delimiter = ',', default_values_t = [CHECK_SEQ])]
    seq: Vec<i64>,
    /// At most 2 is used.
    #[arg(long, default_value_t = CHECK_BATCH)]
    batch: i64,
    #[arg(long, default_value_t = 8)]
    heads: i64,
    #[arg(long, default_value_t = 64)]
    head_dim: i64,
    /// attention, block or model (default: attention where the variant has it, else its
    /// first scope).
    #[arg(long, value_enum)]
    scope: Option<Scope>,
    #[arg(long)]
    causal: bool,
    /// Seconds before a case's worker is killed.
    #[arg(long, default_value_t = 300.0)]
    timeout: f64,
    /// LibTorch threads (0: LibTorch's default).
    #[arg(long, default_value_t = 0)]
    threads: i64,
    /// Keep one worker process across cases (a crash still costs one case).
    #[arg(long)]
    reuse_worker: bool,
    /// Write one JSON line per case (its key, status, message and check) to this file
    /// (replaced), each as its case ends.
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Format::Terminal)]
    format: Format,
}

/// One line of `xarena check --out`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckLine {
    pub label: String,
    pub key: CaseKey,
    pub status: Status,
    pub message: Option<String>,
    pub check: Option<DeviceCheck>,
}

impl CheckLine {
    /// ok, not finite, off (an exact variant beyond its tolerance) or error.
    pub fn verdict(&self) -> &'static str {
        match (&self.status, &self.check) {
            (Status::Ok, _) => "ok",
            (_, Some(c)) if !c.finite => "not finite",
            (_, Some(c)) if c.max_rel_err.is_some() => "off",
            _ => "error",
        }
    }
}

impl CheckArgs {
    /// The cases, every one checked before any runs.
    fn cases(&self) -> Result<Vec<Case>> {
        anyhow::ensure!(
            self.timeout > 0.0 && self.timeout <= crate::sweep::MAX_SECONDS,
            "--timeout must be positive and at most {} s (a week), got {}",
            crate::sweep::MAX_SECONDS,
            self.timeout
        );
        xarena_measure::device::check_threads(self.threads)
            .map_err(|m| anyhow::anyhow!("--threads {m}"))?;
        let mut cases = Vec::new();
        for spec in &self.variants {
            let entry = find(&spec.name)?;
            let scope = match self.scope {
                Some(scope) => scope,
                None if entry
                    .info
                    .scopes
                    .contains(&xarena_variants::Scope::Attention) =>
                {
                    Scope::Attention
                }
                None => match entry.info.scopes.first() {
                    Some(xarena_variants::Scope::Block) => Scope::Block,
                    _ => Scope::Model,
                },
            };
            let sweep = Sweep {
                variants: vec![spec.clone()],
                seq: self.seq.clone(),
                batch: vec![self.batch],
                heads: vec![self.heads],
                head_dim: vec![self.head_dim],
                dtype: self.dtype.clone(),
                device: self.device.clone(),
                // The check runs forward and backward whatever the mode.
                mode: vec![Mode::Train],
                scope: vec![scope],
                causal: vec![self.causal],
                timeout_s: self.timeout,
                threads: self.threads,
                ..Sweep::default()
            };
            cases.extend(sweep.cases()?);
        }
        Ok(cases)
    }
}

/// Runs `xarena check`; an error when any case failed its check.
pub fn command(args: CheckArgs) -> Result<()> {
    let cases = args.cases()?;
    let mut out = match &args.out {
        Some(path) => Some(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        ),
        None => None,
    };
    let mut supervisor = Supervisor::new(std::env::current_exe()?, args.reuse_worker);
    let timeout = Duration::from_secs_f64(args.timeout);
    let mut lines = Vec::new();
    for case in cases {
        let req = Request {
            case: case.clone(),
            timing: TimingConfig::default(),
            threads: args.threads,
            check: true,
            check_only: true,
        };
        let outcome = supervisor.run(&req, timeout);
        let line = CheckLine {
            label: case.label.clone(),
            key: case.key.clone(),
            status: outcome.status.unwrap_or(Status::Error),
            message: outcome.message,
            check: outcome.check,
        };
        if let Some(f) = out.as_mut() {
            writeln!(f, "{}", serde_json::to_string(&line)?)?;
            f.flush()?;
        }
        eprintln!(
            "{}  {}{}",
            case.describe(),
            line.verdict(),
            line.message
                .as_deref()
                .map_or(String::new(), |m| format!(": {m}"))
        );
        lines.push(line);
    }
    if args.format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&lines)?);
    } else {
        let mut t = Grid::new(
            [
                "variant",
                "scope",
                "dtype",
                "device",
                "N checked",
                "check",
                "error vs CPU f32",
                "tolerance",
            ]
            .map(String::from)
            .to_vec(),
        )
        .all_left();
        for l in &lines {
            let c = l.check.as_ref();
            let row: [String; 8] = [
                l.label.clone(),
                l.key.scope.to_string(),
                l.key.dtype.to_string(),
                l.key.device.clone(),
                c.map_or("-".into(), |c| c.seq_len.to_string()),
                l.verdict().to_string(),
                c.and_then(|c| c.max_rel_err)
                    .map_or("-".into(), |e| format!("{e:.2e}")),
                c.and_then(|c| c.tolerance)
                    .map_or("-".into(), |e| format!("{e:.1e}")),
            ];
            t.push(row.map(GridCell::from).to_vec());
        }
        println!("{}", t.render(args.format));
        if args.format.style().is_some() {
            println!(
                "Forward and backward at N checked: every output and gradient finite, and for \
                 exact variants the largest difference of the output and the input's gradient \
                 from the CPU float32 result, relative to that result's largest magnitude."
            );
        }
    }
    let failed: Vec<String> = lines
        .iter()
        .filter(|l| l.status != Status::Ok)
        .map(|l| l.key.describe(&l.label))
        .collect();
    anyhow::ensure!(
        failed.is_empty(),
        "{} of {} check(s) failed: {}",
        failed.len(),
        lines.len(),
        failed.join("; ")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_checks_cuda_only() {
        assert!(Policy::Auto.applies("cuda:0"));
        assert!(Policy::Auto.applies("cuda:3"));
        assert!(!Policy::Auto.applies("cpu"));
        assert!(Policy::On.applies("cpu"));
        assert!(!Policy::Off.applies("cuda:0"));
    }

    #[test]
    fn the_relative_error_is_against_the_largest_magnitude() {
        let r = Tensor::from_slice(&[1.0f32, -4.0, 2.0]);
        let a = Tensor::from_slice(&[1.0f32, -4.0, 2.4]);
        assert!((max_rel_err(&a, &r) - 0.1).abs() < 1e-6);
        assert_eq!(max_rel_err(&r, &r), 0.0);
        let nan = Tensor::from_slice(&[f32::NAN, 0.0, 0.0]);
        assert!(max_rel_err(&nan, &r).is_nan() || max_rel_err(&nan, &r).is_infinite());
    }

    #[test]
    fn a_check_fails_on_a_non_finite_tensor_or_beyond_the_tolerance() {
        let tol = tolerance(Dtype::Bf16, Scope::Attention);
        assert_eq!(
            failure(64, &[], Some(tol / 2.0), Some(tol), Dtype::Bf16),
            None
        );
        // Non-exact variants have no error to judge.
        assert_eq!(failure(64, &[], None, None, Dtype::Bf16), None);
        let off = failure(64, &[], Some(2.0 * tol), Some(tol), Dtype::Bf16).unwrap();
        assert!(off.contains("differs from the CPU float32 result"), "{off}");
        assert!(off.contains("bf16"), "{off}");
        assert!(failure(64, &[], Some(f64::NAN), Some(tol), Dtype::Bf16).is_some());
        let names: Vec<String> = (0..5).map(|i| format!("t{i}")).collect();
        let nan = failure(64, &names, None, Some(tol), Dtype::F16).unwrap();
        assert_eq!(nan, "non-finite values at N=64 in t0, t1, t2 and 2 more");
    }

    #[test]
    fn a_model_allows_its_layers_rounding() {
        for d in [Dtype::Bf16, Dtype::F16, Dtype::F32] {
            assert_eq!(tolerance(d, Scope::Block), tolerance(d, Scope::Attention));
            assert!(tolerance(d, Scope::Model) > tolerance(d, Scope::Block));
        }
        assert!(tolerance(Dtype::F16, Scope::Block) < tolerance(Dtype::Bf16, Scope::Block));
    }
}
