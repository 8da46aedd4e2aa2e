//! The GPU batch's scripts on the CPU: `ci/gpu-pack.sh` strips the binary and refuses a
//! pack over the limit; `ci/gpu-batch.sh --dry-run` takes every step of the batch that
//! needs no CUDA (environment, device check, both sweeps with the roofline, report,
//! archive), and a batch stopped mid-sweep still leaves its finished cases in the archive.

// These tests sit beside the CI files they test; they run as tests of the `xarena` CLI
// package (cli/Cargo.toml), which builds the binary they drive.
#[path = "../../cli/tests/common/mod.rs"]
mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{repo, stderr, tmp};
use xarena_bench::sweep::SweepFile;
use xarena_reports::load::read_results;
use xarena_reports::schema::Status;

fn script(name: &str) -> Command {
    let mut c = Command::new("bash");
    c.arg(repo().join("ci").join(name))
        .env("XARENA_BIN", env!("CARGO_BIN_EXE_xarena"))
        .env_remove("XARENA_FAULT")
        .env_remove("XARENA_BATCH_BUDGET_S");
    c
}

fn dry_batch(work: &Path, archive: &Path) -> Command {
    let mut c = script("gpu-batch.sh");
    c.args(["--dry-run", "--budget", "400"])
        .arg(work)
        .arg(archive);
    c
}

fn dry_run(work: &Path, archive: &Path) -> Output {
    dry_batch(work, archive).output().unwrap()
}

/// Member names of a .tar.gz.
fn members(archive: &Path) -> Vec<String> {
    let o = Command::new("tar")
        .arg("-tzf")
        .arg(archive)
        .output()
        .unwrap();
    assert!(o.status.success(), "tar -tzf {}", archive.display());
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| l.trim_end_matches('/').to_string())
        .collect()
}

fn unpack(archive: &Path, into: &Path) {
    std::fs::create_dir_all(into).unwrap();
    let o = Command::new("tar")
        .arg("-xzf")
        .arg(archive)
        .arg("-C")
        .arg(into)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn the_pack_is_stripped_and_refused_over_the_limit() {
    let dir = tmp("pack");
    let pack = |limit: &str| -> Output {
        script("gpu-pack.sh")
            .env("XARENA_PACK_BIN", env!("CARGO_BIN_EXE_xarena"))
            .env("XARENA_PACK_DIR", &dir)
            .env("XARENA_PACK_LIMIT_MIB", limit)
            .output()
            .unwrap()
    };
    let o = pack("60");
    assert!(o.status.success(), "{}", stderr(&o));
    let packed = std::fs::metadata(dir.join("xarena")).unwrap().len();
    let built = std::fs::metadata(env!("CARGO_BIN_EXE_xarena"))
        .unwrap()
        .len();
    assert!(packed < built / 2, "{packed} bytes packed of {built} built");
    assert!(std::fs::read_to_string(dir.join("COMMIT")).unwrap().len() >= 40);
    // The stripped binary still runs.
    let o = Command::new(dir.join("xarena"))
        .arg("--version")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));

    let o = pack("1");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let msg = stderr(&o);
    assert!(msg.contains("over the 1 MiB"), "{msg}");
    assert!(
        !dir.join("xarena").exists(),
        "an oversized pack is not left"
    );
    assert_eq!(pack("0x").status.code(), Some(2));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_batch_runs_end_to_end_on_the_cpu_and_archives_everything() {
    let work = tmp("batch");
    let archive = tmp("batch-archive").with_extension("tar.gz");
    let o = dry_run(&work, &archive);
    assert!(o.status.success(), "{}", stderr(&o));
    let phases = std::fs::read_to_string(work.join("phases.tsv")).unwrap();
    for step in ["environment", "check", "sweep", "long", "report"] {
        assert!(
            phases
                .lines()
                .any(|l| l.starts_with(&format!("{step}\tok\t"))),
            "{step} did not end ok:\n{phases}"
        );
    }
    let names = members(&archive);
    let base = work.file_name().unwrap().to_string_lossy().to_string();
    for f in [
        "env.json",
        "check.jsonl",
        "check.txt",
        "batch.log",
        "phases.tsv",
        "sweep/results.jsonl",
        "long/results.jsonl",
        "report/report.md",
        "report/report.html",
    ] {
        assert!(names.contains(&format!("{base}/{f}")), "{f} not archived");
    }
    let sweep = read_results(&work.join("sweep")).unwrap().records;
    // 4 variants x 2 lengths x forward and train.
    assert_eq!(sweep.len(), 16);
    for r in &sweep {
        assert_eq!(r.status, Status::Ok, "{}: {:?}", r.label, r.message);
        assert!(r.check.as_ref().is_some_and(|c| c.finite), "{}", r.label);
        assert_eq!(r.env.roofline.len(), 1, "one peak: cpu, bf16");
    }
    let checks = std::fs::read_to_string(work.join("check.jsonl")).unwrap();
    assert_eq!(checks.lines().count(), 3, "{checks}");
    let env: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(work.join("env.json")).unwrap()).unwrap();
    assert!(env.get("torch_version").is_some(), "{env}");

    // A second call resumes: nothing is run twice.
    let o = dry_run(&work, &archive);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(read_results(&work.join("sweep")).unwrap().records.len(), 16);
    let _ = std::fs::remove_dir_all(&work);
    let _ = std::fs::remove_file(&archive);
}

