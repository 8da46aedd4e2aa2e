//! Sizes checked before a sweep runs: element counts that overflow LibTorch's i64, and
//! each case's working memory estimated from its variant's claims and its shape, against
//! the memory of its device.
//!
//! The estimate counts only the tensors a case cannot avoid: the activations around the
//! attention core (input, Q/K/V, core output, output projection; the FFN at block scope)
//! and, for variants claiming exactly O(N^2) memory (vanilla, synthesizer), the score
//! matrices: scores and probabilities live together in the forward pass, and train mode
//! adds the saved probabilities of every layer plus the gradients of probabilities and
//! scores. Super-linear variants with a smaller constant (O(N^2 / c), O(N sqrt N)) are
//! counted at N^1.5 per head. It is a lower bound of the peak, so a refused case could not
//! have run; a case that passes may still run out of memory (the worker's address-space
//! cap, [`crate::worker`], turns that into an `oom` record).

use std::collections::HashMap;

use serde_json::Value;
use xarena_reports::schema::{CaseKey, Dtype, Mode, Scope};
use xarena_variants::block::MODEL_LAYERS;

use crate::sweep::Case;
use crate::worker::MEMORY_LIMIT_ENV;

const GIB: f64 = (1u64 << 30) as f64;

/// Bytes of one element.
pub fn dtype_bytes(d: Dtype) -> u64 {
    match d {
        Dtype::F32 => 4,
        Dtype::Bf16 | Dtype::F16 => 2,
    }
}

/// Refuses a case whose tensors could not even be described: `batch x seq x heads x
/// head_dim` must fit in i64 (LibTorch's sizes), and so must `batch x heads x seq x p` for
/// every integer parameter p (a window, a rank, a block count), which sizes tensors
/// alongside the sequence.
pub fn check_sizes(key: &CaseKey) -> Result<(), String> {
    let overflow = || {
        format!(
            "batch {} x seq {} x heads {} x head_dim {} elements overflows i64 (at most {})",
            key.batch,
            key.seq_len,
            key.heads,
            key.head_dim,
            i64::MAX
        )
    };
    let rows = key
        .batch
        .checked_mul(key.heads)
        .and_then(|v| v.checked_mul(key.seq_len))
        .ok_or_else(overflow)?;
    rows.checked_mul(key.head_dim).ok_or_else(overflow)?;
    for (name, value) in &key.params {
        for p in integers(value) {
            if rows.checked_mul(p.max(1)).is_none() {
                return Err(format!(
                    "parameter {name} = {p} overflows i64 with batch {} x heads {} x seq {} \
                     (the tensors it sizes would need more than {} elements)",
                    key.batch,
                    key.heads,
                    key.seq_len,
                    i64::MAX
                ));
            }
        }
    }
    Ok(())
}

/// The integers of a parameter (a number or a list of them).
fn integers(v: &Value) -> Vec<i64> {
    match v {
        Value::Number(n) => n.as_i64().into_iter().collect(),
        Value::Array(a) => a.iter().flat_map(integers).collect(),
        _ => Vec::new(),
    }
}

/// A lower bound of the bytes a case holds at its peak (see the module's notes).
pub fn working_bytes(case: &Case) -> f64 {
    let k = &case.key;
    let (b, n, h, hd) = (
        k.batch as f64,
        k.seq_len as f64,
        k.heads as f64,
        k.head_dim as f64,
    );
    let d = h * hd;
    let tokens = b * n;
    let bh = b * h;
    let layers = match k.scope {
        Scope::Model => MODEL_LAYERS as f64,
        _ => 1.0,
    };
    let ffn = if k.scope == Scope::Attention {
        0.0
    } else {
        4.0
    };
    // Input, Q/K/V, core output, output projection, and the FFN's hidden layer; the
    // harness baseline (an identity) holds its input alone.
    let activations = if case.claims.family == "baseline" {
        tokens * d
    } else {
        tokens * d * (6.0 + ffn)
    };
    let params = d * d * (4.0 + 2.0 * ffn) * layers;
    let elements = match k.mode {
        Mode::Decode => {
            // The state after the context: a KV cache grows with N, a window or a
            // recurrent state does not.
            let state = if case.claims.memory_exponent >= 1.0 {
                2.0 * bh * n * hd
            } else {
                0.0
            };
            activations + params + state * layers
        }
        Mode::Forward | Mode::Train => {
            let per_head = score_elements(case, n, hd);
            let (scores, kept) = match k.mode {
                // Scores and probabilities, one layer at a time.
                Mode::Forward => (2.0, 1.0),
                // Each layer's saved probabilities, then the gradients of the last
                // layer's probabilities and scores; activations kept for backward.
                _ => (layers + 2.0, layers + 1.0),
            };
            activations * kept
                + params * if k.mode == Mode::Train { 2.0 } else { 1.0 }
                + bh * per_head * scores
        }
    };
    elements * dtype_bytes(k.dtype) as f64
}

