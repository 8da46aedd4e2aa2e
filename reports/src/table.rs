//! Efficiency tables as terminal or Markdown text.

use crate::analysis::{
    Cell, Crossover, EfficiencyTable, Fit, Row, CROSSOVER_REFERENCES, REFERENCE,
};
use crate::grid::{Grid, GridCell};
use crate::schema::{Mode, Status};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Terminal,
    Markdown,
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
    render(
        table,
        "latency (speed-up)",
        |c| {
            let text = match (c.latency_s, c.speedup) {
                (Some(t), Some(s)) => format!("{} ({s:.2}x)", format_seconds(t)),
                (Some(t), None) => format_seconds(t),
                _ => "-".into(),
            };
            GridCell::new(text, c.latency_s)
        },
        |r| format_fit(r.time_fit, r.time_claim),
        true,
    )
}

pub fn latency_table(table: &EfficiencyTable, style: Style) -> String {
    latency_grid(table).text(style)
}

/// The memory table: peak working memory and its ratio to the reference's.
pub fn memory_grid(table: &EfficiencyTable) -> Grid {
    let title = match table.setting.mode {
        Mode::Decode => "decode state (ratio)",
        _ => "peak memory (ratio)",
    };
    render(
        table,
        title,
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
                    (Some(f), Some(r)) => {
                        format!("{} ({}/s)", format_count(f as f64), format_count(r))
                    }
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

/// Both tables for every setting, with a heading each.
pub fn efficiency_report(tables: &[EfficiencyTable], style: Style) -> String {
    let mut out = String::new();
    for t in tables {
        let heading = match style {
            Style::Markdown => format!("#### {}\n\n", t.setting),
            Style::Terminal => format!("{}\n", t.setting),
        };
        out.push_str(&heading);
        out.push_str(&latency_table(t, style));
        out.push_str("\n\n");
        out.push_str(&memory_table(t, style));
        out.push_str("\n\n");
        out.push_str(&compute_table(t, style));
        out.push_str("\n\n");
    }
    out.push_str(&efficiency_notes());
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
