//! `xarena`: run sweeps of efficient-attention cases, list the variants, report results.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use comfy_table::presets::{ASCII_MARKDOWN, UTF8_FULL_CONDENSED};
use comfy_table::Table;
use xarena_bench::lock::DirLock;
use xarena_bench::store::{check_resume_shard, check_target, Store};
use xarena_bench::sweep::{Shard, Sweep, SweepFile};
use xarena_bench::{measure, run, worker};
use xarena_reports::analysis::efficiency_tables;
use xarena_reports::schema::{Dtype, Mode, Scope};
use xarena_reports::table::{efficiency_report, Style};
use xarena_reports::Report;
use xarena_variants::{registry, VariantSpec};

#[derive(Parser)]
#[command(
    name = "xarena",
    version,
    about = "Efficient transformers, measured honestly on LibTorch"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a sweep of cases (defaults: the quick CPU sweep) and print the table.
    Run(Box<RunArgs>),
    /// List the variants with their family, complexity and paper.
    List {
        #[arg(long, value_enum, default_value_t = Format::Terminal)]
        format: Format,
    },
    /// The report of results (run directories or .jsonl files): environment, LRA-style
    /// efficiency tables, published figures beside them, accuracy; or, with --out, all
    /// formats and the SVG plots written into a directory.
    Report(ReportArgs),
    /// Approximation error against exact attention on the same inputs and projections
    /// (a quality proxy that needs no training; see bench/src/quality.rs).
    Quality(QualityArgs),
    /// Compare two runs case by case: regressions and improvements in latency and peak
    /// memory, status changes, cases on one side only. Exit status: 0 no regression,
    /// 1 a regression, 2 bad input.
    Compare(CompareArgs),
    /// Combine the results of several runs (the shards of a sweep) into one run
    /// directory, each case once.
    Merge {
        /// A new (or empty) directory for the merged run.
        out_dir: PathBuf,
        /// Run directories or results files.
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        /// Which record to keep when a case has different results in two inputs (without
        /// it, such a conflict fails the merge).
        #[arg(long, value_enum)]
        prefer: Option<PreferArg>,
    },
    /// Results over many runs in an SQLite database: ingest them, show a variant's trend.
    #[command(subcommand)]
    History(HistoryCommand),
    /// Train a variant as a sequence classifier on a task and record its held-out
    /// accuracy (DIR/accuracy.jsonl) with the checkpoint (DIR/model.safetensors).
    Train(TrainCliArgs),
    /// Train a matrix of variants x tasks (the LRA accuracy table), resumable: each
    /// finished (variant, task) is recorded at once in DIR/accuracy.jsonl.
    Lra(LraCliArgs),
    /// The KV-cache memory track: train a small decoder LM on long-context decoding
    /// tasks, evolve a NAMM for it, benchmark cache policies, report.
    #[command(subcommand)]
    Kv(xarena_bench::kv::cli::KvCommand),
    /// The correctness check alone: each variant's forward and backward at a small N on
    /// the device, finite and (exact variants) equal to the CPU float32 result within the
    /// dtype's tolerance. Exit status 1 when any fails.
    Check(xarena_bench::check::CheckArgs),
    /// Print the environment a run would record, as JSON.
    Env,
    /// Serve cases on stdin (started by `run`; not for direct use).
    #[command(hide = true)]
    Worker,
    /// Measure one device's peak matmul rate and copy bandwidth, as JSON (started by
    /// `run`; not for direct use).
    #[command(hide = true)]
    Roofline(measure::roofline::RooflineArgs),
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Terminal,
    Markdown,
    Json,
}

/// Output of `compare` and `history show`.
#[derive(Clone, Copy, ValueEnum)]
enum TableFormat {
    Terminal,
    #[value(name = "md", alias = "markdown")]
    Markdown,
    Json,
}

#[derive(Args)]
struct CompareArgs {
    /// The baseline: a run directory or a results file.
    base: PathBuf,
    /// The run to judge against it.
    new: PathBuf,
    /// Least change of median latency that counts, in percent (default 50: reruns on a
    /// shared VM move by up to 35%); the runs' own spread can raise it per case (see
    /// README, "Comparing runs").
    #[arg(long)]
    threshold: Option<f64>,
    /// Least change of median latency that counts, in microseconds (default 1).
    #[arg(long)]
    latency_floor: Option<f64>,
    /// Least change of peak memory that counts, in percent (default 10).
    #[arg(long)]
    memory_threshold: Option<f64>,
    /// Least change of peak memory that counts, in MiB (default 4: allocator granularity
    /// on small cases).
    #[arg(long)]
    memory_floor: Option<f64>,
    #[arg(long, value_enum, default_value_t = TableFormat::Terminal)]
    format: TableFormat,
}