/// Elements per (batch, head) of the score-like tensors the claims promise, beyond the
/// O(N d) activations.
fn score_elements(case: &Case, n: f64, hd: f64) -> f64 {
    let c = &case.claims;
    if c.memory_exponent >= 2.0 && c.memory.trim() == "O(N^2)" {
        n * n
    } else if c.memory_exponent > 1.0 {
        n * n.sqrt()
    } else {
        n * hd
    }
}

/// What a device can hold, and where that figure comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct Limit {
    pub bytes: u64,
    pub source: String,
}

/// The smallest of what the CPU offers a worker: the available memory, a cgroup's
/// memory.max, the address-space limit a worker inherits, the worker cap
/// (XARENA_WORKER_MEMORY_LIMIT).
pub fn cpu_limit() -> Option<Limit> {
    use sysinfo::{MemoryRefreshKind, RefreshKind, System};
    let sys = System::new_with_specifics(
        RefreshKind::nothing().with_memory(MemoryRefreshKind::nothing().with_ram()),
    );
    let mut found = vec![(sys.available_memory(), "available memory".to_string())];
    if let Some(max) = cgroup_memory_max() {
        found.push((max, "the cgroup's memory.max".into()));
    }
    if let Some(r) = address_space_limit() {
        found.push((r, "RLIMIT_AS".into()));
    }
    if let Some(cap) = worker_cap_env() {
        found.push((cap, MEMORY_LIMIT_ENV.into()));
    }
    found
        .into_iter()
        .filter(|(b, _)| *b > 0)
        .min_by_key(|(b, _)| *b)
        .map(|(bytes, source)| Limit { bytes, source })
}

/// XARENA_WORKER_MEMORY_LIMIT in bytes; `None` when unset, unreadable or 0 (no cap).
pub fn worker_cap_env() -> Option<u64> {
    std::env::var(MEMORY_LIMIT_ENV)
        .ok()
        .and_then(|v| v.trim().parse::<u64>().ok())
        .filter(|&v| v > 0)
}

/// This process's cgroup (v2) memory.max, when it is set.
fn cgroup_memory_max() -> Option<u64> {
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cgroups.lines().find_map(|l| l.strip_prefix("0::"))?;
    let file = std::path::Path::new("/sys/fs/cgroup")
        .join(path.trim_start_matches('/'))
        .join("memory.max");
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

/// The soft RLIMIT_AS, when it is not unlimited.
fn address_space_limit() -> Option<u64> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes the struct it is given.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_AS, &mut r) } == 0;
    (ok && r.rlim_cur != libc::RLIM_INFINITY).then_some(r.rlim_cur)
}

/// The memory of `device` (`cpu` or `cuda:N`); `None` when it cannot be known (no NVML).
pub fn device_limit(device: &str) -> Option<Limit> {
    if device == "cpu" {
        return cpu_limit();
    }
    let bytes = xarena_measure::nvml::GpuWatch::init()
        .ok()?
        .total_memory(device)?;
    Some(Limit {
        bytes,
        source: format!("{device}'s memory"),
    })
}

/// The cases whose estimate exceeds their device's memory, with the estimate and limit.
pub fn oversize(cases: &[Case], limit: impl Fn(&str) -> Option<Limit>) -> Vec<(&Case, f64, Limit)> {
    let mut limits: HashMap<String, Option<Limit>> = HashMap::new();
    let mut out = Vec::new();
    for c in cases {
        let l = limits
            .entry(c.key.device.clone())
            .or_insert_with(|| limit(&c.key.device));
        let Some(l) = l else { continue };
        let est = working_bytes(c);
        if est > l.bytes as f64 {
            out.push((c, est, l.clone()));
        }
    }
    out
}

