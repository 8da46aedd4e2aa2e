//! The full report of one or more runs, in every output format: terminal, Markdown, a
//! self-contained HTML leaderboard, CSV (one row per case), JSON; and the SVG plots.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use maud::{html, Markup, PreEscaped, DOCTYPE};
use serde::Serialize;
use thiserror::Error;

use crate::accuracy::{self, AccuracyRecord, ACCURACY_FILE};
use crate::analysis::{efficiency_tables, EfficiencyTable};
use crate::anchors::{comparisons, AnchorTable};
use crate::grid::{Grid, GridCell};
use crate::load::{load_records, LoadError, RESULTS_FILE};
use crate::lra::{lra_views, LraView};
use crate::plots;
use crate::schema::{Dtype, Environment, Record, Setting};
use crate::table::{
    compute_grid, device_time_grid, efficiency_notes, format_count, instability_warning,
    latency_grid, memory_grid, roofline_notes, Style,
};

/// Version of the layout of `report.json`.
pub const REPORT_JSON_VERSION: u32 = 1;

#[derive(Debug, Error)]
pub enum ReportError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("no records in {0}")]
    Empty(String),
    #[error("drawing a plot: {0}")]
    Plot(String),
    #[error(
        "{0} is not empty: refusing to write the report there (--force overwrites the \
         report's own files in it; nothing else in it is touched)"
    )]
    NotEmpty(PathBuf),
    #[error("{0} exists and is not a directory")]
    NotADirectory(PathBuf),
    // Not `source`: the message names it, and `{:#}` would name it again.
    #[error("writing {path}: {error}")]
    Io {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("serialising the report: {0}")]
    Serialise(String),
}

/// A plot: its file name in a report directory and its SVG.
#[derive(Debug, Clone)]
pub struct Plot {
    pub file: String,
    pub title: String,
    pub svg: String,
}

#[derive(Debug)]
pub struct Report {
    /// One per case (a case recorded twice, by merged or resumed runs: the last record).
    pub records: Vec<Record>,
    pub accuracy: Vec<AccuracyRecord>,
    pub tables: Vec<EfficiencyTable>,
    pub lra: Vec<LraView>,
    pub published: Vec<AnchorTable>,
    pub environments: Grid,
}

impl Report {
    /// Records of every path (run directories or results files), and the accuracy
    /// records of the run directories that have them. A directory with accuracy records
    /// only (an `xarena lra` or `xarena train` output) gives an accuracy-only report.
    pub fn load(paths: &[PathBuf]) -> Result<Self, ReportError> {
        let accuracy_only = |p: &PathBuf| {
            p.is_dir() && !p.join(RESULTS_FILE).exists() && p.join(ACCURACY_FILE).exists()
        };
        let efficiency: Vec<PathBuf> = paths
            .iter()
            .filter(|p| !accuracy_only(p))
            .cloned()
            .collect();
        let records = load_records(&efficiency)?;
        let accuracy = accuracy::load_accuracy(paths)?;
        if records.is_empty() && accuracy.is_empty() {
            return Err(ReportError::Empty(
                paths
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            ));
        }
        Ok(Report::new(records, accuracy))
    }

    pub fn new(records: Vec<Record>, accuracy: Vec<AccuracyRecord>) -> Self {
        let records = last_per_case(records);
        let tables = efficiency_tables(&records);
        Report {
            lra: lra_views(&tables),
            published: comparisons(&tables),
            environments: environment_grid(&records, &accuracy),
            records,
            accuracy,
            tables,
        }
    }

    /// Plot file names for each table, unique within the report.
    fn plot_names(&self) -> Vec<String> {
        let mut seen: HashMap<String, usize> = HashMap::new();
        self.tables
            .iter()
            .map(|t| {
                let base = slug(&t.setting);
                let k = seen.entry(base.clone()).or_default();
                *k += 1;
                if *k == 1 {
                    base
                } else {
                    format!("{base}-{k}")
                }
            })
            .collect()
    }

