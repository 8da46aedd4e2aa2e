//! `full`: keeps every token, the reference every policy's memory and quality are
//! compared against.

use tch::Tensor;

use super::{CachePolicy, Observation, PolicyInfo};
use xarena_variants::VariantError;

pub const INFO: PolicyInfo = PolicyInfo {
    name: "full",
    paper: "Vaswani et al. 2017, Attention Is All You Need (NeurIPS): the full KV cache",
    keeps: "every token",
    budgeted: false,
    build: Some(build),
};

fn build(_budget: usize) -> Result<Box<dyn CachePolicy>, VariantError> {
    Ok(Box::new(Full))
}

/// Keeps every token.
#[derive(Debug, Clone, Copy, Default)]
pub struct Full;

impl CachePolicy for Full {
    fn describe(&self) -> String {
        INFO.name.to_string()
    }

    fn reset(&mut self, _layers: usize, _kv_heads: usize) {}

    fn update(&mut self, obs: &Observation) -> Vec<Option<Tensor>> {
        obs.keys.iter().map(|_| None).collect()
    }
}
