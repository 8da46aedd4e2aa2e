//! `expected-attention`: kvpress's `ExpectedAttentionPress` (Devoto et al. 2025), as
//! closely as the [`Observation`] allows. The press models the coming queries of a KV
//! head as a Gaussian with the mean `mu` and covariance `S` of recent queries and scores
//! each cached key by the expected attention it will receive,
//! `softmax_j(mu . k_j / sqrt(d) + k_j' S k_j / (2 d))` (the log of `E[exp(q . k_j /
//! sqrt(d))]`); the first `sinks` tokens (4) always stay, and among the others the
//! top-scoring do.
//!
//! The observation holds no queries, so the policy recovers them: a query's attention
//! obeys `log a_j = q . k_j / sqrt(d) - log Z` over the tokens it saw, a linear system in
//! `(q, log Z)` with one row per visible key, solved by least squares (in f64, with a
//! ridge of 1e-9 of the mean diagonal). The last `window` (64) such queries, those at
//! positions past the sinks as kvpress excludes, give `mu` and `S` (divided by their
//! number, as kvpress does). Where this departs from kvpress, plainly:
//! - the queries are recovered from the attention and keys, not computed: exact for a
//!   KV head with one query head and `head_dim + 1` or more visible, non-underflowing
//!   tokens; with grouped-query attention the observation averages the group's
//!   probabilities, and the fit is one effective query for the group, not the group's
//!   own queries (kvpress scores per query head and averages the softmaxes);
//! - the statistics are of queries rotated at their own positions: the observation has
//!   no rotary, so kvpress's average rotation over the next 512 positions, applied to
//!   pre-rotary statistics, is not applied;
//! - no value-norm rescaling (`use_vnorm`): the observation has no values. Without it the
//!   softmax does not change the order, so it is not computed;
//! - statistics of the last 64 queries (kept across calls), not of the whole prompt.

use tch::{Kind, Tensor};

use super::{check_budget, CachePolicy, Observation, PolicyInfo};
use xarena_variants::VariantError;

pub const INFO: PolicyInfo = PolicyInfo {
    name: "expected-attention",
    paper: "Devoto et al. 2025, Expected Attention: KV Cache Compression by Estimating \
            Attention from Future Queries Distribution (arXiv:2510.00636; kvpress's \
            ExpectedAttentionPress)",
    keeps: "the first 4 tokens and those with the most expected attention under a \
            Gaussian fitted to the last 64 queries (recovered from the attention)",
    budgeted: true,
    build: Some(build),
};

/// kvpress's sink tokens.
pub const DEFAULT_SINKS: usize = 4;
/// Queries whose statistics model the coming ones.
pub const DEFAULT_WINDOW: usize = 64;

fn build(budget: usize) -> Result<Box<dyn CachePolicy>, VariantError> {
    Ok(Box::new(ExpectedAttention::new(
        budget,
        DEFAULT_SINKS,
        DEFAULT_WINDOW,
    )?))
}

/// Expected attention of a Gaussian fitted to recent queries, `budget` per head.
pub struct ExpectedAttention {
    budget: i64,
    sinks: i64,
    window: i64,
    /// `[layer][head]`: the last recovered queries `[<= window, head_dim]` (f64).
    queries: Vec<Vec<Option<Tensor>>>,
}

impl ExpectedAttention {
    pub fn new(
        budget: usize,
        sinks: usize,
        window: usize,
    ) -> Result<ExpectedAttention, VariantError> {
        check_budget(INFO.name, budget, 1)?;
        check_budget(INFO.name, window, 1)?;
        Ok(ExpectedAttention {
            budget: budget as i64,
            sinks: sinks as i64,
            window: window as i64,
            queries: Vec::new(),
        })
    }

    /// The queries held for one layer's head (`[n, head_dim]`, f64), for inspection.
    pub fn queries(&self, layer: usize, head: usize) -> Option<&Tensor> {
        self.queries.get(layer)?.get(head)?.as_ref()
    }
}