    /// Every plot: latency and memory per setting, and accuracy vs speed when there are
    /// accuracy records to place.
    pub fn plots(&self) -> Result<Vec<Plot>, ReportError> {
        let mut out = Vec::new();
        for (t, name) in self.tables.iter().zip(self.plot_names()) {
            let (latency, memory) = plots::setting_plots(t).map_err(ReportError::Plot)?;
            for (what, svg) in [("latency", latency), ("memory", memory)] {
                if let Some(svg) = svg {
                    out.push(Plot {
                        file: format!("{what}-{name}.svg"),
                        title: format!("{what}: {}", t.setting),
                        svg,
                    });
                }
            }
        }
        if let Some(svg) = self.accuracy_plot()? {
            out.push(Plot {
                file: "accuracy-vs-speed.svg".into(),
                title: "accuracy vs speed".into(),
                svg,
            });
        }
        Ok(out)
    }

    fn accuracy_plot(&self) -> Result<Option<String>, ReportError> {
        if self.accuracy.is_empty() {
            return Ok(None);
        }
        let per_variant = accuracy::mean_per_variant(&self.accuracy);
        match plots::accuracy_points(&self.tables, &per_variant) {
            Some((setting, points)) => {
                plots::accuracy_plot(&setting, &points).map_err(ReportError::Plot)
            }
            None => Ok(None),
        }
    }

    fn summary(&self) -> String {
        let runs: std::collections::BTreeSet<&str> =
            self.records.iter().map(|r| r.run_id.as_str()).collect();
        let mut s = format!(
            "{} case(s) from {} run(s), {} setting(s), made by xarena {}.",
            self.records.len(),
            runs.len(),
            self.tables.len(),
            env!("CARGO_PKG_VERSION")
        );
        if !self.accuracy.is_empty() {
            s.push_str(&format!(" {} accuracy record(s).", self.accuracy.len()));
        }
        s
    }

    /// Terminal or Markdown text. With `plot_files`, the Markdown links each setting's
    /// SVG plots (written beside it by [`Report::write_dir`]).
    pub fn text(&self, style: Style, plot_files: bool) -> String {
        // Headings and summaries carry labels, devices and model names from the records.
        let h = |level: usize, text: &str| match style {
            Style::Markdown => format!("{} {}\n\n", "#".repeat(level), style.inline(text)),
            Style::Terminal => {
                let rule = if level <= 2 { "=" } else { "-" };
                format!("{text}\n{}\n", rule.repeat(text.chars().count().min(100)))
            }
        };
        let para = |text: &str| format!("{text}\n\n");
        let grid = |g: &Grid| format!("{}\n\n", g.text(style));
        let mut out = String::new();
        if style == Style::Markdown {
            out.push_str(&h(1, "xarena report"));
        }
        out.push_str(&para(&style.inline(&self.summary())));
        if let Some(w) = instability_warning(&self.tables) {
            out.push_str(&para(&style.inline(w.trim_end())));
        }
        out.push_str(&h(2, "Environment"));
        out.push_str(&grid(&self.environments));
        if let Some(g) = device_grid(&self.records) {
            out.push_str(&grid(&g));
            out.push_str(&para(DEVICE_NOTE));
        }
        if !self.lra.is_empty() {
            out.push_str(&h(
                2,
                "Efficiency, LRA layout: forward and training side by side",
            ));
            for v in &self.lra {
                out.push_str(&h(3, &v.heading()));
                out.push_str(&grid(&v.speed));
                out.push_str(&grid(&v.memory));
            }
        }
        if !self.tables.is_empty() {
            out.push_str(&h(2, "Efficiency per setting"));
        }
        let names = self.plot_names();
        for (t, name) in self.tables.iter().zip(&names) {
            out.push_str(&h(3, &t.setting.to_string()));
            if plot_files && style == Style::Markdown {
                out.push_str(&para(&format!(
                    "![latency](latency-{name}.svg) ![memory](memory-{name}.svg)"
                )));
            }
            out.push_str(&grid(&latency_grid(t)));
            if let Some(g) = device_time_grid(t) {
                out.push_str(&grid(&g));
            }
            out.push_str(&grid(&memory_grid(t)));
            out.push_str(&grid(&compute_grid(t)));
        }
        if !self.tables.is_empty() {
            out.push_str(&para(efficiency_notes().trim_end()));
        }
        if let Some(n) = roofline_notes(&self.tables) {
            out.push_str(&para(&n));
        }
        if !self.published.is_empty() {
            out.push_str(&h(2, "Published figures beside this run"));
            for c in &self.published {
                out.push_str(&para(&style.inline(&c.heading)));
                out.push_str(&grid(&c.grid));
            }
            out.push_str(&para(PUBLISHED_NOTE));
        }
        if !self.accuracy.is_empty() {
            out.push_str(&h(2, "Accuracy"));
            out.push_str(&grid(&accuracy::accuracy_grid(&self.accuracy)));
            out.push_str(&para(ACCURACY_NOTE));
            if let Some(g) = accuracy::training_grid(&self.accuracy) {
                out.push_str(&grid(&g));
                out.push_str(&para(TRAINING_NOTE));
            }
            if plot_files && style == Style::Markdown {
                out.push_str(&para("![accuracy vs speed](accuracy-vs-speed.svg)"));
            }
        }
        out
    }

