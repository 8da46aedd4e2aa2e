//! `moe-top2`: GShard's top-2 gated mixture of experts (Lepikhin et al. 2020) in a pre-norm
//! block with exact attention. The router's softmax picks each token's two most probable
//! experts, the argmax and the argmax of the rest; their probabilities g1, g2 are
//! renormalised over the two, and the block adds g1 E1(x) + g2 E2(x). The router is a
//! bias-free linear d -> E computed in float32; each expert a GELU FFN of width `ffn_mult`
//! x d (8 experts of 4 d by default), run over the capacity-bounded dispatch buffer as in
//! `switch`. Every expert takes at most ceil(capacity_factor * T / E) assignments of the
//! batch (the paper's 2N/E: capacity_factor 2); an assignment past capacity is dropped, and
//! a token that loses both keeps the residual only. With random routing (the paper's §2.2)
//! the second expert is used only with probability min(1, 2 g2), saving capacity when it
//! matters little. The auxiliary loss is alpha * E * sum_e c_e m_e, c_e the fraction of
//! tokens whose first expert is e and m_e the mean gate of e.
//!
//! Time: O(N^2 d) for the attention plus O(N d E) for the router and O(capacity_factor N
//! d^2) for the experts, independent of E; parameters grow as E d^2. Memory: O(N d) for
//! the fused attention and O(capacity_factor N d) for the dispatch buffer.
//!
//! Choices:
//! - Priority. GShard fills capacity with every token's first choice before any second
//!   choice. That lets a later token's first choice displace an earlier token's second, so
//!   a causal block instead lists each token's two choices together, position-major (the
//!   module doc of [`super`]); a non-causal block keeps GShard's order.
//! - Gates are normalised before dropping and not renormalised after (GShard Algorithm
//!   1): a token whose second expert is dropped gets g1 E1(x) with g1 < 1.
//! - `random_routing` defaults to false: the draw makes outputs differ from run to run
//!   (and a decoder from its forward), which a benchmark does not want; the cost is the
//!   same up to the dropped second assignments. When on, it draws from LibTorch's global
//!   generator, so a seeded run is reproducible.
//! - The loss is GShard's l_aux with the E^2 scale of its reference implementation, so
//!   uniform routing gives alpha as in Switch; alpha 1e-2 as in GShard's experiments.
//! - One group: capacity is per batch rather than per GShard group of tokens.

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use super::{check_moe, Gate, MoeBlock, MoeSettings, Routed};
use crate::attention::Shape;
use crate::error::VariantError;
use crate::info::{DecodeInfo, Family, Scope, VariantInfo};
use crate::registry::LayerVariant;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Number of experts E (at least 2).
    pub experts: i64,
    /// Expert capacity over the even share T / E.
    pub capacity_factor: f64,
    /// Coefficient of the load-balancing loss.
    pub alpha: f64,
    /// Expert FFN width over d_model.
    pub ffn_mult: i64,
    /// Dispatch the second expert only with probability min(1, 2 g2).
    pub random_routing: bool,
}

/// GShard's capacity 2N/E (capacity factor 2) and alpha 1e-2, 4x FFNs, 8 experts (the
/// paper uses up to 2048 across devices), deterministic routing (see the module doc).
impl Default for Config {
    fn default() -> Self {
        Config {
            experts: 8,
            capacity_factor: 2.0,
            alpha: 0.01,
            ffn_mult: 4,
            random_routing: false,
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

/// The two experts of each token and their renormalised gates, from `[T, E]` router
/// probabilities: `(e1, e2, g1, g2)`, each `[T]`, with e1 != e2 and g1 + g2 = 1.
pub fn top2(probs: &Tensor) -> (Tensor, Tensor, Tensor, Tensor) {
    let (p1, e1) = probs.max_dim(-1, false);
    // Probabilities are >= 0, so -1 rules the first expert out.
    let rest = probs.scatter_value(1, &e1.unsqueeze(1), -1.0);
    let (p2, e2) = rest.max_dim(-1, false);
    let total = &p1 + &p2;
    (e1, e2, &p1 / &total, p2 / total)
}

/// GShard routing; see the module doc.
#[derive(Debug, Clone, Copy)]
pub struct Top2 {
    pub random_routing: bool,
}

impl Gate for Top2 {
    fn route(&self, probs: &Tensor, causal: bool) -> Routed {
        let (e1, e2, g1, g2) = top2(probs);
        let t = e1.size()[0];
        let device = probs.device();
        let always = Tensor::ones([t], (Kind::Bool, device));
        let second = if self.random_routing {
            (&g2 * 2.0).gt_tensor(&g2.rand_like())
        } else {
            always.shallow_clone()
        };
        let tokens = Tensor::arange(t, (Kind::Int64, device));
        // Causal: token by token, first then second choice; otherwise every first choice
        // before any second (GShard).
        let order = |a: &Tensor, b: &Tensor| {
            if causal {
                Tensor::stack(&[a, b], 1).view([-1])
            } else {
                Tensor::cat(&[a, b], 0)
            }
        };
        Routed {
            tokens: order(&tokens, &tokens),
            experts: order(&e1, &e2),
            gates: order(&g1, &g2),
            active: order(&always, &second),
            first: e1,
        }
    }

    fn choices(&self) -> i64 {
        2
    }
}

pub type MoeTop2 = MoeBlock<Top2>;

impl LayerVariant for MoeBlock<Top2> {
    type Config = Config;
    const INFO: VariantInfo = VariantInfo {
        name: "moe-top2",
        family: Family::Conditional,
        time: "O(N^2 d + N d E + c N d^2), c the capacity factor: expert work independent of E",
        memory: "O(N d + c N d): fused attention and the [E, capacity, d] dispatch buffer",
        time_exponent: 2.0,
        memory_exponent: 1.0,
        paper: "Lepikhin et al. 2020, GShard: Scaling Giant Models with Conditional \
                Computation and Automatic Sharding (arXiv:2006.16668; ICLR 2021)",
        supports_causal: true,
        exact: false,
        decode: Some(DecodeInfo {
            state: "O(N d): the KV cache, plus E expert fill counts",
            exponent: 1.0,
        }),
        scopes: &[Scope::Block],
    };

    fn check(config: &Config, _: &Shape) -> Result<(), VariantError> {
        check_moe("moe-top2", &config.settings(), 2)
    }

    fn new(config: Config, shape: &Shape, _: Scope, vs: nn::Path) -> Result<Self, VariantError> {
        let gate = Top2 {
            random_routing: config.random_routing,
        };
        MoeBlock::new(&vs, shape, config.settings(), gate)
    }
}
