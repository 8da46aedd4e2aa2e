//! Published reference figures (reports/data/anchors, sources in its SOURCES.md), shown
//! beside a run's own: the LRA paper's speed/memory and accuracy tables, and the
//! FlashAttention paper's A100 runtimes and memory.

use std::sync::OnceLock;

use serde::Deserialize;

use crate::analysis::{EfficiencyTable, REFERENCE};
use crate::grid::{Grid, GridCell};
use crate::schema::Mode;

const LRA_EFFICIENCY: &str = include_str!("../data/anchors/lra_efficiency.csv");
const LRA_ACCURACY: &str = include_str!("../data/anchors/lra_accuracy.csv");
const FLASH_A100: &str = include_str!("../data/anchors/flashattention_a100.csv");

/// LRA's model names (without a trailing dot: the paper's two tables differ in it) and
/// the xarena variant each names.
pub const LRA_NAMES: [(&str, &str); 11] = [
    ("Transformer", "vanilla"),
    ("Performer", "performer"),
    ("Linformer", "linformer"),
    ("Reformer", "reformer"),
    ("Sinkhorn Trans", "sinkhorn"),
    ("Synthesizer", "synthesizer"),
    ("BigBird", "bigbird"),
    ("Linear Trans", "linear-transformer"),
    ("Local Attention", "local"),
    ("Sparse Trans", "sparse-transformer"),
    ("Longformer", "longformer"),
];

/// The FlashAttention paper's method names that are xarena variants ("PyTorch" is its
/// standard attention, the reference).
pub const FLASH_NAMES: [(&str, &str); 7] = [
    ("PyTorch", "vanilla"),
    ("FlashAttention", "sdpa"),
    ("Local", "local"),
    ("Linformer", "linformer"),
    ("Reformer", "reformer"),
    ("Longformer", "longformer"),
    ("BigBird", "bigbird"),
];

#[derive(Debug, Clone, Deserialize)]
pub struct LraEfficiency {
    pub model: String,
    pub seq_len: i64,
    pub steps_per_s: f64,
    pub speedup_vs_transformer: f64,
    pub peak_mem_gb_per_device: f64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct LraAccuracy {
    pub model: String,
    pub listops: f64,
    pub text: f64,
    pub retrieval: f64,
    pub image: f64,
    pub pathfinder: f64,
    /// "FAIL" for every model in the paper.
    pub path_x: String,
    pub avg_as_published: f64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FlashA100 {
    pub method: String,
    pub seq_len: i64,
    /// Empty in the paper's table: out of memory or unsupported.
    pub fwd_bwd_ms: Option<f64>,
    pub mem_mb: Option<f64>,
}

fn parse<T: for<'de> Deserialize<'de>>(name: &str, text: &str) -> Vec<T> {
    csv::Reader::from_reader(text.as_bytes())
        .deserialize()
        .collect::<Result<_, _>>()
        // Embedded at build time and checked by the tests: a failure is a bad edit.
        .unwrap_or_else(|e| panic!("reports/data/anchors/{name}: {e}"))
}

pub fn lra_efficiency() -> &'static [LraEfficiency] {
    static ROWS: OnceLock<Vec<LraEfficiency>> = OnceLock::new();
    ROWS.get_or_init(|| parse("lra_efficiency.csv", LRA_EFFICIENCY))
}

pub fn lra_accuracy_table() -> &'static [LraAccuracy] {
    static ROWS: OnceLock<Vec<LraAccuracy>> = OnceLock::new();
    ROWS.get_or_init(|| parse("lra_accuracy.csv", LRA_ACCURACY))
}

pub fn flash_a100() -> &'static [FlashA100] {
    static ROWS: OnceLock<Vec<FlashA100>> = OnceLock::new();
    ROWS.get_or_init(|| parse("flashattention_a100.csv", FLASH_A100))
}

fn normalise(model: &str) -> &str {
    model.trim().trim_end_matches('.')
}

/// The variant an LRA model name stands for.
pub fn lra_variant(model: &str) -> Option<&'static str> {
    let m = normalise(model);
    LRA_NAMES.iter().find(|(l, _)| *l == m).map(|(_, v)| *v)
}

/// The variant name of a label (`local(window=64)` -> `local`).
pub fn variant_of(label: &str) -> &str {
    label.split('(').next().unwrap_or(label)
}

/// The LRA paper's accuracy (percent) of the model a label's variant maps to, on a task.
pub fn lra_accuracy(label: &str, task: &str) -> Option<f64> {
    let row = lra_accuracy_table()
        .iter()
        .find(|r| lra_variant(&r.model) == Some(variant_of(label)))?;
    match task {
        "listops" => Some(row.listops),
        "text" => Some(row.text),
        "retrieval" => Some(row.retrieval),
        "image" => Some(row.image),
        "pathfinder" => Some(row.pathfinder),
        _ => None,
    }
}

