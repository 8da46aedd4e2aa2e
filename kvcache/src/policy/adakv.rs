//! `adakv`: head-adaptive budgets in the manner of AdaKV (Feng et al. 2024), as kvpress's
//! `AdaKVPress` wraps a scorer, here SnapKV's (the paper's Ada-SnapKV; see
//! [`super::snapkv`]). The scores of all KV heads of a layer are pooled and the layer
//! keeps its `heads x budget` best tokens across heads, so a head whose attention is
//! concentrated gives its share to one whose attention is spread. A safeguard keeps at
//! least `floor(alpha x budget)` tokens in every head (kvpress's `alpha_safeguard`, 0.20):
//! the head's top `floor(alpha x budget)` scores, the window's tokens ranking first, as
//! kvpress's padding of the window with the largest score makes them. The window's tokens
//! are always kept (within the budget).
//!
//! Where it departs from kvpress: kvpress keeps the keys and masks the evicted ones in
//! attention; here they leave the cache. kvpress pads the window with the largest real
//! score and the safeguarded tokens with the float maximum; here both rank above every
//! other token, which differs only when they alone would exceed the layer's total. With
//! a budget below the window, a head's window is its newest `budget` tokens (the older
//! ones of the window rank last), so the forced tokens never exceed the layer's total
//! (kvpress then keeps an arbitrary part of the windows: ties). The window rows are kept
//! across calls as [`super::snapkv`] says; heads may then hold different numbers of
//! tokens, so the layer keeps `heads x budget` out of what its heads hold, and evicts
//! nothing while that is within the total.

use tch::{Kind, Tensor};

use super::snapkv::{
    check_kernel, prefix_scores, window_tokens, WindowRows, DEFAULT_KERNEL, DEFAULT_WINDOW,
};
use super::{check_budget, CachePolicy, Observation, PolicyInfo};
use xarena_variants::VariantError;

pub const INFO: PolicyInfo = PolicyInfo {
    name: "adakv",
    paper: "Feng et al. 2024, Ada-KV: Optimizing KV Cache Eviction by Adaptive Budget \
            Allocation for Efficient LLM Inference (arXiv:2407.11550; kvpress's AdaKVPress \
            over SnapKVPress)",
    keeps: "a layer's heads x budget best SnapKV scores across its heads, at least 20% of \
            the budget in each",
    budgeted: true,
    build: Some(build),
};

/// kvpress's safeguard: the least fraction of the budget every head keeps.
pub const DEFAULT_ALPHA: f64 = 0.20;

fn build(budget: usize) -> Result<Box<dyn CachePolicy>, VariantError> {
    Ok(Box::new(AdaKv::new(
        budget,
        DEFAULT_WINDOW,
        DEFAULT_KERNEL,
        DEFAULT_ALPHA,
    )?))
}

/// SnapKV's scores, the budget shared across a layer's heads.
pub struct AdaKv {
    budget: i64,
    window_size: usize,
    kernel: i64,
    alpha: f64,
    window: WindowRows,
}

impl AdaKv {
    pub fn new(
        budget: usize,
        window: usize,
        kernel: usize,
        alpha: f64,
    ) -> Result<AdaKv, VariantError> {
        check_budget(INFO.name, budget, 1)?;
        check_budget(INFO.name, window, 1)?;
        check_kernel(INFO.name, kernel)?;
        if !(0.0..=1.0).contains(&alpha) {
            return Err(VariantError::config(
                INFO.name,
                format!("alpha (the safeguard) must be in [0, 1], got {alpha}"),
            ));
        }
        Ok(AdaKv {
            budget: budget as i64,
            window_size: window,
            kernel: kernel as i64,
            alpha,
            window: WindowRows::new(window),
        })
    }

    /// Tokens every head keeps at least.
    fn safe(&self) -> i64 {
        (self.alpha * self.budget as f64).floor() as i64
    }
}

impl CachePolicy for AdaKv {
    fn describe(&self) -> String {
        format!(
            "{}:budget={},window={},kernel={},alpha={}",
            INFO.name, self.budget, self.window_size, self.kernel, self.alpha
        )
    }

    fn reset(&mut self, layers: usize, kv_heads: usize) {
        self.window.reset(layers, kv_heads);
    }

    fn update(&mut self, obs: &Observation) -> Vec<Option<Tensor>> {
        let rows = self.window.observe(obs);
        let lens: Vec<i64> = rows.iter().map(|r| r.size()[1]).collect();
        let total = self.budget * rows.len() as i64;
        if lens.iter().sum::<i64>() <= total {
            return rows.iter().map(|_| None).collect();
        }
        let top = f32::MAX as f64;
        let scores: Vec<Tensor> = rows
            .iter()
            .map(|r| {
                let w = window_tokens(r);
                // Within the budget, the newest of the window's tokens.
                let kept_w = w.min(self.budget);
                let mut prefix = prefix_scores(r, self.kernel);
                // The safeguard: the head's best scores, the window's tokens first.
                let protect = (self.safe() - kept_w).min(prefix.size()[0]);
                if protect > 0 {
                    let (_, idx) = prefix.topk(protect, 0, true, false);
                    prefix = prefix.index_fill(0, &idx, top);
                }
                let opts = (Kind::Float, r.device());
                let window = Tensor::cat(
                    &[
                        Tensor::full([w - kept_w], f32::MIN as f64, opts),
                        Tensor::full([kept_w], top, opts),
                    ],
                    0,
                );
                Tensor::cat(&[prefix, window], 0)
            })
            .collect();
        let (_, chosen) = Tensor::cat(&scores, 0).topk(total, 0, true, false);
        let chosen = chosen.sort(0, false).0;
        let mut offset = 0;
        let keep: Vec<Option<Tensor>> = lens
            .iter()
            .map(|&len| {
                let mine = chosen.ge(offset).logical_and(&chosen.lt(offset + len));
                let idx = chosen.masked_select(&mine) - offset;
                offset += len;
                (idx.size()[0] < len).then_some(idx)
            })
            .collect();
        self.window.retain(obs.layer, &keep);
        keep
    }
}
