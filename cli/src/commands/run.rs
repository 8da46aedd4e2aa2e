//! `xarena run`: a sweep of cases, each in an isolated worker, recorded as it ends.

use std::path::PathBuf;
use std::sync::LazyLock;

use anyhow::Result;
use clap::Args;
use xarena_bench::store::{check_resume_shard, check_target, Store};
use xarena_bench::sweep::{Shard, Sweep, SweepFile, TimingFile};
use xarena_measure::timing::TimingConfig;
use xarena_reports::analysis::efficiency_tables;
use xarena_reports::table::{efficiency_report, Format};
use xarena_schema::lock::DirLock;
use xarena_schema::{Dtype, Mode, Scope};
use xarena_variants::VariantSpec;

/// The timing flags' help, with the defaults read from [`TimingConfig`].
static TIMING_HELP: LazyLock<[String; 4]> = LazyLock::new(|| {
    let d = TimingConfig::default();
    [
        format!(
            "Minimum seconds of timed iterations per case [default: {}]",
            d.min_time_s
        ),
        format!(
            "Minimum seconds of warm-up per case [default: {}]",
            d.warmup_s
        ),
        format!(
            "Fewest timed iterations per case [default: {}]",
            d.min_iters
        ),
        format!("Most timed iterations per case [default: {}]", d.max_iters),
    ]
});

#[derive(Args)]
pub struct RunArgs {
    /// A TOML sweep file; flags given here override its fields.
    #[arg(long)]
    sweep: Option<PathBuf>,
    /// Variants, comma separated; parameters as `name:key=value:key=value`.
    #[arg(long, value_delimiter = ',')]
    variants: Option<Vec<VariantSpec>>,
    /// Sequence lengths.
    #[arg(long, value_delimiter = ',')]
    seq: Option<Vec<i64>>,
    #[arg(long, value_delimiter = ',')]
    batch: Option<Vec<i64>>,
    #[arg(long, value_delimiter = ',')]
    heads: Option<Vec<i64>>,
    #[arg(long, value_delimiter = ',')]
    head_dim: Option<Vec<i64>>,
    #[arg(long, value_delimiter = ',', value_enum)]
    dtype: Option<Vec<Dtype>>,
    /// cpu, cuda or cuda:N.
    #[arg(long, value_delimiter = ',')]
    device: Option<Vec<String>>,
    /// What a case times, comma separated.
    #[arg(long, value_delimiter = ',', value_enum)]
    mode: Option<Vec<Mode>>,
    /// What a case measures, comma separated.
    #[arg(long, value_delimiter = ',', value_enum)]
    scope: Option<Vec<Scope>>,
    /// Causal (autoregressive) masking.
    #[arg(long)]
    causal: bool,
    #[arg(long, help = TIMING_HELP[0].as_str())]
    min_time: Option<f64>,
    #[arg(long, help = TIMING_HELP[1].as_str())]
    warmup: Option<f64>,
    #[arg(long, help = TIMING_HELP[2].as_str())]
    min_iters: Option<u64>,
    #[arg(long, help = TIMING_HELP[3].as_str())]
    max_iters: Option<u64>,
    /// Minimum seconds of one timed sample: a shorter iteration runs K times between two
    /// synchronisations (default: 0.002 on CUDA, 0 on the CPU).
    #[arg(long)]
    min_sample: Option<f64>,
    /// Seconds before a case's worker is killed and the case recorded as `timeout`.
    #[arg(long)]
    timeout: Option<f64>,
    /// LibTorch threads (0: LibTorch's default, the physical cores).
    #[arg(long)]
    threads: Option<i64>,
    /// Results directory (default: results/<UTC time>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in --out, skipping the cases it already recorded.
    #[arg(long)]
    resume: bool,
    /// Keep one worker process across cases instead of a fresh one per case.
    #[arg(long)]
    reuse_worker: bool,
    /// Don't print the table at the end.
    #[arg(long)]
    no_report: bool,
    /// Run only slice i of n of the sweep's cases (from 0), for a job array; `xarena
    /// merge` combines the slices' directories.
    #[arg(long)]
    shard: Option<Shard>,
    /// Measure each device's peak matmul rate and copy bandwidth (per dtype) before the
    /// cases, and report every case's fraction of that peak: auto (CUDA devices only),
    /// on or off.
    #[arg(long, value_enum)]
    roofline: Option<xarena_bench::roofline::RooflineMode>,
    /// Check each case on its device before timing it (forward and backward at a small
    /// N: finite, and exact variants equal to the CPU float32 result); a case that fails
    /// is recorded as `error`. auto: on CUDA devices only.
    #[arg(long, value_enum, default_value_t = xarena_bench::check::Policy::Auto)]
    check: xarena_bench::check::Policy,
    /// Run cases whose estimated working memory exceeds their device's memory (refused
    /// before anything runs otherwise); the worker's memory cap still applies.
    #[arg(long)]
    allow_oversize: bool,
    /// Visit every case R times, interleaved (each round in another order, each visit a
    /// fresh worker): the record keeps every round, its latency is the median over
    /// rounds with an order-statistics interval, and reports and `compare` use it.
    #[arg(long)]
    rounds: Option<u32>,
}

