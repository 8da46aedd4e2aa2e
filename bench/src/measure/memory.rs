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

/// glibc's mmap threshold at its dynamic maximum on 64-bit Linux, and the trim threshold
/// that goes with it.
const MMAP_THRESHOLD: i32 = 32 << 20;
const TRIM_THRESHOLD: i32 = 64 << 20;

/// Puts glibc's allocator in the state a long-running process reaches.
///
/// glibc serves large blocks with mmap and raises that threshold as blocks are freed, up
/// to 32 MiB, trimming the heap's top above twice that. A fresh worker starts at 128 KiB,
/// and LibTorch's 64-byte-aligned blocks fragment the heap, so every iteration faulted its
/// pages in again: 8,160 page faults per iteration of `vanilla` at N = 512 without this,
/// 0 with it (bench/tests/allocator.rs), and about 30% more time than the same
/// computation in a warmed-up PyTorch process. Fixing both thresholds at the dynamic
/// maximum removes that start-up artefact; a user's MALLOC_*_ settings win.
pub fn steady_state_allocator() {
    let user_set = ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"]
        .iter()
        .any(|v| std::env::var_os(v).is_some());
    if !user_set {
        // SAFETY: mallopt only changes allocator parameters; called before any tensor work.
        unsafe {
            libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD);
            libc::mallopt(libc::M_TRIM_THRESHOLD, TRIM_THRESHOLD);
        }
    }
}

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
