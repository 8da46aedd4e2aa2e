//! One record per case, one JSON object per line. Versioned: a reader refuses records of
//! another major schema version rather than misreading them.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

pub const SCHEMA_VERSION: u32 = 1;

#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    F32,
    Bf16,
    F16,
}

#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Inference: the forward pass under no_grad.
    Forward,
    /// Forward and backward (gradients of the parameters and the input).
    Train,
    /// Causal generation: one token after a context of `seq_len` tokens, with the
    /// variant's decoding state (KV cache, window, recurrent state). Latency is per token.
    Decode,
}

#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The attention module with its projections.
    Attention,
    /// A pre-norm encoder block: attention + FFN.
    Block,
    /// A whole model: the variant's stack of blocks (downsampling, recurrence).
    Model,
}

macro_rules! display_as_serde {
    ($($t:ty),*) => {$(
        impl std::fmt::Display for $t {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                match serde_json::to_value(self) {
                    Ok(Value::String(s)) => f.write_str(&s),
                    _ => Err(std::fmt::Error),
                }
            }
        }
    )*};
}
display_as_serde!(Dtype, Mode, Scope, Status);

/// Everything that defines a case. Its canonical JSON hashes to the case id, so resuming
/// and merging match cases exactly.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CaseKey {
    /// The registry name (`local`).
    pub variant: String,
    /// The variant's parameters with every default filled in.
    pub params: Map<String, Value>,
    /// Sequence length N (decode: the context before the timed token).
    pub seq_len: i64,
    /// Sequences per iteration.
    pub batch: i64,
    /// Attention heads.
    pub heads: i64,
    /// Width of each head; the model width is `heads x head_dim`.
    pub head_dim: i64,
    /// Each position sees only itself and earlier ones.
    pub causal: bool,
    /// The floating-point type of weights and activations.
    pub dtype: Dtype,
    /// `cpu` or `cuda:<index>`.
    pub device: String,
    /// What one iteration does.
    pub mode: Mode,
    /// What is measured around the attention core.
    pub scope: Scope,
}

impl CaseKey {
    /// First 16 hex digits of the SHA-256 of the key's JSON (fields in declaration order,
    /// parameters sorted by name).
    pub fn id(&self) -> String {
        let json = serde_json::to_string(self).expect("keys serialise");
        let digest = Sha256::digest(json.as_bytes());
        digest[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    /// The key without the variant and the sequence length: cases in one setting are
    /// compared against each other in a table.
    /// A one-line name of the case for progress, errors and comparisons: the display
    /// label, shape and setting.
    pub fn describe(&self, label: &str) -> String {
        format!(
            "{} N={} b={} h={}x{} {} {} {} {}{}",
            label,
            self.seq_len,
            self.batch,
            self.heads,
            self.head_dim,
            self.dtype,
            self.device,
            self.mode,
            self.scope,
            if self.causal { " causal" } else { "" }
        )
    }

    pub fn setting(&self) -> Setting {
        Setting {
            batch: self.batch,
            heads: self.heads,
            head_dim: self.head_dim,
            causal: self.causal,
            dtype: self.dtype,
            device: self.device.clone(),
            mode: self.mode,
            scope: self.scope,
        }
    }
}

/// A table's worth of cases: everything but variant and sequence length.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Setting {
    pub device: String,
    pub dtype: Dtype,
    pub mode: Mode,
    pub scope: Scope,
    pub batch: i64,
    pub heads: i64,
    pub head_dim: i64,
    pub causal: bool,
}

impl std::fmt::Display for Setting {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {}, scope {}, batch {}, {} heads x {}{}",
            self.device,
            self.dtype,
            self.mode,
            self.scope,
            self.batch,
            self.heads,
            self.head_dim,
            if self.causal { ", causal" } else { "" }
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Measured.
    Ok,
    /// Out of memory: an allocation failed, or the worker was killed by SIGKILL.
    Oom,
    /// The case ran past its time limit and its worker was killed.
    Timeout,
    /// Anything else, with the message.
    Error,
}

/// Per-iteration latency over the timed iterations, in seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Median over the timed samples (with rounds: the median over rounds).
    pub median_s: f64,
    /// 10th percentile.
    pub p10_s: f64,
    /// 90th percentile.
    pub p90_s: f64,
    /// Mean.
    pub mean_s: f64,
    /// Fastest sample.
    pub min_s: f64,
    /// Slowest sample.
    pub max_s: f64,
    /// Timed iterations in all: samples x `per_sample`.
    pub iterations: u64,
    /// Untimed iterations run first.
    pub warmup_iterations: u64,
    /// Iterations per timed sample. 1: the device was synchronised around every
    /// iteration. K > 1: a short GPU case ran K iterations between two synchronisations
    /// and each sample is their mean, so launch and synchronisation costs are amortised
    /// as in a real loop (the statistics above are over those means).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub per_sample: u64,
    /// Device time per iteration from CUDA events recorded around each sample (CUDA
    /// only): what the GPU took, without the host's dispatch where the queue stayed full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<DeviceTime>,
}

