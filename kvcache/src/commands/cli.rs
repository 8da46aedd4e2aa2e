//! `xarena kv ...`: the command-line side of the KV-cache track (clap derive), kept
//! beside the code it drives.

use std::path::PathBuf;
use std::sync::LazyLock;

use crate::{policy_names, POLICIES};
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use xarena_datasets::lm_tasks::{LmTask, LmTaskConfig};
use xarena_reports::kv::{frontier_plot, kv_groups, kv_report, load_kv, plot_name};
use xarena_reports::table::{Format, Style};

use super::bench::{bench_command, BenchArgs, BenchTask};
use super::evolve::{evolve_command, EvolveArgs, PromptSampling, StageStart};
use super::train::{train_command, KvTrainArgs};
use crate::eval::Protocol;
use crate::policy::namm::Selection;
use xarena_measure::device::{normalise_device, tch_device};

#[derive(Subcommand)]
pub enum KvCommand {
    /// Train a small Llama-architecture decoder on the decoding tasks (passkey, recall,
    /// mqar) and save it as a Hugging Face-layout checkpoint with train.json.
    Train(KvTrainCli),
    /// Evolve a NAMM (Cetin et al. 2024) for a frozen model with CMA-ES; resumable.
    Evolve(KvEvolveCli),
    /// Benchmark cache policies x compression ratios x contexts x tasks; one record per
    /// case in DIR/kv.jsonl.
    Bench(KvBenchCli),
    /// The report of kv bench records: the frontier, the normalised-score table, costs;
    /// with --out, report.md and SVG plots of score vs cache kept.
    Report(KvReportCli),
    /// The cache policies: name, what each keeps, whether it takes a budget, its paper.
    Policies(KvPoliciesCli),
    /// Convert a Llama GGUF file (F32, F16, Q8_0, Q4_1 tensors) to a Hugging Face-layout
    /// checkpoint: OUT/config.json and OUT/model.safetensors in f32, with OUT/tokenizer.json
    /// and OUT/tokenizer_config.json when the file has a byte-level BPE tokenizer.
    Convert(KvConvertCli),
    /// The uncached logits of a checkpoint on given token ids, as a safetensors file
    /// (`logits`, [n, vocab] f32): for comparisons/smollm2_logits.py.
    #[command(hide = true)]
    Logits(KvLogitsCli),
    /// Token ids of strings read as JSON lines on stdin, one JSON array per line on stdout:
    /// for comparisons/smollm2_tokenizer.py.
    #[command(hide = true)]
    Tokenize(KvTokenizeCli),
}

/// Repeats kept once, in order.
fn dedup<T: PartialEq>(tasks: Vec<T>) -> Vec<T> {
    let mut out: Vec<T> = Vec::new();
    for t in tasks {
        if !out.contains(&t) {
            out.push(t);
        }
    }
    out
}

#[derive(Args)]
pub struct KvPoliciesCli {
    /// terminal, md, csv or json.
    #[arg(long, value_enum, default_value_t = Format::Terminal)]
    format: Format,
}

/// The policy table, [`POLICIES`], as `xarena list` shows the variants.
fn cmd_policies(a: KvPoliciesCli) -> Result<()> {
    use xarena_reports::grid::{Grid, GridCell};
    if a.format == Format::Json {
        println!("{}", serde_json::to_string_pretty(POLICIES)?);
        return Ok(());
    }
    let mut t = Grid::new(
        ["policy", "keeps", "budget", "paper"]
            .map(String::from)
            .to_vec(),
    )
    .all_left();
    for p in POLICIES {
        let budget = if p.budgeted { "yes" } else { "no" };
        t.push(
            [p.name, p.keeps, budget, p.paper]
                .map(GridCell::from)
                .to_vec(),
        );
    }
    println!("{}", t.render(a.format));
    Ok(())
}

#[derive(Args)]
pub struct DeviceArgs {
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// LibTorch threads (0: LibTorch's default).
    #[arg(long, default_value_t = 0)]
    threads: i32,
}