/// Least-squares queries `[n, d]` (f64) of attention rows `[n, len]` over `keys`
/// `[len, d]`: per row, `[keys / sqrt(d), -1] (q, log Z) = log a` over its nonzero
/// entries (the tokens it saw, less any that underflowed).
fn recover(att: &Tensor, keys: &Tensor) -> Tensor {
    let (len, d) = keys.size2().expect("keys: [len, head_dim]");
    let opts = (Kind::Double, keys.device());
    let a = Tensor::cat(
        &[
            keys.to_kind(Kind::Double) / (d as f64).sqrt(),
            -Tensor::ones([len, 1], opts),
        ],
        1,
    );
    let att = att.to_kind(Kind::Double);
    let seen = att.gt(0.0).to_kind(Kind::Double);
    let target = att.clamp_min(f64::MIN_POSITIVE).log() * &seen;
    // Normal equations per row: (A' M A) x = A' M t, M the row's mask.
    let am = a.unsqueeze(0) * seen.unsqueeze(-1);
    let at = am.transpose(1, 2);
    let ata = at.matmul(&a.unsqueeze(0));
    let atb = at.matmul(&target.unsqueeze(-1));
    let eye = Tensor::eye(d + 1, opts).unsqueeze(0);
    let scale = ata
        .diagonal(0, 1, 2)
        .mean_dim(-1, true, Kind::Double)
        .unsqueeze(-1);
    let ridge = eye * (scale * 1e-9 + 1e-12);
    Tensor::linalg_solve(&(ata + ridge), &atb, true)
        .squeeze_dim(-1)
        .narrow(1, 0, d)
}

impl CachePolicy for ExpectedAttention {
    fn describe(&self) -> String {
        format!(
            "{}:budget={},sinks={},window={}",
            INFO.name, self.budget, self.sinks, self.window
        )
    }

    fn reset(&mut self, layers: usize, kv_heads: usize) {
        self.queries = (0..layers)
            .map(|_| (0..kv_heads).map(|_| None).collect())
            .collect();
    }

    fn update(&mut self, obs: &Observation) -> Vec<Option<Tensor>> {
        let state = &mut self.queries[obs.layer];
        obs.attention
            .iter()
            .zip(obs.keys)
            .enumerate()
            .map(|(g, (att, keys))| {
                let (c, len) = att.size2().expect("attention: [queries, len]");
                // The call's queries past the sinks, the last `window` of them.
                let first = obs.now + 1 - c;
                let past_sinks = (obs.now + 1 - first.max(self.sinks)).max(0);
                let take = past_sinks.min(self.window);
                if take > 0 {
                    let new = recover(&att.narrow(0, c - take, take), keys);
                    let all = match state[g].take() {
                        None => new,
                        Some(prev) => Tensor::cat(&[prev, new], 0),
                    };
                    let n = all.size()[0];
                    state[g] = Some(all.narrow(0, n - n.min(self.window), n.min(self.window)));
                }
                if len <= self.budget {
                    return None;
                }
                let sinks = self.sinks.min(self.budget);
                let opts = (Kind::Int64, keys.device());
                let Some(q) = state[g].as_ref() else {
                    // No query past the sinks yet: the sinks and the newest.
                    return Some(Tensor::cat(
                        &[
                            Tensor::arange(sinks, opts),
                            Tensor::arange_start(len - (self.budget - sinks), len, opts),
                        ],
                        0,
                    ));
                };
                let d = keys.size()[1];
                let mu = q.mean_dim(0, false, Kind::Double);
                let centered = q - &mu;
                let cov = centered.tr().matmul(&centered) / q.size()[0] as f64;
                let k = keys.to_kind(Kind::Double).narrow(0, sinks, len - sinks);
                let score = k.matmul(&mu) / (d as f64).sqrt()
                    + (k.matmul(&cov) * &k).sum_dim_intlist(1, false, Kind::Double)
                        / (2 * d) as f64;
                let (_, top) = score.topk(self.budget - sinks, 0, true, false);
                Some(
                    Tensor::cat(&[Tensor::arange(sinks, opts), top + sinks], 0)
                        .sort(0, false)
                        .0,
                )
            })
            .collect()
    }
}