fn one() -> u64 {
    1
}

fn is_one(n: &u64) -> bool {
    *n == 1
}

/// Per-iteration device time over the timed samples, in seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceTime {
    /// Median device time per iteration.
    pub median_s: f64,
    /// 10th percentile.
    pub p10_s: f64,
    /// 90th percentile.
    pub p90_s: f64,
    /// `cuda-events`: elapsed time between two events on the case's stream.
    pub method: String,
}

/// Memory of one iteration, measured on its own after warm-up.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    /// Peak over the iteration minus what was held when it began: the working memory of
    /// the computation (activations, scores, outputs, gradients).
    pub peak_bytes: u64,
    /// What was held when the iteration began (CPU: the process's resident set; CUDA: the
    /// caching allocator's allocated bytes).
    pub baseline_bytes: u64,
    /// Parameters and inputs, counted from the tensors.
    pub static_bytes: u64,
    /// `cpu-rss` (VmHWM after a reset, minus VmRSS) or `cuda-allocator`.
    pub method: String,
}

/// The variant's claims, copied from its metadata so reports need no registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// The taxonomy family (`fixed-patterns`, `low-rank`, ...).
    pub family: String,
    /// The paper's time complexity, as text (`O(N w d)`).
    pub time: String,
    /// The paper's memory complexity, as text.
    pub memory: String,
    /// The exponent of N claimed for time at a fixed budget (1 for linear).
    pub time_exponent: f64,
    /// The exponent of N claimed for memory.
    pub memory_exponent: f64,
    /// The variant computes exact softmax attention.
    pub exact: bool,
}

/// TF32 in force on CUDA (LibTorch's global context): matrix multiplies through cuBLAS
/// and convolutions through cuDNN. Matters for f32 cases only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Tf32 {
    /// TF32 allowed in cuBLAS matrix multiplies.
    pub matmul: bool,
    /// TF32 allowed in cuDNN convolutions.
    pub cudnn: bool,
}

/// The roofline's two ceilings for one device and dtype, measured once per run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Peak {
    /// `cpu` or `cuda:<index>`.
    pub device: String,
    /// The dtype measured.
    pub dtype: Dtype,
    /// The best of repeated large square matrix multiplies, in FLOP/s.
    pub matmul_flops_per_s: f64,
    /// The side of the square matrices used.
    pub matmul_size: i64,
    /// Device-to-device copy bandwidth, bytes read plus bytes written per second.
    pub copy_bytes_per_s: f64,
}

/// One NVML reading of a GPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuSample {
    /// Streaming-multiprocessor clock.
    pub sm_clock_mhz: Option<u32>,
    /// Memory clock.
    pub memory_clock_mhz: Option<u32>,
    /// GPU temperature in degrees Celsius.
    pub temperature_c: Option<u32>,
    /// Power draw in watts.
    pub power_w: Option<f64>,
    /// NVML's clock-event (throttle) reasons in force, by name; empty when none.
    pub throttle_reasons: Vec<String>,
}

