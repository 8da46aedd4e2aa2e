//! Cache policies: which cached tokens a decoder keeps, per layer and KV head.
//!
//! The decoder calls [`CachePolicy::update`] for every layer after every forward call
//! (one prefill chunk or one decoding step), handing it the attention that call's
//! queries gave the cached tokens. The policy keeps whatever per-token state it needs
//! (accumulated attention, spectrograms), decides, and answers per KV head with the rows
//! to keep; the cache then drops the others from its tensors, so memory really shrinks
//! and heads may hold different numbers of tokens.

pub mod namm;

use tch::Tensor;

/// What one update of one layer shows a policy.
pub struct Observation<'a> {
    pub layer: usize,
    /// Per KV head: `[queries, len_h]` (f32), the attention each query of this call gave
    /// each cached token (the call's own tokens included, causally: zero after the query).
    /// Query heads that share a KV head are averaged.
    pub attention: &'a [Tensor],
    /// Per KV head: the cached keys `[len_h, head_dim]`, rotary positions applied.
    pub keys: &'a [Tensor],
    /// Per KV head: the absolute positions of the cached tokens, `[len_h]` (int64).
    pub positions: &'a [Tensor],
    /// Absolute position of the newest token (the call's last query).
    pub now: i64,
}

/// A KV-cache eviction policy (`full`, `window`, `streaming-llm`, `h2o`, `l2`, `tova`,
/// `namm`). Work per layer and head; a policy must compact its own per-token state with
/// the same indices it returns.
pub trait CachePolicy {
    /// The policy's name with its settings, as reports show it (`h2o:budget=128`).
    fn describe(&self) -> String;

    /// Forgets every per-token state: called before each sequence, with the model's shape.
    fn reset(&mut self, layers: usize, kv_heads: usize);

    /// Sees one call's attention for one layer; answers per KV head the ascending int64
    /// indices of the rows to keep, or `None` to keep them all.
    fn update(&mut self, obs: &Observation) -> Vec<Option<Tensor>>;
}