    /// One self-contained page: inline CSS, SVG and a few lines of script to sort the
    /// tables; nothing loaded from anywhere. Every string from the records is escaped.
    pub fn html(&self) -> Result<String, ReportError> {
        let plots = self.plots()?;
        let plot = |file: &str| -> Markup {
            match plots.iter().find(|p| p.file == file) {
                // plotters' SVG, whose text it escapes itself.
                Some(p) => html! { figure { (PreEscaped(&p.svg)) } },
                None => html! {},
            }
        };
        let names = self.plot_names();
        let page = html! {
            (DOCTYPE)
            html lang="en" {
                (page_head("xarena report", ""))
                body {
                    h1 { "xarena report" }
                    p { (self.summary()) " Click a column header to sort by it." }
                    @if let Some(w) = instability_warning(&self.tables) {
                        p.warning { (w.trim_end()) }
                    }
                    h2 { "Environment" }
                    (self.environments.html())
                    @if let Some(g) = device_grid(&self.records) {
                        (g.html())
                        p.note { (DEVICE_NOTE) }
                    }
                    @if !self.lra.is_empty() {
                        h2 { "Efficiency, LRA layout: forward and training side by side" }
                        @for v in &self.lra {
                            h3 { (v.heading()) }
                            (v.speed.html())
                            (v.memory.html())
                        }
                    }
                    @if !self.tables.is_empty() {
                        h2 { "Efficiency per setting" }
                    }
                    @for (t, name) in self.tables.iter().zip(&names) {
                        section.setting {
                            h3 { (t.setting.to_string()) }
                            div.plots {
                                (plot(&format!("latency-{name}.svg")))
                                (plot(&format!("memory-{name}.svg")))
                            }
                            (latency_grid(t).html())
                            @if let Some(g) = device_time_grid(t) {
                                (g.html())
                            }
                            (memory_grid(t).html())
                            (compute_grid(t).html())
                        }
                    }
                    @if !self.tables.is_empty() {
                        p.note { (efficiency_notes()) }
                    }
                    @if let Some(n) = roofline_notes(&self.tables) {
                        p.note { (n) }
                    }
                    @if !self.published.is_empty() {
                        h2 { "Published figures beside this run" }
                        @for c in &self.published {
                            p { (c.heading) }
                            (c.grid.html())
                        }
                        p.note { (PUBLISHED_NOTE) }
                    }
                    @if !self.accuracy.is_empty() {
                        h2 { "Accuracy" }
                        (accuracy::accuracy_grid(&self.accuracy).html())
                        p.note { (ACCURACY_NOTE) }
                        @if let Some(g) = accuracy::training_grid(&self.accuracy) {
                            (g.html())
                            p.note { (TRAINING_NOTE) }
                        }
                        (plot("accuracy-vs-speed.svg"))
                    }
                    script { (PreEscaped(SORT_JS)) }
                }
            }
        };
        Ok(page.into_string())
    }

