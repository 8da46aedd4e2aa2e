//! `xarena train` and `xarena lra` end to end: `xarena train` writes a loadable accuracy
//! record and refuses bad input without writing one; the matrix records, resumes and
//! reports. The library (training/src/) is tested in training/tests/train.rs.

mod common;

use common::{stderr, tmp, xarena};
use tch::Device;
use xarena_reports::accuracy::read_accuracy;
use xarena_training::trainer::Trained;
use xarena_training::Example;

/// A task cache shared by this binary's CLI tests (generated once).
fn cache() -> std::path::PathBuf {
    std::env::temp_dir().join("xarena-test-task-cache")
}

#[test]
fn xarena_train_writes_a_loadable_accuracy_record_and_the_checkpoint() {
    let out = tmp("train-ok");
    let o = xarena()
        .args(["train", "--task", "listops", "--variant", "local:window=8"])
        .arg("--cache-dir")
        .arg(cache())
        .args([
            "--preset",
            "tiny",
            "--steps",
            "3",
            "--seed",
            "5",
            "--threads",
            "1",
        ])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let records = read_accuracy(&out.join("accuracy.jsonl")).unwrap();
    assert_eq!(records.len(), 1);
    let r = &records[0];
    assert_eq!(
        (
            r.task.as_str(),
            r.variant.as_str(),
            r.steps,
            r.seed,
            r.schema
        ),
        ("listops", "local(window=8)", 3, 5, 1)
    );
    let line: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("accuracy.jsonl")).unwrap())
            .unwrap();
    for field in [
        "train_seconds",
        "steps_per_s",
        "peak_memory_bytes",
        "preset",
    ] {
        assert!(!line[field].is_null(), "{field} missing: {line}");
    }
    for file in ["model.safetensors", "model.json", "train.json"] {
        assert!(out.join(file).exists(), "{file}");
    }
    assert!(Trained::load(&out, Device::Cpu).is_ok());
    // The same --out again: refused, the record left as it was.
    let again = xarena()
        .args([
            "train",
            "--task",
            "associative-recall",
            "--variant",
            "vanilla",
        ])
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(stderr(&again).contains("not empty"), "{}", stderr(&again));
    assert_eq!(read_accuracy(&out.join("accuracy.jsonl")).unwrap(), records);
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn xarena_train_refuses_bad_input_and_writes_nothing() {
    for (args, expected) in [
        (
            [
                "--task",
                "sudoku",
                "--variant",
                "vanilla",
                "--preset",
                "tiny",
            ],
            "unknown task `sudoku`",
        ),
        (
            [
                "--task",
                "associative-recall",
                "--variant",
                "nope",
                "--preset",
                "tiny",
            ],
            "unknown variant `nope`",
        ),
        (
            [
                "--task",
                "associative-recall",
                "--variant",
                "vanilla",
                "--preset",
                "huge",
            ],
            "unknown preset `huge` (presets: tiny, lra)",
        ),
        (
            [
                "--task",
                "associative-recall",
                "--variant",
                "funnel",
                "--preset",
                "tiny",
            ],
            "cannot be trained as a classifier",
        ),
        (
            [
                "--task",
                "associative-recall",
                "--variant",
                "local:window=x",
                "--preset",
                "tiny",
            ],
            "invalid parameters",
        ),
        (
            ["--task", "text", "--variant", "vanilla", "--preset", "tiny"],
            "pass --data-dir",
        ),
        (
            [
                "--task",
                "passkey",
                "--variant",
                "vanilla",
                "--preset",
                "lra",
            ],
            "preset `lra` defines LRA's tasks only",
        ),
    ] {
        let out = tmp("train-bad");
        let o = xarena()
            .arg("train")
            .args(args)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(stderr(&o).contains(expected), "{args:?}: {}", stderr(&o));
        // Messages are one line of prose: no run of spaces from a broken continuation.
        assert!(!stderr(&o).contains("  "), "{args:?}: {:?}", stderr(&o));
        assert!(!out.exists(), "{args:?} created --out");
    }
}

#[test]
fn a_data_directory_without_the_files_is_named_and_nothing_written() {
    let data = tmp("train-nodata");
    std::fs::create_dir_all(&data).unwrap();
    for (task, missing) in [
        ("text", "aclImdb"),
        ("retrieval", "new_aan_pairs.train.tsv"),
        ("image", "data_batch_1.bin"),
    ] {
        let out = tmp("train-nodata-out");
        let o = xarena()
            .args(["train", "--task", task, "--variant", "vanilla"])
            .arg("--data-dir")
            .arg(&data)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(!o.status.success(), "{task} succeeded");
        let e = stderr(&o);
        assert!(e.contains("missing") && e.contains(missing), "{task}: {e}");
        assert!(!out.exists(), "{task} created --out");
    }
    std::fs::remove_dir_all(&data).unwrap();
}

