//! `synthesizer`: attention weights synthesised without token-token dot products (Tay et
//! al. 2021). The N x N logits B come from one of three sources, per head:
//!
//! - `dense`: from each token alone, B_i = relu(X_i W1 + b1) W2 + b2, a two-layer MLP
//!   whose output has one logit per position (W1: d x d, W2: d x N). X is the head's
//!   query, the per-head projection of the token.
//! - `random`: a learned N x N matrix R, the same for every input (the paper's "Random";
//!   `trainable = false` keeps it at its random initialisation, the paper's "fixed").
//! - `factorized-random`: R = R1 R2^T with R1, R2 of N x k, a rank-k random matrix.
//!
//! The output is softmax(B) V. Causal: the logits of later positions are masked, as the
//! paper does for language modelling.
//!
//! Complexity: time O(N^2 d) and memory O(N^2). The paper's point is that the logits
//! need no query-key interaction (content-free or per-token), not that attention is
//! cheaper: the synthesised matrix is still N x N and is applied to V densely. The low
//! rank of `factorized-random` saves parameters (2 N k instead of N^2), not the N x N
//! product.
//!
//! Choices: `random` logits start standard normal, the scale of q.k / sqrt(d) for unit
//! queries and keys; the factorised ones start with entries of standard deviation
//! k^(-1/4), so that R1 R2^T has the same unit variance. The dense MLP starts like
//! PyTorch's nn.Linear (uniform, bound 1 / sqrt(fan_in)). Parameters that depend on N
//! (W2, b2, R, R1, R2) make the variant length-specific, as in the paper.

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use crate::attention::{Attention, Shape};
use crate::error::VariantError;
use crate::flops::{self, FlopCount};
use crate::info::{Family, VariantInfo};
use crate::registry::AttentionVariant;

/// Where the logits come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SynthesizerKind {
    Dense,
    Random,
    FactorizedRandom,
}

/// Defaults: the paper's Dense Synthesizer; rank 8 for the factorised form (the paper's
/// k = 8); random logits trainable (the paper's "Random" rather than "Fixed Random").
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub mode: SynthesizerKind,
    /// Rank k of `factorized-random`.
    pub rank: i64,
    /// Whether the `random` / `factorized-random` logits are learned.
    pub trainable: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mode: SynthesizerKind::Dense,
            rank: 8,
            trainable: true,
        }
    }
}

/// The parameters that make the logits.
pub enum Logits {
    /// `w1 [h, d, d]`, `b1 [h, 1, d]`, `w2 [h, d, N]`, `b2 [h, 1, N]`.
    Dense {
        w1: Tensor,
        b1: Tensor,
        w2: Tensor,
        b2: Tensor,
    },
    /// `r [h, N, N]`.
    Random { r: Tensor },
    /// `r1`, `r2` `[h, N, k]`.
    Factorized { r1: Tensor, r2: Tensor },
}

pub struct Synthesizer {
    shape: Shape,
    rank: i64,
    /// Public so that tests can set the logits' parameters.
    pub logits: Logits,
    /// `[N, N]`, true above the diagonal, when causal.
    future: Option<Tensor>,
}

impl Synthesizer {
    /// The synthesised logits before masking: `[b, h, N, N]` (dense) or `[1, h, N, N]`
    /// (random, the same for every input). `q` is `[b, h, N, d]`.
    pub fn scores(&self, q: &Tensor) -> Tensor {
        match &self.logits {
            Logits::Dense { w1, b1, w2, b2 } => (q.matmul(w1) + b1).relu().matmul(w2) + b2,
            Logits::Random { r } => r.unsqueeze(0),
            Logits::Factorized { r1, r2 } => r1.matmul(&r2.transpose(-2, -1)).unsqueeze(0),
        }
    }
}

