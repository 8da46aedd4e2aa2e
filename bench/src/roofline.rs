//! The roofline's two ceilings, measured once per run for each device and dtype of the
//! sweep: the peak matrix-multiply rate and the copy bandwidth. Each is measured in its
//! own process (`xarena roofline`, started by the supervisor like a worker), so the
//! supervisor holds no CUDA state and a failure costs only that peak.
//!
//! Every case is then placed against them: its achieved FLOP/s as a fraction of the
//! matmul peak, and its arithmetic intensity (FLOPs per byte of minimum memory traffic,
//! see [`min_bytes`]).

use std::io::Read;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tch::{Device, Tensor};
use xarena_reports::schema::{CaseKey, Dtype, Mode, Peak};

use xarena_measure::device::{normalise_device, tch_device, tch_kind};
use xarena_measure::timing::{time_once, Sampler};

/// When the run measures the roofline (`--roofline`, or `roofline` in a sweep file).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum RooflineMode {
    /// On CUDA devices; not on the CPU, where it would add seconds to every quick run.
    #[default]
    Auto,
    On,
    Off,
}

impl RooflineMode {
    pub fn wants(self, device: &str) -> bool {
        match self {
            RooflineMode::On => true,
            RooflineMode::Off => false,
            RooflineMode::Auto => device.starts_with("cuda"),
        }
    }
}

/// Arguments of the hidden `xarena roofline` subcommand.
#[derive(Debug, clap::Args)]
pub struct RooflineArgs {
    /// cpu or cuda:N.
    #[arg(long)]
    pub device: String,
    /// f32, bf16 or f16.
    #[arg(long)]
    pub dtype: String,
    /// LibTorch threads (0: LibTorch's default), as the workers get.
    #[arg(long, default_value_t = 0)]
    pub threads: i32,
    /// Side of the square matrices (default: 8192 on CUDA; on the CPU the first power of
    /// two from 256 whose product takes 50 ms, at most 2048). Also `XARENA_ROOFLINE_SIZE`.
    /// A fixed size scales the copy to 16 x size^2 elements (for quick tests).
    #[arg(long)]
    pub size: Option<i64>,
}

/// Seconds of one timed batch: short operations repeat within it, so a GPU's launch
/// overhead is spread over many.
const BATCH_S: f64 = 0.05;
const REPEATS: usize = 5;
const CUDA_SIZE: i64 = 8192;
const CPU_MAX_SIZE: i64 = 2048;
const CUDA_COPY_BYTES: i64 = 1 << 30;
/// Well beyond any last-level cache, so the copy measures memory.
const CPU_COPY_BYTES: i64 = 256 << 20;

/// The best rate (`work` per run of `op`, per second) over a few batches, after a warm-up.
/// Each batch runs `op` k times between two synchronisations, as the cases' short samples do.
fn best_rate(device: Device, work: f64, mut op: impl FnMut()) -> f64 {
    time_once(device, &mut op);
    let one = time_once(device, &mut op).max(1e-9);
    let k = ((BATCH_S / one).ceil() as u64).clamp(1, 1000);
    let mut sampler = Sampler::new(device);
    (0..REPEATS)
        .map(|_| work / sampler.sample(k, &mut || {}, &mut op).0)
        .fold(0.0, f64::max)
}

fn parse_dtype(s: &str) -> Result<Dtype, String> {
    serde_json::from_value(serde_json::Value::String(s.to_ascii_lowercase()))
        .map_err(|_| format!("--dtype: `{s}` is not f32, bf16 or f16"))
}

