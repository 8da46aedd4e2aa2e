//! Efficiency tables as terminal or Markdown text.

use crate::analysis::{
    fit_power_law, Cell, Crossover, EfficiencyTable, Fit, Row, CROSSOVER_REFERENCES, FLOOR,
    LAUNCH_BOUND_FACTOR, REFERENCE,
};
use crate::grid::{Grid, GridCell};
use crate::schema::{Mode, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Terminal,
    Markdown,
}

/// The output formats of every command that prints tables or reports, spelled the same
/// everywhere (`md`, with `markdown` an alias). A command refuses the ones it has no
/// rendering for ([`Format::only`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Terminal,
    #[value(alias = "markdown")]
    Md,
    /// An HTML table (escaped), or the self-contained page for `report`.
    Html,
    /// One row per line, with a header.
    Csv,
    Json,
}

/// What every report command takes: the results, what to print, or a directory to
/// write the report's files into (`report` and `kv report`).
#[derive(Debug, Clone, clap::Args)]
pub struct ReportTarget {
    /// Run directories or results files.
    #[arg(required = true)]
    pub results: Vec<std::path::PathBuf>,
    /// What to print (without --out).
    #[arg(long, value_enum, default_value_t = Format::Terminal)]
    pub format: Format,
    /// Write the report's files (Markdown and the SVG plots; for `report` also HTML, CSV
    /// and JSON) into this directory (created; a non-empty one is refused unless --force).
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    /// With --out: write into a non-empty directory, replacing the report's own files
    /// (nothing else there is touched).
    #[arg(long, requires = "out")]
    pub force: bool,
}

impl Format {
    /// The text style of `terminal` and `md`; `None` for the others.
    pub fn style(self) -> Option<Style> {
        match self {
            Format::Terminal => Some(Style::Terminal),
            Format::Md => Some(Style::Markdown),
            _ => None,
        }
    }

    /// `self` when `command` prints it, else an error naming the ones it prints.
    pub fn only(self, command: &str, printed: &[Format]) -> Result<Format, String> {
        if printed.contains(&self) {
            return Ok(self);
        }
        let names: Vec<String> = printed.iter().map(|f| f.to_string()).collect();
        Err(format!(
            "`{command} --format {self}` is not available; use {}",
            names.join(", ")
        ))
    }
}

impl std::fmt::Display for Format {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use clap::ValueEnum;
        let v = self.to_possible_value().ok_or(std::fmt::Error)?;
        f.write_str(v.get_name())
    }
}

impl Style {
    /// Text from records (labels, devices, CPU names, model names) as this style shows it.
    pub fn inline(self, text: &str) -> String {
        match self {
            Style::Markdown => markdown_escape(text),
            Style::Terminal => text.to_string(),
        }
    }
}

/// Text set into Markdown with what a renderer would take for HTML escaped: the start of
/// a tag, comment or autolink (`<` before a letter, `/`, `!` or `?`) and of an entity
/// (`&` before a letter, digit or `#`). GitHub renders raw HTML in Markdown; `< 512` and
/// `> 8192` are not HTML and stay as written.
pub fn markdown_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        let next = chars.peek().copied();
        match c {
            '<' if next
                .is_some_and(|n| n.is_ascii_alphabetic() || matches!(n, '/' | '!' | '?')) =>
            {
                out.push_str("&lt;")
            }
            '&' if next.is_some_and(|n| n.is_ascii_alphanumeric() || n == '#') => {
                out.push_str("&amp;")
            }
            _ => out.push(c),
        }
    }
    out
}

