//! `snapkv`: SnapKV (Li et al. 2024), as kvpress's `SnapKVPress` computes it. The
//! attention the last `window` queries gave each earlier token, averaged over those
//! queries (and over the query heads of a KV head: the observation already averages
//! them, and the average commutes with the pooling), smoothed along the cache by a 1-D
//! average pool of kernel `kernel` (zero padding counted, as `F.avg_pool1d` does); the
//! cache keeps the window's own tokens and, among the earlier ones, the top-scoring.
//! kvpress's defaults: window 64, kernel 5.
//!
//! Where it departs from kvpress: kvpress compresses once, after the prefill, with the
//! window's queries taken from the prompt. Here the policy sees every call, so it keeps
//! the attention rows of the last `window` queries across calls (compacted with the
//! cache, zero for tokens a query came before): after a whole-prompt prefill this is
//! exactly kvpress's window; in the chunked protocol the rows of earlier calls were
//! normalised over the cache as it was then. kvpress pads the window's scores with the
//! largest score, so with a budget below the window it keeps an arbitrary part of the
//! window (ties); here it keeps the newest `budget` tokens.

use tch::{Kind, Tensor};

use super::{check_budget, CachePolicy, Observation, PolicyInfo};
use xarena_variants::VariantError;

pub const INFO: PolicyInfo = PolicyInfo {
    name: "snapkv",
    paper: "Li et al. 2024, SnapKV: LLM Knows What You are Looking for Before Generation \
            (arXiv:2404.14469; NeurIPS; kvpress's SnapKVPress)",
    keeps: "the last window's tokens (64) and the tokens the window's queries attend to \
            most, averaged and pooled (kernel 5)",
    budgeted: true,
    build: Some(build),
};

/// kvpress's window of observation queries.
pub const DEFAULT_WINDOW: usize = 64;
/// kvpress's pooling kernel.
pub const DEFAULT_KERNEL: usize = 5;

fn build(budget: usize) -> Result<Box<dyn CachePolicy>, VariantError> {
    Ok(Box::new(SnapKv::new(
        budget,
        DEFAULT_WINDOW,
        DEFAULT_KERNEL,
    )?))
}

/// The last `window` queries' attention rows per layer and KV head, `[rows, len_h]`
/// (f32), kept across calls and compacted with the cache; shared by `snapkv`,
/// `pyramidkv` and `adakv`.
pub(crate) struct WindowRows {
    window: i64,
    rows: Vec<Vec<Option<Tensor>>>,
}

impl WindowRows {
    pub(crate) fn new(window: usize) -> WindowRows {
        WindowRows {
            window: window as i64,
            rows: Vec::new(),
        }
    }

    pub(crate) fn reset(&mut self, layers: usize, kv_heads: usize) {
        self.rows = (0..layers)
            .map(|_| (0..kv_heads).map(|_| None).collect())
            .collect();
    }

    /// Adds this call's queries to one layer's windows; answers per head the window's
    /// rows `[rows, len_h]`.
    pub(crate) fn observe(&mut self, obs: &Observation) -> Vec<Tensor> {
        let state = &mut self.rows[obs.layer];
        obs.attention
            .iter()
            .enumerate()
            .map(|(g, att)| {
                let (c, len) = att.size2().expect("attention: [queries, len]");
                let take = c.min(self.window);
                let new = att.narrow(0, c - take, take).to_kind(Kind::Float);
                let rows = match state[g].take() {
                    // A copy: the call's attention is not held beyond the update.
                    None => new.copy(),
                    Some(prev) => {
                        assert_eq!(
                            prev.size()[1] + c,
                            len,
                            "window rows of layer {} head {g} out of step with the cache",
                            obs.layer
                        );
                        let old = (self.window - take).min(prev.size()[0]);
                        let prev = prev.narrow(0, prev.size()[0] - old, old);
                        let pad = Tensor::zeros([old, c], (Kind::Float, att.device()));
                        Tensor::cat(&[Tensor::cat(&[prev, pad], 1), new], 0)
                    }
                };
                state[g] = Some(rows.shallow_clone());
                rows
            })
            .collect()
    }