/// Measures both ceilings on `device` in `dtype`, in this process.
pub fn measure(device: &str, dtype: Dtype, size: Option<i64>) -> Result<Peak, String> {
    if let Some(n) = size {
        if n < 1 {
            return Err(format!("--size must be at least 1, got {n}"));
        }
    }
    let dev = tch_device(device);
    let kind = tch_kind(dtype);
    let run = || {
        let _guard = tch::no_grad_guard();
        let square = |n: i64| {
            let a = Tensor::randn([n, n], (kind, dev));
            let b = Tensor::randn([n, n], (kind, dev));
            let c = Tensor::empty([n, n], (kind, dev));
            (a, b, c)
        };
        let n = match (size, dev) {
            (Some(n), _) => n,
            (None, Device::Cuda(_)) => CUDA_SIZE,
            (None, _) => {
                let mut n = 256;
                loop {
                    let (a, b, c) = square(n);
                    let mut op = || {
                        let _ = a.mm_out(&c, &b);
                    };
                    time_once(dev, &mut op);
                    if n >= CPU_MAX_SIZE || time_once(dev, &mut op) >= BATCH_S {
                        break n;
                    }
                    n *= 2;
                }
            }
        };
        let (a, b, c) = square(n);
        let flops = 2.0 * (n as f64).powi(3);
        let matmul = best_rate(dev, flops, || {
            let _ = a.mm_out(&c, &b);
        });
        drop((a, b, c));

        let elt = kind.elt_size_in_bytes() as i64;
        let elements = match (size, dev) {
            (Some(n), _) => 16 * n * n,
            (None, Device::Cuda(_)) => CUDA_COPY_BYTES / elt,
            (None, _) => CPU_COPY_BYTES / elt,
        };
        let src = Tensor::ones([elements], (kind, dev));
        let mut dst = Tensor::empty([elements], (kind, dev));
        // Bytes read plus bytes written.
        let copy = best_rate(dev, 2.0 * (elements * elt) as f64, || dst.copy_(&src));
        Peak {
            device: device.to_string(),
            dtype,
            matmul_flops_per_s: matmul,
            matmul_size: n,
            copy_bytes_per_s: copy,
        }
    };
    catch_unwind(AssertUnwindSafe(run)).map_err(|panic| {
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into());
        crate::case::short_message(&msg)
    })
}

/// `xarena roofline`: one device and dtype, the peak printed as one line of JSON.
pub fn command(args: RooflineArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.threads >= 0, "--threads must be >= 0");
    if args.threads > 0 {
        tch::set_num_threads(args.threads);
    }
    let device = normalise_device(&args.device)?;
    let dtype = parse_dtype(&args.dtype).map_err(anyhow::Error::msg)?;
    let size = match args.size {
        Some(n) => Some(n),
        None => match std::env::var("XARENA_ROOFLINE_SIZE") {
            Ok(s) => Some(s.trim().parse().map_err(|_| {
                anyhow::anyhow!("XARENA_ROOFLINE_SIZE: `{s}` is not a whole number")
            })?),
            Err(_) => None,
        },
    };
    let peak = measure(&device, dtype, size).map_err(anyhow::Error::msg)?;
    println!("{}", serde_json::to_string(&peak)?);
    Ok(())
}

/// Measures each (device, dtype) in its own `exe roofline` process, with the workers'
/// threads; one that fails or runs past `timeout` is left out with a warning.
pub fn measure_peaks(
    exe: &Path,
    pairs: &[(String, Dtype)],
    threads: i64,
    timeout: Duration,
) -> Vec<Peak> {
    let mut peaks = Vec::new();
    for (device, dtype) in pairs {
        eprintln!("xarena: roofline on {device} {dtype}...");
        match measure_in_process(exe, device, *dtype, threads, timeout) {
            Ok(p) => {
                eprintln!(
                    "xarena: roofline on {device} {dtype}: matmul {:.3e} FLOP/s (n={}), copy {:.3e} B/s",
                    p.matmul_flops_per_s, p.matmul_size, p.copy_bytes_per_s
                );
                peaks.push(p);
            }
            Err(e) => eprintln!(
                "xarena: roofline on {device} {dtype} failed, its cases get no peak fraction: {e}"
            ),
        }
    }
    peaks
}

