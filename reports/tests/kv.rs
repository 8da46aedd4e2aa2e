//! The KV-cache report's grouping: records of several `kv bench` runs in one report.

mod common;

use xarena_reports::kv::{kv_groups, kv_report, KvRecord};
use xarena_reports::table::Style;

/// The policy order the kv CLI passes (`xarena_kvcache::POLICIES`' names); this crate's
/// tests stay LibTorch-free, so they spell it.
const ORDER: &[&str] = &[
    "full",
    "window",
    "streaming-llm",
    "h2o",
    "l2",
    "tova",
    "namm",
];

fn record(
    policy: &str,
    ratio: Option<f64>,
    task: &str,
    score: f64,
    namm: Option<&str>,
) -> KvRecord {
    let ratio_key = ratio.map_or("-".to_string(), |r| r.to_string());
    serde_json::from_value(serde_json::json!({
        "schema": 1,
        "case_id": format!("{policy}|{ratio_key}|256|{task}"),
        "model": "model",
        "model_fingerprint": "f",
        "policy": policy,
        "policy_label": policy,
        "ratio": ratio,
        "budget": ratio.map(|r| ((1.0 - r) * 256.0) as usize),
        "context": 256,
        "task": task,
        "examples": 10,
        "seed": 0,
        "chunk": 32,
        "score": score,
        "full_score": 0.8,
        "normalized_score": score / 0.8,
        "mean_retained_fraction": ratio.map_or(0.5, |r| 1.0 - r),
        "final_retained_fraction": 0.5,
        "peak_retained_fraction": 1.0,
        "peak_kv_bytes": 1000,
        "prefill_seconds": 0.01,
        "prefill_policy_seconds": 0.001,
        "decode_seconds_per_token": 0.001,
        "decode_policy_seconds_per_token": 0.0001,
        "decode_forward_seconds_per_token": 0.0009,
        "namm": namm,
        "finished": "2026-11-23T00:00:00Z",
        "env": common::env(),
    }))
    .unwrap()
}

#[test]
fn two_namms_in_one_report_stay_apart() {
    let a = "evolve (generation 39, evolved on model) 82a1";
    let b = "evolve-paper (generation 12, evolved on model) 77c0";
    let records = vec![
        record("full", None, "passkey", 0.8, None),
        record("h2o", Some(0.5), "passkey", 0.6, None),
        record("namm", None, "passkey", 0.4, Some(a)),
        // The second run: its full cache again (same case, replaces the first), its NAMM.
        record("full", None, "passkey", 0.8, None),
        record("namm", None, "passkey", 0.8, Some(b)),
    ];
    let groups = kv_groups(&records, ORDER);
    assert_eq!(groups.len(), 1);
    let rows: Vec<(String, f64)> = groups[0]
        .rows
        .iter()
        .map(|r| (r.label(), r.score["passkey"]))
        .collect();
    assert_eq!(
        rows,
        vec![
            ("full".to_string(), 0.8),
            ("h2o @ 0.5".to_string(), 0.6),
            ("namm (evolve)".to_string(), 0.4),
            ("namm (evolve-paper)".to_string(), 0.8),
        ]
    );
    let md = kv_report(&records, ORDER, Style::Markdown);
    assert!(
        md.contains("namm (evolve)") && md.contains("namm (evolve-paper)"),
        "{md}"
    );

    // One NAMM: the row is plain `namm`, as a single run's report shows it.
    let one = kv_groups(&records[..3], ORDER);
    assert_eq!(one[0].rows[2].label(), "namm");

    // Two NAMMs from directories of the same name: their hashes tell them apart.
    let c = "evolve (generation 40, evolved on model) 9d3e";
    let same = kv_groups(
        &[
            record("namm", None, "passkey", 0.4, Some(a)),
            record("namm", None, "passkey", 0.6, Some(c)),
        ],
        ORDER,
    );
    let labels: Vec<String> = same[0].rows.iter().map(|r| r.label()).collect();
    assert_eq!(labels, vec!["namm (evolve 82a1)", "namm (evolve 9d3e)"]);
}

#[test]
fn rows_follow_the_given_policy_order_and_unknown_ones_come_after_by_name() {
    let records = vec![
        record("zeta", Some(0.5), "passkey", 0.1, None),
        record("h2o", Some(0.5), "passkey", 0.6, None),
        record("alpha", Some(0.5), "passkey", 0.2, None),
        record("full", None, "passkey", 0.8, None),
    ];
    let labels = |order: &[&str]| -> Vec<String> {
        kv_groups(&records, order)[0]
            .rows
            .iter()
            .map(|r| r.label())
            .collect()
    };
    assert_eq!(
        labels(ORDER),
        ["full", "h2o @ 0.5", "alpha @ 0.5", "zeta @ 0.5"]
    );
    // The order is the caller's: another registry, another order.
    assert_eq!(
        labels(&["zeta", "h2o"]),
        ["zeta @ 0.5", "h2o @ 0.5", "alpha @ 0.5", "full"]
    );
}