/// The GPU a case ran on, as NVML names it, and its state before and after the case.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuState {
    /// NVML's index (PCI order), which `CUDA_VISIBLE_DEVICES` does not renumber.
    pub nvml_index: u32,
    /// NVML's UUID of the GPU.
    pub uuid: Option<String>,
    /// The GPU's product name (`NVIDIA H100 80GB HBM3`).
    pub name: String,
    /// How the case's CUDA device was matched to NVML's GPU: `pci-bus-id` (the CUDA
    /// runtime's bus id), `uuid` (`CUDA_VISIBLE_DEVICES` names it) or `index` (the
    /// visible-devices entry read as NVML's PCI-order index).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matched_by: Option<String>,
    /// NVML's reading just before the case.
    pub before: GpuSample,
    /// ... and just after it.
    pub after: GpuSample,
    /// A performance-limiting reason (power, thermal, slowdown) was in force before or
    /// after the case; idle and application-clock settings do not count.
    pub throttled: bool,
}

/// The check run on the device before timing: forward and backward at a small N.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceCheck {
    /// The small N the check ran at.
    pub seq_len: i64,
    /// Every output and gradient was finite.
    pub finite: bool,
    /// Exact variants: the largest difference from the CPU float32 result, relative to
    /// that result's largest magnitude, and the dtype's tolerance.
    pub max_rel_err: Option<f64>,
    /// The largest relative error the dtype is allowed (exact variants).
    pub tolerance: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gpu {
    /// CUDA device index.
    pub index: u32,
    /// Product name.
    pub name: String,
    /// Total device memory.
    pub memory_bytes: Option<u64>,
}

/// The machine and software a run measured on, captured once per run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    /// The machine's host name.
    pub hostname: Option<String>,
    /// Operating system name and version.
    pub os: Option<String>,
    /// The CPU's model string.
    pub cpu_model: String,
    /// Physical cores, where known.
    pub physical_cores: Option<usize>,
    /// Logical CPUs the OS shows.
    pub logical_cpus: usize,
    /// Total RAM.
    pub memory_bytes: u64,
    /// LibTorch intra-op threads used by the workers.
    pub threads: i64,
    /// The LibTorch version linked.
    pub torch_version: String,
    /// LibTorch sees a CUDA device.
    pub cuda_available: bool,
    /// CUDA runtime LibTorch was built with, when CUDA is available.
    pub cuda_runtime: Option<String>,
    /// Every GPU LibTorch sees.
    pub gpus: Vec<Gpu>,
    /// The NVIDIA driver version (NVML).
    pub nvidia_driver: Option<String>,
    /// CUDA version the driver supports.
    pub cuda_driver: Option<String>,
    /// The xarena crate version.
    pub xarena_version: String,
    /// The commit the binary was built from (`-dirty` when the tree had changes).
    pub git_commit: Option<String>,
    /// CUDA's TF32 settings, when CUDA is available.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tf32: Option<Tf32>,
    /// Peak matmul rate and copy bandwidth per device and dtype of the sweep, when
    /// measured (`--roofline`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roofline: Vec<Peak>,
}

/// The machine around one timed measurement (Linux `/proc`; fields it cannot read are
/// absent): was the case alone on its CPUs?
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MachineState {
    /// Logical CPUs online, to read the load against.
    pub cpus: usize,
    /// One-minute load average (`/proc/loadavg`) before and after the timed samples. It
    /// counts the worker itself, and lags by about a minute.
    pub load_before: Option<f64>,
    /// ... and after them.
    pub load_after: Option<f64>,
    /// Wall time of the timed samples.
    pub wall_s: f64,
    /// CPU time (user + system, all threads) the worker used over them.
    pub cpu_s: Option<f64>,
    /// Time the worker's threads were runnable but waiting for a CPU over them (the sum
    /// over threads of `/proc/self/task/*/schedstat`'s run-queue wait): time the case did
    /// not get the CPU it asked for.
    pub runqueue_wait_s: Option<f64>,
    /// The fraction of all CPUs' time the hypervisor gave to other guests (steal, from
    /// `/proc/stat`) over the samples.
    pub steal_fraction: Option<f64>,
}