impl DeviceArgs {
    fn apply(&self) -> Result<tch::Device> {
        xarena_measure::device::check_threads(i64::from(self.threads))
            .map_err(|m| anyhow::anyhow!("--threads {m}"))?;
        if self.threads > 0 {
            tch::set_num_threads(self.threads);
        }
        Ok(tch_device(&normalise_device(&self.device)?))
    }
}

#[derive(Args)]
pub struct KvTrainCli {
    /// Tasks, comma separated: passkey, recall, mqar.
    #[arg(long, value_delimiter = ',', default_value = "passkey,recall,mqar")]
    tasks: Vec<LmTask>,
    /// The longest prompt trained on (tokens).
    #[arg(long, default_value_t = 128)]
    context: usize,
    /// The held-out prompts' length (default: --context); kv evolve's default context.
    #[arg(long)]
    eval_context: Option<usize>,
    /// The shortest prompt trained on (default: 16, or what the tasks need); lengths are
    /// drawn log-uniformly between it and --context.
    #[arg(long)]
    min_context: Option<usize>,
    /// A new or empty directory for config.json, model.safetensors and train.json.
    #[arg(long)]
    out: PathBuf,
    /// The model's shape: small (4 layers, hidden 128, 4 heads, 2 KV heads) or tiny
    /// (2 layers, hidden 64, 2 heads, 1 KV head).
    #[arg(long, default_value = "small")]
    config: String,
    #[arg(long)]
    layers: Option<i64>,
    #[arg(long)]
    hidden: Option<i64>,
    #[arg(long)]
    heads: Option<i64>,
    #[arg(long)]
    kv_heads: Option<i64>,
    #[arg(long, default_value_t = 3000)]
    steps: u64,
    #[arg(long, default_value_t = 16)]
    batch: i64,
    /// Peak learning rate (AdamW, 10% warm-up, cosine decay to 10%).
    #[arg(long, default_value_t = 1e-3)]
    lr: f64,
    /// Loss weight of the prompt's tokens (the answers weigh 1).
    #[arg(long, default_value_t = 0.0)]
    prompt_weight: f64,
    /// Digits of the passkey.
    #[arg(long, default_value_t = LmTaskConfig::default().passkey_digits)]
    passkey_digits: u32,
    /// Key-value bindings per recall prompt.
    #[arg(long, default_value_t = LmTaskConfig::default().pairs)]
    pairs: u32,
    /// Keys queried per MQAR prompt.
    #[arg(long, default_value_t = LmTaskConfig::default().queries)]
    queries: u32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Held-out prompts per task for the final score.
    #[arg(long, default_value_t = 100)]
    eval_examples: usize,
    /// A progress line every this many steps (0: none).
    #[arg(long, default_value_t = 100)]
    log_every: u64,
    #[command(flatten)]
    device: DeviceArgs,
}

