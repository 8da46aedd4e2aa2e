//! `cosformer`: cosFormer (Qin et al. 2022). Softmax's exp(q.k) is replaced by ReLU
//! features re-weighted by the cosine of the tokens' distance,
//!
//!   s(i, j) = relu(q_i).relu(k_j) cos(theta_i - theta_j),  theta_i = pi i / (2 M),
//!
//! for positions i = 1..M, which favours nearby tokens (a locality bias) while staying
//! non-negative for every |i - j| < M. Since cos(a - b) = cos a cos b + sin a sin b, the
//! score is the dot product of the 2d-dimensional features
//!
//!   phi(x_i) = [relu(x_i) cos(theta_i), relu(x_i) sin(theta_i)],
//!
//! so attention factorises as linear attention with m = 2d features, normalised by
//! max(phi(q_i) . sum_j phi(k_j), eps) (the reference code's floor). Time O(N d^2),
//! memory O(N d); the causal form is the family's chunked prefix sum
//! ([`super::causal`]), and decoding keeps the running sums (O(d^2), constant in N).
//!
//! Choices: M is the sequence length, as in the authors' reference code (which uses the
//! input's length). A causal model must fix M before it sees the sequence, so it is the
//! built shape's `seq_len`, for the forward pass and for decoding alike; a decoder that
//! runs past M continues the same angles (theta > pi / 2), where the weights of keys M or
//! more tokens back turn negative and the floor guards the denominator.
//!
//! In f16 the floor is at least 2^-10 ([`HALF_MIN_EPS`]). A query whose ReLU features
//! meet no key's (disjoint supports, routine at small head sizes) has a zero
//! denominator; the gradient reaching its numerator is then g / floor, which with the
//! paper's 1e-6 overflows f16 (65504) for any |g| above 0.07 and turns into NaN further
//! back. At 2^-10 it stays finite for |g| < 64; bf16 and f32 have the range to keep eps.

use std::f64::consts::FRAC_PI_2;

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

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
    /// paper's).
    pub chunk: i64,
    /// Floor of the denominator; the paper's code uses 1e-6.
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

/// The smallest floor used in f16 (see the module doc).
pub const HALF_MIN_EPS: f64 = 1.0 / 1024.0;

pub struct Cosformer {
    shape: Shape,
    /// cos and sin of theta at positions 0..N, `[N, 1]` in the variant's dtype and on its
    /// device: made once, not in every forward pass.
    angles: (Tensor, Tensor),
    /// The causal form's chunks and their mask, built once.
    chunks: super::Chunks,
    eps: f64,
}

/// theta for the `n` positions from `start` (0-based; the paper counts from 1), for a
/// sequence of `m` tokens: `[n, 1]`, computed in f64 and cast to `kind`.
fn angles(start: i64, n: i64, m: i64, kind: Kind, device: Device) -> Tensor {
    let pos = Tensor::arange_start(start + 1, start + n + 1, (Kind::Double, device));
    (pos * (FRAC_PI_2 / m as f64)).to_kind(kind).unsqueeze(-1)
}

/// cos and sin of [`angles`].
fn cos_sin(start: i64, n: i64, m: i64, kind: Kind, device: Device) -> (Tensor, Tensor) {
    let theta = angles(start, n, m, kind, device);
    (theta.cos(), theta.sin())
}

/// phi(x) for `x` `[.., n, d]` at angles whose cos and sin are `[n, 1]` -> `[.., n, 2d]`.
fn features_at(x: &Tensor, (cos, sin): &(Tensor, Tensor)) -> Tensor {
    let r = x.relu();
    Tensor::cat(&[&r * cos, r * sin], -1)
}

impl Cosformer {
    /// phi(x) for `x` `[.., n, d]` at positions 0..n of the built sequence -> `[.., n, 2d]`.
    pub fn features(&self, x: &Tensor) -> Tensor {
        let n = x.size()[x.dim() - 2];
        let (cos, _) = &self.angles;
        if n == cos.size()[0] && x.kind() == cos.kind() && x.device() == cos.device() {
            features_at(x, &self.angles)
        } else {
            // Another length, dtype or device than built for (tests): the same values.
            features_at(x, &cos_sin(0, n, self.shape.seq_len, x.kind(), x.device()))
        }
    }
}

impl AttentionVariant for Cosformer {
    type Config = Config;
    const INFO: VariantInfo = VariantInfo {
        name: "cosformer",
        family: Family::Kernels,
        time: "O(N d^2)",
        memory: "O(N d)",
        time_exponent: 1.0,
        memory_exponent: 1.0,
        paper: "Qin, Sun, Deng, Li, Wei, Lv, Yan, Kong & Zhong 2022, cosFormer: Rethinking \
                Softmax in Attention (ICLR, arXiv:2202.08791)",
        supports_causal: true,
        exact: false,
        decode: Some(super::DECODE),
        scopes: crate::info::CORE_SCOPES,
    };
    const TEST_PARAMS: &'static str = "chunk=8";

    fn check(config: &Config, _: &Shape) -> Result<(), VariantError> {
        VariantError::positive("cosformer", "chunk", config.chunk)?;
        super::check_eps("cosformer", config.eps)
    }

    fn new(config: Config, shape: &Shape, vs: nn::Path) -> Result<Self, VariantError> {
        let n = shape.seq_len;
        Ok(Cosformer {
            shape: *shape,
            angles: cos_sin(0, n, n, vs.kind(), vs.device()),
            chunks: super::Chunks::new(config.chunk, shape, vs.device()),
            eps: config.eps,
        })
    }
}

/// The decoder's features: the angle of the token's position, M fixed at build time.
pub struct CosTokens {
    m: i64,
}

impl TokenFeatures for CosTokens {
    fn token(&mut self, q: &Tensor, k: &Tensor, pos: i64, _: &mut LinearState) -> (Tensor, Tensor) {
        let angles = cos_sin(pos, 1, self.m, q.kind(), q.device());
        (features_at(q, &angles), features_at(k, &angles))
    }
}

impl FeatureMap for Cosformer {
    type Tokens = CosTokens;

    fn shape(&self) -> &Shape {
        &self.shape
    }

    fn chunks(&self) -> &super::Chunks {
        &self.chunks
    }

    fn phi(&self, x: &Tensor) -> Tensor {
        self.features(x)
    }

    /// m = 2d: the cos- and the sin-weighted halves; the ReLU and the weights are
    /// element-wise.
    fn feature_dim(&self) -> i64 {
        2 * self.shape.head_dim
    }

    fn guard(&self, kind: Kind) -> Guard {
        match kind {
            Kind::Half => Guard::Floor(self.eps.max(HALF_MIN_EPS)),
            _ => Guard::Floor(self.eps),
        }
    }

    /// The angle of each token's position, M fixed at build time.
    fn tokens(&self) -> CosTokens {
        CosTokens {
            m: self.shape.seq_len,
        }
    }
}

super::feature_attention!(Cosformer);