pub fn format_seconds(s: f64) -> String {
    if s < 1e-3 {
        format!("{:.1} us", s * 1e6)
    } else if s < 1.0 {
        format!("{:.2} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

pub fn format_bytes(b: u64) -> String {
    let b = b as f64;
    const KIB: f64 = 1024.0;
    if b < KIB * KIB {
        format!("{:.0} KiB", b / KIB)
    } else if b < KIB * KIB * KIB {
        format!("{:.1} MiB", b / (KIB * KIB))
    } else {
        format!("{:.2} GiB", b / (KIB * KIB * KIB))
    }
}

fn format_fit(fit: Option<Fit>, claim: f64) -> String {
    let claim = if claim.is_finite() {
        // 2 as "2", 1.5 as "1.5".
        format!(" ({claim})")
    } else {
        String::new()
    };
    match fit {
        Some(f) => format!("{:.2}{claim}", f.exponent),
        None => format!("-{claim}"),
    }
}

fn format_crossover(c: Option<Crossover>) -> String {
    match c {
        Some(Crossover::Below(n)) => format!("< {n}"),
        Some(Crossover::At(n)) => format!("~{n:.0}"),
        Some(Crossover::Never(n)) => format!("> {n}"),
        None => "-".into(),
    }
}

/// Whether any cell of the table has `what`.
fn any_cell(table: &EfficiencyTable, what: impl Fn(&Cell) -> bool) -> bool {
    table.rows.iter().any(|r| r.cells.values().any(&what))
}

fn status_text(cell: &Cell) -> Option<String> {
    (cell.status != Status::Ok).then(|| cell.status.to_string())
}

fn render(
    table: &EfficiencyTable,
    what: &str,
    cell: impl Fn(&Cell) -> GridCell,
    fit: impl Fn(&Row) -> String,
    crossovers: bool,
) -> Grid {
    let mut header = vec![what.to_string()];
    header.extend(table.seq_lens.iter().map(|n| format!("N={n}")));
    header.push("exponent (claim)".into());
    // Reference names in the order they appear in rows.
    let references: Vec<String> = if crossovers {
        CROSSOVER_REFERENCES
            .iter()
            .filter(|r| {
                table
                    .rows
                    .iter()
                    .any(|row| row.crossovers.iter().any(|c| c.0 == **r))
            })
            .map(|r| r.to_string())
            .collect()
    } else {
        Vec::new()
    };
    header.extend(references.iter().map(|r| format!("faster than {r} from N")));
    let mut t = Grid::new(header);
    for row in &table.rows {
        let mut line: Vec<GridCell> = vec![row.label.clone().into()];
        line.extend(table.seq_lens.iter().map(|n| match row.cells.get(n) {
            Some(c) => status_text(c).map_or_else(|| cell(c), GridCell::from),
            None => GridCell::default(),
        }));
        line.push(fit(row).into());
        for r in &references {
            let c = row.crossovers.iter().find(|(name, _)| name == r);
            line.push(c.map_or(GridCell::default(), |(_, c)| {
                GridCell::new(format_crossover(*c), crossover_sort(*c))
            }));
        }
        t.push(line);
    }
    t
}

fn crossover_sort(c: Option<Crossover>) -> Option<f64> {
    match c? {
        Crossover::Below(n) => Some(n as f64 - 0.5),
        Crossover::At(n) => Some(n),
        Crossover::Never(n) => Some(n as f64 + 0.5),
    }
}

/// The latency table: median per iteration and speed-up over the reference.
pub fn latency_grid(table: &EfficiencyTable) -> Grid {
    // The header names the ratio only when the setting has the reference to make it.
    let title = if any_cell(table, |c| c.speedup.is_some()) {
        "latency (speed-up)"
    } else {
        "latency"
    };
    render(
        table,
        title,
        |c| {
            let spread = match (c.interval, c.latency_s) {
                (Some((lo, hi, _)), Some(t)) if t > 0.0 => {
                    format!(" \u{b1}{:.0}%", 50.0 * (hi - lo) / t)
                }
                _ => String::new(),
            };
            let mut text = match (c.latency_s, c.speedup) {
                (Some(t), Some(s)) => format!("{}{spread} ({s:.2}x)", format_seconds(t)),
                (Some(t), None) => format!("{}{spread}", format_seconds(t)),
                _ => "-".into(),
            };
            if !c.unstable.is_empty() {
                text.push_str(UNSTABLE_MARK);
            }
            if c.throttled {
                text.push_str(THROTTLED_MARK);
            }
            if c.launch_bound {
                text.push_str(LAUNCH_BOUND_MARK);
            }
            GridCell::new(text, c.latency_s)
        },
        |r| format_fit(r.time_fit, r.time_claim),
        true,
    )
}

/// The device-time table (CUDA events): `None` when no case of the setting has one.
pub fn device_time_grid(table: &EfficiencyTable) -> Option<Grid> {
    let any = table
        .rows
        .iter()
        .any(|r| r.cells.values().any(|c| c.device_s.is_some()));
    any.then(|| {
        render(
            table,
            "device time",
            |c| GridCell::new(c.device_s.map_or("-".into(), format_seconds), c.device_s),
            |r| {
                let points: Vec<(f64, f64)> = r
                    .cells
                    .iter()
                    .filter_map(|(n, c)| c.device_s.map(|t| (*n as f64, t)))
                    .collect();
                format_fit(fit_power_law(&points), r.time_claim)
            },
            false,
        )
    })
}

/// The headline of a setting at one length: per variant, its speed-up and memory ratio
/// against the reference at `n`, the length from which it beats `sdpa`, and its fitted
/// exponents beside the paper's claims; fastest first. `None` when the setting has no
/// reference or was not measured at `n`.
pub fn headline_grid(table: &EfficiencyTable, n: i64) -> Option<Grid> {
    let has = |label: &str| table.rows.iter().any(|r| r.label == label);
    if !has(REFERENCE) || !table.seq_lens.contains(&n) {
        return None;
    }
    let mut header = vec![
        "variant".to_string(),
        format!("speed-up at N={n}"),
        format!("memory ratio at N={n}"),
    ];
    let sdpa = has("sdpa");
    if sdpa {
        header.push("faster than sdpa from N".into());
    }
    header.extend([
        "time exponent (claim)".into(),
        "memory exponent (claim)".into(),
    ]);
    let mut rows: Vec<&Row> = table.rows.iter().collect();
    let speedup = |r: &Row| r.cells.get(&n).and_then(|c| c.speedup);
    rows.sort_by(|a, b| {
        speedup(b)
            .unwrap_or(f64::NEG_INFINITY)
            .total_cmp(&speedup(a).unwrap_or(f64::NEG_INFINITY))
    });
    let mut grid = Grid::new(header);
    for row in rows {
        let cell = row.cells.get(&n);
        let ratio = |x: Option<f64>| GridCell::new(x.map_or("-".into(), |x| format!("{x:.2}x")), x);
        let mut speedup = ratio(cell.and_then(|c| c.speedup));
        // Marked as in the latency table: the case ran on a busy machine or its rounds
        // disagreed.
        if cell.is_some_and(|c| !c.unstable.is_empty()) {
            speedup.text.push_str(UNSTABLE_MARK);
        }
        let mut line: Vec<GridCell> = vec![
            row.label.clone().into(),
            speedup,
            ratio(cell.and_then(|c| c.memory_ratio)),
        ];
        if sdpa {
            let c = row.crossovers.iter().find(|(r, _)| r == "sdpa");
            line.push(match c {
                Some((_, c)) => GridCell::new(format_crossover(*c), crossover_sort(*c)),
                None => "-".into(),
            });
        }
        line.push(format_fit(row.time_fit, row.time_claim).into());
        line.push(format_fit(row.memory_fit, row.memory_claim).into());
        grid.push(line);
    }
    Some(grid)
}

pub fn latency_table(table: &EfficiencyTable, style: Style) -> String {
    latency_grid(table).text(style)
}

/// The memory table: peak working memory and its ratio to the reference's.
pub fn memory_grid(table: &EfficiencyTable) -> Grid {
    let what = match table.setting.mode {
        Mode::Decode => "decode state",
        _ => "peak memory",
    };
    let title = if any_cell(table, |c| c.memory_ratio.is_some()) {
        format!("{what} (ratio)")
    } else {
        what.to_string()
    };
    render(
        table,
        &title,
        |c| {
            let text = match (c.peak_bytes, c.memory_ratio) {
                (Some(b), Some(r)) => format!("{} ({r:.2}x)", format_bytes(b)),
                (Some(b), None) => format_bytes(b),
                _ => "-".into(),
            };
            GridCell::new(text, c.peak_bytes.map(|b| b as f64))
        },
        |r| format_fit(r.memory_fit, r.memory_claim),
        false,
    )
}

pub fn memory_table(table: &EfficiencyTable, style: Style) -> String {
    memory_grid(table).text(style)
}

/// FLOPs with the achieved rate, and parameters: what conditional computation trades
/// (FLOPs flat while parameters grow with the experts).
pub fn compute_grid(table: &EfficiencyTable) -> Grid {
    let mut header = vec!["FLOPs (achieved)".to_string()];
    header.extend(table.seq_lens.iter().map(|n| format!("N={n}")));
    header.push("parameters".into());
    let mut t = Grid::new(header);
    for row in &table.rows {
        let mut line: Vec<GridCell> = vec![row.label.clone().into()];
        line.extend(table.seq_lens.iter().map(|n| match row.cells.get(n) {
            Some(c) => {
                let text = match (c.flops, c.flops_per_s) {
                    (Some(f), Some(r)) => match c.peak_fraction {
                        Some(p) => format!(
                            "{} ({}/s, {} peak)",
                            format_count(f as f64),
                            format_count(r),
                            format_percent(p)
                        ),
                        None => format!("{} ({}/s)", format_count(f as f64), format_count(r)),
                    },
                    (Some(f), None) => format_count(f as f64),
                    _ => "-".into(),
                };
                GridCell::new(text, c.flops.map(|f| f as f64))
            }
            None => GridCell::default(),
        }));
        // Parameters of a shape-independent variant are the same at every N; where they
        // depend on N (Linformer's projections), the range is shown.
        let params: Vec<u64> = row.cells.values().filter_map(|c| c.params).collect();
        let (lo, hi) = (params.iter().min(), params.iter().max());
        line.push(GridCell::new(
            match (lo, hi) {
                (Some(lo), Some(hi)) if lo == hi => format_count(*lo as f64),
                (Some(lo), Some(hi)) => {
                    format!("{}-{}", format_count(*lo as f64), format_count(*hi as f64))
                }
                _ => "-".into(),
            },
            hi.map(|p| *p as f64),
        ));
        t.push(line);
    }
    t
}

pub fn compute_table(table: &EfficiencyTable, style: Style) -> String {
    compute_grid(table).text(style)
}

/// A count with an SI prefix: 1.23 G, 456 M, 12.3 k.
pub fn format_count(x: f64) -> String {
    let (v, unit) = if x >= 1e12 {
        (x / 1e12, "T")
    } else if x >= 1e9 {
        (x / 1e9, "G")
    } else if x >= 1e6 {
        (x / 1e6, "M")
    } else if x >= 1e3 {
        (x / 1e3, "k")
    } else {
        (x, "")
    };
    if v >= 100.0 {
        format!("{v:.0} {unit}")
    } else {
        format!("{v:.3} {unit}")
    }
    .trim_end()
    .to_string()
}

/// Appended to a latency cell whose case ran throttled.
pub const THROTTLED_MARK: &str = " \u{2020}";

/// Appended to a latency cell whose case is launch-bound.
pub const LAUNCH_BOUND_MARK: &str = " \u{2021}";

/// Marks a latency measured on a busy machine or whose rounds disagree.
pub const UNSTABLE_MARK: &str = " ~";

/// The warning at the top of a report when any case is unstable: how many, and why (the
/// reasons counted over cases).
pub fn instability_warning(tables: &[EfficiencyTable]) -> Option<String> {
    let cells: Vec<&Cell> = tables
        .iter()
        .flat_map(|t| t.rows.iter())
        .flat_map(|r| r.cells.values())
        .filter(|c| c.latency_s.is_some())
        .collect();
    let unstable: Vec<&&Cell> = cells.iter().filter(|c| !c.unstable.is_empty()).collect();
    if unstable.is_empty() {
        return None;
    }
    let mut kinds: std::collections::BTreeMap<&str, usize> = Default::default();
    for c in &unstable {
        for why in &c.unstable {
            let kind = if why.starts_with("rounds") {
                "rounds disagree"
            } else if why.starts_with("waited") {
                "waited for a CPU"
            } else if why.contains("steal") {
                "steal time"
            } else {
                "high load"
            };
            *kinds.entry(kind).or_default() += 1;
        }
    }
    let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{k}: {n}")).collect();
    Some(format!(
        "WARNING: {} of {} cases are unstable (marked{UNSTABLE_MARK}): the machine was busy \
         while they were timed or their rounds disagree ({}). Their latencies, and the \
         speed-ups and exponents made from them, may be off by more than the usual noise; \
         rerun them on a quiet machine, with --rounds 3 or more.\n",
        unstable.len(),
        cells.len(),
        kinds.join(", ")
    ))
}

/// A fraction as a percentage with two significant digits at least: 43%, 4.3%, 0.43%.
pub fn format_percent(p: f64) -> String {
    let pct = 100.0 * p;
    if pct >= 10.0 {
        format!("{pct:.0}%")
    } else if pct >= 1.0 {
        format!("{pct:.1}%")
    } else {
        format!("{pct:.2}%")
    }
}

/// What the roofline and GPU-state marks in the tables mean, for the tables that have
/// them: nothing when no case has a peak fraction or ran throttled.
pub fn roofline_notes(tables: &[EfficiencyTable]) -> Option<String> {
    let cells = || {
        tables
            .iter()
            .flat_map(|t| t.rows.iter())
            .flat_map(|r| r.cells.values())
    };
    let mut notes = Vec::new();
    if cells().any(|c| c.peak_fraction.is_some()) {
        notes.push(
            "% peak: the achieved FLOP/s over the peak matrix-multiply rate measured in the \
             same run on the same device and dtype (the roofline in the run's environment)."
                .to_string(),
        );
    }
    if cells().any(|c| c.device_s.is_some()) {
        notes.push(
            "Device time: the GPU's own time per iteration, from CUDA events on the case's \
             stream around each timed sample; latency is the host's clock around the same \
             samples (short cases run several iterations between two synchronisations: \
             `per_sample` in the records)."
                .to_string(),
        );
    }
    if cells().any(|c| c.launch_bound) {
        notes.push(format!(
            "{}: launch-bound: the latency is within {LAUNCH_BOUND_FACTOR}x of the `{FLOOR}` \
             variant's (an identity layer: the harness's dispatch and synchronisation) at the \
             same length, so it says more about the harness and the host than about the \
             variant.",
            LAUNCH_BOUND_MARK.trim()
        ));
    }
    if cells().any(|c| c.interval.is_some()) {
        notes.push(
            "\u{b1}: half the width of the interval of the median over rounds (`--rounds`), \
             relative to it: order statistics of the rounds' medians, which cover the true \
             median with the probability the record states (75% at 3 rounds, 94% at 5, at \
             least 95% from 6)."
                .to_string(),
        );
    }
    if cells().any(|c| !c.unstable.is_empty()) {
        notes.push(format!(
            "{}: unstable: the case's threads waited for a CPU more than {:.0}% of the timed \
             time, the hypervisor stole more than {:.0}%, the load average was above {}x the \
             CPUs, or its rounds' interval is wider than {:.0}% of the median (the record \
             says which).",
            UNSTABLE_MARK.trim(),
            100.0 * crate::analysis::BUSY_WAIT,
            100.0 * crate::analysis::BUSY_STEAL,
            crate::analysis::BUSY_LOAD,
            100.0 * crate::analysis::UNSTABLE_WIDTH
        ));
    }
    if cells().any(|c| c.throttled) {
        notes.push(format!(
            "{}: the case ran throttled: NVML reported a performance-limiting clock reason \
             (power cap, thermal or hardware slowdown, sync boost) just before or just after \
             it, so its latency may be too high.",
            THROTTLED_MARK.trim()
        ));
    }
    (!notes.is_empty()).then(|| notes.join(" "))
}

/// Both tables for every setting, with a heading each.
pub fn efficiency_report(tables: &[EfficiencyTable], style: Style) -> String {
    let mut out = instability_warning(tables)
        .map(|w| w + "\n")
        .unwrap_or_default();
    for t in tables {
        let heading = match style {
            Style::Markdown => format!("#### {}\n\n", markdown_escape(&t.setting.to_string())),
            Style::Terminal => format!("{}\n", t.setting),
        };
        out.push_str(&heading);
        out.push_str(&latency_table(t, style));
        out.push_str("\n\n");
        if let Some(g) = device_time_grid(t) {
            out.push_str(&g.text(style));
            out.push_str("\n\n");
        }
        out.push_str(&memory_table(t, style));
        out.push_str("\n\n");
        out.push_str(&compute_table(t, style));
        out.push_str("\n\n");
    }
    out.push_str(&efficiency_notes());
    if let Some(n) = roofline_notes(tables) {
        out.push_str(&n);
        out.push('\n');
    }
    out
}

/// What the efficiency tables' columns mean.
pub fn efficiency_notes() -> String {
    format!(
        "Latency: median per iteration; speed-up = {REFERENCE}'s latency / the variant's. \
         Memory: peak working memory of one iteration above what it began with; ratio = the \
         variant's / {REFERENCE}'s. Exponent: least-squares slope of log(y) on log(N) over the \
         lengths shown, with the paper's claim in brackets. Faster from N: the length from which \
         the variant's latency stays below the reference's (interpolated in log-log between \
         the lengths around the last crossing; < or > the range measured otherwise). \
         FLOPs: of one iteration as computed (conventions in variants/src/flops.rs), with the \
         achieved rate; parameters: trainable, at each N. Decode tables: latency per generated token after a context of N, and the bytes of \
         the decoding state (KV cache, window, recurrent sums) instead of peak memory.\n"
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::analysis::efficiency_tables;
    use crate::schema::Record;

    /// A CPU or CUDA record at N, as a run writes it, with or without the new fields.
    pub(crate) fn record(
        label: &str,
        n: i64,
        peak_fraction: Option<f64>,
        throttled: Option<bool>,
    ) -> Record {
        let mut v = serde_json::json!({
            "schema": 1, "run_id": "r", "case_id": format!("{label}{n}"),
            "key": {"variant": label, "params": {}, "seq_len": n, "batch": 1, "heads": 2,
                    "head_dim": 8, "causal": false, "dtype": "bf16", "device": "cuda:0",
                    "mode": "forward", "scope": "attention"},
            "label": label, "status": "ok", "message": null,
            "claims": {"family": "exact", "time": "N^2", "memory": "N^2",
                       "time_exponent": 2.0, "memory_exponent": 2.0, "exact": true},
            "latency": {"median_s": 1e-3, "p10_s": 1e-3, "p90_s": 1e-3, "mean_s": 1e-3,
                        "min_s": 1e-3, "max_s": 1e-3, "iterations": 5, "warmup_iterations": 1},
            "memory": null, "flops": 2_000_000_000u64, "flops_per_s": 2e12, "params": 10,
            "backend": null, "started_at": "2026-01-01T00:00:00Z", "wall_s": 1.0,
            "env": {"hostname": null, "os": null, "cpu_model": "c", "physical_cores": 1,
                    "logical_cpus": 1, "memory_bytes": 1, "threads": 1, "torch_version": "2.11.0",
                    "cuda_available": true, "cuda_runtime": null, "gpus": [],
                    "nvidia_driver": null, "cuda_driver": null, "xarena_version": "0.1.0",
                    "git_commit": null}
        });
        if let Some(p) = peak_fraction {
            v["peak_fraction"] = p.into();
        }
        if let Some(t) = throttled {
            let sample = serde_json::json!({"sm_clock_mhz": 1980, "memory_clock_mhz": 2619,
                "temperature_c": 40, "power_w": 120.5, "throttle_reasons": []});
            v["gpu"] = serde_json::json!({"nvml_index": 0, "uuid": null, "name": "H200",
                "before": sample, "after": sample, "throttled": t});
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn throttled_cases_are_marked_with_a_legend_only_when_any_is() {
        let clean = efficiency_tables(&[
            record("vanilla", 64, None, None),
            record("sdpa", 64, None, Some(false)),
        ]);
        let text = efficiency_report(&clean, Style::Markdown);
        assert!(!text.contains(THROTTLED_MARK.trim()), "{text}");
        assert!(
            !text.contains("% peak") && !text.contains("throttled"),
            "{text}"
        );
        assert_eq!(roofline_notes(&clean), None);

        let hot = efficiency_tables(&[
            record("vanilla", 64, None, None),
            record("sdpa", 64, None, Some(true)),
        ]);
        let grid = latency_grid(&hot[0]).text(Style::Markdown);
        let sdpa = grid.lines().find(|l| l.starts_with("| sdpa")).unwrap();
        let vanilla = grid.lines().find(|l| l.starts_with("| vanilla")).unwrap();
        assert!(sdpa.contains(THROTTLED_MARK.trim()), "{grid}");
        assert!(!vanilla.contains(THROTTLED_MARK.trim()), "{grid}");
        let notes = roofline_notes(&hot).unwrap();
        assert!(
            notes.contains("ran throttled") && !notes.contains("% peak"),
            "{notes}"
        );
        assert!(efficiency_report(&hot, Style::Terminal).contains(&notes));
    }

    #[test]
    fn unstable_cases_are_marked_and_warned_about_at_the_top() {
        use crate::schema::{Interval, MachineState, Rounds, Visit};
        let steady = record("sdpa", 64, None, None);
        let mut busy = record("vanilla", 64, None, None);
        busy.machine = Some(MachineState {
            cpus: 2,
            load_before: Some(1.0),
            load_after: Some(1.0),
            wall_s: 1.0,
            cpu_s: Some(0.6),
            runqueue_wait_s: Some(0.4),
            steal_fraction: Some(0.0),
        });
        let quiet = efficiency_tables(std::slice::from_ref(&steady));
        assert_eq!(instability_warning(&quiet), None);
        assert!(!efficiency_report(&quiet, Style::Markdown).contains("WARNING"));
        let tables = efficiency_tables(&[busy.clone(), steady.clone()]);
        let text = efficiency_report(&tables, Style::Markdown);
        assert!(
            text.starts_with("WARNING: 1 of 2 cases are unstable")
                && text.contains("waited for a CPU: 1"),
            "{text}"
        );
        let grid = latency_grid(&tables[0]).text(Style::Markdown);
        let line = |l: &str| {
            grid.lines()
                .find(|x| x.starts_with(&format!("| {l}")))
                .unwrap()
                .to_string()
        };
        assert!(line("vanilla").contains(UNSTABLE_MARK.trim()), "{grid}");
        assert!(!line("sdpa").contains(UNSTABLE_MARK.trim()), "{grid}");
        // Rounds that disagree: a wide interval, shown as +-, and marked.
        let mut wide = steady;
        wide.rounds = Some(Rounds {
            visits: vec![Visit {
                round: 0,
                started_at: String::new(),
                latency: wide.latency.clone().unwrap(),
                machine: None,
            }],
            interval: Interval {
                low_s: 0.8e-3,
                high_s: 1.3e-3,
                coverage: 0.75,
                method: "order-statistics".into(),
            },
        });
        let tables = efficiency_tables(&[wide]);
        let grid = latency_grid(&tables[0]).text(Style::Markdown);
        assert!(
            grid.contains("\u{b1}25%") && grid.contains(UNSTABLE_MARK.trim()),
            "{grid}"
        );
        assert!(instability_warning(&tables)
            .unwrap()
            .contains("rounds disagree: 1"));
    }

    #[test]
    fn the_headline_ranks_variants_at_one_length_against_the_reference() {
        let at = |label: &str, n: i64, ms: f64| {
            let mut r = record(label, n, None, None);
            let l = r.latency.as_mut().unwrap();
            l.median_s = ms * 1e-3;
            r
        };
        let tables = efficiency_tables(&[
            at("vanilla", 1024, 4.0),
            at("vanilla", 4096, 64.0),
            at("sdpa", 1024, 2.0),
            at("sdpa", 4096, 32.0),
            at("local", 1024, 4.0),
            at("local", 4096, 16.0),
        ]);
        let grid = headline_grid(&tables[0], 4096).unwrap();
        let text = grid.text(Style::Markdown);
        let rows: Vec<&str> = text.lines().skip(2).collect();
        assert!(
            rows[0].starts_with("| local") && rows[0].contains("4.00x"),
            "{text}"
        );
        assert!(
            rows[1].starts_with("| sdpa") && rows[1].contains("2.00x"),
            "{text}"
        );
        assert!(
            rows[2].starts_with("| vanilla") && rows[2].contains("1.00x"),
            "{text}"
        );
        // local: 4.0 against sdpa's 2.0 at 1K (slower), 16 against 32 at 4K (faster).
        assert!(text.contains("faster than sdpa from N"), "{text}");
        assert!(
            rows[0].contains("1.00 (2)"),
            "local's fitted time exponent: {text}"
        );
        assert!(
            headline_grid(&tables[0], 2048).is_none(),
            "not measured at 2048"
        );
        let no_reference = efficiency_tables(&[at("sdpa", 4096, 1.0), at("local", 4096, 1.0)]);
        assert!(headline_grid(&no_reference[0], 4096).is_none());
        // A case on a busy machine is marked, as in the latency table.
        let mut busy = at("local", 4096, 16.0);
        busy.machine = Some(crate::schema::MachineState {
            cpus: 2,
            wall_s: 1.0,
            runqueue_wait_s: Some(0.5),
            ..Default::default()
        });
        let tables = efficiency_tables(&[at("vanilla", 4096, 64.0), busy]);
        let text = headline_grid(&tables[0], 4096)
            .unwrap()
            .text(Style::Markdown);
        let local = text.lines().find(|l| l.starts_with("| local")).unwrap();
        assert!(local.contains(&format!("4.00x{UNSTABLE_MARK}")), "{text}");
    }

    #[test]
    fn headers_name_a_ratio_only_when_the_reference_is_there() {
        let with_peak = |label: &str| {
            let mut r = record(label, 64, None, None);
            r.memory = Some(
                serde_json::from_value(serde_json::json!({"peak_bytes": 1 << 20,
                    "baseline_bytes": 0, "static_bytes": 0, "method": "cuda-allocator"}))
                .unwrap(),
            );
            r
        };
        let first_line = |g: Grid| g.text(Style::Markdown).lines().next().unwrap().to_string();
        let with = efficiency_tables(&[with_peak("vanilla"), with_peak("sdpa")]);
        assert!(first_line(latency_grid(&with[0])).contains("latency (speed-up)"));
        assert!(first_line(memory_grid(&with[0])).contains("peak memory (ratio)"));
        let without = efficiency_tables(&[with_peak("sdpa"), with_peak("local")]);
        let (lat, mem) = (
            first_line(latency_grid(&without[0])),
            first_line(memory_grid(&without[0])),
        );
        assert!(
            lat.contains("latency") && !lat.contains("speed-up"),
            "{lat}"
        );
        assert!(
            mem.contains("peak memory") && !mem.contains("ratio"),
            "{mem}"
        );
    }

    #[test]
    fn the_compute_table_shows_the_fraction_of_peak() {
        let tables = efficiency_tables(&[
            record("vanilla", 64, Some(0.4321), None),
            record("sdpa", 64, None, None),
        ]);
        let grid = compute_grid(&tables[0]).text(Style::Markdown);
        let vanilla = grid.lines().find(|l| l.starts_with("| vanilla")).unwrap();
        assert!(vanilla.contains("2.000 T/s, 43% peak"), "{grid}");
        let sdpa = grid.lines().find(|l| l.starts_with("| sdpa")).unwrap();
        assert!(!sdpa.contains("peak"), "{grid}");
        assert!(roofline_notes(&tables).unwrap().starts_with("% peak"));
        assert_eq!(format_percent(0.04321), "4.3%");
        assert_eq!(format_percent(0.004321), "0.43%");
    }

    #[test]
    fn launch_bound_cases_and_device_time_are_shown_only_where_they_apply() {
        let with_latency = |label: &str, n: i64, host: f64, device: Option<f64>| {
            let mut r = record(label, n, None, None);
            let l = r.latency.as_mut().unwrap();
            l.median_s = host;
            l.device = device.map(device_time);
            r
        };
        // empty at 10 us: 15 us is launch-bound, 25 us is not; empty itself never is.
        let records = vec![
            with_latency("empty", 1024, 10e-6, Some(2e-6)),
            with_latency("sdpa", 1024, 15e-6, Some(9e-6)),
            with_latency("vanilla", 1024, 25e-6, Some(20e-6)),
        ];
        let tables = efficiency_tables(&records);
        let text = efficiency_report(&tables, Style::Terminal);
        let cell = |label: &str| {
            tables[0]
                .rows
                .iter()
                .find(|r| r.label == label)
                .unwrap()
                .cells[&1024]
                .clone()
        };
        assert!(cell("sdpa").launch_bound);
        assert!(!cell("vanilla").launch_bound && !cell("empty").launch_bound);
        assert_eq!(cell("sdpa").device_s, Some(9e-6));
        assert!(
            text.contains("device time") && text.contains("9.0 us"),
            "{text}"
        );
        assert!(text.contains("launch-bound"), "{text}");
        assert_eq!(
            text.matches(LAUNCH_BOUND_MARK.trim()).count(),
            2,
            "one cell and the note"
        );

        // Without device times or a floor: neither the table nor the marks.
        let plain = vec![
            with_latency("sdpa", 1024, 15e-6, None),
            with_latency("vanilla", 1024, 25e-6, None),
        ];
        let text = efficiency_report(&efficiency_tables(&plain), Style::Terminal);
        assert!(
            !text.contains("device time") && !text.contains("launch-bound"),
            "{text}"
        );
    }

    fn device_time(median_s: f64) -> crate::schema::DeviceTime {
        crate::schema::DeviceTime {
            median_s,
            p10_s: median_s,
            p90_s: median_s,
            method: "cuda-events".into(),
        }
    }
}
