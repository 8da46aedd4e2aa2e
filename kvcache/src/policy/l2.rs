//! `l2`: keeps the tokens whose keys have the lowest L2 norm, as kvpress's KnormPress
//! (Devoto et al. 2024: a low key norm goes with a high attention), and the newest token.

use tch::{Kind, Tensor};

use super::{check_budget, top_plus_newest, CachePolicy, Observation, PolicyInfo};
use xarena_variants::VariantError;

pub const INFO: PolicyInfo = PolicyInfo {
    name: "l2",
    paper: "Devoto et al. 2024, A Simple and Effective L2 Norm-Based Strategy for KV Cache \
            Compression (EMNLP; kvpress's KnormPress)",
    keeps: "the newest token and the tokens with the lowest key L2 norm",
    budgeted: true,
    build: Some(build),
};

fn build(budget: usize) -> Result<Box<dyn CachePolicy>, VariantError> {
    Ok(Box::new(L2Norm::new(budget)?))
}

/// Lowest key norms, `budget` tokens per head.
#[derive(Debug, Clone)]
pub struct L2Norm {
    budget: i64,
}

impl L2Norm {
    pub fn new(budget: usize) -> Result<L2Norm, VariantError> {
        check_budget(INFO.name, budget, 1)?;
        Ok(L2Norm {
            budget: budget as i64,
        })
    }
}

impl CachePolicy for L2Norm {
    fn describe(&self) -> String {
        format!("{}:budget={}", INFO.name, self.budget)
    }

    fn reset(&mut self, _layers: usize, _kv_heads: usize) {}

    fn update(&mut self, obs: &Observation) -> Vec<Option<Tensor>> {
        obs.keys
            .iter()
            .map(|k| {
                let len = k.size()[0];
                (len > self.budget).then(|| {
                    // Rotary turns pairs of features, so the norm is the same as before it.
                    let norm =
                        k.to_kind(Kind::Float)
                            .square()
                            .sum_dim_intlist(1, false, Kind::Float);
                    top_plus_newest(&norm, self.budget - 1, false)
                })
            })
            .collect()
    }
}