fn measure_in_process(
    exe: &Path,
    device: &str,
    dtype: Dtype,
    threads: i64,
    timeout: Duration,
) -> Result<Peak, String> {
    let mut child = crate::worker::spawn_tied(
        Command::new(exe)
            .args(["roofline", "--device", device, "--dtype"])
            .arg(dtype.to_string())
            .arg("--threads")
            .arg(threads.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
    .map_err(|e| format!("cannot start `xarena roofline`: {e}"))?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no result within {:.0} s", timeout.as_secs_f64()));
            }
            Err(e) => return Err(e.to_string()),
        }
    };
    // The process has ended: what it wrote (a line, or an error) is in the pipes.
    let (mut out, mut err) = (String::new(), String::new());
    if let Some(mut s) = child.stdout.take() {
        let _ = s.read_to_string(&mut out);
    }
    if let Some(mut s) = child.stderr.take() {
        let _ = s.read_to_string(&mut err);
    }
    if !status.success() {
        return Err(format!(
            "{status}: {}",
            crate::case::short_message(err.trim())
        ));
    }
    let line = out
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("");
    let peak: Peak = serde_json::from_str(line).map_err(|e| format!("unreadable result: {e}"))?;
    let positive = |x: f64| x.is_finite() && x > 0.0;
    if !(positive(peak.matmul_flops_per_s) && positive(peak.copy_bytes_per_s)) {
        return Err(format!("implausible result: {line}"));
    }
    Ok(peak)
}

/// The peak for a case's device and dtype.
pub fn peak_for<'a>(peaks: &'a [Peak], device: &str, dtype: Dtype) -> Option<&'a Peak> {
    peaks
        .iter()
        .find(|p| p.device == device && p.dtype == dtype)
}

/// Achieved FLOP/s over the matmul peak.
pub fn peak_fraction(flops_per_s: Option<f64>, peak: Option<&Peak>) -> Option<f64> {
    let (rate, peak) = (flops_per_s?, peak?.matmul_flops_per_s);
    (rate.is_finite() && peak.is_finite() && peak > 0.0).then(|| rate / peak)
}

fn elt_bytes(dtype: Dtype) -> u64 {
    match dtype {
        Dtype::F32 => 4,
        Dtype::Bf16 | Dtype::F16 => 2,
    }
}

/// The least memory traffic one iteration can have: every tensor it must read once, and
/// every tensor it must write once, with nothing re-read (as if all intermediates stayed
/// on chip).
/// - forward: `static_bytes` (parameters, buffers, input) + the output, the size of the
///   input (these layers map B x N x d to B x N x d);
/// - train: `static_bytes` (which here also holds the output gradient) + the output, the
///   input's gradient (both the size of the input) and the parameters' gradients;
/// - decode: the parameters and buffers, the new token and its output, and the decoding
///   state read (`static_bytes` less the context, which the step does not read, plus
///   `state_bytes` and a token); unknown without the state's size.
pub fn min_bytes(
    key: &CaseKey,
    static_bytes: u64,
    params: Option<u64>,
    state_bytes: Option<u64>,
) -> Option<u64> {
    let elt = elt_bytes(key.dtype);
    let width = u64::try_from(key.heads * key.head_dim).ok()?;
    let token = u64::try_from(key.batch).ok()? * width * elt;
    let input = token * u64::try_from(key.seq_len).ok()?;
    match key.mode {
        Mode::Forward => Some(static_bytes + input),
        Mode::Train => Some(static_bytes + 2 * input + params? * elt),
        Mode::Decode => Some(static_bytes.checked_sub(input)? + state_bytes? + token),
    }
}