    /// One row per case: the key, status, latency, memory, ratios against the reference,
    /// FLOPs, parameters, claims and the software that measured it.
    pub fn csv(&self) -> Result<String, ReportError> {
        // (setting, label, N) -> (speed-up, memory ratio)
        type Ratios = (Option<f64>, Option<f64>);
        let mut ratios: HashMap<(&Setting, &str, i64), Ratios> = HashMap::new();
        for t in &self.tables {
            for row in &t.rows {
                for (n, c) in &row.cells {
                    ratios.insert((&t.setting, &row.label, *n), (c.speedup, c.memory_ratio));
                }
            }
        }
        let mut w = csv::Writer::from_writer(Vec::new());
        for r in &self.records {
            let setting = r.key.setting();
            let (speedup, memory_ratio) = ratios
                .get(&(&setting, r.label.as_str(), r.key.seq_len))
                .copied()
                .unwrap_or_default();
            w.serialize(ReportCsvRow {
                run_id: &r.run_id,
                case_id: &r.case_id,
                label: &r.label,
                variant: &r.key.variant,
                params: serde_json::Value::Object(r.key.params.clone()).to_string(),
                device: &r.key.device,
                dtype: r.key.dtype.to_string(),
                mode: r.key.mode.to_string(),
                scope: r.key.scope.to_string(),
                batch: r.key.batch,
                heads: r.key.heads,
                head_dim: r.key.head_dim,
                causal: r.key.causal,
                seq_len: r.key.seq_len,
                status: r.status.to_string(),
                message: r.message.as_deref(),
                median_s: r.latency.as_ref().map(|l| l.median_s),
                p10_s: r.latency.as_ref().map(|l| l.p10_s),
                p90_s: r.latency.as_ref().map(|l| l.p90_s),
                peak_bytes: r.memory.as_ref().map(|m| m.peak_bytes),
                state_bytes: r.state_bytes,
                speedup_vs_reference: speedup,
                memory_ratio_vs_reference: memory_ratio,
                flops: r.flops,
                flops_per_s: r.flops_per_s,
                parameters: r.params,
                backend: r.backend.as_deref(),
                time_claim: r.claims.time_exponent,
                memory_claim: r.claims.memory_exponent,
                started_at: &r.started_at,
                torch_version: &r.env.torch_version,
                git_commit: r.env.git_commit.as_deref(),
                peak_fraction: r.peak_fraction,
                intensity: r.intensity,
                throttled: r.gpu.as_ref().map(|g| g.throttled),
            })
            .map_err(|e| ReportError::Serialise(e.to_string()))?;
        }
        let bytes = w
            .into_inner()
            .map_err(|e| ReportError::Serialise(e.to_string()))?;
        String::from_utf8(bytes).map_err(|e| ReportError::Serialise(e.to_string()))
    }

    pub fn json(&self) -> Result<String, ReportError> {
        serde_json::to_string_pretty(&JsonReport {
            report_version: REPORT_JSON_VERSION,
            made_by: format!("xarena {}", env!("CARGO_PKG_VERSION")),
            environments: &self.environments,
            settings: &self.tables,
            lra_layout: &self.lra,
            published: &self.published,
            accuracy: &self.accuracy,
            records: &self.records,
        })
        .map_err(|e| ReportError::Serialise(e.to_string()))
    }