impl RunArgs {
    /// Defaults, then the sweep file, then the flags: the flags are applied as a second
    /// sweep file, so both are merged by one rule.
    fn sweep(&self) -> Result<Sweep> {
        let mut sweep = Sweep::default();
        if let Some(path) = &self.sweep {
            sweep.apply_file(SweepFile::read(path)?)?;
        }
        sweep.apply_file(SweepFile {
            variants: None,
            seq: self.seq.clone(),
            batch: self.batch.clone(),
            heads: self.heads.clone(),
            head_dim: self.head_dim.clone(),
            dtype: self.dtype.clone(),
            device: self.device.clone(),
            mode: self.mode.clone(),
            scope: self.scope.clone(),
            causal: self.causal.then(|| vec![true]),
            timing: Some(TimingFile {
                warmup_s: self.warmup,
                warmup_iters: None,
                min_time_s: self.min_time,
                min_iters: self.min_iters,
                max_iters: self.max_iters,
                min_sample_s: self.min_sample,
            }),
            timeout_s: self.timeout,
            threads: self.threads,
            roofline: self.roofline,
            allow_oversize: self.allow_oversize.then_some(true),
            rounds: self.rounds,
        })?;
        if let Some(v) = &self.variants {
            sweep.variants = v.clone();
        }
        Ok(sweep)
    }
}

/// The efficiency tables of `paths` (what `run` prints at the end).
pub fn print_report(paths: &[PathBuf], format: Format) -> Result<()> {
    let records = xarena_reports::load_records(paths)?;
    if records.is_empty() {
        anyhow::bail!(
            "no records in {}",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let tables = efficiency_tables(&records);
    match format.style() {
        Some(style) => print!("{}", efficiency_report(&tables, style)),
        None => println!("{}", serde_json::to_string_pretty(&records)?),
    }
    Ok(())
}

pub fn run(args: RunArgs) -> Result<()> {
    // Everything is checked before anything is written.
    let sweep = args.sweep()?;
    let mut cases = sweep.cases()?;
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from("results").join(chrono::Utc::now().format("%Y-%m-%dT%H-%M-%SZ").to_string())
    });
    check_target(&out, args.resume)?;
    if args.resume {
        check_resume_shard(&out, args.shard)?;
    }
    if let Some(shard) = args.shard {
        let total = cases.len();
        cases = shard.select(cases);
        eprintln!(
            "xarena: shard {shard}: {} of the sweep's {total} case(s)",
            cases.len()
        );
    }
    xarena_bench::estimate::refuse_oversize(&cases, sweep.allow_oversize)?;
    let empty = cases.is_empty();
    // Held until the run ends; the checks are made again under it, as another run may
    // have taken the directory between the first checks and the lock.
    let _lock = DirLock::acquire(&out, "--out")?;
    check_target(&out, args.resume)?;
    if args.resume {
        check_resume_shard(&out, args.shard)?;
    }
    let (store, done) = Store::open(&out)?;
    eprintln!("xarena: {} case(s) -> {}", cases.len(), out.display());
    let summary = xarena_bench::run::run(
        &sweep,
        cases,
        store,
        done,
        args.reuse_worker,
        args.shard,
        args.check,
    )?;
    eprintln!(
        "xarena: {} ran ({} ok, {} failed), {} skipped; results in {}",
        summary.ran,
        summary.ok,
        summary.failed,
        summary.skipped,
        out.display()
    );
    // A shard of a small sweep may get no case: an empty results file, no table.
    if !args.no_report && !empty {
        print_report(&[out], Format::Terminal)?;
    }
    Ok(())
}
