//! Helpers shared by the end-to-end tests of the `xarena` binary.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

/// The binary under test, without an inherited fault injection.
pub fn xarena() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_xarena"));
    c.env_remove("XARENA_FAULT");
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
