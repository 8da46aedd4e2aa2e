//! Training (bench/src/train/): learning happens, checkpoints round-trip, `xarena train`
//! writes a loadable accuracy record and refuses bad input without writing one.

mod common;

use common::{stderr, tmp, xarena};
use tch::Device;
use xarena_bench::train::model::{ClassifierConfig, ModelSpec, Pooling, Positions};
use xarena_bench::train::recall::RecallConfig;
use xarena_bench::train::trainer::{train, TrainConfig, Trained};
use xarena_bench::train::{Example, TaskData};
use xarena_reports::accuracy::read_accuracy;
use xarena_variants::VariantSpec;

/// A smaller recall than the `tiny` preset's (N = 16, 4 bindings, 8 values: chance
/// 12.5%), so a run takes seconds in a debug build (vanilla reached 98% held out,
/// linear-transformer 91%, when written).
fn small_task() -> TaskData {
    RecallConfig {
        seq_len: 16,
        pairs: 4,
        keys: 16,
        values: 8,
        train_size: 32768,
        test_size: 512,
        seed: 0,
    }
    .generate()
    .unwrap()
}

fn spec(variant: &str, task: &TaskData, config: ClassifierConfig, batch: i64) -> ModelSpec {
    ModelSpec {
        variant: variant
            .parse::<VariantSpec>()
            .unwrap()
            .normalized()
            .unwrap(),
        config,
        vocab: task.vocab,
        classes: task.classes,
        seq_len: task.seq_len,
        batch,
    }
}

fn learns(variant: &str, steps: u64, lr: f64) {
    // One thread: a test binary shares the machine with other builds, and LibTorch's
    // threads slow down many times over when the cores are busy.
    tch::set_num_threads(1);
    let task = small_task();
    let cfg = TrainConfig {
        steps,
        batch: 32,
        lr,
        warmup_steps: steps / 10,
        seed: 7,
        ..Default::default()
    };
    let spec = spec(variant, &task, ClassifierConfig::default(), cfg.batch);
    let (_, report) = train(&spec, &task, &cfg, Device::Cpu).unwrap();
    let chance = 1.0 / f64::from(task.classes);
    assert!(
        report.accuracy > 3.0 * chance,
        "{variant}: held-out accuracy {} is not above 3x chance ({chance}): {report:?}",
        report.accuracy
    );
    eprintln!("{variant}: {report:?}");
    assert_eq!(report.steps, steps);
    assert!(report.steps_per_s > 0.0 && report.final_loss.is_finite());
}

#[test]
fn vanilla_learns_associative_recall() {
    learns("vanilla", 400, 1e-3);
}

#[test]
fn linear_transformer_learns_associative_recall() {
    // Linear attention learns the lookup more slowly (about 45% after 600 steps).
    learns("linear-transformer", 1500, 3e-3);
}

#[test]
fn a_checkpoint_round_trips_to_the_same_logits() {
    let task = small_task();
    let test: Vec<Example> = task.test[..37].to_vec();
    let cfg = TrainConfig {
        steps: 5,
        batch: 8,
        warmup_steps: 1,
        ..Default::default()
    };
    for (pooling, positions) in [
        (Pooling::Mean, Positions::Learned),
        (Pooling::Cls, Positions::Sinusoidal),
    ] {
        let config = ClassifierConfig {
            pooling,
            positions,
            ..Default::default()
        };
        let spec = spec("local:window=4", &task, config, cfg.batch);
        let (trained, _) = train(&spec, &task, &cfg, Device::Cpu).unwrap();
        let dir = tmp(&format!("ckpt-{pooling:?}"));
        std::fs::create_dir_all(&dir).unwrap();
        trained.save(&dir).unwrap();
        let loaded = Trained::load(&dir, Device::Cpu).unwrap();
        assert_eq!(loaded.model.spec(), trained.model.spec());
        let (a, b) = (trained.logits(&test), loaded.logits(&test));
        assert_eq!(a.size(), vec![37, i64::from(task.classes)]);
        assert_eq!(trained.logits(&[]).size(), vec![0, i64::from(task.classes)]);
        assert!(a.equal(&b), "{pooling:?}: logits differ after loading");
        // A fresh model with another seed differs: the load did something.
        let fresh = Trained::init(&spec, 99, Device::Cpu).unwrap();
        assert!(!fresh.logits(&test).equal(&a));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn bad_models_and_data_are_refused_with_the_reason() {
    let task = small_task();
    let err = |variant: &str| {
        spec(variant, &task, ClassifierConfig::default(), 8)
            .check()
            .unwrap_err()
            .to_string()
    };
    assert!(err("funnel").contains("cannot be trained as a classifier"));
    let config = ClassifierConfig {
        layers: 0,
        ..Default::default()
    };
    let e = spec("vanilla", &task, config, 8).check().unwrap_err();
    assert!(e.to_string().contains("layers"), "{e}");

    let mut bad = task.clone();
    bad.train[3].tokens.pop();
    let e = bad.validate().unwrap_err().to_string();
    assert!(e.contains("train example 3 has 15 tokens"), "{e}");
    let mut bad = task.clone();
    bad.test[1].label = 8;
    let e = bad.validate().unwrap_err().to_string();
    assert!(e.contains("test example 1 has label 8"), "{e}");
}

#[test]
fn xarena_train_writes_a_loadable_accuracy_record_and_the_checkpoint() {
    let out = tmp("train-ok");
    let o = xarena()
        .args([
            "train",
            "--task",
            "associative-recall",
            "--variant",
            "local:window=8",
        ])
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
        ("associative-recall", "local(window=8)", 3, 5, 1)
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
                "listops",
                "--variant",
                "vanilla",
                "--preset",
                "tiny",
            ],
            "unknown task `listops`",
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
            "unknown preset `huge` (presets: tiny)",
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
        assert!(!out.exists(), "{args:?} created --out");
    }
}
