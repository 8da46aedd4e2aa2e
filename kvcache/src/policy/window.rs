//! `window`: the most recent `budget` tokens, the sliding window of local attention
//! (Beltagy et al. 2020) applied to the cache.

use tch::Tensor;

use super::{check_budget, sinks_and_recent, CachePolicy, Observation, PolicyInfo};
use xarena_variants::VariantError;

pub const INFO: PolicyInfo = PolicyInfo {
    name: "window",
    paper: "Beltagy et al. 2020, Longformer (arXiv:2004.05150): a sliding window",
    keeps: "the most recent `budget` tokens",
    budgeted: true,
    build: Some(build),
};

fn build(budget: usize) -> Result<Box<dyn CachePolicy>, VariantError> {
    Ok(Box::new(Window::new(budget)?))
}

/// Keeps the last `budget` tokens of each head.
#[derive(Debug, Clone)]
pub struct Window {
    budget: i64,
}

impl Window {
    pub fn new(budget: usize) -> Result<Window, VariantError> {
        check_budget(INFO.name, budget, 1)?;
        Ok(Window {
            budget: budget as i64,
        })
    }
}

impl CachePolicy for Window {
    fn describe(&self) -> String {
        format!("{}:budget={}", INFO.name, self.budget)
    }

    fn reset(&mut self, _layers: usize, _kv_heads: usize) {}

    fn update(&mut self, obs: &Observation) -> Vec<Option<Tensor>> {
        // A stream with no sinks.
        sinks_and_recent(obs, 0, self.budget)
    }
}