/// LRA's speed-up and memory ratio of a variant at one length, against its Transformer.
fn lra_ratios(variant: &str, n: i64) -> Option<(f64, f64)> {
    let find = |v: &str| {
        lra_efficiency()
            .iter()
            .find(|r| r.seq_len == n && lra_variant(&r.model) == Some(v))
    };
    let (mine, reference) = (find(variant)?, find(REFERENCE)?);
    Some((
        mine.speedup_vs_transformer,
        mine.peak_mem_gb_per_device / reference.peak_mem_gb_per_device,
    ))
}

/// The FlashAttention paper's, against PyTorch's standard attention.
fn flash_ratios(variant: &str, n: i64) -> Option<(f64, f64)> {
    let find = |v: &str| {
        let name = FLASH_NAMES.iter().find(|(_, x)| *x == v)?.0;
        flash_a100()
            .iter()
            .find(|r| r.seq_len == n && r.method == name)
    };
    let (mine, reference) = (find(variant)?, find(REFERENCE)?);
    Some((
        reference.fwd_bwd_ms? / mine.fwd_bwd_ms?,
        mine.mem_mb? / reference.mem_mb?,
    ))
}

/// One published table set beside one of this run's settings.
#[derive(Debug, Clone, serde::Serialize)]
pub struct AnchorTable {
    /// Which setting each side is.
    pub heading: String,
    pub grid: Grid,
}

fn mode_words(mode: Mode) -> &'static str {
    match mode {
        Mode::Forward => "inference (forward under no_grad)",
        Mode::Train => "training (forward + backward)",
        Mode::Decode => "decoding",
    }
}

/// The length measured nearest to `n` in log scale.
fn nearest(seq_lens: &[i64], n: i64) -> Option<i64> {
    seq_lens.iter().copied().min_by(|a, b| {
        let d = |x: i64| ((x as f64).ln() - (n as f64).ln()).abs();
        d(*a).total_cmp(&d(*b))
    })
}

/// Each published length with the measured N nearest it, keeping for each measured N
/// only the published length nearest to it: a run that stops at 2K gives one 2K column,
/// not 3K and 4K columns repeating its 2K figures.
fn paired_lengths(published: &[i64], measured: &[i64]) -> Vec<(i64, i64)> {
    let d = |a: i64, b: i64| ((a as f64).ln() - (b as f64).ln()).abs();
    let pairs: Vec<(i64, i64)> = published
        .iter()
        .filter_map(|&p| Some((p, nearest(measured, p)?)))
        .collect();
    pairs
        .iter()
        .copied()
        .filter(|&(p, n)| {
            pairs
                .iter()
                .filter(|&&(_, m)| m == n)
                .all(|&(q, _)| d(p, n) <= d(q, n))
        })
        .collect()
}

fn ratio_text(r: Option<(f64, f64)>, missing: &str) -> GridCell {
    match r {
        Some((s, m)) => GridCell::new(format!("{s:.2}x / {m:.2}x"), Some(s)),
        None => missing.into(),
    }
}

/// A published table and how to read it.
struct Source {
    name: &'static str,
    short: &'static str,
    /// Its setting, in words.
    setting: &'static str,
    names: &'static [(&'static str, &'static str)],
    lengths: &'static [i64],
    ratios: fn(&str, i64) -> Option<(f64, f64)>,
    /// What a missing figure means.
    missing: &'static str,
}

const SOURCES: [Source; 2] = [
    Source {
        name: "LRA (Tay et al. 2021, TPU v3)",
        short: "LRA",
        setting: "LRA: training (forward + backward) steps/s and peak memory per device, \
                  byte-level text classification, batch 32, 4x4 TPU v3, against their \
                  Transformer; Sparse Trans. and Longformer were not timed.",
        names: &LRA_NAMES,
        lengths: &[1024, 2048, 3072, 4096],
        ratios: lra_ratios,
        missing: "not timed",
    },
    Source {
        name: "FlashAttention (Dao et al. 2022, A100)",
        short: "FlashAttention",
        setting: "FlashAttention paper: training (forward + backward) runtime and memory, \
                  one A100 40GB, batch 16, 8 heads x 64, fp16 (Local fp32), against \
                  PyTorch's standard attention; FlashAttention stands for sdpa.",
        names: &FLASH_NAMES,
        lengths: &[1024, 2048, 4096],
        ratios: flash_ratios,
        missing: "-",
    },
];