#[derive(Args)]
pub struct KvEvolveCli {
    /// The frozen model's directory.
    #[arg(long)]
    model: PathBuf,
    /// One stage of tasks, comma separated (or --stages).
    #[arg(
        long,
        value_delimiter = ',',
        required_unless_present = "stages",
        conflicts_with = "stages"
    )]
    tasks: Option<Vec<LmTask>>,
    /// Incremental stages, `;` between stages: "passkey;passkey,recall".
    #[arg(long)]
    stages: Option<String>,
    /// The run's directory (checkpoint and the evolved namm.json).
    #[arg(long)]
    out: PathBuf,
    /// Generations per stage: one value, or one per stage, comma separated.
    #[arg(long, value_delimiter = ',', default_values_t = [4])]
    generations: Vec<u64>,
    /// Members per generation.
    #[arg(long, default_value_t = 32)]
    population: usize,
    /// Initial step size.
    #[arg(long, default_value_t = 0.065)]
    sigma: f64,
    /// Tokens between NAMM's decisions (the paper's 512 suits long contexts; 32 or 64
    /// suit a few hundred tokens).
    #[arg(long, default_value_t = 32)]
    update_every: i64,
    /// The NAMM's attention width (the paper's 32: 4172 parameters).
    #[arg(long, default_value_t = 32)]
    namm_hidden: i64,
    /// Prompts per task (the same for every member of a generation).
    #[arg(long, default_value_t = 8)]
    examples: usize,
    /// Which prompts each generation is evaluated on: resample (new ones every generation,
    /// seed + generation; the reference's) or fixed (the seed's for the whole run; the
    /// figures in docs/results/kv-cpu).
    #[arg(long, value_enum, default_value_t = PromptSampling::Resample)]
    prompts: PromptSampling,
    /// How a later stage starts: continue (the previous stage's CMA-ES: mean, covariance,
    /// step size, paths; the reference's) or restart (a fresh CMA-ES at the previous mean;
    /// the figures in docs/results/kv-cpu).
    #[arg(long, value_enum, default_value_t = StageStart::Continue)]
    stage_start: StageStart,
    /// How the NAMM's scores select tokens: shared-count (every head of a layer keeps as
    /// many as the head that evicts least; the reference's) or per-head (each head keeps
    /// its tokens scoring >= 0; the figures in docs/results/kv-cpu).
    #[arg(long, value_enum, default_value_t = Selection::SharedCount)]
    namm_selection: Selection,
    /// Prompt length (default: the model's held-out context, train.json's eval_context).
    #[arg(long)]
    context: Option<usize>,
    /// Prompt tokens per prefill call.
    #[arg(long, default_value_t = 32)]
    chunk: usize,
    /// Seeds the prompts and CMA-ES's samples.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Fitness minus this x the mean fraction of the cache kept (0: the paper's fitness).
    #[arg(long, default_value_t = 0.0)]
    memory_weight: f64,
    /// Continue the run in --out from its last checkpoint.
    #[arg(long)]
    resume: bool,
    /// Stop after the generation that ends past this many minutes (resume later).
    #[arg(long)]
    max_minutes: Option<f64>,
    #[command(flatten)]
    device: DeviceArgs,
}

/// `--policies`' help, from [`POLICIES`] (clap drops a doc comment's final period).
static POLICIES_HELP: LazyLock<String> =
    LazyLock::new(|| format!("Policies, comma separated: {}", policy_names().join(", ")));

/// `--policies`' default: every policy [`POLICIES`] can build by name (not `namm`).
static DEFAULT_POLICIES: LazyLock<String> = LazyLock::new(|| {
    POLICIES
        .iter()
        .filter(|p| p.build.is_some())
        .map(|p| p.name)
        .collect::<Vec<_>>()
        .join(",")
});

#[derive(Args)]
pub struct KvBenchCli {
    /// The model's directory (xarena kv train's, or any Llama-format checkpoint).
    #[arg(long)]
    model: PathBuf,
    // Help and default are read from the policy table (every policy buildable by name).
    #[arg(
        long,
        value_delimiter = ',',
        help = POLICIES_HELP.as_str(),
        default_value = DEFAULT_POLICIES.as_str()
    )]
    policies: Vec<String>,
    /// The evolved NAMM (a kv evolve directory or its namm.json), for `namm`.
    #[arg(long)]
    namm: Option<PathBuf>,
    /// Compression ratios: the fraction of the context removed.
    #[arg(long, value_delimiter = ',', default_values_t = [0.25, 0.5, 0.75, 0.875])]
    ratios: Vec<f64>,
    /// Prompt lengths.
    #[arg(long, value_delimiter = ',', default_values_t = [256, 512])]
    contexts: Vec<usize>,
    /// passkey, recall, mqar (token-level, the models trained here); or, on a model
    /// directory with tokenizer.json, the RULER text tasks niah_single, niah_multikey,
    /// niah_multivalue, niah_multiquery, vt, cwe (a context is then the prompt's tokens).
    #[arg(long, value_delimiter = ',', default_value = "passkey,recall,mqar")]
    tasks: Vec<BenchTask>,
    /// Prompts per case.
    #[arg(long, default_value_t = 20)]
    examples: usize,
    /// Prompt tokens per prefill call (the policy acts after each).
    #[arg(long, default_value_t = 32)]
    chunk: usize,
    /// chunked: the policy after every prompt chunk and decoded token (the cache held
    /// within its budget throughout); kvpress: the whole prompt at once, compressed once,
    /// then decoding with the cache growing (kvpress's protocol; --chunk unused).
    #[arg(long, value_enum, default_value_t = Protocol::Chunked)]
    protocol: Protocol,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The results directory (new or empty, unless --resume).
    #[arg(long)]
    out: PathBuf,
    /// Run only the cases --out has not recorded yet.
    #[arg(long)]
    resume: bool,
    #[command(flatten)]
    device: DeviceArgs,
}

