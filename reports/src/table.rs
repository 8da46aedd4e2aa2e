//! Efficiency tables as terminal or Markdown text.

use comfy_table::presets::{ASCII_MARKDOWN, UTF8_FULL_CONDENSED};
use comfy_table::{CellAlignment, Table};

use crate::analysis::{
    Cell, Crossover, EfficiencyTable, Fit, Row, CROSSOVER_REFERENCES, REFERENCE,
};
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

fn new_table(style: Style, header: Vec<String>) -> Table {
    let mut t = Table::new();
    t.load_preset(match style {
        Style::Terminal => UTF8_FULL_CONDENSED,
        Style::Markdown => ASCII_MARKDOWN,
    });
    t.set_header(header);
    for i in 1..t.column_count() {
        if let Some(col) = t.column_mut(i) {
            col.set_cell_alignment(CellAlignment::Right);
        }
    }
    t
}

fn render(
    table: &EfficiencyTable,
    style: Style,
    what: &str,
    cell: impl Fn(&Cell) -> String,
    fit: impl Fn(&Row) -> String,
    crossovers: bool,
) -> String {
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
    let mut t = new_table(style, header);
    for row in &table.rows {
        let mut line = vec![row.label.clone()];
        line.extend(table.seq_lens.iter().map(|n| match row.cells.get(n) {
            Some(c) => status_text(c).unwrap_or_else(|| cell(c)),
            None => String::new(),
        }));
        line.push(fit(row));
        for r in &references {
            let c = row.crossovers.iter().find(|(name, _)| name == r);
            line.push(c.map_or(String::new(), |(_, c)| format_crossover(*c)));
        }
        t.add_row(line);
    }
    t.to_string()
}

/// The latency table: median per iteration and speed-up over the reference.
pub fn latency_table(table: &EfficiencyTable, style: Style) -> String {
    render(
        table,
        style,
        "latency (speed-up)",
        |c| match (c.latency_s, c.speedup) {
            (Some(t), Some(s)) => format!("{} ({s:.2}x)", format_seconds(t)),
            (Some(t), None) => format_seconds(t),
            _ => "-".into(),
        },
        |r| format_fit(r.time_fit, r.time_claim),
        true,
    )
}

/// The memory table: peak working memory and its ratio to the reference's.
pub fn memory_table(table: &EfficiencyTable, style: Style) -> String {
    let title = match table.setting.mode {
        Mode::Decode => "decode state (ratio)",
        _ => "peak memory (ratio)",
    };
    render(
        table,
        style,
        title,
        |c| match (c.peak_bytes, c.memory_ratio) {
            (Some(b), Some(r)) => format!("{} ({r:.2}x)", format_bytes(b)),
            (Some(b), None) => format_bytes(b),
            _ => "-".into(),
        },
        |r| format_fit(r.memory_fit, r.memory_claim),
        false,
    )
}

/// FLOPs with the achieved rate, and parameters: what conditional computation trades
/// (FLOPs flat while parameters grow with the experts).
pub fn compute_table(table: &EfficiencyTable, style: Style) -> String {
    let mut header = vec!["FLOPs (achieved)".to_string()];
    header.extend(table.seq_lens.iter().map(|n| format!("N={n}")));
    header.push("parameters".into());
    let mut t = new_table(style, header);
    for row in &table.rows {
        let mut line = vec![row.label.clone()];
        line.extend(table.seq_lens.iter().map(|n| match row.cells.get(n) {
            Some(c) => match (c.flops, c.flops_per_s) {
                (Some(f), Some(r)) => format!("{} ({}/s)", format_count(f as f64), format_count(r)),
                (Some(f), None) => format_count(f as f64),
                _ => "-".into(),
            },
            None => String::new(),
        }));
        // Parameters of a shape-independent variant are the same at every N; where they
        // depend on N (Linformer's projections), the range is shown.
        let params: Vec<u64> = row.cells.values().filter_map(|c| c.params).collect();
        line.push(match (params.iter().min(), params.iter().max()) {
            (Some(lo), Some(hi)) if lo == hi => format_count(*lo as f64),
            (Some(lo), Some(hi)) => {
                format!("{}-{}", format_count(*lo as f64), format_count(*hi as f64))
            }
            _ => "-".into(),
        });
        t.add_row(line);
    }
    t.to_string()
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
    out.push_str(&format!(
        "Latency: median per iteration; speed-up = {REFERENCE}'s latency / the variant's. \
         Memory: peak working memory of one iteration above what it began with; ratio = the \
         variant's / {REFERENCE}'s. Exponent: least-squares slope of log(y) on log(N) over the \
         lengths shown, with the paper's claim in brackets. Faster from N: the length from which \
         the variant's latency stays below the reference's (interpolated in log-log between \
         the lengths around the last crossing; < or > the range measured otherwise). \
         FLOPs: of one iteration as computed (conventions in variants/src/flops.rs), with the \
         achieved rate; parameters: trainable, at each N. Decode tables: latency per generated token after a context of N, and the bytes of \
         the decoding state (KV cache, window, recurrent sums) instead of peak memory.\n"
    ));
    out
}
