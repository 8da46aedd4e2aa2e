//! `streaming-llm`: the first `sinks` tokens (attention sinks) and a window of the most
//! recent ones (Xiao et al. 2023).
//!
//! Keys keep the rotary positions of their place in the text, as kvpress and most
//! eviction studies do; the paper re-numbers positions within the cache, which matters
//! only beyond the model's trained context.

use tch::Tensor;

use super::{check_budget, sinks_and_recent, CachePolicy, Observation, PolicyInfo};
use xarena_variants::VariantError;

pub const INFO: PolicyInfo = PolicyInfo {
    name: "streaming-llm",
    paper: "Xiao et al. 2023, Efficient Streaming Language Models with Attention Sinks \
            (arXiv:2309.17453; ICLR 2024)",
    keeps: "the first `sinks` tokens (4) and the most recent ones, `budget` in all",
    budgeted: true,
    build: Some(build),
};

fn build(budget: usize) -> Result<Box<dyn CachePolicy>, VariantError> {
    Ok(Box::new(StreamingLlm::new(budget, DEFAULT_SINKS)?))
}

/// The paper's setting: four sink tokens.
pub const DEFAULT_SINKS: usize = 4;

/// Keeps `sinks` first tokens plus the `budget - sinks` most recent.
#[derive(Debug, Clone)]
pub struct StreamingLlm {
    budget: i64,
    sinks: i64,
}

impl StreamingLlm {
    /// `budget` must leave room for at least one recent token besides the sinks.
    pub fn new(budget: usize, sinks: usize) -> Result<StreamingLlm, VariantError> {
        check_budget(INFO.name, budget, sinks + 1)?;
        Ok(StreamingLlm {
            budget: budget as i64,
            sinks: sinks as i64,
        })
    }
}

impl CachePolicy for StreamingLlm {
    fn describe(&self) -> String {
        format!("{}:budget={},sinks={}", INFO.name, self.budget, self.sinks)
    }

    fn reset(&mut self, _layers: usize, _kv_heads: usize) {}

    fn update(&mut self, obs: &Observation) -> Vec<Option<Tensor>> {
        // The sinks are never evicted, so they stay the first rows.
        sinks_and_recent(obs, self.sinks, self.budget)
    }
}
