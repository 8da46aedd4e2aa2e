//! Running one case inside a worker: build, warm up, measure memory, time.

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};
use xarena_reports::schema::{DeviceCheck, Latency, Memory, Mode, Status};
use xarena_schema::record::MachineState;
use xarena_variants::{build_layer, Layer, LayerDecoder, VariantSpec};

use crate::sweep::Case;
use xarena_measure::device::{tch_device, tch_kind};
use xarena_measure::{memory, timing, timing::TimingConfig};
use xarena_variants::attention::tensor_bytes;

/// What the supervisor sends a worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Request {
    pub case: Case,
    pub timing: TimingConfig,
    /// 0 keeps LibTorch's default.
    pub threads: i64,
    /// Run the device check (bench/src/check.rs) first; a case that fails it is not timed.
    #[serde(default)]
    pub check: bool,
    /// Stop after the check (`xarena check`).
    #[serde(default)]
    pub check_only: bool,
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
    pub state_bytes: Option<u64>,
    pub check: Option<DeviceCheck>,
    /// The machine around the timed samples.
    #[serde(default)]
    pub machine: Option<MachineState>,
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

/// The first line of a LibTorch error, without its C++ backtrace (which starts with
/// "Exception raised from" or, for an enforce failure, "frame #0"; tch's `Torch("...")`
/// debug form escapes the newline before it).
pub fn short_message(msg: &str) -> String {
    let cut = [
        "\nException raised from",
        "\\nException raised from",
        "\nframe #",
        "\\nframe #",
    ]
    .iter()
    .filter_map(|m| msg.find(m))
    .min()
    .unwrap_or(msg.len());
    let msg = msg[..cut].trim();
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
        // Rust's allocation-failure abort and C++'s, under the worker's address-space cap.
        || (m.contains("memory allocation of") && m.contains("failed"))
        || m.contains("bad_alloc")
}