impl AttentionVariant for Synthesizer {
    type Config = Config;
    const INFO: VariantInfo = VariantInfo {
        name: "synthesizer",
        family: Family::LowRank,
        time: "O(N^2 d)",
        memory: "O(N^2)",
        time_exponent: 2.0,
        memory_exponent: 2.0,
        paper: "Tay et al. 2021, Synthesizer: Rethinking Self-Attention in Transformer \
                Models (ICML, arXiv:2005.00743)",
        supports_causal: true,
        exact: false,
        decode: None,
        scopes: crate::info::CORE_SCOPES,
    };

    fn check(config: &Config, _: &Shape) -> Result<(), VariantError> {
        VariantError::positive("synthesizer", "rank", config.rank)?;
        Ok(())
    }

    fn new(config: Config, shape: &Shape, vs: nn::Path) -> Result<Self, VariantError> {
        let (h, n, d) = (shape.heads, shape.seq_len, shape.head_dim);
        let linear_bound = (d as f64).powf(-0.5);
        let normal = |name: &str, dims: &[i64], std: f64| {
            let init = nn::Init::Randn {
                mean: 0.0,
                stdev: std,
            };
            if config.trainable {
                vs.var(name, dims, init)
            } else {
                let t = Tensor::randn(dims, (Kind::Float, vs.device())) * std;
                vs.add(name, t.to_kind(vs.kind()), false)
            }
        };
        let logits = match config.mode {
            SynthesizerKind::Dense => {
                let u =
                    |name: &str, dims: &[i64]| vs.uniform(name, dims, -linear_bound, linear_bound);
                Logits::Dense {
                    w1: u("w1", &[h, d, d]),
                    b1: u("b1", &[h, 1, d]),
                    w2: u("w2", &[h, d, n]),
                    b2: u("b2", &[h, 1, n]),
                }
            }
            SynthesizerKind::Random => Logits::Random {
                r: normal("r", &[h, n, n], 1.0),
            },
            SynthesizerKind::FactorizedRandom => {
                let std = (config.rank as f64).powf(-0.25);
                Logits::Factorized {
                    r1: normal("r1", &[h, n, config.rank], std),
                    r2: normal("r2", &[h, n, config.rank], std),
                }
            }
        };
        let future = shape
            .causal
            .then(|| Tensor::ones([n, n], (Kind::Bool, vs.device())).triu(1));
        Ok(Synthesizer {
            shape: *shape,
            rank: config.rank,
            logits,
            future,
        })
    }
}

impl Attention for Synthesizer {
    fn attend(&self, q: &Tensor, _k: &Tensor, v: &Tensor) -> Tensor {
        let scores = self.scores(q);
        let scores = match &self.future {
            Some(m) => scores.masked_fill(m, f64::NEG_INFINITY),
            None => scores,
        };
        scores.softmax(-1, v.kind()).matmul(v)
    }

    /// Per batch and head, softmax(B) V (N N d) and, for `dense`, the MLP (N d d + N d N).
    /// `factorized-random` adds R1 R2^T once per head (N k N), shared by the batch; plain
    /// `random` has no product before the softmax. The masked product is dense. With
    /// `trainable = false` the logits are constants: softmax(B) V's backward is V's
    /// gradient only, and R1 R2^T has none ([`crate::flops`]).
    fn flops(&self) -> FlopCount {
        let s = &self.shape;
        let (n, d, k) = (s.seq_len as u64, s.head_dim as u64, self.rank as u64);
        let bh = s.bh();
        let apply = flops::matmul(bh, n, n, d);
        let (logits, fixed) = match &self.logits {
            Logits::Dense { .. } => (
                flops::matmul(bh, n, d, d) + flops::matmul(bh, n, d, n),
                false,
            ),
            Logits::Random { r } => (0, !r.requires_grad()),
            Logits::Factorized { r1, .. } => {
                (flops::matmul(s.heads as u64, n, k, n), !r1.requires_grad())
            }
        };
        if fixed {
            FlopCount::fixed_operand(apply) + FlopCount::no_grad(logits)
        } else {
            FlopCount::forward(apply + logits)
        }
    }
}