    /// Compacts one layer's windows with the rows the cache keeps.
    pub(crate) fn retain(&mut self, layer: usize, keep: &[Option<Tensor>]) {
        for (slot, k) in self.rows[layer].iter_mut().zip(keep) {
            if let (Some(rows), Some(k)) = (slot.as_mut(), k) {
                *rows = rows.index_select(1, k);
            }
        }
    }
}

/// Per head, the tokens of the window: the last `min(window rows, len)` rows.
pub(crate) fn window_tokens(rows: &Tensor) -> i64 {
    let (w, len) = rows.size2().expect("rows: [queries, len]");
    w.min(len)
}

/// SnapKV's scores `[len - w]` of the tokens before the window (`w` from
/// [`window_tokens`]): the window's rows averaged, then average-pooled along the cache.
pub(crate) fn prefix_scores(rows: &Tensor, kernel: i64) -> Tensor {
    let (_, len) = rows.size2().expect("rows: [queries, len]");
    let w = window_tokens(rows);
    let prefix = len - w;
    if prefix == 0 {
        return Tensor::zeros([0], (Kind::Float, rows.device()));
    }
    rows.narrow(1, 0, prefix)
        .mean_dim(0, false, Kind::Float)
        .view([1, 1, prefix])
        .avg_pool1d([kernel], [1], [kernel / 2], false, true)
        .view([prefix])
}

/// Ascending rows to keep, `budget` of them: the window's tokens and the top-scoring
/// earlier ones (only the newest `budget` if the window alone exceeds it).
pub(crate) fn window_and_top(rows: &Tensor, kernel: i64, budget: i64) -> Tensor {
    let (_, len) = rows.size2().expect("rows: [queries, len]");
    let w = window_tokens(rows);
    let opts = (Kind::Int64, rows.device());
    if w >= budget {
        return Tensor::arange_start(len - budget, len, opts);
    }
    let (_, top) = prefix_scores(rows, kernel).topk(budget - w, 0, true, false);
    let window = Tensor::arange_start(len - w, len, opts);
    Tensor::cat(&[top, window], 0).sort(0, false).0
}

pub(crate) fn check_kernel(name: &str, kernel: usize) -> Result<(), VariantError> {
    if kernel & 1 == 0 {
        return Err(VariantError::config(
            name,
            format!(
                "the pooling kernel must be odd (kvpress pads kernel / 2 each side), got {kernel}"
            ),
        ));
    }
    Ok(())
}

/// The window's tokens and the earlier tokens it attends to most, `budget` per head.
pub struct SnapKv {
    budget: i64,
    kernel: i64,
    window: WindowRows,
    window_size: usize,
}

impl SnapKv {
    pub fn new(budget: usize, window: usize, kernel: usize) -> Result<SnapKv, VariantError> {
        check_budget(INFO.name, budget, 1)?;
        check_budget(INFO.name, window, 1)?;
        check_kernel(INFO.name, kernel)?;
        Ok(SnapKv {
            budget: budget as i64,
            kernel: kernel as i64,
            window: WindowRows::new(window),
            window_size: window,
        })
    }
}

impl CachePolicy for SnapKv {
    fn describe(&self) -> String {
        format!(
            "{}:budget={},window={},kernel={}",
            INFO.name, self.budget, self.window_size, self.kernel
        )
    }

    fn reset(&mut self, layers: usize, kv_heads: usize) {
        self.window.reset(layers, kv_heads);
    }

    fn update(&mut self, obs: &Observation) -> Vec<Option<Tensor>> {
        let keep: Vec<Option<Tensor>> = self
            .window
            .observe(obs)
            .iter()
            .map(|rows| {
                (rows.size()[1] > self.budget)
                    .then(|| window_and_top(rows, self.kernel, self.budget))
            })
            .collect();
        self.window.retain(obs.layer, &keep);
        keep
    }
}