/// Seed from the case id, so a case draws the same weights and inputs in every run.
pub(crate) fn seed(case: &Case) -> i64 {
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

/// A case built and ready to run: its layer, inputs and the tensors a step needs.
/// Shared by the worker and the criterion benches, so both run the same step.
pub struct Prepared {
    layer: Box<dyn Layer>,
    /// Decode mode: the layer's decoding state after the context, and the next token.
    decoder: Option<(RefCell<Box<dyn LayerDecoder>>, Tensor)>,
    /// Owns the parameters the layer uses.
    _vs: nn::VarStore,
    mode: Mode,
    x: Tensor,
    /// The output gradient (train): fixed random data, drawn once.
    g: Option<Tensor>,
    /// What train differentiates: the parameters and the input.
    wrt: Vec<Tensor>,
    pub device: tch::Device,
    pub params: u64,
    /// Parameters, buffers and inputs, counted from the tensors.
    pub static_bytes: u64,
}

impl Prepared {
    pub fn new(case: &Case) -> Result<Prepared, String> {
        let key = &case.key;
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
        let layer = build_layer(&spec, &shape, key.scope, vs.root()).map_err(|e| e.to_string())?;
        let x = xarena_datasets::inputs::hidden_states(
            key.batch,
            key.seq_len,
            shape.d_model(),
            kind,
            device,
            seed,
        );
        let params = vs.trainable_variables();
        let n_params = params.iter().map(|p| p.numel() as u64).sum();
        let mut static_bytes =
            vs.variables().values().map(tensor_bytes).sum::<u64>() + tensor_bytes(&x);
        let mut decoder = None;
        let (x, g, wrt) = match key.mode {
            Mode::Forward => (x, None, Vec::new()),
            Mode::Decode => {
                // x is the context; the state after it is built once, untimed, and every
                // timed step starts from it again (one token after exactly N).
                let state = tch::no_grad(|| layer.decoder(&x, 1))
                    .ok_or_else(|| format!("variant `{}` has no decoder", key.variant))?;
                let token = xarena_datasets::inputs::hidden_states(
                    key.batch,
                    1,
                    shape.d_model(),
                    kind,
                    device,
                    seed.wrapping_add(1),
                );
                static_bytes += tensor_bytes(&token);
                decoder = Some((RefCell::new(state), token));
                (x, None, Vec::new())
            }
            Mode::Train => {
                let g = Tensor::randn(x.size(), (kind, device));
                static_bytes += tensor_bytes(&g);
                let x = x.set_requires_grad(true);
                let mut wrt = params;
                wrt.push(x.shallow_clone());
                (x, Some(g), wrt)
            }
        };
        Ok(Prepared {
            layer,
            decoder,
            _vs: vs,
            mode: key.mode,
            x,
            g,
            wrt,
            device,
            params: n_params,
            static_bytes,
        })
    }

    /// One iteration. Forward: the layer under no_grad. Train: forward and backward, the
    /// gradients returned rather than accumulated, so every iteration does the same work.
    /// Outputs are dropped inside the step, so each iteration allocates what it needs.
    pub fn step(&self) {
        match (self.mode, &self.g, &self.decoder) {
            (Mode::Train, Some(g), _) => {
                let y = self.layer.forward(&self.x);
                let loss = (y * g).sum(Kind::Float);
                let _ = Tensor::run_backward(&[loss], &self.wrt, false, false);
            }
            (Mode::Decode, _, Some((state, token))) => tch::no_grad(|| {
                let _ = state.borrow_mut().step(token);
            }),
            _ => tch::no_grad(|| {
                let _ = self.layer.forward(&self.x);
            }),
        }
    }

    /// Before each step, outside the timed region: decode mode returns its state to the
    /// end of the context.
    pub fn setup(&self) {
        if let Some((state, _)) = &self.decoder {
            state.borrow_mut().reset();
        }
    }

    /// Decode mode: bytes of the decoding state after the context.
    pub fn state_bytes(&self) -> Option<u64> {
        self.decoder
            .as_ref()
            .map(|(state, _)| state.borrow().state_bytes())
    }

    /// FLOPs of one step in this case's mode.
    pub fn step_flops(&self, context: i64) -> Option<u64> {
        match self.mode {
            Mode::Forward => Some(self.layer.flops().forward),
            Mode::Train => Some(self.layer.flops().train()),
            Mode::Decode => self.layer.decode_flops(context).map(|f| f.forward),
        }
    }

    pub fn layer(&self) -> &dyn Layer {
        self.layer.as_ref()
    }
}

fn run_inner(req: &Request) -> Result<Outcome, String> {
    if req.threads > 0 {
        tch::set_num_threads(req.threads as i32);
    }
    let case = &req.case;
    let check = if req.check || req.check_only {
        let (check, failure) = crate::check::before_timing(case);
        if let Some(message) = failure {
            return Ok(Outcome {
                check,
                ..Outcome::failed(Status::Error, message)
            });
        }
        check
    } else {
        None
    };
    if req.check_only {
        return Ok(Outcome {
            status: Some(Status::Ok),
            check,
            ..Default::default()
        });
    }
    let slowdown = crate::worker::injected_slowdown(&case.key.variant)?;
    let prepared = Prepared::new(case)?;
    let device = prepared.device;
    let mut step = || match slowdown {
        None => prepared.step(),
        Some(f) => {
            let t = std::time::Instant::now();
            prepared.step();
            timing::synchronize(device);
            let extra = t.elapsed().mul_f64(f);
            let t = std::time::Instant::now();
            while t.elapsed() < extra {
                std::hint::spin_loop();
            }
        }
    };
    let mut setup = || prepared.setup();

    let (per_iter, warmup) = timing::warm_up(device, &req.timing, &mut setup, &mut step);
    prepared.setup();
    let probe = memory::probe(device, || prepared.step())?;
    // Decode resets its state before every step: its samples stay one iteration each.
    let batchable = case.key.mode != Mode::Decode;
    let per_sample = timing::per_sample_for(&req.timing, device, per_iter, batchable);
    let samples = timing::iterations_for(&req.timing, per_iter, per_sample);
    let around = xarena_measure::machine::Snapshot::take();
    let latency = timing::measure(device, samples, per_sample, warmup, &mut setup, &mut step);
    let machine = around.since();

    prepared.setup();
    Ok(Outcome {
        status: Some(Status::Ok),
        message: None,
        flops: prepared.step_flops(case.key.seq_len),
        state_bytes: prepared.state_bytes(),
        latency: Some(latency),
        memory: Some(Memory {
            peak_bytes: probe.peak_bytes,
            baseline_bytes: probe.baseline_bytes,
            static_bytes: prepared.static_bytes,
            method: memory::method(device).into(),
        }),
        params: Some(prepared.params),
        backend: prepared.layer().backend(),
        check,
        machine: Some(machine),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_lose_the_backtrace_and_allocation_failures_are_oom() {
        let torch = "called `Result::unwrap()` on an `Err` value: Torch(\"[enforce fail at \
                     alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory\\nframe #0: \
                     c10::ThrowEnforceNotMet\\nframe #1: ...\")";
        let short = short_message(torch);
        assert!(short.ends_with("can't allocate memory"), "{short}");
        assert!(is_oom(&short));
        assert_eq!(
            short_message("a\nException raised from x\nframe #0: y"),
            "a"
        );
        assert!(is_oom("memory allocation of 5000000000 bytes failed"));
        assert!(is_oom(
            "terminate called after throwing an instance of 'std::bad_alloc'"
        ));
        assert!(!is_oom("shape mismatch"));
    }
}
