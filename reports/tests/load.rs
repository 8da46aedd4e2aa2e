//! Records read from disk check themselves: an edited key, impossible times and counts,
//! and files that are not results are refused with the line that is wrong.

mod common;

use std::path::PathBuf;

use serde_json::Value;
use xarena_reports::load::read_results;

/// A results file holding `lines` as written (no newline added at the end).
fn file(name: &str, text: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!(
        "xarena-reports-load-{}-{name}.jsonl",
        std::process::id()
    ));
    std::fs::write(&path, text).unwrap();
    path
}

fn good() -> Value {
    serde_json::to_value(common::record(0, 256, false)).unwrap()
}

fn line(v: &Value) -> String {
    serde_json::to_string(v).unwrap() + "\n"
}

/// The error for one edited record, which must name line 1 and `needle`.
fn refused(name: &str, edit: impl Fn(&mut Value), needle: &str) {
    let mut v = good();
    edit(&mut v);
    let path = file(name, &line(&v));
    let err = read_results(&path).expect_err(name).to_string();
    assert!(err.contains(&format!("{}:1:", path.display())), "{err}");
    assert!(err.contains(needle), "{name}: {err}");
}

#[test]
fn a_good_record_loads() {
    let path = file("good", &line(&good()));
    let loaded = read_results(&path).unwrap();
    assert_eq!(loaded.records.len(), 1);
    assert!(!loaded.truncated_tail);
}

#[test]
fn an_edited_key_no_longer_matches_its_case_id() {
    refused("edited-key", |v| v["key"]["seq_len"] = 64.into(), "case_id");
    refused(
        "edited-id",
        |v| v["case_id"] = "0123456789abcdef".into(),
        "hash of its key",
    );
}

#[test]
fn negative_or_non_finite_times_are_refused() {
    refused(
        "negative-median",
        |v| v["latency"]["median_s"] = (-1.0).into(),
        "latency.median_s -1",
    );
    refused(
        "negative-wall",
        |v| v["wall_s"] = (-0.5).into(),
        "wall_s -0.5",
    );
    refused(
        "negative-rate",
        |v| v["flops_per_s"] = (-3.0).into(),
        "flops_per_s -3",
    );
}

#[test]
fn counts_beyond_a_signed_64_bit_integer_are_refused() {
    refused(
        "huge-peak",
        |v| v["memory"]["peak_bytes"] = u64::MAX.into(),
        "memory.peak_bytes 18446744073709551615",
    );
    refused(
        "huge-flops",
        |v| v["flops"] = (u64::MAX / 2 + 1).into(),
        "flops 9223372036854775808",
    );
}

#[test]
fn a_non_positive_shape_is_refused() {
    // The id is recomputed so that only the shape is wrong.
    let mut v = good();
    v["key"]["batch"] = 0.into();
    let key: xarena_reports::schema::CaseKey = serde_json::from_value(v["key"].clone()).unwrap();
    v["case_id"] = key.id().into();
    let path = file("zero-batch", &line(&v));
    let err = read_results(&path).unwrap_err().to_string();
    assert!(err.contains("key.batch 0 is not positive"), "{err}");
}

#[test]
fn a_file_of_plain_text_is_an_error_not_a_cut_line() {
    for (name, text) in [
        ("plain", "hello, these are not results"),
        ("plain-two", "not json\nstill not"),
        ("html", "<html><body>404</body></html>"),
    ] {
        let path = file(name, text);
        let err = read_results(&path).expect_err(name).to_string();
        assert!(err.contains("not a result record"), "{name}: {err}");
    }
}

#[test]
fn json_cut_short_at_the_end_is_a_cut_line() {
    let whole = line(&good());
    // Cut in a string, in a number and between fields: all end early.
    for cut in [40, whole.len() / 2, whole.len() - 3] {
        let text = format!("{whole}{}", &whole[..cut]);
        let loaded = read_results(&file("cut", &text)).unwrap();
        assert_eq!(loaded.records.len(), 1, "cut at {cut}");
        assert!(loaded.truncated_tail, "cut at {cut}");
    }
    // The first record of a run, cut by a kill, is still a cut line.
    let loaded = read_results(&file("cut-only", &whole[..whole.len() / 2])).unwrap();
    assert!(loaded.records.is_empty() && loaded.truncated_tail);
}

#[test]
fn a_byte_order_mark_is_skipped() {
    let path = file("bom", &format!("\u{feff}{}", line(&good())));
    assert_eq!(read_results(&path).unwrap().records.len(), 1);
}

#[test]
fn a_missing_file_is_named_once_with_its_cause() {
    let path = std::env::temp_dir().join("xarena-reports-load-never-written.jsonl");
    let err = read_results(&path).unwrap_err();
    // As the CLI prints it (anyhow's `{:#}`): the message, then each source.
    let mut shown = err.to_string();
    let mut source = std::error::Error::source(&err);
    while let Some(s) = source {
        shown.push_str(&format!(": {s}"));
        source = s.source();
    }
    assert!(shown.contains(&path.display().to_string()), "{shown}");
    assert_eq!(
        shown.matches("No such file or directory").count(),
        1,
        "{shown}"
    );
}