    /// Writes report.md, report.html, report.csv, report.json and the SVG plots into
    /// `dir`, created if missing. A non-empty `dir` is refused unless `force`; even then
    /// only these files are written, nothing is removed. Everything is rendered before
    /// anything is written.
    pub fn write_dir(&self, dir: &Path, force: bool) -> Result<Vec<PathBuf>, ReportError> {
        if dir.exists() {
            if !dir.is_dir() {
                return Err(ReportError::NotADirectory(dir.to_path_buf()));
            }
            let mut entries = std::fs::read_dir(dir).map_err(|error| ReportError::Io {
                path: dir.to_path_buf(),
                error,
            })?;
            if entries.next().is_some() && !force {
                return Err(ReportError::NotEmpty(dir.to_path_buf()));
            }
        }
        let mut files: Vec<(String, String)> = vec![
            ("report.md".into(), self.text(Style::Markdown, true)),
            ("report.html".into(), self.html()?),
            ("report.csv".into(), self.csv()?),
            ("report.json".into(), self.json()?),
        ];
        files.extend(self.plots()?.into_iter().map(|p| (p.file, p.svg)));
        std::fs::create_dir_all(dir).map_err(|error| ReportError::Io {
            path: dir.to_path_buf(),
            error,
        })?;
        let mut written = Vec::new();
        for (name, text) in files {
            let path = dir.join(name);
            std::fs::write(&path, text).map_err(|error| ReportError::Io {
                path: path.clone(),
                error,
            })?;
            written.push(path);
        }
        Ok(written)
    }
}

const PUBLISHED_NOTE: &str = "Published figures: reports/data/anchors (SOURCES.md there \
    names each table). The papers' memory is a whole training step's peak per device; ours \
    is one iteration's working memory. Their hardware, precision, batch and task differ from \
    this run's: compare the trends (who overtakes the Transformer, from which length), not \
    the figures.";

const TRAINING_NOTE: &str = "Training speed and memory come from the training runs \
    themselves (the preset's model, batch and sequence length per task, on the run's \
    device and threads), as LRA's efficiency table came from training steps; peak memory \
    is the training loop's (CPU: RSS growth; CUDA: the allocator's peak).";

const ACCURACY_NOTE: &str = "Accuracy: mean over seeds of the fraction of test examples \
    correct, in percent; in brackets, the LRA paper's figure for the same task and model \
    (Tay et al. 2021, Table 1), shown only beside runs at LRA's settings (the `lra` preset, \
    or records that name none): a `tiny` run's tasks are smaller than LRA's. Average: over \
    the tasks shown for the variant.";

#[derive(Serialize)]
struct JsonReport<'a> {
    report_version: u32,
    made_by: String,
    environments: &'a Grid,
    settings: &'a [EfficiencyTable],
    lra_layout: &'a [LraView],
    published: &'a [AnchorTable],
    accuracy: &'a [AccuracyRecord],
    records: &'a [Record],
}

#[derive(Serialize)]
struct ReportCsvRow<'a> {
    run_id: &'a str,
    case_id: &'a str,
    label: &'a str,
    variant: &'a str,
    params: String,
    device: &'a str,
    dtype: String,
    mode: String,
    scope: String,
    batch: i64,
    heads: i64,
    head_dim: i64,
    causal: bool,
    seq_len: i64,
    status: String,
    message: Option<&'a str>,
    median_s: Option<f64>,
    p10_s: Option<f64>,
    p90_s: Option<f64>,
    peak_bytes: Option<u64>,
    state_bytes: Option<u64>,
    speedup_vs_reference: Option<f64>,
    memory_ratio_vs_reference: Option<f64>,
    flops: Option<u64>,
    flops_per_s: Option<f64>,
    parameters: Option<u64>,
    backend: Option<&'a str>,
    time_claim: f64,
    memory_claim: f64,
    started_at: &'a str,
    torch_version: &'a str,
    git_commit: Option<&'a str>,
    /// Of the roofline's matmul peak; FLOPs per byte of minimum traffic; NVML's verdict.
    peak_fraction: Option<f64>,
    intensity: Option<f64>,
    throttled: Option<bool>,
}

