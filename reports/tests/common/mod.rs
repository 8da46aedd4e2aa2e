//! Fixture records: a small two-mode run with a label, a message and an environment
//! string that would run script if a page did not escape them.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde_json::json;
use xarena_reports::schema::Record;

/// A label that sets the page's title if it ever runs.
pub const EVIL: &str = "<script>document.title='pwned'</script>";

pub const LENGTHS: [i64; 3] = [1024, 2048, 4096];

/// (label, variant, latency at 1024 in seconds, time exponent, memory at 1024 in MiB,
/// memory exponent)
pub const VARIANTS: [(&str, &str, f64, f64, f64, f64); 5] = [
    ("vanilla", "vanilla", 0.040, 2.0, 64.0, 2.0),
    ("sdpa", "sdpa", 0.020, 2.0, 10.0, 1.0),
    ("local(window=64)", "local", 0.016, 1.0, 24.0, 1.0),
    ("performer", "performer", 0.030, 1.0, 50.0, 1.0),
    (EVIL, "linformer", 0.018, 1.0, 30.0, 1.0),
];

/// Latency of a variant at N in a mode: a power law, training 3x forward.
pub fn latency(i: usize, n: i64, train: bool) -> f64 {
    let (_, _, t0, k, _, _) = VARIANTS[i];
    t0 * (n as f64 / 1024.0).powf(k) * if train { 3.0 } else { 1.0 }
}

pub fn memory(i: usize, n: i64, train: bool) -> u64 {
    let (_, _, _, _, m0, k) = VARIANTS[i];
    (m0 * (n as f64 / 1024.0).powf(k) * if train { 2.0 } else { 1.0 } * 1048576.0) as u64
}

pub fn record(i: usize, n: i64, train: bool) -> Record {
    let mut r = unchecked_record(i, n, train);
    // The loader believes a record only when its id is its key's hash.
    r.case_id = r.key.id();
    r
}

fn unchecked_record(i: usize, n: i64, train: bool) -> Record {
    let (label, variant, ..) = VARIANTS[i];
    let mode = if train { "train" } else { "forward" };
    let t = latency(i, n, train);
    let (status, message, lat, mem) = if variant == "performer" && n == 4096 && train {
        // A failed case: its message is data too.
        (
            "oom",
            Some("<b>out of memory</b>"),
            serde_json::Value::Null,
            serde_json::Value::Null,
        )
    } else {
        (
            "ok",
            None,
            json!({"median_s": t, "p10_s": t * 0.9, "p90_s": t * 1.1, "mean_s": t,
                   "min_s": t * 0.8, "max_s": t * 1.2, "iterations": 10, "warmup_iterations": 2}),
            json!({"peak_bytes": memory(i, n, train), "baseline_bytes": 1000,
                   "static_bytes": 100, "method": "cpu-rss"}),
        )
    };
    serde_json::from_value(json!({
        "schema": 1,
        "run_id": "fixture-run",
        "case_id": format!("{i}-{n}-{mode}"),
        "key": {"variant": variant, "params": {}, "seq_len": n, "batch": 1, "heads": 8,
                "head_dim": 64, "causal": false, "dtype": "f32", "device": "cpu",
                "mode": mode, "scope": "attention"},
        "label": label,
        "status": status,
        "message": message,
        "claims": {"family": "f", "time": "O(N)", "memory": "O(N)", "time_exponent": 1.0,
                   "memory_exponent": 1.0, "exact": false},
        "latency": lat,
        "memory": mem,
        "flops": 1_000_000_000u64,
        "flops_per_s": 1e9 / t,
        "params": 1_000_000u64,
        "backend": null,
        "started_at": "2026-11-23T07:54:46.723Z",
        "wall_s": 1.0,
        "env": env(),
    }))
    .expect("fixture records are records")
}

pub fn env() -> serde_json::Value {
    json!({"hostname": "host", "os": "Linux", "cpu_model": "<img src=x onerror=alert(1)> CPU",
           "physical_cores": 2, "logical_cpus": 2, "memory_bytes": 1u64 << 34, "threads": 2,
           "torch_version": "2.11.0", "cuda_available": false, "cuda_runtime": null,
           "gpus": [], "nvidia_driver": null, "cuda_driver": null, "xarena_version": "0.1.0",
           "git_commit": "abc123"})
}

/// Every variant at every length, forward and train.
pub fn records() -> Vec<Record> {
    let mut out = Vec::new();
    for train in [false, true] {
        for n in LENGTHS {
            for i in 0..VARIANTS.len() {
                out.push(record(i, n, train));
            }
        }
    }
    out
}

pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// A fresh run directory holding the fixture's results.jsonl and, with `accuracy`, the
/// hand-written accuracy.jsonl.
pub fn run_dir(name: &str, accuracy: bool) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xarena-reports-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let lines: Vec<String> = records()
        .iter()
        .map(|r| serde_json::to_string(r).unwrap())
        .collect();
    std::fs::write(dir.join("results.jsonl"), lines.join("\n") + "\n").unwrap();
    if accuracy {
        std::fs::copy(
            fixture_dir().join("run/accuracy.jsonl"),
            dir.join("accuracy.jsonl"),
        )
        .unwrap();
    }
    dir
}