impl MachineState {
    /// Run-queue wait over wall time: 0.1 = the case's threads waited 10% of the time.
    pub fn wait_fraction(&self) -> Option<f64> {
        self.runqueue_wait_s
            .filter(|_| self.wall_s > 0.0)
            .map(|w| w / self.wall_s)
    }
}

/// A distribution-free interval for the median latency over rounds: order statistics of
/// the round medians (ranks `k` and `R + 1 - k`, covering the true median with
/// probability `1 - 2 P(Binomial(R, 1/2) < k)`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interval {
    /// Lower end, seconds.
    pub low_s: f64,
    /// Upper end, seconds.
    pub high_s: f64,
    /// The coverage of the interval (0.75 at R = 3, 0.875 at 4, 0.9375 at 5, at least
    /// 0.95 from R = 6).
    pub coverage: f64,
    /// `order-statistics`.
    pub method: String,
}

/// One visit of a case in a run with `--rounds`: its own worker, its statistics and the
/// machine around it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Visit {
    /// Round number, from 0.
    pub round: u32,
    /// When the visit started (RFC 3339, UTC).
    pub started_at: String,
    /// The visit's own statistics.
    pub latency: Latency,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<MachineState>,
}

/// Every round's statistics of a case measured in several rounds, and the interval of
/// their median (the record's `latency.median_s`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rounds {
    /// Every visit, in round order.
    pub visits: Vec<Visit>,
    /// The interval of the median over rounds.
    pub interval: Interval,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The record format's version (`SCHEMA_VERSION`); readers refuse another.
    pub schema: u32,
    /// The run that measured it (its UTC start time and the runner's process id), shared
    /// by the run's records.
    pub run_id: String,
    /// The hash of `key` (`CaseKey::id`): resume and merge match cases by it.
    pub case_id: String,
    /// What defines the case.
    pub key: CaseKey,
    /// Display name: variant plus its non-default parameters.
    pub label: String,
    /// How the case ended.
    pub status: Status,
    /// Why it did not end `ok`: the error, the signal or the limit passed.
    pub message: Option<String>,
    /// The variant's claimed complexity, copied from its metadata.
    pub claims: Claims,
    /// Timing statistics; absent when the case did not end `ok`.
    pub latency: Option<Latency>,
    /// Peak working memory of one iteration; absent when not measured.
    pub memory: Option<Memory>,
    /// FLOPs of one iteration in this mode (forward, or forward + backward).
    pub flops: Option<u64>,
    /// FLOPs over the median latency.
    pub flops_per_s: Option<f64>,
    /// Trainable parameters.
    pub params: Option<u64>,
    /// Decode mode: bytes of the decoding state (KV cache, window, recurrent sums) after
    /// the context, which is what grows with N or does not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_bytes: Option<u64>,
    /// The kernel the library chose, where it chooses (fused SDPA).
    pub backend: Option<String>,
    /// Achieved FLOP/s over the roofline's matmul peak for this device and dtype.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_fraction: Option<f64>,
    /// FLOPs per byte of the case's minimum memory traffic, where it can be estimated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intensity: Option<f64>,
    /// CUDA: the GPU the case ran on and its NVML state around the case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<GpuState>,
    /// The correctness check on the device before timing, where it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub check: Option<DeviceCheck>,
    /// The machine around the timed samples (with rounds: the busiest visit's, by
    /// run-queue wait).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<MachineState>,
    /// `--rounds R` (R > 1): each visit's statistics; `latency` is then the median visit's
    /// with `median_s` the median over rounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rounds: Option<Rounds>,
    /// When the case started (RFC 3339, UTC) and how long it took end to end.
    pub started_at: String,
    /// Seconds from the worker's start to the record (set-up, warm-up, timing, memory).
    pub wall_s: f64,
    /// The machine and software the run measured on.
    pub env: Environment,
}

/// The largest byte or FLOP count a record may hold: history stores them as SQLite's
/// signed 64-bit integers, and nothing measured comes near it.
pub const MAX_COUNT: u64 = i64::MAX as u64;