/// The last record of each case, in order of each case's first appearance.
fn last_per_case(records: Vec<Record>) -> Vec<Record> {
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut out: Vec<Record> = Vec::new();
    for r in records {
        match index.get(&r.case_id) {
            Some(&i) => out[i] = r,
            None => {
                index.insert(r.case_id.clone(), out.len());
                out.push(r);
            }
        }
    }
    out
}

/// A file-name-safe name for a setting.
fn slug(s: &Setting) -> String {
    let raw = format!(
        "{}-{}-{}-{}-b{}-h{}x{}{}",
        s.device,
        s.dtype,
        s.mode,
        s.scope,
        s.batch,
        s.heads,
        s.head_dim,
        if s.causal { "-causal" } else { "" }
    );
    raw.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// One row per run, device and dtype that measured a roofline or sampled its GPU: the
/// GPU the cases ran on, the peaks, TF32, and how many cases ran throttled. `None` when
/// no record has either (CPU runs without `--roofline`, records from before them).
fn device_grid(records: &[Record]) -> Option<Grid> {
    struct Row<'a> {
        gpu: Option<String>,
        peak: Option<&'a crate::schema::Peak>,
        tf32: Option<String>,
        cases: usize,
        throttled: usize,
    }
    let mut order: Vec<(&str, &str, Dtype)> = Vec::new();
    let mut rows: HashMap<(&str, &str, Dtype), Row> = HashMap::new();
    for r in records {
        let key = (r.run_id.as_str(), r.key.device.as_str(), r.key.dtype);
        let row = rows.entry(key).or_insert_with(|| {
            order.push(key);
            Row {
                gpu: None,
                peak: r
                    .env
                    .roofline
                    .iter()
                    .find(|p| p.device == r.key.device && p.dtype == r.key.dtype),
                tf32: r
                    .env
                    .tf32
                    .as_ref()
                    .filter(|_| r.key.device != "cpu")
                    .map(|t| {
                        let on = |b: bool| if b { "on" } else { "off" };
                        format!("{} / {}", on(t.matmul), on(t.cudnn))
                    }),
                cases: 0,
                throttled: 0,
            }
        });
        if let Some(g) = &r.gpu {
            row.gpu.get_or_insert_with(|| {
                let how = g.matched_by.as_deref().unwrap_or("?");
                format!("{} (NVML {}, by {how})", g.name, g.nvml_index)
            });
            row.cases += 1;
            row.throttled += usize::from(g.throttled);
        }
    }
    order.retain(|k| rows[k].peak.is_some() || rows[k].gpu.is_some());
    if order.is_empty() {
        return None;
    }
    let mut grid = Grid::new(
        [
            "run",
            "device",
            "dtype",
            "GPU",
            "matmul peak (n)",
            "copy bandwidth",
            "TF32 matmul / cuDNN",
            "throttled cases",
        ]
        .map(String::from)
        .to_vec(),
    );
    for k in order {
        let row = &rows[&k];
        let dash = || GridCell::from("-");
        grid.push(vec![
            k.0.into(),
            k.1.into(),
            k.2.to_string().into(),
            row.gpu.clone().map_or_else(dash, GridCell::from),
            row.peak.map_or_else(dash, |p| {
                GridCell::new(
                    format!(
                        "{}FLOP/s ({})",
                        format_count(p.matmul_flops_per_s),
                        p.matmul_size
                    ),
                    Some(p.matmul_flops_per_s),
                )
            }),
            row.peak.map_or_else(dash, |p| {
                GridCell::new(
                    format!("{}B/s", format_count(p.copy_bytes_per_s)),
                    Some(p.copy_bytes_per_s),
                )
            }),
            row.tf32.clone().map_or_else(dash, GridCell::from),
            if row.gpu.is_some() {
                format!("{} of {}", row.throttled, row.cases).into()
            } else {
                dash()
            },
        ]);
    }
    Some(grid)
}

