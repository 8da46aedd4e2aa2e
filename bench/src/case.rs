//! Running one case inside a worker: build, warm up, measure memory, time.

use std::panic::{catch_unwind, AssertUnwindSafe};

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};
use xarena_reports::schema::{Latency, Memory, Mode, Status};
use xarena_variants::{build_layer, Layer, VariantSpec};

use crate::measure::{memory, timing, timing::TimingConfig};
use crate::sweep::{tch_device, tch_kind, variant_scope, Case};

/// What the supervisor sends a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub case: Case,
    pub timing: TimingConfig,
    /// 0 keeps LibTorch's default.
    pub threads: i64,
}

/// What a worker sends back.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Outcome {
    pub status: Option<Status>,
    pub message: Option<String>,
    pub latency: Option<Latency>,
    pub memory: Option<Memory>,
    pub flops: Option<u64>,
    pub params: Option<u64>,
    pub backend: Option<String>,
}

impl Outcome {
    pub fn failed(status: Status, message: impl Into<String>) -> Outcome {
        Outcome {
            status: Some(status),
            message: Some(message.into()),
            ..Default::default()
        }
    }
}

/// The first line of a LibTorch error, without its C++ backtrace.
pub fn short_message(msg: &str) -> String {
    let msg = msg
        .split("\nException raised from")
        .next()
        .unwrap_or(msg)
        .trim();
    let msg = msg
        .strip_prefix("called `Result::unwrap()` on an `Err` value: ")
        .unwrap_or(msg);
    msg.chars().take(2000).collect()
}

/// Allocation failures, as LibTorch words them on the CPU and on CUDA.
pub fn is_oom(msg: &str) -> bool {
    let m = msg.to_ascii_lowercase();
    m.contains("out of memory")
        || m.contains("can't allocate memory")
        || m.contains("cannot allocate memory")
        || m.contains("failed to allocate")
}

fn bytes(t: &Tensor) -> u64 {
    (t.numel() * t.kind().elt_size_in_bytes()) as u64
}

/// Seed from the case id, so a case draws the same weights and inputs in every run.
fn seed(case: &Case) -> i64 {
    i64::from_str_radix(&case.id[..12], 16).unwrap_or(0)
}

/// Runs one case and never panics: LibTorch errors (which tch raises as panics) become an
/// `oom` or `error` outcome.
pub fn run(req: &Request) -> Outcome {
    match catch_unwind(AssertUnwindSafe(|| run_inner(req))) {
        Ok(Ok(outcome)) => outcome,
        Ok(Err(msg)) => Outcome::failed(Status::Error, msg),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "panic".into());
            let status = if is_oom(&msg) {
                Status::Oom
            } else {
                Status::Error
            };
            Outcome::failed(status, short_message(&msg))
        }
    }
}

fn run_inner(req: &Request) -> Result<Outcome, String> {
    let case = &req.case;
    let key = &case.key;
    if req.threads > 0 {
        tch::set_num_threads(req.threads as i32);
    }
    let device = tch_device(&key.device);
    let kind = tch_kind(key.dtype);
    let shape = case.shape();

    let mut vs = nn::VarStore::new(device);
    vs.set_kind(kind);
    let spec = VariantSpec {
        name: key.variant.clone(),
        params: key.params.clone(),
    };
    let seed = seed(case);
    tch::manual_seed(seed);
    let layer = build_layer(&spec, &shape, variant_scope(key.scope), vs.root())
        .map_err(|e| e.to_string())?;
    let x = xarena_datasets::inputs::hidden_states(
        key.batch,
        key.seq_len,
        shape.d_model(),
        kind,
        device,
        seed,
    );
    let params: Vec<Tensor> = vs.trainable_variables();
    let n_params: u64 = params.iter().map(|p| p.numel() as u64).sum();
    let mut static_bytes: u64 = vs.variables().values().map(bytes).sum::<u64>() + bytes(&x);

    let flops = layer.flops();
    let mut step: Box<dyn FnMut()> = match key.mode {
        Mode::Forward => Box::new(forward_step(layer.as_ref(), x)),
        Mode::Train => {
            // The output gradient is fixed random data, drawn once.
            let g = Tensor::randn(x.size(), (kind, device));
            static_bytes += bytes(&g);
            Box::new(train_step(layer.as_ref(), x, g, params))
        }
    };

    let (per_iter, warmup) = timing::warm_up(device, &req.timing, &mut step);
    let probe = memory::probe(device, &mut step)?;
    let iterations = timing::iterations_for(&req.timing, per_iter);
    let latency = timing::measure(device, iterations, warmup, &mut step);
    drop(step);

    Ok(Outcome {
        status: Some(Status::Ok),
        message: None,
        flops: Some(match key.mode {
            Mode::Forward => flops.forward,
            Mode::Train => flops.train(),
        }),
        latency: Some(latency),
        memory: Some(Memory {
            peak_bytes: probe.peak_bytes,
            baseline_bytes: probe.baseline_bytes,
            static_bytes,
            method: memory::method(device).into(),
        }),
        params: Some(n_params),
        backend: layer.backend(),
    })
}

/// Inference: the forward pass under no_grad; the output is dropped inside the step.
fn forward_step(layer: &dyn Layer, x: Tensor) -> impl FnMut() + '_ {
    move || {
        tch::no_grad(|| {
            let _ = layer.forward(&x);
        })
    }
}

/// Forward and backward: gradients of the parameters and the input, returned rather than
/// accumulated, so every iteration does the same work.
fn train_step(layer: &dyn Layer, x: Tensor, g: Tensor, params: Vec<Tensor>) -> impl FnMut() + '_ {
    let x = x.set_requires_grad(true);
    let mut wrt = params;
    wrt.push(x.shallow_clone());
    move || {
        let y = layer.forward(&x);
        let loss = (y * &g).sum(Kind::Float);
        let _ = Tensor::run_backward(&[loss], &wrt, false, false);
    }
}
