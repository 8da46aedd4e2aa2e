//! The KV-cache memory track's records (`xarena kv bench` writes them, one per case:
//! policy x compression ratio x context x task) and their report: the frontier (score
//! against retained cache, per policy), the NAMM paper's table (each policy's score
//! normalised to the full cache, with its cache fraction), the costs, and an SVG plot of
//! score against retained fraction.

use std::collections::{BTreeMap, BTreeSet};

use plotters::prelude::*;
use serde::Serialize;

use crate::grid::{Grid, GridCell};
use crate::table::{format_bytes, format_seconds, Style};

pub use xarena_schema::kv::{load_kv, read_kv, KvRecord, KV_FILE, KV_SCHEMA_VERSION};

/// Policies in `order` (the caller's registry, `xarena_kvcache::POLICIES`: this crate
/// does not link LibTorch, so it keeps no list of its own), others after by name.
fn policy_rank(order: &[&str], p: &str) -> (usize, String) {
    (
        order.iter().position(|o| *o == p).unwrap_or(order.len()),
        p.to_string(),
    )
}

/// A policy at one setting, over the tasks of one (model, context).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KvRow {
    /// The registry name; `namm (DIR)` where a group holds more than one NAMM.
    pub policy: String,
    pub ratio: Option<f64>,
    /// Normalised score per task (`None`: the full cache scored 0 there).
    pub normalized: BTreeMap<String, Option<f64>>,
    pub score: BTreeMap<String, f64>,
    /// Means over tasks.
    pub mean_normalized: Option<f64>,
    pub mean_retained: f64,
    pub final_retained: f64,
    pub peak_kv_bytes: u64,
    pub prefill_seconds: f64,
    pub decode_seconds_per_token: f64,
    pub decode_policy_seconds_per_token: f64,
}

/// The rows of one model at one context.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KvGroup {
    pub model: String,
    pub context: usize,
    pub tasks: Vec<String>,
    pub rows: Vec<KvRow>,
}

impl KvRow {
    /// `h2o @ 0.50`, `namm`.
    pub fn label(&self) -> String {
        match self.ratio {
            Some(r) => format!("{} @ {}", self.policy, (r * 1000.0).round() / 1000.0),
            None => self.policy.clone(),
        }
    }
}

fn mean(xs: impl Iterator<Item = f64>) -> f64 {
    let (s, n) = xs.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 {
        f64::NAN
    } else {
        s / n as f64
    }
}

/// A `namm` record's NAMM as a row names it: the directory it was evolved in (the
/// record's `namm` is `DIR (generation G, evolved on MODEL) HASH`), with the hash when
/// two directories share a name.
fn namm_source(namm: &str, hash_too: bool) -> String {
    let dir = namm.split(" (").next().unwrap_or(namm);
    match namm.rsplit(' ').next() {
        Some(hash) if hash_too && hash != dir => format!("{dir} {hash}"),
        _ => dir.to_string(),
    }
}

/// The model a record's group is named by: another protocol is another setting.
fn group_model(r: &KvRecord) -> String {
    match &r.protocol {
        Some(p) => format!("{} ({p} protocol)", r.model),
        None => r.model.clone(),
    }
}

