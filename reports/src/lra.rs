//! The LRA paper's layout: for settings that differ only in mode, forward and training
//! speed-up (and memory ratio) side by side at each length.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::analysis::{EfficiencyTable, REFERENCE};
use crate::grid::{Grid, GridCell};
use crate::schema::{Mode, Setting};

#[derive(Debug, Clone, Serialize)]
pub struct LraView {
    /// The shared setting (its mode is the forward one's).
    pub setting: Setting,
    pub speed: Grid,
    pub memory: Grid,
}

impl LraView {
    /// The setting without its mode, for a heading.
    pub fn heading(&self) -> String {
        self.setting
            .to_string()
            .replacen(&format!(" {}", self.setting.mode), "", 1)
    }
}

/// One view per pair of forward and train tables of the same setting otherwise.
pub fn lra_views(tables: &[EfficiencyTable]) -> Vec<LraView> {
    let mut pairs: BTreeMap<Setting, [Option<&EfficiencyTable>; 2]> = BTreeMap::new();
    for t in tables {
        let slot = match t.setting.mode {
            Mode::Forward => 0,
            Mode::Train => 1,
            Mode::Decode => continue,
        };
        let mut key = t.setting.clone();
        key.mode = Mode::Forward;
        pairs.entry(key).or_default()[slot] = Some(t);
    }
    pairs
        .into_iter()
        .filter_map(|(setting, pair)| match pair {
            [Some(f), Some(t)] => Some(view(setting, f, t)),
            _ => None,
        })
        .collect()
}

fn view(setting: Setting, fwd: &EfficiencyTable, train: &EfficiencyTable) -> LraView {
    let mut seq_lens: Vec<i64> = fwd
        .seq_lens
        .iter()
        .chain(&train.seq_lens)
        .copied()
        .collect();
    seq_lens.sort_unstable();
    seq_lens.dedup();
    let mut labels: Vec<&str> = Vec::new();
    for r in fwd.rows.iter().chain(&train.rows) {
        if !labels.contains(&r.label.as_str()) {
            labels.push(&r.label);
        }
    }
    labels.sort_by_key(|l| *l != REFERENCE);
    let header = |what: &str| {
        let mut h = vec![format!("{what}, forward / train")];
        h.extend(seq_lens.iter().map(|n| format!("N={n}")));
        h
    };
    let (mut speed, mut memory) = (
        Grid::new(header("speed-up")),
        Grid::new(header("memory ratio")),
    );
    let get = |t: &EfficiencyTable,
               label: &str,
               n: i64,
               f: &dyn Fn(&crate::analysis::Cell) -> Option<f64>| {
        t.rows
            .iter()
            .find(|r| r.label == label)
            .and_then(|r| r.cells.get(&n))
            .and_then(f)
    };
    let pair = |a: Option<f64>, b: Option<f64>| {
        let f = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.2}x"));
        // Sorted by the training figure, LRA's measure.
        GridCell::new(format!("{} / {}", f(a), f(b)), b.or(a))
    };
    for label in labels {
        let mut s: Vec<GridCell> = vec![label.into()];
        let mut m: Vec<GridCell> = vec![label.into()];
        for &n in &seq_lens {
            s.push(pair(
                get(fwd, label, n, &|c| c.speedup),
                get(train, label, n, &|c| c.speedup),
            ));
            m.push(pair(
                get(fwd, label, n, &|c| c.memory_ratio),
                get(train, label, n, &|c| c.memory_ratio),
            ));
        }
        speed.push(s);
        memory.push(m);
    }
    LraView {
        setting,
        speed,
        memory,
    }
}