/// Refuses, before anything is written, the cases that cannot fit in their device's
/// memory, unless `allow` (--allow-oversize).
pub fn refuse_oversize(cases: &[Case], allow: bool) -> anyhow::Result<()> {
    if allow {
        return Ok(());
    }
    let big = oversize(cases, device_limit);
    if big.is_empty() {
        return Ok(());
    }
    let shown: Vec<String> = big
        .iter()
        .take(5)
        .map(|(c, est, l)| {
            format!(
                "{}: needs at least {:.1} GiB (estimated working memory), over the limit \
                 {:.1} GiB ({})",
                c.describe(),
                est / GIB,
                l.bytes as f64 / GIB,
                l.source
            )
        })
        .collect();
    let more = if big.len() > shown.len() {
        format!("; and {} more", big.len() - shown.len())
    } else {
        String::new()
    };
    anyhow::bail!(
        "{} case(s) cannot fit in memory: {}{more}. Pass --allow-oversize (or \
         allow_oversize = true in the sweep file) to try them anyway",
        big.len(),
        shown.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::Sweep;
    use xarena_variants::VariantSpec;

    fn case(variant: &str, seq: i64, mode: Mode) -> Case {
        let sweep = Sweep {
            variants: vec![variant.parse::<VariantSpec>().unwrap()],
            seq: vec![seq],
            batch: vec![1],
            heads: vec![2],
            head_dim: vec![8],
            mode: vec![mode],
            causal: vec![mode == Mode::Decode],
            ..Sweep::default()
        };
        sweep.cases().unwrap().remove(0)
    }

    #[test]
    fn estimates_grow_with_the_length() {
        for v in [
            "vanilla",
            "local",
            "performer",
            "linear-transformer",
            "empty",
        ] {
            for mode in [Mode::Forward, Mode::Train] {
                let sizes: Vec<f64> = [64, 128, 1024, 8192]
                    .iter()
                    .map(|&n| working_bytes(&case(v, n, mode)))
                    .collect();
                assert!(sizes.windows(2).all(|w| w[0] < w[1]), "{v}: {sizes:?}");
            }
        }
    }

    #[test]
    fn vanilla_grows_quadratically_and_linear_attention_linearly() {
        let ratio = |v: &str| {
            working_bytes(&case(v, 1 << 16, Mode::Forward))
                / working_bytes(&case(v, 1 << 15, Mode::Forward))
        };
        let vanilla = ratio("vanilla");
        assert!((3.9..=4.0).contains(&vanilla), "{vanilla}");
        let linear = ratio("linear-transformer");
        assert!((linear - 2.0).abs() < 0.01, "{linear}");
        // At least the two N x N score tensors of float32: 2 heads x 2 x 4 bytes x N^2.
        let n = 1u64 << 15;
        assert!(working_bytes(&case("vanilla", n as i64, Mode::Forward)) >= (16 * n * n) as f64);
        // Train holds more than forward.
        assert!(
            working_bytes(&case("vanilla", 4096, Mode::Train))
                > working_bytes(&case("vanilla", 4096, Mode::Forward))
        );
    }

    #[test]
    fn cases_past_the_limit_are_named_and_the_others_pass() {
        let small = case("vanilla", 64, Mode::Forward);
        let big = case("vanilla", 10_000_000, Mode::Forward);
        let limit = |_: &str| {
            Some(Limit {
                bytes: 1 << 30,
                source: "test".into(),
            })
        };
        let cases = [small.clone(), big.clone()];
        let over = oversize(&cases, limit);
        assert_eq!(over.len(), 1);
        assert_eq!(over[0].0.id, big.id);
        assert!(over[0].1 > 1e14);
        // No known limit (a GPU without NVML): nothing refused.
        assert!(oversize(&cases, |_| None).is_empty());
    }

    #[test]
    fn element_counts_that_overflow_i64_are_refused() {
        let mut key = case("vanilla", 16, Mode::Forward).key;
        assert!(check_sizes(&key).is_ok());
        key.seq_len = i64::MAX;
        assert!(check_sizes(&key).unwrap_err().contains("overflows i64"));
        let mut key = case("local", 16, Mode::Forward).key;
        key.params.insert("window".into(), i64::MAX.into());
        let err = check_sizes(&key).unwrap_err();
        assert!(err.contains("window = 9223372036854775807"), "{err}");
    }
}