/// `kv report`'s arguments (kv bench directories or their kv.jsonl files; terminal, md
/// or json; --out writes report.md and the frontier plots).
pub type KvReportCli = xarena_reports::table::ReportTarget;

#[derive(Args)]
pub struct KvConvertCli {
    /// The .gguf file (e.g. the one `bash ci/setup-smollm2.sh` prints).
    gguf: PathBuf,
    /// A new or empty directory for config.json and model.safetensors.
    out: PathBuf,
}

#[derive(Args)]
pub struct KvTokenizeCli {
    /// A .gguf file (its tokenizer built from the metadata) or a tokenizer.json.
    tokenizer: PathBuf,
}

#[derive(Args)]
pub struct KvLogitsCli {
    /// The checkpoint directory (config.json + safetensors).
    #[arg(long)]
    model: PathBuf,
    /// Token ids, comma separated.
    #[arg(long, value_delimiter = ',', required = true)]
    tokens: Vec<i64>,
    /// The safetensors file to write.
    #[arg(long)]
    out: PathBuf,
    #[command(flatten)]
    device: DeviceArgs,
}

/// Runs one `xarena kv` command.
pub fn run(cmd: KvCommand) -> Result<()> {
    match cmd {
        KvCommand::Train(a) => cmd_train(a),
        KvCommand::Evolve(a) => cmd_evolve(a),
        KvCommand::Bench(a) => cmd_bench(a),
        KvCommand::Report(a) => cmd_report(a),
        KvCommand::Policies(a) => cmd_policies(a),
        KvCommand::Convert(a) => cmd_convert(a),
        KvCommand::Logits(a) => cmd_logits(a),
        KvCommand::Tokenize(a) => cmd_tokenize(a),
    }
}

fn cmd_tokenize(a: KvTokenizeCli) -> Result<()> {
    use std::io::{BufRead, Write};
    let tokenizer = if a.tokenizer.extension().is_some_and(|e| e == "gguf") {
        let file = crate::model::gguf::GgufFile::read(&a.tokenizer)?;
        crate::model::tokenizer::tokenizer_from_gguf(&file)?
    } else {
        tokenizers::Tokenizer::from_file(&a.tokenizer)
            .map_err(|e| anyhow::anyhow!("reading {}: {e}", a.tokenizer.display()))?
    };
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    for (i, line) in std::io::stdin().lock().lines().enumerate() {
        let line = line.context("reading stdin")?;
        let text: String = serde_json::from_str(&line)
            .with_context(|| format!("stdin line {}: not a JSON string", i + 1))?;
        let encoding = tokenizer
            .encode(text.as_str(), true)
            .map_err(|e| anyhow::anyhow!("stdin line {}: {e}", i + 1))?;
        serde_json::to_writer(&mut out, encoding.get_ids())?;
        writeln!(out)?;
    }
    out.flush()?;
    Ok(())
}

