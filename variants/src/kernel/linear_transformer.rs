//! `linear-transformer`: linear attention (Katharopoulos et al. 2020). Softmax's
//! exp(q.k) is replaced by the kernel phi(q).phi(k) with phi(x) = elu(x) + 1, a positive
//! feature map of the same size as the head (m = d), so attention factorises:
//!
//!   out_i = phi(q_i) (sum_j phi(k_j) v_j^T) / (phi(q_i) . sum_j phi(k_j) + eps).
//!
//! Bidirectional: the m x d sum is formed once, O(N d^2) time and O(N d) memory.
//! Causal: the sums run over j <= i only, which makes the model an RNN with an m x d
//! state. The parallel form is the family's chunked prefix sum ([`super::causal`]): a
//! running state between chunks of c tokens and a masked c x c product inside each, so
//! O(N d^2 + N c d) time and O(N c + N d^2 / c) memory, never N x N nor N x d x d.
//! Decoding keeps the running sums: O(d^2) per token and in state, constant in N.
//!
//! Choices: eps is added to the denominator, as in the authors' reference code (rather
//! than a floor); the feature map has no parameters and no scaling (phi is applied to q
//! and k as they are, as in the paper).

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use super::{FeatureMap, Guard, TokenFeatures};
use crate::attention::Shape;
use crate::decode::LinearState;
use crate::error::VariantError;
use crate::info::{Family, VariantInfo};
use crate::registry::AttentionVariant;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Chunk length of the causal prefix sums (an implementation choice, not the
    /// paper's: it trades the c x c products inside a chunk against the number of
    /// states kept).
    pub chunk: i64,
    /// Added to the denominator; the paper's code uses 1e-6.
    pub eps: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            chunk: 64,
            eps: 1e-6,
        }
    }
}

pub struct LinearTransformer {
    shape: Shape,
    /// The causal form's chunks and their mask, built once.
    chunks: super::Chunks,
    eps: f64,
}

/// phi(x) = elu(x) + 1, element-wise: positive, and the identity plus one for x > 0.
pub fn features(x: &Tensor) -> Tensor {
    let mut f = x.elu();
    if f.requires_grad() {
        f + 1.0
    } else {
        // In place when nothing will differentiate it: one allocation fewer per call.
        f += 1.0;
        f
    }
}

impl AttentionVariant for LinearTransformer {
    type Config = Config;
    const INFO: VariantInfo = VariantInfo {
        name: "linear-transformer",
        family: Family::Kernels,
        time: "O(N d^2)",
        memory: "O(N d)",
        time_exponent: 1.0,
        memory_exponent: 1.0,
        paper: "Katharopoulos, Vyas, Pappas & Fleuret 2020, Transformers are RNNs: Fast \
                Autoregressive Transformers with Linear Attention (ICML, arXiv:2006.16236)",
        supports_causal: true,
        exact: false,
        decode: Some(super::DECODE),
        scopes: crate::info::CORE_SCOPES,
    };
    const TEST_PARAMS: &'static str = "chunk=8";

    fn check(config: &Config, _: &Shape) -> Result<(), VariantError> {
        VariantError::positive("linear-transformer", "chunk", config.chunk)?;
        super::check_eps("linear-transformer", config.eps)
    }

    fn new(config: Config, shape: &Shape, vs: nn::Path) -> Result<Self, VariantError> {
        Ok(LinearTransformer {
            shape: *shape,
            chunks: super::Chunks::new(config.chunk, shape, vs.device()),
            eps: config.eps,
        })
    }
}

/// The decoder's features: the same element-wise map, whatever the position.
pub struct EluTokens;

impl TokenFeatures for EluTokens {
    fn token(&mut self, q: &Tensor, k: &Tensor, _: i64, _: &mut LinearState) -> (Tensor, Tensor) {
        (features(q), features(k))
    }
}

impl FeatureMap for LinearTransformer {
    type Tokens = EluTokens;

    fn shape(&self) -> &Shape {
        &self.shape
    }

    fn chunks(&self) -> &super::Chunks {
        &self.chunks
    }

    fn phi(&self, x: &Tensor) -> Tensor {
        features(x)
    }

    /// m = d: the map is element-wise.
    fn feature_dim(&self) -> i64 {
        self.shape.head_dim
    }

    fn guard(&self, _kind: tch::Kind) -> Guard {
        Guard::Offset(self.eps)
    }

    fn tokens(&self) -> EluTokens {
        EluTokens
    }
}

super::feature_attention!(LinearTransformer);