impl Record {
    /// What a record read from disk must satisfy to be believed: its id is its key's
    /// hash (an edited key no longer matches its case), the shape is positive, times are
    /// finite and non-negative, counts fit a signed 64-bit integer.
    pub fn check(&self) -> Result<(), String> {
        let id = self.key.id();
        if self.case_id != id {
            return Err(format!(
                "case_id {} is not the hash of its key ({id}): the key was edited",
                self.case_id
            ));
        }
        let k = &self.key;
        for (name, v) in [
            ("seq_len", k.seq_len),
            ("batch", k.batch),
            ("heads", k.heads),
            ("head_dim", k.head_dim),
        ] {
            if v <= 0 {
                return Err(format!("key.{name} {v} is not positive"));
            }
        }
        let mut times = vec![("wall_s", Some(self.wall_s))];
        if let Some(l) = &self.latency {
            times.extend([
                ("latency.median_s", Some(l.median_s)),
                ("latency.p10_s", Some(l.p10_s)),
                ("latency.p90_s", Some(l.p90_s)),
                ("latency.mean_s", Some(l.mean_s)),
                ("latency.min_s", Some(l.min_s)),
                ("latency.max_s", Some(l.max_s)),
            ]);
            if let Some(d) = &l.device {
                times.extend([
                    ("latency.device.median_s", Some(d.median_s)),
                    ("latency.device.p10_s", Some(d.p10_s)),
                    ("latency.device.p90_s", Some(d.p90_s)),
                ]);
            }
        }
        if let Some(m) = &self.machine {
            times.extend([
                ("machine.wall_s", Some(m.wall_s)),
                ("machine.cpu_s", m.cpu_s),
                ("machine.runqueue_wait_s", m.runqueue_wait_s),
                ("machine.load_before", m.load_before),
                ("machine.load_after", m.load_after),
                ("machine.steal_fraction", m.steal_fraction),
            ]);
        }
        if let Some(r) = &self.rounds {
            let i = &r.interval;
            times.extend([
                ("rounds.interval.low_s", Some(i.low_s)),
                ("rounds.interval.high_s", Some(i.high_s)),
            ]);
            if r.visits.is_empty()
                || !matches!(
                    i.low_s.partial_cmp(&i.high_s),
                    Some(std::cmp::Ordering::Less | std::cmp::Ordering::Equal)
                )
                || !(0.0..=1.0).contains(&i.coverage)
            {
                return Err(format!(
                    "rounds: {} visits, interval {}..{} at coverage {}: not an interval of \
                     measured rounds",
                    r.visits.len(),
                    i.low_s,
                    i.high_s,
                    i.coverage
                ));
            }
            for v in &r.visits {
                times.extend([
                    ("rounds.visits.latency.median_s", Some(v.latency.median_s)),
                    ("rounds.visits.latency.p10_s", Some(v.latency.p10_s)),
                    ("rounds.visits.latency.p90_s", Some(v.latency.p90_s)),
                ]);
            }
        }
        times.extend([
            ("flops_per_s", self.flops_per_s),
            ("peak_fraction", self.peak_fraction),
            ("intensity", self.intensity),
        ]);
        for (name, v) in times {
            if let Some(v) = v {
                if !(v.is_finite() && v >= 0.0) {
                    return Err(format!("{name} {v} is not a finite, non-negative number"));
                }
            }
        }
        let mut counts = vec![
            ("flops", self.flops),
            ("params", self.params),
            ("state_bytes", self.state_bytes),
        ];
        if let Some(m) = &self.memory {
            counts.extend([
                ("memory.peak_bytes", Some(m.peak_bytes)),
                ("memory.baseline_bytes", Some(m.baseline_bytes)),
                ("memory.static_bytes", Some(m.static_bytes)),
            ]);
        }
        for (name, v) in counts {
            if let Some(v) = v {
                if v > MAX_COUNT {
                    return Err(format!("{name} {v} is larger than any device holds"));
                }
            }
        }
        Ok(())
    }
}
