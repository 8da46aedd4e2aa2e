//! `xarena train`: one variant trained as a sequence classifier on one task, with its
//! held-out accuracy recorded; and the settings `train` and `lra` share.

use std::path::PathBuf;

use anyhow::Result;
use clap::Args;
use xarena_variants::VariantSpec;

/// Where a training run's data comes from (shared by `train` and `lra`).
#[derive(Args)]
struct DataArgs {
    /// LRA's downloaded files for text, retrieval and image: a directory holding
    /// aclImdb/, tsv_data/ and cifar-10-batches-bin/ (or one task's own directory).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Cache of generated task data (default: ~/.cache/xarena/tasks).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
}

impl DataArgs {
    fn cache_dir(&self) -> PathBuf {
        self.cache_dir
            .clone()
            .unwrap_or_else(xarena_training::data::default_cache_dir)
    }
}

/// What `train` and `lra` share.
#[derive(Args)]
pub struct RunCliArgs {
    /// Sizes of the task, model and schedule: tiny (CPU minutes per run) or lra (the LRA
    /// paper's settings, for GPUs).
    #[arg(long, default_value = "tiny")]
    preset: String,
    /// Seeds the weights and the order of mini-batches (the task's data is fixed).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Override the preset's number of training steps.
    #[arg(long)]
    steps: Option<u64>,
    #[command(flatten)]
    data: DataArgs,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// LibTorch threads (0: LibTorch's default).
    #[arg(long, default_value_t = 0)]
    threads: i32,
}

impl RunCliArgs {
    /// Sets the threads and checks the device: the settings of every run.
    pub fn settings(self) -> Result<xarena_training::command::RunSettings> {
        xarena_measure::device::check_threads(i64::from(self.threads))
            .map_err(|m| anyhow::anyhow!("--threads {m}"))?;
        if self.threads > 0 {
            tch::set_num_threads(self.threads);
        }
        let device = xarena_measure::device::normalise_device(&self.device)?;
        Ok(xarena_training::command::RunSettings {
            preset: self.preset,
            seed: self.seed,
            device: xarena_measure::device::tch_device(&device),
            steps: self.steps,
            cache_dir: self.data.cache_dir(),
            data_dir: self.data.data_dir,
        })
    }
}

#[derive(Args)]
pub struct TrainCliArgs {
    /// listops, pathfinder, pathfinder-64, path-x, associative-recall, passkey,
    /// selective-copy, text, retrieval or image, with parameters of its data as variants
    /// take theirs (`listops:tokens=lra`: LRA's exact ListOps tokens).
    #[arg(long)]
    task: String,
    /// One variant with its parameters, as in `run` (`local:window=16`); it must have a
    /// block scope.
    #[arg(long)]
    variant: VariantSpec,
    /// A new or empty directory (default: results/train/<task>-<variant>-<UTC time>).
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    run: RunCliArgs,
}

pub fn run(args: TrainCliArgs) -> Result<()> {
    use xarena_training::command::{train_command, TrainArgs};
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from("results/train").join(format!(
            "{}-{}-{}",
            args.task,
            args.variant.name,
            chrono::Utc::now().format("%Y-%m-%dT%H-%M-%SZ")
        ))
    });
    let (line, report) = train_command(&TrainArgs {
        task: args.task,
        variant: args.variant,
        out: out.clone(),
        settings: args.run.settings()?,
    })?;
    eprintln!(
        "xarena: {} on {}: test accuracy {:.1}% (train {:.1}%), {} steps in {:.1} s \
         ({:.1} steps/s), peak memory {}; results in {}",
        line.variant,
        line.task,
        100.0 * line.accuracy,
        100.0 * report.train_accuracy,
        line.steps,
        report.train_seconds,
        report.steps_per_s,
        report
            .peak_memory_bytes
            .map_or("not measured".into(), |b| format!(
                "{:.1} MiB ({})",
                b as f64 / (1u64 << 20) as f64,
                report.memory_method
            )),
        out.display()
    );
    Ok(())
}