/// Groups records by (model, context) and, within, by (policy, ratio); later records of
/// the same case replace earlier ones. Runs of different NAMMs (several `kv bench`
/// directories in one report) stay apart: with more than one NAMM in a group, each
/// row's policy names its NAMM, `namm (evolve-paper)`. Rows list policies in `order`
/// (the registry's), others after by name.
pub fn kv_groups(records: &[KvRecord], order: &[&str]) -> Vec<KvGroup> {
    type CaseKey = (String, usize, String, Option<String>);
    let mut cases: BTreeMap<CaseKey, &KvRecord> = BTreeMap::new();
    // Another protocol is another setting: its cases get a table of their own.
    for r in records {
        let key = (group_model(r), r.context, r.case_id.clone(), r.namm.clone());
        cases.insert(key, r);
    }
    let mut groups: BTreeMap<(String, usize), Vec<&KvRecord>> = BTreeMap::new();
    for ((model, context, _, _), r) in cases {
        groups.entry((model, context)).or_default().push(r);
    }
    groups
        .into_iter()
        .map(|((model, context), rs)| {
            let namms: BTreeSet<&str> = rs.iter().filter_map(|r| r.namm.as_deref()).collect();
            let dirs: BTreeSet<String> = namms.iter().map(|n| namm_source(n, false)).collect();
            let policy_name = |r: &KvRecord| match &r.namm {
                Some(n) if namms.len() > 1 => {
                    format!(
                        "{} ({})",
                        r.policy,
                        namm_source(n, dirs.len() < namms.len())
                    )
                }
                _ => r.policy.clone(),
            };
            let tasks: Vec<String> = rs
                .iter()
                .map(|r| r.task.clone())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            type SettingKey = ((usize, String), String, i64);
            let mut settings: BTreeMap<SettingKey, Vec<&KvRecord>> = BTreeMap::new();
            for r in rs {
                // Ratios ascending (least compression first); none (full, namm) first.
                let key = r.ratio.map_or(-1, |x| (x * 1e6).round() as i64);
                settings
                    .entry((policy_rank(order, &r.policy), policy_name(r), key))
                    .or_default()
                    .push(r);
            }
            let rows = settings
                .into_iter()
                .map(|((_, policy, _), rs)| KvRow {
                    policy,
                    ratio: rs[0].ratio,
                    normalized: rs
                        .iter()
                        .map(|r| (r.task.clone(), r.normalized_score))
                        .collect(),
                    score: rs.iter().map(|r| (r.task.clone(), r.score)).collect(),
                    mean_normalized: {
                        let v: Vec<f64> = rs.iter().filter_map(|r| r.normalized_score).collect();
                        (!v.is_empty()).then(|| mean(v.into_iter()))
                    },
                    mean_retained: mean(rs.iter().map(|r| r.mean_retained_fraction)),
                    final_retained: mean(rs.iter().map(|r| r.final_retained_fraction)),
                    peak_kv_bytes: rs.iter().map(|r| r.peak_kv_bytes).max().unwrap_or(0),
                    prefill_seconds: mean(rs.iter().map(|r| r.prefill_seconds)),
                    decode_seconds_per_token: mean(rs.iter().map(|r| r.decode_seconds_per_token)),
                    decode_policy_seconds_per_token: mean(
                        rs.iter().map(|r| r.decode_policy_seconds_per_token),
                    ),
                })
                .collect();
            KvGroup {
                model,
                context,
                tasks,
                rows,
            }
        })
        .collect()
}

fn pct(x: f64) -> String {
    if x.is_finite() {
        format!("{:.1}%", 100.0 * x)
    } else {
        "-".into()
    }
}

fn frac(x: Option<f64>) -> GridCell {
    match x {
        Some(v) if v.is_finite() => GridCell::new(format!("{v:.3}"), Some(v)),
        _ => GridCell::new("-", None),
    }
}

/// The NAMM paper's table: per policy and ratio, each task's score normalised to the full
/// cache, their mean, and the cache kept (mean over the sequence, and at its end).
pub fn normalized_table(g: &KvGroup) -> Grid {
    let mut header = vec!["policy".to_string()];
    header.extend(g.tasks.iter().cloned());
    header.extend([
        "mean (norm.)".to_string(),
        "cache kept (mean)".to_string(),
        "cache kept (end)".to_string(),
    ]);
    let mut grid = Grid::new(header);
    for r in &g.rows {
        let mut row = vec![GridCell::from(r.label())];
        for t in &g.tasks {
            row.push(frac(r.normalized.get(t).copied().flatten()));
        }
        row.push(frac(r.mean_normalized));
        row.push(GridCell::new(pct(r.mean_retained), Some(r.mean_retained)));
        row.push(GridCell::new(pct(r.final_retained), Some(r.final_retained)));
        grid.push(row);
    }
    grid
}

/// The frontier: per policy, its mean normalised score and mean cache kept at each ratio.
pub fn frontier_table(g: &KvGroup) -> Grid {
    let ratios: BTreeSet<i64> = g
        .rows
        .iter()
        .filter_map(|r| r.ratio.map(|x| (x * 1e6).round() as i64))
        .collect();
    let mut header = vec!["policy".to_string(), "no budget".to_string()];
    header.extend(ratios.iter().map(|r| format!("ratio {}", *r as f64 / 1e6)));
    let mut grid = Grid::new(header);
    let mut policies: Vec<&str> = g.rows.iter().map(|r| r.policy.as_str()).collect();
    policies.dedup();
    for p in policies {
        let cell = |r: Option<&KvRow>| match r {
            Some(r) => GridCell::new(
                format!(
                    "{} @ {}",
                    r.mean_normalized.map_or("-".into(), |v| format!("{v:.3}")),
                    pct(r.mean_retained)
                ),
                r.mean_normalized,
            ),
            None => GridCell::new("", None),
        };
        let mut row = vec![GridCell::from(p)];
        row.push(cell(
            g.rows.iter().find(|r| r.policy == p && r.ratio.is_none()),
        ));
        for &k in &ratios {
            row.push(cell(g.rows.iter().find(|r| {
                r.policy == p && r.ratio.map(|x| (x * 1e6).round() as i64) == Some(k)
            })));
        }
        grid.push(row);
    }
    grid
}