#[test]
fn two_towers_read_aan_pairs_and_train() {
    // Two AAN-format files' worth of pairs: the dual encoder takes 2 x max_len tokens.
    let data = tmp("train-aan");
    let dir = data.join("tsv_data");
    std::fs::create_dir_all(&dir).unwrap();
    let mut body = String::new();
    for i in 0..40 {
        body.push_str(&format!(
            "{}\tp{i}\tq{i}\tpaper {i} text\tcited {i}\n",
            i % 2
        ));
    }
    for part in ["train", "eval", "test"] {
        std::fs::write(dir.join(format!("new_aan_pairs.{part}.tsv")), &body).unwrap();
    }
    let out = tmp("train-aan-out");
    let o = xarena()
        .args(["train", "--task", "retrieval", "--variant", "vanilla"])
        .args(["--steps", "2", "--threads", "1"])
        .arg("--data-dir")
        .arg(&data)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let model: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("model.json")).unwrap()).unwrap();
    assert_eq!(model["towers"], 2);
    assert_eq!(model["seq_len"], 256);
    let t = Trained::load(&out, Device::Cpu).unwrap();
    let pair = Example {
        tokens: vec![5; 512],
        label: 1,
    };
    assert_eq!(t.logits(&[pair]).size(), vec![1, 2]);
    std::fs::remove_dir_all(&data).unwrap();
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn the_matrix_records_each_cell_resumes_and_reports() {
    let out = tmp("lra-matrix");
    let run = |extra: &[&str]| {
        xarena()
            .args(["lra", "--variants", "vanilla,local:window=8"])
            .args([
                "--tasks",
                "listops,passkey",
                "--steps",
                "2",
                "--threads",
                "1",
            ])
            .args(extra)
            .arg("--cache-dir")
            .arg(cache())
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap()
    };
    let o = run(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let all = read_accuracy(&out.join("accuracy.jsonl")).unwrap();
    let mut cells: Vec<(String, String)> = all
        .iter()
        .map(|r| (r.task.clone(), r.variant.clone()))
        .collect();
    cells.sort();
    assert_eq!(
        cells,
        [
            ("listops", "local(window=8)"),
            ("listops", "vanilla"),
            ("passkey", "local(window=8)"),
            ("passkey", "vanilla"),
        ]
        .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    // A resumed matrix skips finished cells and redoes an unfinished one (its
    // accuracy file gone, as when a run is killed before writing it).
    let unfinished = out.join("runs/passkey/vanilla");
    std::fs::remove_file(unfinished.join("accuracy.jsonl")).unwrap();
    let o = run(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert_eq!(e.matches("done earlier").count(), 3, "{e}");
    assert!(unfinished.join("accuracy.jsonl").exists());
    assert_eq!(read_accuracy(&out.join("accuracy.jsonl")).unwrap().len(), 4);
    // Other settings in the same directory are refused, nothing changed.
    let o = run(&["--seed", "9"]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("same settings"), "{}", stderr(&o));
    // The report reads the matrix directory alone: the accuracy table.
    let o = xarena()
        .args(["report", "--format", "md"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let md = String::from_utf8_lossy(&o.stdout);
    assert!(md.contains("listops") && md.contains("passkey"), "{md}");
    assert!(md.contains("local(window=8)"), "{md}");
    std::fs::remove_dir_all(&out).unwrap();
}

#[test]
fn the_matrix_checks_everything_before_training() {
    for (args, expected) in [
        (
            ["vanilla", "listops,sudoku", "tiny"],
            "unknown task `sudoku`",
        ),
        (["vanilla,funnel", "listops", "tiny"], "cannot be trained"),
        (["vanilla", "listops", "huge"], "unknown preset `huge`"),
        (["vanilla", "image", "tiny"], "pass --data-dir"),
    ] {
        let out = tmp("lra-bad");
        let o = xarena()
            .args(["lra", "--variants", args[0], "--tasks", args[1]])
            .args(["--preset", args[2]])
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        assert!(!o.status.success(), "{args:?} succeeded");
        assert!(stderr(&o).contains(expected), "{args:?}: {}", stderr(&o));
        assert!(!out.exists(), "{args:?} created --out");
    }
}

#[test]
fn the_matrix_names_an_out_that_is_a_file() {
    let file = tmp("lra-out-file");
    std::fs::write(&file, "not a directory").unwrap();
    let o = xarena()
        .args(["lra", "--variants", "vanilla", "--tasks", "listops"])
        .args(["--preset", "tiny", "--out"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains(&format!(
            "{}: exists and is not a directory",
            file.display()
        )),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "not a directory");
}
