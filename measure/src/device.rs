//! Devices and threads as the command line names them: `cpu`, `cuda`, `cuda:N`, the
//! dtypes as LibTorch kinds, and the bound on LibTorch's threads. Shared by every command
//! that computes (run, check, train, lra, kv).

use xarena_schema::Dtype;

/// A device the command line named that this machine cannot give.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("`device`: {0}")]
    Invalid(String),
    #[error("device `{0}` was asked for, but CUDA is not available to this binary (no GPU or driver, or LibTorch without CUDA)")]
    NoCuda(String),
}

/// LibTorch threads: 0 (its default) up to 4 per CPU of this machine; more only
/// oversubscribe the cores and make no progress.
pub fn check_threads(threads: i64) -> Result<(), String> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as i64;
    if !(0..=4 * cpus).contains(&threads) {
        return Err(format!(
            "must be 0 (LibTorch's default) to {} (4 per CPU, {cpus} CPU(s) here), got {threads}",
            4 * cpus
        ));
    }
    Ok(())
}

/// `cpu`, `cuda` (= `cuda:0`) or `cuda:N`; CUDA must be present.
pub fn normalise_device(d: &str) -> Result<String, DeviceError> {
    let d = d.trim().to_ascii_lowercase();
    if d == "cpu" {
        return Ok(d);
    }
    let index = match d.as_str() {
        "cuda" => Some(0),
        _ => d
            .strip_prefix("cuda:")
            .and_then(|i| i.parse::<usize>().ok()),
    };
    let Some(index) = index else {
        return Err(DeviceError::Invalid(format!(
            "`{d}`: expected cpu, cuda or cuda:N"
        )));
    };
    let name = format!("cuda:{index}");
    if !tch::Cuda::is_available() {
        return Err(DeviceError::NoCuda(name));
    }
    let count = tch::Cuda::device_count() as usize;
    if index >= count {
        return Err(DeviceError::Invalid(format!(
            "`{name}`: only {count} CUDA device(s)"
        )));
    }
    Ok(name)
}

pub fn tch_device(d: &str) -> tch::Device {
    match d.strip_prefix("cuda:").and_then(|i| i.parse().ok()) {
        Some(i) => tch::Device::Cuda(i),
        None => tch::Device::Cpu,
    }
}

pub fn tch_kind(d: Dtype) -> tch::Kind {
    match d {
        Dtype::F32 => tch::Kind::Float,
        Dtype::Bf16 => tch::Kind::BFloat16,
        Dtype::F16 => tch::Kind::Half,
    }
}
