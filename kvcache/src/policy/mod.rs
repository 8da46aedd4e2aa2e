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

use xarena_variants::VariantError;

pub mod adakv;
pub mod expected_attention;
pub mod full;
pub mod h2o;
pub mod l2;
pub mod pyramidkv;
pub mod random;
pub mod snapkv;
pub mod streaming_llm;
pub mod tova;
pub mod window;

pub use adakv::AdaKv;
pub use expected_attention::ExpectedAttention;
pub use full::Full;
pub use h2o::H2o;
pub use l2::L2Norm;
pub use pyramidkv::PyramidKv;
pub use random::Random;
pub use snapkv::SnapKv;
pub use streaming_llm::StreamingLlm;
pub use tova::{Tova, TovaScope};
pub use window::Window;

/// What one update of one layer shows a policy.
pub struct Observation<'a> {
    pub layer: usize,
    /// Per KV head: `[queries, len_h]` (f32), the attention each query of this call gave
    /// each cached token (the call's own tokens included, causally: zero after the query).
    /// Query heads that share a KV head are averaged.
    pub attention: &'a [Tensor],
    /// Per KV head: the cached keys `[len_h, head_dim]`, rotary positions applied.
    /// Like `positions`, views of the cache's buffers, which later calls overwrite in
    /// place: a policy copies what it keeps beyond the update.
    pub keys: &'a [Tensor],
    /// Per KV head: the absolute positions of the cached tokens, `[len_h]` (int64).
    /// Rows are in ascending position order (the session appends each call's tokens at
    /// the end and keeps rows in order), so the call's own tokens are the last rows.
    pub positions: &'a [Tensor],
    /// Absolute position of the newest token (the call's last query).
    pub now: i64,
}

/// A KV-cache eviction policy (`full`, `window`, `streaming-llm`, `h2o`, `l2`, `tova`,
/// `random`, `snapkv`, `pyramidkv`, `adakv`, `expected-attention`, `namm`). Work per
/// layer and head; a policy must compact its own per-token state with the same indices
/// it returns.
pub trait CachePolicy {
    /// The policy's name with its settings, as reports show it (`h2o:budget=128`).
    fn describe(&self) -> String;

    /// Forgets every per-token state: called before each sequence, with the model's shape.
    fn reset(&mut self, layers: usize, kv_heads: usize);

    /// Sees one call's attention for one layer; answers per KV head the ascending int64
    /// indices of the rows to keep, or `None` to keep them all.
    fn update(&mut self, obs: &Observation) -> Vec<Option<Tensor>>;
}

/// Builds a policy with its default settings from a budget in tokens per KV head (0 for
/// a policy that takes none).
pub type Build = fn(budget: usize) -> Result<Box<dyn CachePolicy>, VariantError>;

/// One policy's row in [`POLICIES`], kept in the policy's own file (`INFO`).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct PolicyInfo {
    /// Registry name, as used on the command line.
    pub name: &'static str,
    /// Citation: authors, year, title, venue or arXiv id.
    pub paper: &'static str,
    /// What it keeps, in one line.
    pub keeps: &'static str,
    /// Takes a budget (tokens per KV head).
    pub budgeted: bool,
    /// Its constructor; `None` for a policy built from trained parameters (`namm`).
    #[serde(skip)]
    pub build: Option<Build>,
}

/// The one table of policies, in the order reports list them: the CLI validates and
/// builds from it, `xarena kv report` orders by it, the tests walk it.
pub const POLICIES: &[PolicyInfo] = &[
    full::INFO,
    window::INFO,
    streaming_llm::INFO,
    h2o::INFO,
    l2::INFO,
    tova::INFO,
    random::INFO,
    snapkv::INFO,
    pyramidkv::INFO,
    adakv::INFO,
    expected_attention::INFO,
    namm::INFO,
];

/// The registered policies' names, in [`POLICIES`] order.
pub fn policy_names() -> Vec<&'static str> {
    POLICIES.iter().map(|p| p.name).collect()
}

/// The metadata of a registered policy.
pub fn policy_info(name: &str) -> Option<&'static PolicyInfo> {
    POLICIES.iter().find(|i| i.name == name)
}

/// Builds a policy by name with its default settings and a budget in tokens per KV head
/// (required by every policy but `full`, which rejects one). `namm` needs trained
/// parameters, so it is not built here.
pub fn build_policy(
    name: &str,
    budget: Option<usize>,
) -> Result<Box<dyn CachePolicy>, VariantError> {
    let info = policy_info(name).ok_or_else(|| {
        VariantError::config(
            name,
            format!(
                "unknown cache policy (known: {})",
                policy_names().join(", ")
            ),
        )
    })?;
    let Some(build) = info.build else {
        return Err(VariantError::config(
            name,
            "needs parameters (a trained NAMM scoring network): build it from its \
             checkpoint, not by name",
        ));
    };
    let budget = match (info.budgeted, budget) {
        (false, Some(b)) => {
            return Err(VariantError::config(
                name,
                format!("keeps every token and takes no budget (got {b})"),
            ))
        }
        (false, None) => 0,
        (true, Some(b)) => b,
        (true, None) => {
            return Err(VariantError::config(
                name,
                "needs a budget (tokens kept per KV head)",
            ))
        }
    };
    build(budget)
}

/// The budget check every budgeted policy shares.
pub(crate) fn check_budget(name: &str, budget: usize, least: usize) -> Result<(), VariantError> {
    if budget < least {
        return Err(VariantError::config(
            name,
            format!("budget must be at least {least} tokens per KV head, got {budget}"),
        ));
    }
    Ok(())
}

/// Per KV head, the rows to keep when only the first `sinks` and the most recent tokens
/// stay, `budget` in all (rows are in position order); `None` for a head within budget.
pub(crate) fn sinks_and_recent(obs: &Observation, sinks: i64, budget: i64) -> Vec<Option<Tensor>> {
    obs.positions
        .iter()
        .map(|p| {
            let len = p.size()[0];
            (len > budget).then(|| {
                let opts = (tch::Kind::Int64, p.device());
                let recent = Tensor::arange_start(len - (budget - sinks), len, opts);
                if sinks == 0 {
                    recent
                } else {
                    Tensor::cat(&[Tensor::arange(sinks, opts), recent], 0)
                }
            })
        })
        .collect()
}

/// Ascending indices `[n]` (int64) of `rows` chosen among the first `len - 1` rows by
/// `score` (the highest when `largest`), plus the newest row `len - 1`.
pub(crate) fn top_plus_newest(score: &Tensor, rows: i64, largest: bool) -> Tensor {
    let len = score.size()[0];
    let (_, idx) = score.narrow(0, 0, len - 1).topk(rows, 0, largest, false);
    // Built on the device: no host-to-device copy per head and step.
    let newest = Tensor::arange_start(len - 1, len, (tch::Kind::Int64, score.device()));
    Tensor::cat(&[idx, newest], 0).sort(0, false).0
}