/// Costs: peak KV memory (and its share of the full cache's), prefill time, and the
/// decoding time per token with the policy's own share.
pub fn cost_table(g: &KvGroup) -> Grid {
    let full = g
        .rows
        .iter()
        .find(|r| r.policy == "full")
        .map(|r| r.peak_kv_bytes as f64);
    let mut grid = Grid::new(
        [
            "policy",
            "peak KV",
            "of full",
            "prefill",
            "decode / token",
            "policy / token",
        ]
        .map(String::from)
        .to_vec(),
    );
    for r in &g.rows {
        let share = full
            .filter(|f| *f > 0.0)
            .map(|f| r.peak_kv_bytes as f64 / f);
        grid.push(vec![
            GridCell::from(r.label()),
            GridCell::new(format_bytes(r.peak_kv_bytes), Some(r.peak_kv_bytes as f64)),
            GridCell::new(share.map_or("-".into(), pct), share),
            GridCell::new(format_seconds(r.prefill_seconds), Some(r.prefill_seconds)),
            GridCell::new(
                format_seconds(r.decode_seconds_per_token),
                Some(r.decode_seconds_per_token),
            ),
            GridCell::new(
                format_seconds(r.decode_policy_seconds_per_token),
                Some(r.decode_policy_seconds_per_token),
            ),
        ]);
    }
    grid
}

/// The whole report as text: per (model, context), the three tables, policies in `order`
/// as [`kv_groups`] lists them.
pub fn kv_report(records: &[KvRecord], order: &[&str], style: Style) -> String {
    let mut out = String::new();
    let md = matches!(style, Style::Markdown);
    for g in kv_groups(records, order) {
        let examples = records
            .iter()
            .filter(|r| group_model(r) == g.model && r.context == g.context)
            .map(|r| r.examples)
            .max()
            .unwrap_or(0);
        let head = format!(
            "model: {}, context {} tokens, {} prompts per task",
            style.inline(&g.model),
            g.context,
            examples
        );
        out.push_str(&if md {
            format!("### {head}\n\n")
        } else {
            format!("{head}\n\n")
        });
        let sections = [
            (
                "Score normalised to the full cache, with the cache kept",
                normalized_table(&g),
            ),
            (
                "Frontier: mean normalised score @ mean cache kept",
                frontier_table(&g),
            ),
            ("Costs", cost_table(&g)),
        ];
        for (title, grid) in sections {
            out.push_str(&if md {
                format!("{title}:\n\n{}\n\n", grid.text(style))
            } else {
                format!("{title}\n{}\n\n", grid.text(style))
            });
        }
    }
    out
}

/// Score against cache kept for one (model, context): a line per policy through its
/// ratios, a point for a policy with no budget. `None` when there is nothing to draw.
pub fn frontier_plot(g: &KvGroup) -> Result<Option<String>, String> {
    let mut series: Vec<crate::plots::Series> = Vec::new();
    for r in &g.rows {
        let Some(y) = r.mean_normalized else {
            continue;
        };
        let p = (r.mean_retained, y);
        match series.iter_mut().find(|s| s.0 == r.policy) {
            Some(s) => s.1.push(p),
            None => series.push((r.policy.clone(), vec![p])),
        }
    }
    if series.is_empty() {
        return Ok(None);
    }
    for s in &mut series {
        s.1.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    let y_hi = series
        .iter()
        .flat_map(|s| s.1.iter().map(|p| p.1))
        .fold(1.0f64, f64::max)
        * 1.05;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 540)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "score vs cache kept: model {}, context {}",
                    g.model, g.context
                ),
                ("sans-serif", 18),
            )
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..1.02, 0.0..y_hi)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("cache kept (mean fraction of the tokens seen)")
            .y_desc("score / full-cache score")
            .x_label_formatter(&|x| format!("{:.0}%", 100.0 * x))
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(|e| e.to_string())?;
        crate::plots::draw_lines(&mut chart, &series, 4, SeriesLabelPosition::LowerRight)?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(Some(svg))
}

/// The plot's file name for a group.
pub fn plot_name(g: &KvGroup) -> String {
    let safe: String = g
        .model
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!("frontier-{safe}-{}.svg", g.context)
}
