//! `xarena report` end to end on a recorded run (docs/results/cpu-quick): every output
//! format, --out DIR with its refusal and --force, and bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn xarena(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xarena"))
        .args(args)
        .output()
        .expect("xarena runs")
}

fn quick_run() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs/results/cpu-quick")
        .display()
        .to_string()
}

fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xarena-report-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn every_format_prints_the_run() {
    let run = quick_run();
    let variants = ["vanilla", "sdpa", "local", "linformer", "performer"];
    for format in ["terminal", "md", "markdown", "html"] {
        let o = xarena(&["report", &run, "--format", format]);
        assert!(o.status.success(), "{format}: {}", stderr(&o));
        let text = stdout(&o);
        for v in variants {
            assert!(text.contains(v), "{format} lacks {v}");
        }
        assert!(text.contains("LRA 1K"), "{format}: the published figures");
    }
    let o = xarena(&["report", &run, "--format", "csv"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut csv = csv::Reader::from_reader(o.stdout.as_slice());
    assert!(csv
        .headers()
        .unwrap()
        .iter()
        .any(|h| h == "speedup_vs_reference"));
    assert_eq!(csv.records().count(), 20, "one row per case");
    let o = xarena(&["report", &run, "--format", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(json["records"].as_array().unwrap().len(), 20);
}

#[test]
fn out_writes_every_format_and_refuses_a_non_empty_directory() {
    let out = tmp("out");
    let run = quick_run();
    let dir = out.display().to_string();
    let o = xarena(&["report", &run, "--out", &dir]);
    assert!(o.status.success(), "{}", stderr(&o));
    for f in [
        "report.md",
        "report.html",
        "report.csv",
        "report.json",
        "latency-cpu-f32-forward-attention-b2-h8x64.svg",
        "memory-cpu-f32-forward-attention-b2-h8x64.svg",
    ] {
        assert!(out.join(f).is_file(), "{f}");
    }
    // Again: refused, and the files there are left as they were.
    std::fs::write(out.join("report.md"), "mine").unwrap();
    let o = xarena(&["report", &run, "--out", &dir]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("is not empty") && stderr(&o).contains("--force"));
    assert_eq!(
        std::fs::read_to_string(out.join("report.md")).unwrap(),
        "mine"
    );
    let o = xarena(&["report", &run, "--out", &dir, "--force"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_ne!(
        std::fs::read_to_string(out.join("report.md")).unwrap(),
        "mine"
    );
}

#[test]
fn bad_flags_and_files_are_refused_by_name() {
    let run = quick_run();
    for (args, needle) in [
        (
            vec!["report", &run, "--format", "pdf"],
            "invalid value 'pdf'",
        ),
        (vec!["report", &run, "--force"], "--out"),
        (vec!["report", "/nonexistent/run"], "/nonexistent/run"),
        (vec!["report"], "<RESULTS>"),
    ] {
        let o = xarena(&args);
        assert!(!o.status.success(), "{args:?} should fail");
        assert!(stderr(&o).contains(needle), "{args:?}: {}", stderr(&o));
    }
}
