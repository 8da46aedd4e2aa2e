//! Training (training/src/): learning happens, checkpoints round-trip, bad models and data
//! are refused with the reason. `xarena train` and `xarena lra` end to end are tested with
//! the binary, in bench/tests/train.rs.

use tch::Device;
use xarena_datasets::synthetic::AssociativeRecall;
use xarena_datasets::task::{Sizes, Task};
use xarena_training::classifier::{ClassifierConfig, ModelSpec, Pooling, Positions};
use xarena_training::data::from_split;
use xarena_training::trainer::{train, TrainConfig, Trained};
use xarena_training::{Example, TaskData};
use xarena_variants::VariantSpec;

/// A fresh path in the temporary directory, unique to this process.
fn tmp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("xarena-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_file(&dir);
    dir
}

/// The datasets crate's associative recall, smaller than the `tiny` preset's (4 fused
/// bindings of 16 keys, 8 values: chance 12.5 %; blanks up to N = 16), so a run takes
/// seconds in a debug build.
fn small_task() -> TaskData {
    let t = AssociativeRecall {
        num_pairs: 4,
        num_keys: 16,
        num_values: 8,
        fused: true,
        pad_to: Some(16),
        sizes: Sizes::new(32768, 0, 512),
    };
    let split = t.generate(0).unwrap();
    from_split(t.name(), split, t.vocab_size(), t.num_classes(), 16, 1).unwrap()
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
        towers: task.towers,
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
