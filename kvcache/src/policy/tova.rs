//! `tova`: Token Omission Via Attention (Oren et al. 2024). Over budget, drop the token
//! the newest query attends to least, until within budget; the newest token stays.
//!
//! The official code (and kvpress's TOVAPress) scores with the attention averaged over
//! the layer's heads and evicts the same tokens from every head ([`TovaScope::Layer`],
//! the default); [`TovaScope::Head`] decides per KV head.

use tch::{Kind, Tensor};

use super::{check_budget, top_plus_newest, CachePolicy, Observation, PolicyInfo};
use xarena_variants::VariantError;

pub const INFO: PolicyInfo = PolicyInfo {
    name: "tova",
    paper: "Oren et al. 2024, Transformers are Multi-State RNNs (arXiv:2401.06104; EMNLP)",
    keeps: "the newest token and the tokens the newest query attends to most",
    budgeted: true,
    build: Some(build),
};

fn build(budget: usize) -> Result<Box<dyn CachePolicy>, VariantError> {
    Ok(Box::new(Tova::new(budget, TovaScope::Layer)?))
}

/// Whose attention decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TovaScope {
    /// The layer's heads averaged; every head keeps the same tokens (the paper's code).
    Layer,
    /// Each KV head by its own attention.
    Head,
}

/// The last query's attention decides, `budget` tokens per head.
#[derive(Debug, Clone)]
pub struct Tova {
    budget: i64,
    scope: TovaScope,
}

impl Tova {
    pub fn new(budget: usize, scope: TovaScope) -> Result<Tova, VariantError> {
        check_budget(INFO.name, budget, 1)?;
        Ok(Tova {
            budget: budget as i64,
            scope,
        })
    }
}

impl CachePolicy for Tova {
    fn describe(&self) -> String {
        match self.scope {
            TovaScope::Layer => format!("{}:budget={}", INFO.name, self.budget),
            TovaScope::Head => format!("{}:budget={},per-head", INFO.name, self.budget),
        }
    }

    fn reset(&mut self, _layers: usize, _kv_heads: usize) {}

    fn update(&mut self, obs: &Observation) -> Vec<Option<Tensor>> {
        // Dropping the least-attended token one at a time, with the same scores each
        // time (renormalising after a drop keeps their order), drops the lowest ones.
        let last = |att: &Tensor| att.get(att.size()[0] - 1).to_kind(Kind::Float);
        match self.scope {
            TovaScope::Head => obs
                .attention
                .iter()
                .map(|att| {
                    let len = att.size()[1];
                    (len > self.budget).then(|| top_plus_newest(&last(att), self.budget - 1, true))
                })
                .collect(),
            TovaScope::Layer => {
                let len = obs.attention[0].size()[1];
                assert!(
                    obs.attention.iter().all(|a| a.size()[1] == len),
                    "tova (layer scope): heads hold different numbers of tokens"
                );
                if len <= self.budget {
                    return obs.attention.iter().map(|_| None).collect();
                }
                let rows: Vec<Tensor> = obs.attention.iter().map(last).collect();
                let mean = Tensor::stack(&rows, 0).mean_dim(0, false, Kind::Float);
                let keep = top_plus_newest(&mean, self.budget - 1, true);
                obs.attention
                    .iter()
                    .map(|_| Some(keep.shallow_clone()))
                    .collect()
            }
        }
    }
}