#[test]
fn a_batch_stopped_mid_sweep_keeps_its_finished_cases_in_the_archive() {
    let work = tmp("batch-cut");
    let archive = tmp("batch-cut-archive").with_extension("tar.gz");
    let mut child = dry_batch(&work, &archive)
        // The sweep's third case (sdpa, after empty and vanilla) hangs, so the stop lands
        // inside the sweep, as a device's time limit would.
        .env("XARENA_FAULT", "hang@sdpa")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let results = work.join("sweep/results.jsonl");
    let t0 = Instant::now();
    while std::fs::read_to_string(&results).map_or(0, |s| s.lines().count()) < 2 {
        assert!(t0.elapsed() < Duration::from_secs(120), "no case finished");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The whole process group, as a device's time limit does.
    unsafe { libc::kill(-(child.id() as i32), libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(!status.success());
    let finished = read_results(&work.join("sweep")).unwrap().records;
    assert!(finished.len() < 16, "the stop came after the sweep");
    let back = tmp("batch-cut-unpacked");
    unpack(&archive, &back);
    let base = work.file_name().unwrap();
    let archived = read_results(&back.join(base).join("sweep"))
        .unwrap()
        .records;
    assert_eq!(archived.len(), finished.len());
    assert!(archived.len() >= 2);
    let phases = std::fs::read_to_string(back.join(base).join("phases.tsv")).unwrap();
    assert!(phases.contains("check\tok"), "{phases}");
    for d in [&work, &back] {
        let _ = std::fs::remove_dir_all(d);
    }
    let _ = std::fs::remove_file(&archive);
}

#[test]
fn the_batch_refuses_bad_arguments_before_writing() {
    let work = tmp("batch-bad");
    for args in [
        vec!["--dry-run"],
        vec!["--budget", "0", "W", "A.tar.gz"],
        vec!["--dry-run", "W", "A.zip"],
        vec!["--frobnicate", "W", "A.tar.gz"],
    ] {
        let args: Vec<String> = args
            .iter()
            .map(|a| a.replace('W', &work.display().to_string()))
            .collect();
        let o = script("gpu-batch.sh").args(&args).output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(
            stderr(&o).starts_with("ci/gpu-batch.sh: "),
            "{}",
            stderr(&o)
        );
    }
    let o = script("gpu-batch.sh")
        .env("XARENA_BIN", "/nonexistent/xarena")
        .arg(&work)
        .arg(work.with_extension("tar.gz"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no xarena binary"), "{}", stderr(&o));
    assert!(!work.exists(), "nothing written");
}

#[test]
fn the_batch_sweep_covers_the_nightly_variants_in_bf16_at_batch_8() {
    let read = |name: &str| SweepFile::read(&repo().join("ci/sweeps").join(name)).unwrap();
    let (batch, nightly) = (read("gpu-batch.toml"), read("nightly-gpu.toml"));
    assert_eq!(batch.variants, nightly.variants);
    assert_eq!(batch.seq, Some(vec![1024, 2048, 4096, 8192, 16384]));
    assert_eq!(batch.batch, Some(vec![8]));
    let long = read("gpu-batch-long.toml");
    assert_eq!(long.seq, Some(vec![32768, 65536]));
    // `empty` is the floor the report's launch-bound mark needs.
    for f in [&batch, &long] {
        let names: Vec<String> = f
            .variants
            .iter()
            .flatten()
            .map(|v| v.as_str().unwrap().to_string())
            .collect();
        assert!(names.iter().any(|v| v == "empty"));
    }
}
