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

/// How much more memory this process can take, and what sets that bound.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Headroom {
    pub bytes: u64,
    /// The bound, in words (names the file or limit it comes from).
    pub limit: String,
}

/// The least of: the system's available memory (`MemAvailable`), what the memory limit of
/// this process's cgroup and of each cgroup above it leaves (v2 `memory.max`, v1
/// `memory.limit_in_bytes`; reclaimable page cache counts as free), and what the
/// address-space limit (`RLIMIT_AS`) leaves above the process's present size.
pub fn available_memory() -> Headroom {
    let mut sys = sysinfo::System::new();
    sys.refresh_memory();
    let mut best = Headroom {
        bytes: sys.available_memory(),
        limit: "the available memory (MemAvailable)".into(),
    };
    let mut consider = |h: Headroom| {
        if h.bytes < best.bytes {
            best = h;
        }
    };
    for h in cgroup_headroom() {
        consider(h);
    }
    if let Some(h) = rlimit_as_headroom() {
        consider(h);
    }
    best
}

/// [`available_memory`] in bytes.
pub fn available_memory_bytes() -> u64 {
    available_memory().bytes
}

fn read_u64(path: &std::path::Path) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn stat_field(dir: &std::path::Path, key: &str) -> Option<u64> {
    let stat = fs::read_to_string(dir.join("memory.stat")).ok()?;
    stat.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// The headroom under each memory limit on the way from this process's cgroup up to the
/// root (a parent's limit binds its children too).
fn cgroup_headroom() -> Vec<Headroom> {
    let Ok(own) = fs::read_to_string("/proc/self/cgroup") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        // (root, limit file, usage file, inactive page cache key in memory.stat)
        let layout = if controllers.is_empty() {
            ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
                .into_iter()
                .map(|r| (r, "memory.max", "memory.current", "inactive_file"))
                .collect::<Vec<_>>()
        } else if controllers.split(',').any(|c| c == "memory") {
            vec![(
                "/sys/fs/cgroup/memory",
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
                "total_inactive_file",
            )]
        } else {
            continue;
        };
        for (root, limit_file, usage_file, inactive) in layout {
            let root = std::path::Path::new(root);
            let mut dir = root.join(path.trim_start_matches('/'));
            // In a container the path may not be visible under the root: then the root
            // is this process's cgroup.
            if !dir.is_dir() {
                dir = root.to_path_buf();
            }
            loop {
                let limit_path = dir.join(limit_file);
                // "max" (v2) does not parse; v1 writes a huge number for no limit.
                if let (Some(limit), Some(usage)) =
                    (read_u64(&limit_path), read_u64(&dir.join(usage_file)))
                {
                    if limit < 1 << 60 {
                        let used = usage.saturating_sub(stat_field(&dir, inactive).unwrap_or(0));
                        found.push(Headroom {
                            bytes: limit.saturating_sub(used),
                            limit: format!(
                                "the cgroup memory limit of {} ({}) less what the cgroup uses",
                                xarena_reports::table::format_bytes(limit),
                                limit_path.display()
                            ),
                        });
                    }
                }
                if dir == root || !dir.pop() {
                    break;
                }
            }
        }
    }
    found
}

/// What `RLIMIT_AS` leaves above the process's present virtual size, if it is set.
fn rlimit_as_headroom() -> Option<Headroom> {
    let mut lim: libc::rlimit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the structure passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut lim) } != 0
        || lim.rlim_cur == libc::RLIM_INFINITY
    {
        return None;
    }
    let size = status_kib("VmSize:").ok()? * 1024;
    let limit = lim.rlim_cur;
    Some(Headroom {
        bytes: limit.saturating_sub(size),
        limit: format!(
            "the address-space limit (RLIMIT_AS, ulimit -v) of {} less the process's {}",
            xarena_reports::table::format_bytes(limit),
            xarena_reports::table::format_bytes(size)
        ),
    })
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

    #[test]
    fn available_memory_is_bounded_by_the_system_and_named() {
        let mut sys = sysinfo::System::new();
        sys.refresh_memory();
        let h = available_memory();
        assert!(h.bytes > 0, "{h:?}");
        assert!(h.bytes <= sys.total_memory(), "{h:?}");
        assert!(!h.limit.is_empty());
    }
}
