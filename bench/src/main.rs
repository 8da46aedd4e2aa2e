//! `xarena`: run sweeps of efficient-attention cases, list the variants, report results.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};
use comfy_table::presets::{ASCII_MARKDOWN, UTF8_FULL_CONDENSED};
use comfy_table::Table;
use xarena_bench::store::{check_target, Store};
use xarena_bench::sweep::{Sweep, SweepFile};
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
    /// Print the environment a run would record, as JSON.
    Env,
    /// Serve cases on stdin (started by `run`; not for direct use).
    #[command(hide = true)]
    Worker,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Terminal,
    Markdown,
    Json,
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
        sweep.timeout_s = self.timeout.unwrap_or(sweep.timeout_s);
        sweep.threads = self.threads.unwrap_or(sweep.threads);
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
    let cases = sweep.cases()?;
    let out = args.out.clone().unwrap_or_else(|| {
        PathBuf::from("results").join(chrono::Utc::now().format("%Y-%m-%dT%H-%M-%SZ").to_string())
    });
    check_target(&out, args.resume)?;
    let (store, done) = Store::open(&out)?;
    eprintln!("xarena: {} case(s) -> {}", cases.len(), out.display());
    let summary = run::run(&sweep, cases, store, done, args.reuse_worker)?;
    eprintln!(
        "xarena: {} ran ({} ok, {} failed), {} skipped; results in {}",
        summary.ran,
        summary.ok,
        summary.failed,
        summary.skipped,
        out.display()
    );
    if !args.no_report {
        print_report(&[out], Format::Terminal)?;
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
                    shape: Shape {
                        batch: args.batch,
                        seq_len,
                        heads: args.heads,
                        head_dim: args.head_dim,
                        causal: args.causal,
                    },
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Run(args) => cmd_run(*args),
        Command::List { format } => cmd_list(format),
        Command::Report(args) => cmd_report(args),
        Command::Quality(args) => cmd_quality(args),
        Command::Env => {
            let env = measure::env::capture(i64::from(tch::get_num_threads()));
            serde_json::to_string_pretty(&env)
                .context("serialising")
                .map(|s| println!("{s}"))
        }
        Command::Worker => worker::serve(),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xarena: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
