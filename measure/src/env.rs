//! The machine and software a run measures on, captured once per run.

use std::process::Command;

use nvml_wrapper::Nvml;
use sysinfo::{CpuRefreshKind, MemoryRefreshKind, RefreshKind, System};
use xarena_reports::schema::{Environment, Gpu};

use super::shim;

/// The git commit of the source tree the binary was run from: `XARENA_GIT_COMMIT` if set
/// (for binaries carried to a machine without the checkout), else `git rev-parse HEAD`
/// in the crate's directory, marked `-dirty` when the tree has changes.
fn git_commit() -> Option<String> {
    if let Ok(c) = std::env::var("XARENA_GIT_COMMIT") {
        return Some(c);
    }
    let dir = env!("CARGO_MANIFEST_DIR");
    let git = |args: &[&str]| {
        Command::new("git")
            .args(["-C", dir])
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let head = git(&["rev-parse", "HEAD"])?;
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"])
        .map(|s| !s.is_empty())
        .unwrap_or(false);
    Some(if dirty { format!("{head}-dirty") } else { head })
}

/// NVIDIA's view of the GPUs, through NVML (every GPU, in PCI order; a record's `gpu`
/// names the one its case ran on). A machine without the driver has no handle: NVML's
/// init returned an error, never a panic, and the run goes on without GPU details.
fn nvidia(nvml: Option<&Nvml>) -> (Vec<Gpu>, Option<String>, Option<String>) {
    let Some(nvml) = nvml else {
        return (Vec::new(), None, None);
    };
    let count = nvml.device_count().unwrap_or(0);
    let gpus = (0..count)
        .filter_map(|i| {
            let d = nvml.device_by_index(i).ok()?;
            Some(Gpu {
                index: i,
                name: d.name().unwrap_or_else(|_| "unknown".into()),
                memory_bytes: d.memory_info().ok().map(|m| m.total),
            })
        })
        .collect();
    let driver = nvml.sys_driver_version().ok();
    let cuda = nvml
        .sys_cuda_driver_version()
        .ok()
        .map(|v| format!("{}.{}", v / 1000, (v % 1000) / 10));
    (gpus, driver, cuda)
}

pub fn capture(threads: i64) -> Environment {
    capture_with(threads, Nvml::init().ok().as_ref())
}

/// [`capture`] with the run's NVML handle (`None`: no driver), so a run initialises NVML
/// once.
pub fn capture_with(threads: i64, nvml: Option<&Nvml>) -> Environment {
    let sys = System::new_with_specifics(
        RefreshKind::nothing()
            .with_cpu(CpuRefreshKind::nothing())
            .with_memory(MemoryRefreshKind::nothing().with_ram()),
    );
    let cpu_model = sys
        .cpus()
        .first()
        .map(|c| c.brand().trim().to_string())
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| "unknown".into());
    let cuda_available = tch::Cuda::is_available();
    let (gpus, nvidia_driver, cuda_driver) = nvidia(nvml);
    Environment {
        hostname: System::host_name(),
        os: System::long_os_version(),
        cpu_model,
        physical_cores: System::physical_core_count(),
        logical_cpus: sys.cpus().len(),
        memory_bytes: sys.total_memory(),
        threads,
        torch_version: shim::torch_version(),
        cuda_available,
        cuda_runtime: if cuda_available {
            shim::cuda_runtime_version()
        } else {
            None
        },
        gpus,
        nvidia_driver,
        cuda_driver,
        xarena_version: env!("CARGO_PKG_VERSION").to_string(),
        git_commit: git_commit(),
        tf32: if cuda_available { shim::tf32() } else { None },
        roofline: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tf32_is_read_from_libtorch() {
        // LibTorch's defaults (no TORCH_ALLOW_TF32_CUBLAS_OVERRIDE): float32 matmuls in
        // full precision, cuDNN convolutions in TF32. Read on any machine; a record only
        // carries it where CUDA is available.
        if std::env::var_os("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE").is_none() {
            let t = shim::tf32().expect("the shim reads the global context");
            assert!(!t.matmul && t.cudnn, "{t:?}");
        }
        let env = capture_with(1, None);
        assert_eq!(env.tf32.is_some(), env.cuda_available);
        assert!(env.gpus.is_empty() && env.nvidia_driver.is_none());
    }
}