fn cmd_logits(a: KvLogitsCli) -> Result<()> {
    let device = a.device.apply()?;
    let (_vs, lm, cfg) = crate::load_checkpoint(&a.model, device)?;
    if let Some(t) = a.tokens.iter().find(|&&t| t < 0 || t >= cfg.vocab_size) {
        anyhow::bail!(
            "--tokens: {t} is outside the vocabulary (0..{})",
            cfg.vocab_size
        );
    }
    let tokens = tch::Tensor::from_slice(&a.tokens)
        .to_device(device)
        .unsqueeze(0);
    let logits = tch::no_grad(|| lm.forward(&tokens)).squeeze_dim(0);
    crate::model::llama::write_safetensors(&a.out, &[("logits".to_string(), logits)])?;
    Ok(())
}

fn cmd_convert(a: KvConvertCli) -> Result<()> {
    let started = std::time::Instant::now();
    let cfg = crate::model::gguf::convert(&a.gguf, &a.out)?;
    let params = cfg.hidden_size
        * (cfg.vocab_size * if cfg.tie_word_embeddings { 1 } else { 2 } + 1)
        + cfg.num_hidden_layers
            * (2 * cfg.hidden_size * (cfg.hidden_size + cfg.num_key_value_heads * cfg.head_dim())
                + 3 * cfg.hidden_size * cfg.intermediate_size
                + 2 * cfg.hidden_size);
    eprintln!(
        "xarena kv convert: {} -> {} ({} layers, hidden {}, {} heads / {} KV heads, \
         vocabulary {}, {:.1}M parameters{}) in {:.1} s",
        a.gguf.display(),
        a.out.display(),
        cfg.num_hidden_layers,
        cfg.hidden_size,
        cfg.num_attention_heads,
        cfg.num_key_value_heads,
        cfg.vocab_size,
        params as f64 / 1e6,
        if cfg.tie_word_embeddings {
            ", tied embeddings"
        } else {
            ""
        },
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

fn cmd_train(a: KvTrainCli) -> Result<()> {
    let device = a.device.apply()?;
    let args = KvTrainArgs {
        tasks: dedup(a.tasks),
        task_config: LmTaskConfig {
            passkey_digits: a.passkey_digits,
            pairs: a.pairs,
            queries: a.queries,
            ..LmTaskConfig::default()
        },
        context: a.context,
        eval_context: a.eval_context,
        min_context: a.min_context,
        out: a.out,
        config: a.config,
        layers: a.layers,
        hidden: a.hidden,
        heads: a.heads,
        kv_heads: a.kv_heads,
        steps: a.steps,
        batch: a.batch,
        lr: a.lr,
        prompt_weight: a.prompt_weight,
        seed: a.seed,
        eval_examples: a.eval_examples,
        log_every: a.log_every,
        device,
    };
    let t = train_command(&args)?;
    let scores: Vec<String> = t
        .info
        .held_out
        .iter()
        .map(|(k, v)| {
            format!(
                "{k} {:.1}% (chance {:.0}%)",
                100.0 * v,
                100.0 * t.info.chance[k]
            )
        })
        .collect();
    eprintln!(
        "xarena kv train: {} steps in {:.0} s; held out, full cache, context {}: {}; model in {}",
        t.info.steps,
        t.info.train_seconds,
        t.info.eval_context,
        scores.join(", "),
        t.out.display()
    );
    Ok(())
}

fn cmd_evolve(a: KvEvolveCli) -> Result<()> {
    let device = a.device.apply()?;
    let stages = match (&a.stages, a.tasks) {
        (Some(s), _) => s
            .split(';')
            .map(|part| LmTask::parse_list(part).with_context(|| format!("--stages `{s}`")))
            .collect::<Result<Vec<_>>>()?,
        (None, Some(t)) => vec![dedup(t)],
        (None, None) => anyhow::bail!("give --tasks or --stages"),
    };
    let args = EvolveArgs {
        model: a.model,
        stages,
        generations: a.generations,
        out: a.out.clone(),
        population: a.population,
        sigma: a.sigma,
        update_every: a.update_every,
        namm_hidden: a.namm_hidden,
        examples: a.examples,
        context: a.context,
        chunk: a.chunk,
        seed: a.seed,
        memory_weight: a.memory_weight,
        selection: a.namm_selection,
        stage_start: a.stage_start,
        prompts: a.prompts,
        resume: a.resume,
        max_minutes: a.max_minutes,
        device,
    };
    let o = evolve_command(&args, |line| eprintln!("xarena kv evolve: {line}"))?;
    let s = &o.state;
    eprintln!(
        "xarena kv evolve: {} generation(s) run, {} in all{}; the mean (the result) is in {}",
        o.generations_run,
        s.history.len(),
        if o.stopped_early {
            " (stopped by --max-minutes: --resume continues)"
        } else if s.finished {
            ", finished"
        } else {
            ""
        },
        a.out.join(super::evolve::NAMM_FILE).display()
    );
    Ok(())
}

fn cmd_bench(a: KvBenchCli) -> Result<()> {
    let device = a.device.apply()?;
    let args = BenchArgs {
        model: a.model,
        policies: a.policies.iter().map(|p| p.trim().to_string()).collect(),
        namm: a.namm,
        ratios: a.ratios,
        contexts: a.contexts,
        tasks: dedup(a.tasks),
        examples: a.examples,
        chunk: a.chunk,
        protocol: a.protocol,
        seed: a.seed,
        out: a.out.clone(),
        resume: a.resume,
        device,
    };
    let o = bench_command(&args, |r| {
        eprintln!(
            "xarena kv bench: {} ({}), context {}, {}: score {:.3} (full {:.3}), cache kept \
             {:.1}% (end {:.1}%), decode {:.2} ms/token",
            r.policy_label,
            r.ratio.map_or("no budget".into(), |x| format!("ratio {x}")),
            r.context,
            r.task,
            r.score,
            r.full_score,
            100.0 * r.mean_retained_fraction,
            100.0 * r.final_retained_fraction,
            1e3 * r.decode_seconds_per_token
        )
    })?;
    eprintln!(
        "xarena kv bench: {} case(s) run, {} already recorded; records in {}",
        o.ran,
        o.skipped,
        a.out.join(xarena_reports::kv::KV_FILE).display()
    );
    print!(
        "{}",
        kv_report(&o.records, &policy_names(), Style::Terminal)
    );
    Ok(())
}

fn cmd_report(a: KvReportCli) -> Result<()> {
    a.format
        .only("kv report", &[Format::Terminal, Format::Md, Format::Json])
        .map_err(anyhow::Error::msg)?;
    let (records, cut) = load_kv(&a.results)?;
    for p in cut {
        eprintln!(
            "xarena kv report: {}: last line cut short (a run killed while writing); left out",
            p.display()
        );
    }
    anyhow::ensure!(
        !records.is_empty(),
        "no kv records in {}",
        a.results
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    // Rows in the registry's order: the report crate keeps no list of policies.
    let order = policy_names();
    if let Some(dir) = &a.out {
        if dir.exists() && !a.force {
            super::check_new_dir(dir, "--out", " (or pass --force)")?;
        }
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut written = vec!["report.md".to_string()];
        super::write_atomic(
            &dir.join("report.md"),
            kv_report(&records, &order, Style::Markdown).as_bytes(),
        )?;
        for g in kv_groups(&records, &order) {
            if let Some(svg) = frontier_plot(&g).map_err(|e| anyhow::anyhow!("plot: {e}"))? {
                let name = plot_name(&g);
                super::write_atomic(&dir.join(&name), svg.as_bytes())?;
                written.push(name);
            }
        }
        eprintln!(
            "xarena kv report: wrote {} into {}",
            written.join(", "),
            dir.display()
        );
    }
    match a.format.style() {
        Some(style) => print!("{}", kv_report(&records, &order, style)),
        None => println!(
            "{}",
            serde_json::to_string_pretty(&kv_groups(&records, &order))?
        ),
    }
    Ok(())
}