/// What the device grid's figures are.
const DEVICE_NOTE: &str = "Matmul peak: the best rate of repeated n x n matrix multiplies \
    in the dtype, measured once per run before its cases; copy bandwidth: bytes read plus \
    written per second by a large tensor copy. GPU: the one NVML names for the case's CUDA \
    device (matched by the CUDA runtime's PCI bus id, a UUID in CUDA_VISIBLE_DEVICES, or \
    its index), sampled before and after each case; throttled: a power, thermal or \
    hardware-slowdown clock reason was in force.";

/// One row per distinct machine and software: which runs, devices and dates used it.
fn environment_grid(records: &[Record], accuracy: &[AccuracyRecord]) -> Grid {
    struct Seen {
        runs: Vec<String>,
        devices: Vec<String>,
        dates: Vec<String>,
    }
    let describe = |e: &Environment| -> Vec<String> {
        let gpus: Vec<String> = e.gpus.iter().map(|g| g.name.clone()).collect();
        let opt = |o: &Option<String>| o.clone().unwrap_or_else(|| "-".into());
        vec![
            format!(
                "{} ({} logical CPUs, {:.0} GiB)",
                e.cpu_model,
                e.logical_cpus,
                e.memory_bytes as f64 / (1u64 << 30) as f64
            ),
            e.threads.to_string(),
            if gpus.is_empty() {
                "-".into()
            } else {
                gpus.join(", ")
            },
            opt(&e.nvidia_driver),
            format!("{} / {}", opt(&e.cuda_runtime), opt(&e.cuda_driver)),
            e.torch_version.clone(),
            opt(&e.git_commit),
            opt(&e.os),
        ]
    };
    let mut order: Vec<Vec<String>> = Vec::new();
    let mut seen: BTreeMap<Vec<String>, Seen> = BTreeMap::new();
    let mut add = |e: &Environment, run: &str, device: &str, date: &str| {
        let key = describe(e);
        let s = seen.entry(key.clone()).or_insert_with(|| {
            order.push(key);
            Seen {
                runs: Vec::new(),
                devices: Vec::new(),
                dates: Vec::new(),
            }
        });
        for (list, v) in [
            (&mut s.runs, run),
            (&mut s.devices, device),
            (&mut s.dates, date),
        ] {
            if !v.is_empty() && !list.iter().any(|x| x == v) {
                list.push(v.to_string());
            }
        }
    };
    for r in records {
        // The date of an RFC 3339 time.
        let date = r.started_at.get(..10).unwrap_or(&r.started_at);
        add(&r.env, &r.run_id, &r.key.device, date);
    }
    for a in accuracy {
        add(&a.env, "accuracy", "", "");
    }
    let mut grid = Grid::new(
        [
            "runs",
            "devices",
            "dates",
            "CPU",
            "threads",
            "GPU",
            "driver",
            "CUDA runtime / driver",
            "torch",
            "git commit",
            "OS",
        ]
        .map(String::from)
        .to_vec(),
    );
    for key in order {
        let s = &seen[&key];
        let mut dates = s.dates.clone();
        dates.sort();
        let dates = match (dates.first(), dates.last()) {
            (Some(a), Some(b)) if a != b => format!("{a} to {b}"),
            (Some(a), _) => a.clone(),
            _ => "-".into(),
        };
        let mut row: Vec<GridCell> = vec![
            s.runs.join(", ").into(),
            s.devices.join(", ").into(),
            dates.into(),
        ];
        row.extend(key.into_iter().map(GridCell::from));
        grid.push(row);
    }
    grid
}

/// The head of every self-contained page: its title and the shared style, then the
/// page's own (`extra_css`).
pub(crate) fn page_head(title: &str, extra_css: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) }
            style { (PreEscaped(CSS)) (PreEscaped(extra_css)) }
        }
    }
}