#[derive(Subcommand)]
enum HistoryCommand {
    /// Add the records of run directories or results files to DB (created if missing);
    /// records already there are skipped.
    Ingest {
        db: PathBuf,
        #[arg(required = true)]
        results: Vec<PathBuf>,
    },
    /// A variant's results over the runs in DB, a table per case, oldest first.
    Show {
        db: PathBuf,
        #[arg(long)]
        variant: String,
        /// Only this sequence length.
        #[arg(long)]
        seq: Option<i64>,
        #[arg(long, value_enum)]
        mode: Option<ModeArg>,
        /// cpu, cuda or cuda:N.
        #[arg(long)]
        device: Option<String>,
        #[arg(long, value_enum, default_value_t = TableFormat::Terminal)]
        format: TableFormat,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum PreferArg {
    /// The record whose case started last.
    Newest,
    /// The record of the input named first.
    First,
}

#[derive(Args)]
struct ReportArgs {
    #[arg(required = true)]
    results: Vec<PathBuf>,
    /// What to print (without --out).
    #[arg(long, value_enum, default_value_t = ReportFormat::Terminal)]
    format: ReportFormat,
    /// Write report.md, report.html, report.csv, report.json and the SVG plots into
    /// this directory (created; a non-empty one is refused unless --force).
    #[arg(long)]
    out: Option<PathBuf>,
    /// With --out: write into a non-empty directory, replacing the report's own files
    /// (nothing else there is touched).
    #[arg(long, requires = "out")]
    force: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum ReportFormat {
    Terminal,
    #[value(alias = "markdown")]
    Md,
    /// The self-contained HTML leaderboard (inline plots, sortable tables).
    Html,
    /// One row per case.
    Csv,
    Json,
}

#[derive(Args)]
struct RunArgs {
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
    dtype: Option<Vec<DtypeArg>>,
    /// cpu, cuda or cuda:N.
    #[arg(long, value_delimiter = ',')]
    device: Option<Vec<String>>,
    /// forward (inference, no_grad) or train (forward + backward).
    #[arg(long, value_delimiter = ',', value_enum)]
    mode: Option<Vec<ModeArg>>,
    /// attention (the module with its projections) or block (pre-norm encoder block).
    #[arg(long, value_delimiter = ',', value_enum)]
    scope: Option<Vec<ScopeArg>>,
    /// Causal (autoregressive) masking.
    #[arg(long)]
    causal: bool,
    /// Minimum seconds of timed iterations per case.
    #[arg(long)]
    min_time: Option<f64>,
    /// Minimum seconds of warm-up per case.
    #[arg(long)]
    warmup: Option<f64>,
    #[arg(long)]
    min_iters: Option<u64>,
    #[arg(long)]
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
    roofline: Option<measure::roofline::RooflineMode>,
    /// Check each case on its device before timing it (forward and backward at a small
    /// N: finite, and exact variants equal to the CPU float32 result); a case that fails
    /// is recorded as `error`. auto: on CUDA devices only.
    #[arg(long, value_enum, default_value_t = xarena_bench::check::Policy::Auto)]
    check: xarena_bench::check::Policy,
    /// Run cases whose estimated working memory exceeds their device's memory (refused
    /// before anything runs otherwise); the worker's memory cap still applies.
    #[arg(long)]
    allow_oversize: bool,
}

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
struct RunCliArgs {
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
    fn settings(self) -> Result<xarena_training::command::RunSettings> {
        xarena_bench::sweep::check_threads(i64::from(self.threads))
            .map_err(|m| anyhow::anyhow!("--threads {m}"))?;
        if self.threads > 0 {
            tch::set_num_threads(self.threads);
        }
        let device = xarena_bench::sweep::normalise_device(&self.device)?;
        Ok(xarena_training::command::RunSettings {
            preset: self.preset,
            seed: self.seed,
            device: xarena_bench::sweep::tch_device(&device),
            steps: self.steps,
            cache_dir: self.data.cache_dir(),
            data_dir: self.data.data_dir,
        })
    }
}

#[derive(Args)]
struct LraCliArgs {
    /// Variants with parameters, comma separated (each needs a block scope).
    #[arg(long, value_delimiter = ',', required = true)]
    variants: Vec<VariantSpec>,
    /// Tasks, comma separated: listops, pathfinder, pathfinder-64, path-x,
    /// associative-recall, passkey, selective-copy, text, retrieval, image.
    #[arg(long, value_delimiter = ',', required = true)]
    tasks: Vec<String>,
    /// The matrix directory; an existing one is resumed.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    run: RunCliArgs,
}

#[derive(Args)]
struct TrainCliArgs {
    /// listops, pathfinder, pathfinder-64, path-x, associative-recall, passkey,
    /// selective-copy, text, retrieval or image.
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

#[derive(Args)]
struct QualityArgs {
    /// Variants (attention scope), comma separated, with parameters as in `run`.
    #[arg(long, value_delimiter = ',', required = true)]
    variants: Vec<VariantSpec>,
    #[arg(long, value_delimiter = ',', default_values_t = [1024, 4096])]
    seq: Vec<i64>,
    #[arg(long, default_value_t = 1)]
    batch: i64,
    #[arg(long, default_value_t = 8)]
    heads: i64,
    #[arg(long, default_value_t = 64)]
    head_dim: i64,
    #[arg(long)]
    causal: bool,
    /// The variant's dtype (the reference is always float64).
    #[arg(long, value_enum, default_value_t = DtypeArg::F32)]
    dtype: DtypeArg,
    /// Score multipliers: 1 is the random projections' flat attention, larger is peakier.
    #[arg(long, value_delimiter = ',', default_values_t = [1.0])]
    qk_scale: Vec<f64>,
    #[arg(long, default_value_t = 0)]
    seed: i64,
    /// Also append the records to this JSON-lines file.
    #[arg(long)]
    out: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = Format::Terminal)]
    format: Format,
}

macro_rules! value_enum {
    ($arg:ident => $target:ident { $($v:ident),* }) => {
        #[derive(Clone, Copy, ValueEnum)]
        enum $arg { $($v),* }
        impl From<$arg> for $target {
            fn from(a: $arg) -> $target { match a { $($arg::$v => $target::$v),* } }
        }
    };
}
value_enum!(DtypeArg => Dtype { F32, Bf16, F16 });
value_enum!(ModeArg => Mode { Forward, Train, Decode });
value_enum!(ScopeArg => Scope { Attention, Block, Model });

fn convert<A: Copy + Into<T>, T>(v: Option<Vec<A>>) -> Option<Vec<T>> {
    v.map(|v| v.into_iter().map(Into::into).collect())
}

impl RunArgs {
    /// Defaults, then the sweep file, then the flags.
    fn sweep(&self) -> Result<Sweep> {
        let mut sweep = Sweep::default();
        if let Some(path) = &self.sweep {
            sweep.apply_file(SweepFile::read(path)?)?;
        }
        macro_rules! flag {
            ($($f:ident),*) => {$( if let Some(v) = &self.$f { sweep.$f = v.clone(); } )*};
        }
        flag!(variants, seq, batch, heads, head_dim, device);
        if let Some(v) = convert(self.dtype.clone()) {
            sweep.dtype = v;
        }
        if let Some(v) = convert(self.mode.clone()) {
            sweep.mode = v;
        }
        if let Some(v) = convert(self.scope.clone()) {
            sweep.scope = v;
        }
        if self.causal {
            sweep.causal = vec![true];
        }
        let t = &mut sweep.timing;
        t.min_time_s = self.min_time.unwrap_or(t.min_time_s);
        t.warmup_s = self.warmup.unwrap_or(t.warmup_s);
        t.min_iters = self.min_iters.unwrap_or(t.min_iters);
        t.max_iters = self.max_iters.unwrap_or(t.max_iters);
        t.min_sample_s = self.min_sample.or(t.min_sample_s);
        sweep.timeout_s = self.timeout.unwrap_or(sweep.timeout_s);
        sweep.threads = self.threads.unwrap_or(sweep.threads);
        sweep.roofline = self.roofline.unwrap_or(sweep.roofline);
        sweep.allow_oversize |= self.allow_oversize;
        Ok(sweep)
    }
}

fn print_report(paths: &[PathBuf], format: Format) -> Result<()> {
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
    match format {
        Format::Terminal => print!("{}", efficiency_report(&tables, Style::Terminal)),
        Format::Markdown => print!("{}", efficiency_report(&tables, Style::Markdown)),
        Format::Json => println!("{}", serde_json::to_string_pretty(&records)?),
    }
    Ok(())
}

fn cmd_report(args: ReportArgs) -> Result<()> {
    let report = Report::load(&args.results)?;
    if let Some(dir) = &args.out {
        let written = report.write_dir(dir, args.force)?;
        eprintln!(
            "xarena: wrote {} file(s) into {}: report.md, report.html, report.csv, \
             report.json and {} plot(s)",
            written.len(),
            dir.display(),
            written.len().saturating_sub(4)
        );
        return Ok(());
    }
    match args.format {
        ReportFormat::Terminal => print!("{}", report.text(Style::Terminal, false)),
        ReportFormat::Md => print!("{}", report.text(Style::Markdown, false)),
        ReportFormat::Html => print!("{}", report.html()?),
        ReportFormat::Csv => print!("{}", report.csv()?),
        ReportFormat::Json => println!("{}", report.json()?),
    }
    Ok(())
}

fn cmd_run(args: RunArgs) -> Result<()> {
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
    let summary = run::run(
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

/// Ok(true) when NEW regressed.
fn cmd_compare(args: CompareArgs) -> Result<bool> {
    use xarena_reports::compare::{compare, render, Thresholds};
    for (flag, v) in [
        ("--threshold", args.threshold),
        ("--latency-floor", args.latency_floor),
        ("--memory-threshold", args.memory_threshold),
        ("--memory-floor", args.memory_floor),
    ] {
        if let Some(v) = v {
            anyhow::ensure!(
                v.is_finite() && v >= 0.0,
                "{flag} must be a number >= 0, got {v}"
            );
        }
    }
    let d = Thresholds::default();
    let thresholds = Thresholds {
        latency: args.threshold.map_or(d.latency, |p| p / 100.0),
        latency_floor_s: args.latency_floor.map_or(d.latency_floor_s, |us| us * 1e-6),
        memory: args.memory_threshold.map_or(d.memory, |p| p / 100.0),
        memory_floor_bytes: args.memory_floor.map_or(d.memory_floor_bytes, |mib| {
            (mib * (1u64 << 20) as f64) as u64
        }),
    };
    let read = |path: &PathBuf| -> Result<Vec<xarena_reports::Record>> {
        let loaded = xarena_reports::load::read_results(path)?;
        if loaded.truncated_tail {
            eprintln!(
                "xarena: {}: last line cut short (a run killed while writing); left out",
                path.display()
            );
        }
        Ok(loaded.records)
    };
    let (base, new) = (read(&args.base)?, read(&args.new)?);
    let c = compare(&base, &new, thresholds).map_err(|e| match e {
        xarena_reports::compare::CompareError::Empty(side) => anyhow::anyhow!(
            "{side} ({}) holds no records",
            if side == "BASE" {
                &args.base
            } else {
                &args.new
            }
            .display()
        ),
        e => e.into(),
    })?;
    match args.format {
        TableFormat::Terminal => print!("{}", render(&c, Style::Terminal)),
        TableFormat::Markdown => print!("{}", render(&c, Style::Markdown)),
        TableFormat::Json => println!("{}", serde_json::to_string_pretty(&c)?),
    }
    Ok(c.has_regression())
}

fn cmd_merge(out: PathBuf, inputs: Vec<PathBuf>, prefer: Option<PreferArg>) -> Result<()> {
    use xarena_reports::merge::Prefer;
    let prefer = prefer.map(|p| match p {
        PreferArg::Newest => Prefer::Newest,
        PreferArg::First => Prefer::First,
    });
    let s = xarena_bench::merge::merge_runs(&out, &inputs, prefer)?;
    for c in &s.resolved {
        eprintln!("xarena: conflict settled by --prefer: {c}");
    }
    eprintln!(
        "xarena: {} case(s) from {} input(s) -> {} ({} identical copies left out, {} conflict(s) settled)",
        s.cases,
        s.inputs,
        out.display(),
        s.duplicates,
        s.resolved.len()
    );
    Ok(())
}

fn cmd_history(command: HistoryCommand) -> Result<()> {
    use xarena_bench::history;
    match command {
        HistoryCommand::Ingest { db, results } => {
            let n = history::ingest(&db, &results)?;
            eprintln!(
                "xarena: {} record(s) added from {} run(s), {} already in {}",
                n.added,
                n.runs,
                n.present,
                db.display()
            );
        }
        HistoryCommand::Show {
            db,
            variant,
            seq,
            mode,
            device,
            format,
        } => {
            let filter = history::Filter {
                variant,
                seq,
                mode: mode.map(Into::into),
                device,
            };
            let points = history::show(&db, &filter)?;
            match format {
                TableFormat::Terminal => print!("{}", history::render(&points, Style::Terminal)),
                TableFormat::Markdown => print!("{}", history::render(&points, Style::Markdown)),
                TableFormat::Json => println!("{}", serde_json::to_string_pretty(&points)?),
            }
        }
    }
    Ok(())
}

fn cmd_list(format: Format) -> Result<()> {
    let entries = registry();
    if let Format::Json = format {
        let infos: Vec<_> = entries
            .iter()
            .map(|e| serde_json::json!({"info": e.info, "defaults": e.defaults()}))
            .collect();
        println!("{}", serde_json::to_string_pretty(&infos)?);
        return Ok(());
    }
    let mut t = Table::new();
    t.load_preset(if let Format::Markdown = format {
        ASCII_MARKDOWN
    } else {
        UTF8_FULL_CONDENSED
    });
    t.set_header([
        "variant", "family", "time", "memory", "causal", "decode", "scopes", "defaults", "paper",
    ]);
    for e in &entries {
        let i = &e.info;
        t.add_row([
            i.name.to_string(),
            i.family.to_string(),
            i.time.to_string(),
            i.memory.to_string(),
            if i.supports_causal { "yes" } else { "no" }.to_string(),
            i.decode.map_or("no".into(), |d| d.state.to_string()),
            i.scopes
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>()
                .join(","),
            e.defaults().to_string(),
            i.paper.to_string(),
        ]);
    }
    println!("{t}");
    Ok(())
}

fn cmd_quality(args: QualityArgs) -> Result<()> {
    use xarena_bench::quality::{measure, QualityCase};
    use xarena_variants::Shape;
    for (what, v) in [
        ("batch", args.batch),
        ("heads", args.heads),
        ("head-dim", args.head_dim),
    ] {
        anyhow::ensure!(v >= 1, "--{what} must be at least 1, got {v}");
    }
    if let Some(n) = args.seq.iter().find(|&&n| n < 1) {
        anyhow::bail!("--seq: lengths must be at least 1, got {n}");
    }
    if let Some(s) = args.qk_scale.iter().find(|&&s| !(s.is_finite() && s > 0.0)) {
        anyhow::bail!("--qk-scale: scales must be positive, got {s}");
    }
    // Every variant is checked before anything runs, so a typo costs nothing.
    for spec in &args.variants {
        spec.normalized()?;
    }
    let kind = xarena_bench::sweep::tch_kind(args.dtype.into());
    let shape = |seq_len| Shape {
        batch: args.batch,
        seq_len,
        heads: args.heads,
        head_dim: args.head_dim,
        causal: args.causal,
    };
    // It computes in this process: a size it cannot hold is refused now, not killed (or
    // failed in an allocation) after the smaller ones.
    let free = measure::memory::available_memory();
    for &seq_len in &args.seq {
        xarena_bench::quality::check_fits(&shape(seq_len), &free)
            .map_err(|e| anyhow::anyhow!("--seq {seq_len}: {e}"))?;
    }
    let mut out = match &args.out {
        Some(path) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?,
        ),
        None => None,
    };
    let mut records = Vec::new();
    for &qk_scale in &args.qk_scale {
        for &seq_len in &args.seq {
            for spec in &args.variants {
                let case = QualityCase {
                    spec: spec.clone(),
                    shape: shape(seq_len),
                    kind,
                    qk_scale,
                    seed: args.seed,
                };
                let r = measure(&case)
                    .map_err(|e| anyhow::anyhow!("{} at N={seq_len}: {e}", spec.name))?;
                if let Some(f) = out.as_mut() {
                    use std::io::Write;
                    writeln!(f, "{}", serde_json::to_string(&r)?)?;
                    f.flush()?;
                }
                eprintln!(
                    "{} N={seq_len} qk_scale={qk_scale} (score std {:.2}): error {:.3e} of \
                     the output, {:.3e} of a value",
                    r.label, r.score_std, r.rel_error, r.value_error
                );
                records.push(r);
            }
        }
    }
    if let Format::Json = args.format {
        println!("{}", serde_json::to_string_pretty(&records)?);
        return Ok(());
    }
    let mut t = Table::new();
    t.load_preset(if let Format::Markdown = args.format {
        ASCII_MARKDOWN
    } else {
        UTF8_FULL_CONDENSED
    });
    let columns: Vec<(f64, i64)> = args
        .qk_scale
        .iter()
        .flat_map(|&q| args.seq.iter().map(move |&n| (q, n)))
        .collect();
    let mut header = vec!["error: output (value)".to_string()];
    // The score spread depends on the scale (and barely on N): shown per column.
    header.extend(columns.iter().map(|(q, n)| {
        let std = records
            .iter()
            .find(|r| r.seq_len == *n && r.qk_scale == *q)
            .map_or(f64::NAN, |r| r.score_std);
        format!("N={n}, qk x{q} (score std {std:.1})")
    }));
    t.set_header(header);
    for spec in &args.variants {
        let label = spec.normalized()?.label();
        let mut row = vec![label.clone()];
        for (q, n) in &columns {
            let r = records
                .iter()
                .find(|r| r.label == label && r.seq_len == *n && r.qk_scale == *q);
            row.push(r.map_or("-".into(), |r| {
                format!("{:.2e} ({:.2e})", r.rel_error, r.value_error)
            }));
        }
        t.add_row(row);
    }
    println!("{t}");
    println!(
        "Error: ||y - y_exact|| / ||y_exact||, and in brackets / ||y_self|| (each token's own \
         value through the output projection: the error in units of a value vector, which \
         flat attention does not inflate). Reference: vanilla in float64, same projections \
         and inputs. Random weights: a proxy for approximation quality, not task accuracy; \
         learned parts (linformer's projections, sinkhorn's sorter) are untrained here. Score \
         std: the spread of the exact scores q.k / sqrt(d), how peaked the attention is."
    );
    Ok(())
}

fn cmd_train(args: TrainCliArgs) -> Result<()> {
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

fn cmd_lra(args: LraCliArgs) -> Result<()> {
    use xarena_training::matrix::{run_matrix, MatrixArgs, Outcome};
    let matrix = MatrixArgs {
        variants: args.variants,
        tasks: args.tasks,
        out: args.out.clone(),
        settings: args.run.settings()?,
    };
    let cells = run_matrix(&matrix, |cell| match &cell.outcome {
        Outcome::Skipped(l) => eprintln!(
            "xarena lra: {} on {}: done earlier ({:.1}%)",
            cell.variant,
            cell.task,
            100.0 * l.accuracy
        ),
        Outcome::Trained(l, r) => eprintln!(
            "xarena lra: {} on {}: {:.1}% (train {:.1}%) in {:.0} s, {:.1} steps/s",
            cell.variant,
            cell.task,
            100.0 * l.accuracy,
            100.0 * r.train_accuracy,
            r.train_seconds,
            r.steps_per_s
        ),
        Outcome::Failed(e) => {
            eprintln!("xarena lra: {} on {}: FAILED: {e}", cell.variant, cell.task)
        }
    })?;
    let failed = cells
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Failed(_)))
        .count();
    eprintln!(
        "xarena lra: {} of {} cells done; `xarena report {}` shows the table",
        cells.len() - failed,
        cells.len(),
        args.out.display()
    );
    anyhow::ensure!(
        failed == 0,
        "{failed} cell(s) failed (listed in {}/failures.jsonl); rerun the same command to \
         retry them",
        args.out.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        // Its own exit codes, for CI gates: 1 is a regression, so an error is 2 (as clap's
        // usage errors are).
        Command::Compare(args) => {
            return match cmd_compare(args) {
                Ok(false) => ExitCode::SUCCESS,
                Ok(true) => ExitCode::from(1),
                Err(e) => {
                    eprintln!("xarena: error: {e:#}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Merge {
            out_dir,
            inputs,
            prefer,
        } => cmd_merge(out_dir, inputs, prefer),
        Command::History(c) => cmd_history(c),
        Command::Run(args) => cmd_run(*args),
        Command::List { format } => cmd_list(format),
        Command::Report(args) => cmd_report(args),
        Command::Quality(args) => cmd_quality(args),
        Command::Train(args) => cmd_train(args),
        Command::Lra(args) => cmd_lra(args),
        Command::Kv(c) => xarena_bench::kv::cli::run(c),
        Command::Check(args) => xarena_bench::check::command(args),
        Command::Env => {
            let env = measure::env::capture(i64::from(tch::get_num_threads()));
            serde_json::to_string_pretty(&env)
                .context("serialising")
                .map(|s| println!("{s}"))
        }
        Command::Worker => worker::serve(),
        Command::Roofline(args) => measure::roofline::command(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xarena: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
