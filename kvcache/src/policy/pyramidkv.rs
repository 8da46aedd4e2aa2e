//! `pyramidkv`: PyramidKV (Cai et al. 2024): SnapKV's scores (see [`super::snapkv`]),
//! with budgets shrinking linearly with depth, by kvpress's `PyramidKVPress` formula
//! (itself from KVCache-Factory). With `b` the budget per head, `w` the window, `n` the
//! tokens seen and `L` the layers: `min = b / beta`, `max = 2b - min`; if
//! `max >= n - w`, then `max = n - w` and `min = 2b - max`; unless
//! `n >= max >= min >= w`, every layer keeps `b` (SnapKV); otherwise layer `l` keeps
//! `round(max - l (max - min) / (L - 1))` (round half to even, as Python's `round`), so
//! the layers keep `b` on average. kvpress's defaults: window 64, kernel 5, beta 20,
//! so below a budget of `beta x w` = 1280 tokens it is SnapKV.
//!
//! Where it departs from kvpress: `b` is the budget in tokens (kvpress uses
//! `n (1 - ratio)` unrounded), and `n` is the tokens seen so far (`now + 1`), which is
//! kvpress's prompt length when the whole prompt is prefilled and compressed once; in
//! the chunked protocol a layer's budget is recomputed at every call as `n` grows. The
//! window rows are kept across calls as [`super::snapkv`] says.

use tch::Tensor;

use super::snapkv::{check_kernel, window_and_top, WindowRows, DEFAULT_KERNEL, DEFAULT_WINDOW};
use super::{check_budget, CachePolicy, Observation, PolicyInfo};
use xarena_variants::VariantError;

pub const INFO: PolicyInfo = PolicyInfo {
    name: "pyramidkv",
    paper: "Cai et al. 2024, PyramidKV: Dynamic KV Cache Compression based on Pyramidal \
            Information Funneling (arXiv:2406.02069; kvpress's PyramidKVPress)",
    keeps: "SnapKV's choice with budgets falling linearly with depth, the layers' mean \
            the budget",
    budgeted: true,
    build: Some(build),
};

/// kvpress's pyramid steepness.
pub const DEFAULT_BETA: usize = 20;

fn build(budget: usize) -> Result<Box<dyn CachePolicy>, VariantError> {
    Ok(Box::new(PyramidKv::new(
        budget,
        DEFAULT_WINDOW,
        DEFAULT_KERNEL,
        DEFAULT_BETA,
    )?))
}

/// SnapKV with a per-layer budget.
pub struct PyramidKv {
    budget: i64,
    window_size: i64,
    kernel: i64,
    beta: i64,
    layers: i64,
    window: WindowRows,
}

impl PyramidKv {
    pub fn new(
        budget: usize,
        window: usize,
        kernel: usize,
        beta: usize,
    ) -> Result<PyramidKv, VariantError> {
        check_budget(INFO.name, budget, 1)?;
        check_budget(INFO.name, window, 1)?;
        check_kernel(INFO.name, kernel)?;
        if beta < 1 {
            return Err(VariantError::config(INFO.name, "beta must be at least 1"));
        }
        Ok(PyramidKv {
            budget: budget as i64,
            window_size: window as i64,
            kernel: kernel as i64,
            beta: beta as i64,
            layers: 0,
            window: WindowRows::new(window),
        })
    }

    /// Layer `layer`'s budget per KV head after `seen` tokens (`layers` set by a reset).
    pub fn layer_budget(&self, layer: usize, seen: i64) -> i64 {
        let (b, w, n) = (self.budget as f64, self.window_size as f64, seen as f64);
        let mut min = b / self.beta as f64;
        let mut max = 2.0 * b - min;
        if max >= n - w {
            max = n - w;
            min = 2.0 * b - max;
        }
        if self.layers < 2 || !(n >= max && max >= min && min >= w) {
            return self.budget;
        }
        let steps = (max - min) / (self.layers - 1) as f64;
        (max - layer as f64 * steps).round_ties_even() as i64
    }
}

impl CachePolicy for PyramidKv {
    fn describe(&self) -> String {
        format!(
            "{}:budget={},window={},kernel={},beta={}",
            INFO.name, self.budget, self.window_size, self.kernel, self.beta
        )
    }

    fn reset(&mut self, layers: usize, kv_heads: usize) {
        self.layers = layers as i64;
        self.window.reset(layers, kv_heads);
    }

    fn update(&mut self, obs: &Observation) -> Vec<Option<Tensor>> {
        let budget = self.layer_budget(obs.layer, obs.now + 1).max(1);
        let keep: Vec<Option<Tensor>> = self
            .window
            .observe(obs)
            .iter()
            .map(|rows| {
                (rows.size()[1] > budget).then(|| window_and_top(rows, self.kernel, budget))
            })
            .collect();
        self.window.retain(obs.layer, &keep);
        keep
    }
}
