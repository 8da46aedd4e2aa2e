//! `h2o`: Heavy-Hitter Oracle (Zhang et al. 2023). Each cached token's attention,
//! accumulated over every query so far; the cache keeps the `recent` newest tokens and,
//! among the others, the heaviest hitters.

use tch::{Kind, Tensor};

use super::{check_budget, CachePolicy, Observation, PolicyInfo};
use xarena_variants::VariantError;

pub const INFO: PolicyInfo = PolicyInfo {
    name: "h2o",
    paper: "Zhang et al. 2023, H2O: Heavy-Hitter Oracle for Efficient Generative Inference \
            of Large Language Models (NeurIPS)",
    keeps: "the most recent tokens (half the budget) and those with the most accumulated \
            attention",
    budgeted: true,
    build: Some(build),
};

fn build(budget: usize) -> Result<Box<dyn CachePolicy>, VariantError> {
    Ok(Box::new(H2o::new(budget, budget / 2)?))
}

/// Recent window plus heavy hitters, `budget` tokens per head.
pub struct H2o {
    budget: i64,
    recent: i64,
    /// `[layer][head]`: accumulated attention `[len_h]` (f32), compacted with the cache.
    scores: Vec<Vec<Option<Tensor>>>,
}

impl H2o {
    /// `recent` of the `budget` tokens go to the newest ones (the paper's balanced
    /// setting is half).
    pub fn new(budget: usize, recent: usize) -> Result<H2o, VariantError> {
        check_budget(INFO.name, budget, 1)?;
        if recent > budget {
            return Err(VariantError::config(
                INFO.name,
                format!("recent ({recent}) must not exceed the budget ({budget})"),
            ));
        }
        Ok(H2o {
            budget: budget as i64,
            recent: recent as i64,
            scores: Vec::new(),
        })
    }

    /// The accumulated attention of one layer's head, as the policy holds it.
    pub fn scores(&self, layer: usize, head: usize) -> Option<&Tensor> {
        self.scores.get(layer)?.get(head)?.as_ref()
    }
}

impl CachePolicy for H2o {
    fn describe(&self) -> String {
        format!(
            "{}:budget={},recent={}",
            INFO.name, self.budget, self.recent
        )
    }

    fn reset(&mut self, layers: usize, kv_heads: usize) {
        self.scores = (0..layers)
            .map(|_| (0..kv_heads).map(|_| None).collect())
            .collect();
    }

    fn update(&mut self, obs: &Observation) -> Vec<Option<Tensor>> {
        let state = &mut self.scores[obs.layer];
        obs.attention
            .iter()
            .enumerate()
            .map(|(g, att)| {
                let (c, len) = att.size2().expect("attention: [queries, len]");
                let received = att.sum_dim_intlist(0, false, Kind::Float);
                let acc = match state[g].take() {
                    None => received,
                    Some(prev) => {
                        assert_eq!(
                            prev.size()[0] + c,
                            len,
                            "h2o: state of layer {} head {g} out of step with the cache",
                            obs.layer
                        );
                        Tensor::cat(&[prev, received.zeros_like().narrow(0, 0, c)], 0) + received
                    }
                };
                if len <= self.budget {
                    state[g] = Some(acc);
                    return None;
                }
                let old = len - self.recent;
                let (_, heavy) =
                    acc.narrow(0, 0, old)
                        .topk(self.budget - self.recent, 0, true, false);
                let recent = Tensor::arange_start(old, len, (Kind::Int64, acc.device()));
                let keep = Tensor::cat(&[heavy, recent], 0).sort(0, false).0;
                state[g] = Some(acc.index_select(0, &keep));
                Some(keep)
            })
            .collect()
    }
}