/// FLOPs per byte of minimum traffic.
pub fn intensity(flops: Option<u64>, min_bytes: Option<u64>) -> Option<f64> {
    match (flops?, min_bytes?) {
        (f, b) if f > 0 && b > 0 => Some(f as f64 / b as f64),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(mode: Mode, dtype: Dtype) -> CaseKey {
        CaseKey {
            variant: "vanilla".into(),
            params: Default::default(),
            seq_len: 128,
            batch: 2,
            heads: 4,
            head_dim: 16,
            causal: false,
            dtype,
            device: "cpu".into(),
            mode,
            scope: xarena_reports::schema::Scope::Attention,
        }
    }

    fn peak(device: &str, dtype: Dtype, flops: f64) -> Peak {
        Peak {
            device: device.into(),
            dtype,
            matmul_flops_per_s: flops,
            matmul_size: 1024,
            copy_bytes_per_s: 1e10,
        }
    }

    #[test]
    fn peak_fraction_divides_by_the_matching_peak() {
        let peaks = vec![
            peak("cpu", Dtype::F32, 1e11),
            peak("cuda:0", Dtype::Bf16, 8e14),
            peak("cuda:1", Dtype::Bf16, 4e14),
        ];
        let p = |d, t| peak_for(&peaks, d, t);
        assert_eq!(
            peak_fraction(Some(2.5e10), p("cpu", Dtype::F32)),
            Some(0.25)
        );
        assert_eq!(
            peak_fraction(Some(2e14), p("cuda:1", Dtype::Bf16)),
            Some(0.5)
        );
        assert_eq!(
            peak_fraction(Some(2e14), p("cuda:0", Dtype::Bf16)),
            Some(0.25)
        );
        // No peak for the dtype or device, or no rate: nothing.
        assert_eq!(peak_fraction(Some(1e9), p("cpu", Dtype::Bf16)), None);
        assert_eq!(peak_fraction(None, p("cpu", Dtype::F32)), None);
        assert_eq!(
            peak_fraction(Some(1e9), Some(&peak("cpu", Dtype::F32, 0.0))),
            None
        );
    }

    #[test]
    fn intensity_counts_the_minimum_traffic_per_mode() {
        // B x N x d = 2 x 128 x 64 in f32: 65536 bytes of input, and of output.
        let input = 2 * 128 * 64 * 4;
        let fwd = key(Mode::Forward, Dtype::F32);
        assert_eq!(
            min_bytes(&fwd, 100_000, Some(10), None),
            Some(100_000 + input)
        );
        // Train writes the output, the input's gradient and 10 parameter gradients.
        let train = key(Mode::Train, Dtype::F32);
        assert_eq!(
            min_bytes(&train, 100_000, Some(10), None),
            Some(100_000 + 2 * input + 40)
        );
        assert_eq!(min_bytes(&train, 100_000, None, None), None);
        // bf16 halves the activations.
        let half = key(Mode::Forward, Dtype::Bf16);
        assert_eq!(min_bytes(&half, 1000, None, None), Some(1000 + input / 2));
        // Decode: not the context, but the state and one token in and out.
        let dec = key(Mode::Decode, Dtype::F32);
        let token = 2 * 64 * 4;
        assert_eq!(
            min_bytes(&dec, input + 5000, None, Some(7000)),
            Some(5000 + 7000 + token)
        );
        assert_eq!(min_bytes(&dec, input + 5000, None, None), None);
        assert_eq!(intensity(Some(1_000_000), Some(250_000)), Some(4.0));
        assert_eq!(intensity(Some(0), Some(250_000)), None);
        assert_eq!(intensity(None, Some(250_000)), None);
    }

    #[test]
    fn auto_measures_cuda_only() {
        assert!(RooflineMode::Auto.wants("cuda:0") && !RooflineMode::Auto.wants("cpu"));
        assert!(RooflineMode::On.wants("cpu") && !RooflineMode::Off.wants("cuda:1"));
    }

    #[test]
    fn a_small_cpu_roofline_is_positive() {
        let p = measure("cpu", Dtype::F32, Some(64)).unwrap();
        assert_eq!((p.device.as_str(), p.matmul_size), ("cpu", 64));
        assert!(p.matmul_flops_per_s > 0.0 && p.matmul_flops_per_s.is_finite());
        assert!(p.copy_bytes_per_s > 0.0 && p.copy_bytes_per_s.is_finite());
        assert!(measure("cpu", Dtype::F32, Some(0)).is_err());
        assert!(parse_dtype("f64").is_err());
        assert_eq!(parse_dtype("BF16"), Ok(Dtype::Bf16));
    }
}
