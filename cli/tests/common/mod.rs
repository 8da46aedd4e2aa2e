//! Helpers shared by the end-to-end tests of the `xarena` binary.
#![allow(dead_code)]

pub mod commands;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The workspace root (the scripts and sweep files are named from it).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace root")
        .to_path_buf()
}

/// Every file under `dir` (recursively) whose name ends in `.{ext}`, sorted.
pub fn files_with(dir: &Path, ext: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, ext: &str, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, ext, out);
            } else if path.extension().is_some_and(|e| e == ext) {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, ext, &mut out);
    out.sort();
    out
}

/// The binary under test, without an inherited fault injection.
pub fn xarena() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_xarena"));
    c.env_remove("XARENA_FAULT");
    c.env_remove("XARENA_TEST_SLOWDOWN");
    c
}

/// Small, quick cases: the tests check behaviour, not speed.
pub const QUICK: &[&str] = &[
    "--batch",
    "1",
    "--heads",
    "2",
    "--head-dim",
    "8",
    "--min-time",
    "0.005",
    "--warmup",
    "0",
    "--min-iters",
    "2",
    "--threads",
    "1",
    "--no-report",
];

/// `xarena run` with the [`QUICK`] settings, `args`, `--out out` and extra environment.
pub fn run_quick(args: &[&str], out: &Path, env: &[(&str, &str)]) -> Output {
    let mut c = xarena();
    c.arg("run").args(QUICK).args(args).arg("--out").arg(out);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("xarena runs")
}

/// A fresh path under the temporary directory, unique to this test process.
pub fn tmp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xarena-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&dir);
    dir
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