pub(crate) const CSS: &str = "body{font-family:system-ui,sans-serif;margin:2em;color:#222}\
table{border-collapse:collapse;margin:0.6em 0 1.4em;font-size:0.9em;display:block;overflow-x:auto;max-width:100%}\
th,td{border:1px solid #ccc;padding:0.25em 0.6em;text-align:right;white-space:nowrap}\
th:first-child,td:first-child{text-align:left}\
th{background:#f3f3f3;cursor:pointer;user-select:none}\
th[data-dir=asc]::after{content:' \\25B2'}th[data-dir=desc]::after{content:' \\25BC'}\
tbody tr:nth-child(even){background:#fafafa}\
.plots{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0}\
figure svg{max-width:100%;height:auto}.note{max-width:60em;color:#555}\
.warning{max-width:60em;background:#fff3cd;border-left:4px solid #b58100;padding:.5em 1em}";

/// Click a header to sort its table's rows by that column (numbers by their
/// `data-sort` value, text otherwise); click again to reverse.
pub(crate) const SORT_JS: &str = r#"
document.querySelectorAll('table.sortable th').forEach(function (th) {
  th.addEventListener('click', function () {
    var col = Array.prototype.indexOf.call(th.parentNode.children, th);
    var asc = th.getAttribute('data-dir') !== 'asc';
    th.parentNode.querySelectorAll('th').forEach(function (h) { h.removeAttribute('data-dir'); });
    th.setAttribute('data-dir', asc ? 'asc' : 'desc');
    var body = th.closest('table').tBodies[0];
    var key = function (tr) {
      var td = tr.children[col];
      if (!td) { return ''; }
      var v = td.getAttribute('data-sort');
      return v === null ? td.textContent : parseFloat(v);
    };
    Array.prototype.slice.call(body.rows).sort(function (a, b) {
      var x = key(a), y = key(b);
      var c = (typeof x === 'number' && typeof y === 'number')
        ? (x === y ? 0 : (x < y ? -1 : 1)) : String(x).localeCompare(String(y));
      return asc ? c : -c;
    }).forEach(function (tr) { body.appendChild(tr); });
  });
});
"#;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::Peak;
    use crate::table::tests::record;

    #[test]
    fn the_device_grid_shows_gpu_peaks_and_throttling_only_when_recorded() {
        let old = vec![record("vanilla", 64, None, None)];
        assert!(
            device_grid(&old).is_none(),
            "records without either: no grid"
        );
        let text = Report::new(old, Vec::new()).text(Style::Markdown, false);
        assert!(!text.contains("matmul peak"), "{text}");

        let mut records = vec![
            record("vanilla", 64, Some(0.1), Some(false)),
            record("sdpa", 64, Some(0.2), Some(true)),
        ];
        for r in &mut records {
            r.env.roofline = vec![Peak {
                device: "cuda:0".into(),
                dtype: Dtype::Bf16,
                matmul_flops_per_s: 7.5e14,
                matmul_size: 8192,
                copy_bytes_per_s: 3.9e12,
            }];
            r.env.tf32 = Some(crate::schema::Tf32 {
                matmul: false,
                cudnn: true,
            });
            r.gpu.as_mut().unwrap().matched_by = Some("pci-bus-id".into());
        }
        let g = device_grid(&records).unwrap().text(Style::Markdown);
        let row = g.lines().find(|l| l.starts_with("| r ")).unwrap();
        for want in [
            "cuda:0",
            "bf16",
            "H200 (NVML 0, by pci-bus-id)",
            "750 TFLOP/s (8192)",
            "3.900 TB/s",
            "off / on",
            "1 of 2",
        ] {
            assert!(row.contains(want), "{want}: {g}");
        }
        let html = Report::new(records, Vec::new()).html().unwrap();
        assert!(html.contains("H200 (NVML 0, by pci-bus-id)") && html.contains("ran throttled"));
    }
}
