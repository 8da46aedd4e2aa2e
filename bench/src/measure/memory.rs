//! Peak memory of one iteration.
//!
//! CPU: the process's resident set. Freed heap memory is handed back first
//! (`malloc_trim`), so the baseline is what is live; the kernel's high-water mark is reset
//! (`5` into `/proc/self/clear_refs`); after the iteration, VmHWM minus the baseline is
//! the iteration's working memory. Page-granular, and it counts every allocation,
//! LibTorch's or not.
//!
//! CUDA: the caching allocator's allocated bytes (not its reserved pool), peak reset
//! before the iteration, minus what was allocated when it began.

use std::fs;

use tch::Device;

use super::shim;

/// Memory held when the probe began and the peak above it.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    pub baseline_bytes: u64,
    pub peak_bytes: u64,
}

pub fn method(device: Device) -> &'static str {
    match device {
        Device::Cuda(_) => "cuda-allocator",
        _ => "cpu-rss",
    }
}

fn status_kib(field: &str) -> Result<u64, String> {
    let status = fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("reading /proc/self/status: {e}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no {field} in /proc/self/status"))
}

/// The process's resident set now, in bytes.
pub fn resident_bytes() -> Result<u64, String> {
    Ok(status_kib("VmRSS:")? * 1024)
}

fn cpu_probe(f: impl FnOnce()) -> Result<Probe, String> {
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
    let baseline = resident_bytes()?;
    fs::write("/proc/self/clear_refs", "5")
        .map_err(|e| format!("resetting the peak RSS (/proc/self/clear_refs): {e}"))?;
    f();
    let hwm = status_kib("VmHWM:")? * 1024;
    Ok(Probe {
        baseline_bytes: baseline,
        peak_bytes: hwm.saturating_sub(baseline),
    })
}

fn cuda_probe(index: usize, f: impl FnOnce()) -> Result<Probe, String> {
    tch::Cuda::synchronize(index as i64);
    let (baseline, _) = shim::cuda_memory(index)?;
    shim::cuda_reset_peak(index)?;
    f();
    tch::Cuda::synchronize(index as i64);
    let (_, peak) = shim::cuda_memory(index)?;
    Ok(Probe {
        baseline_bytes: baseline,
        peak_bytes: peak.saturating_sub(baseline),
    })
}

/// Runs `f` once and measures its peak memory on `device`.
pub fn probe(device: Device, f: impl FnOnce()) -> Result<Probe, String> {
    match device {
        Device::Cuda(i) => cuda_probe(i, f),
        _ => cpu_probe(f),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_probe_sees_a_large_allocation_and_not_a_small_one() {
        let mib: u64 = 1 << 20;
        let big = probe(Device::Cpu, || {
            let t = tch::Tensor::ones([(16 * mib) as i64], (tch::Kind::Float, Device::Cpu));
            assert_eq!(t.numel() as u64, 16 * mib);
        })
        .unwrap();
        // 64 MiB touched: the peak sees at least most of it.
        assert!(big.peak_bytes >= 60 * mib, "{big:?}");
        let small = probe(Device::Cpu, || {
            let _ = tch::Tensor::ones([16], (tch::Kind::Float, Device::Cpu));
        })
        .unwrap();
        assert!(small.peak_bytes < 8 * mib, "{small:?}");
    }
}
