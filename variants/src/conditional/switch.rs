//! `switch`: the Switch Transformer block (Fedus et al. 2021): a pre-norm block with exact
//! attention whose FFN is a top-1 mixture of experts. A router (bias-free linear d -> E, in
//! float32) gives softmax probabilities p(x); each token goes to its argmax expert only,
//! and that expert's output is scaled by its probability, which is what trains the router.
//! Every expert takes at most ceil(capacity_factor * T / E) tokens of the batch; a token
//! past its expert's capacity skips the FFN and keeps the residual only. The auxiliary loss
//! alpha * E * sum_i f_i P_i pushes routing towards uniform. Each expert is a GELU FFN of
//! width `ffn_mult` x d (8 experts of 4 d by default). Accepted tokens are copied by index
//! into the dispatch buffer and the experts run as two batched products over it, so only
//! routed tokens are computed.
//!
//! Time: O(N^2 d) for the attention plus O(N d E) for the router and O(capacity_factor N
//! d^2) for the experts, independent of E; parameters grow as E d^2. Memory: the fused
//! attention's O(N d) and a `[E, capacity, d]` dispatch buffer, O(capacity_factor N d).
//!
//! Choices: capacity is filled position-major, which keeps the block causal (module doc
//! of [`super`]); f_i counts each token's argmax before any dropping, as in the paper's
//! eq. 4; weights use nn.Linear's default init rather than the paper's reduced-scale
//! truncated normal (the benchmark measures cost, not training).

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use super::{check_moe, Gate, MoeBlock, MoeSettings, Routed};
use crate::attention::Shape;
use crate::error::VariantError;
use crate::info::{DecodeInfo, Family, Scope, VariantInfo};
use crate::registry::LayerVariant;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Number of experts E.
    pub experts: i64,
    /// Expert capacity over the even share T / E.
    pub capacity_factor: f64,
    /// Coefficient of the load-balancing loss.
    pub alpha: f64,
    /// Expert FFN width over d_model.
    pub ffn_mult: i64,
}

/// The paper's alpha 1e-2 (§2.2) and capacity factor 1.25 (its usual training setting),
/// 4x FFNs; 8 experts
/// (the paper goes to 128 and beyond; 8 keeps CPU cases small).
impl Default for Config {
    fn default() -> Self {
        Config {
            experts: 8,
            capacity_factor: 1.25,
            alpha: 0.01,
            ffn_mult: 4,
        }
    }
}

impl Config {
    fn settings(&self) -> MoeSettings {
        MoeSettings {
            experts: self.experts,
            capacity_factor: self.capacity_factor,
            alpha: self.alpha,
            ffn_mult: self.ffn_mult,
        }
    }
}

/// Switch routing: each token to its most probable expert, weighted by that probability.
#[derive(Debug, Clone, Copy)]
pub struct Top1;

impl Gate for Top1 {
    fn route(&self, probs: &Tensor, _causal: bool) -> Routed {
        let (gate, expert) = probs.max_dim(-1, false);
        let t = expert.size()[0];
        Routed {
            tokens: Tensor::arange(t, (tch::Kind::Int64, probs.device())),
            experts: expert.shallow_clone(),
            gates: gate,
            active: Tensor::ones([t], (tch::Kind::Bool, probs.device())),
            first: expert,
        }
    }

    fn choices(&self) -> i64 {
        1
    }
}

pub type Switch = MoeBlock<Top1>;

impl LayerVariant for MoeBlock<Top1> {
    type Config = Config;
    const INFO: VariantInfo = VariantInfo {
        name: "switch",
        family: Family::Conditional,
        time: "O(N^2 d + N d E + c N d^2), c the capacity factor: expert work independent of E",
        memory: "O(N d + c N d): fused attention and the [E, capacity, d] dispatch buffer",
        time_exponent: 2.0,
        memory_exponent: 1.0,
        paper: "Fedus, Zoph & Shazeer 2021/2022, Switch Transformers: Scaling to Trillion \
                Parameter Models with Simple and Efficient Sparsity, JMLR 23 \
                (arXiv:2101.03961)",
        supports_causal: true,
        exact: false,
        decode: Some(DecodeInfo {
            state: "O(N d): the KV cache, plus E expert fill counts",
            exponent: 1.0,
        }),
        scopes: &[Scope::Block],
    };

    fn check(config: &Config, _: &Shape) -> Result<(), VariantError> {
        check_moe("switch", &config.settings(), 1)
    }

    fn new(config: Config, shape: &Shape, _: Scope, vs: nn::Path) -> Result<Self, VariantError> {
        MoeBlock::new(&vs, shape, config.settings(), Top1)
    }
}