fn compare(table: &EfficiencyTable, src: &Source) -> Option<AnchorTable> {
    let rows: Vec<_> = table
        .rows
        .iter()
        .filter_map(|row| {
            let v = variant_of(&row.label);
            let (name, _) = src.names.iter().find(|(_, x)| *x == v)?;
            Some((row, *name, v))
        })
        .collect();
    // Only the reference in common says nothing.
    if !rows.iter().any(|(_, _, v)| *v != REFERENCE) {
        return None;
    }
    let pairs = paired_lengths(src.lengths, &table.seq_lens);
    let mut header = vec![format!("variant ({} name)", src.short)];
    for (p, n) in &pairs {
        header.push(format!("{} {}K", src.short, p / 1024));
        header.push(format!("ours N={n}"));
    }
    let mut grid = Grid::new(header);
    for (row, name, v) in rows {
        let mut line: Vec<GridCell> = vec![format!("{} ({name})", row.label).into()];
        for (p, n) in &pairs {
            line.push(ratio_text((src.ratios)(v, *p), src.missing));
            let cell = row.cells.get(n);
            line.push(ratio_text(
                cell.and_then(|c| Some((c.speedup?, c.memory_ratio?))),
                cell.map_or("-", |c| if c.latency_s.is_none() { "failed" } else { "-" }),
            ));
        }
        grid.push(line);
    }
    Some(AnchorTable {
        heading: format!(
            "{} vs this run. {} Ours: {}, {}, against {REFERENCE}, at the measured N \
             nearest each of the paper's lengths. Cells: speed-up / memory ratio.",
            src.name,
            src.setting,
            table.setting,
            mode_words(table.setting.mode)
        ),
        grid,
    })
}

/// The published tables beside every non-decode setting that shares a variant with them.
pub fn comparisons(tables: &[EfficiencyTable]) -> Vec<AnchorTable> {
    let mut out = Vec::new();
    for t in tables.iter().filter(|t| t.setting.mode != Mode::Decode) {
        out.extend(SOURCES.iter().filter_map(|src| compare(t, src)));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_published_model_parses_and_maps_to_a_variant() {
        assert_eq!(lra_efficiency().len(), 36);
        for r in lra_efficiency() {
            assert!(lra_variant(&r.model).is_some(), "{}", r.model);
        }
        assert_eq!(lra_accuracy_table().len(), 11);
        for r in lra_accuracy_table() {
            assert!(lra_variant(&r.model).is_some(), "{}", r.model);
        }
        for (name, _) in FLASH_NAMES {
            assert!(
                flash_a100().iter().any(|r| r.method == name),
                "{name} is not in the FlashAttention table"
            );
        }
    }

    #[test]
    fn paper_ratios_are_against_the_papers_reference() {
        // LRA at 4K: Performer 5.71x, 1.06 GB against the Transformer's 9.48 GB.
        let (s, m) = lra_ratios("performer", 4096).unwrap();
        assert_eq!(s, 5.71);
        assert!((m - 1.06 / 9.48).abs() < 1e-12);
        assert_eq!(lra_ratios("vanilla", 1024), Some((1.0, 1.0)));
        assert!(lra_ratios("longformer", 1024).is_none(), "not timed in LRA");
        // FlashAttention at 1K: Linformer 1.60 ms, 287 MB; PyTorch 8.29 ms, 1184 MB.
        let (s, m) = flash_ratios("linformer", 1024).unwrap();
        assert!((s - 8.29 / 1.60).abs() < 1e-12 && (m - 287.0 / 1184.0).abs() < 1e-12);
        assert_eq!(lra_accuracy("sinkhorn(block=32)", "text"), Some(61.20));
        assert_eq!(lra_accuracy("vanilla", "path-x"), None);
    }

    #[test]
    fn a_measured_length_pairs_with_one_published_length() {
        let lra = [1024, 2048, 3072, 4096];
        assert_eq!(
            paired_lengths(&lra, &[256, 512, 1024, 2048]),
            vec![(1024, 1024), (2048, 2048)]
        );
        assert_eq!(
            paired_lengths(&lra, &[1024, 4096]),
            vec![(1024, 1024), (4096, 4096)]
        );
        assert_eq!(paired_lengths(&lra, &[3000]), vec![(3072, 3000)]);
        assert_eq!(paired_lengths(&lra, &[]), vec![]);
    }

    #[test]
    fn nearest_length_is_taken_in_log_scale() {
        assert_eq!(nearest(&[512, 2048, 8192], 1024), Some(512));
        assert_eq!(nearest(&[512, 1500], 1024), Some(1500));
        assert_eq!(nearest(&[], 1024), None);
    }
}
