//! `performer`: FAVOR+ (Choromanski et al. 2021). Softmax attention approximated with
//! positive orthogonal random features, phi(x) = exp(w.x - |x|^2 / 2) / sqrt(m), so that
//! attention factorises as phi(Q) (phi(K)^T V) in O(N m d) time and O(N m) memory.
//!
//! The causal form is the family's chunked prefix sum ([`super::causal`]): a running
//! m x d state for the chunks before, and a small masked c x c product inside the chunk,
//! so nothing grows as N x N and the state never grows as N x m x d. Decoding keeps the
//! running sums (O(m d), constant in N) with a running key stabiliser.
//!
//! Features: the m projection rows are Gaussian blocks of d rows orthogonalised by QR,
//! each row rescaled by the norm of an independent Gaussian vector (the paper's
//! chi-distributed multiplier), drawn once when the layer is built and not trained.
//! Before exp, a stabiliser is subtracted (the largest exponent per row for queries, per
//! head for keys), so the largest feature is 1 and half precision does not overflow; the
//! constant cancels between numerator and normaliser. The decoder replaces the per-head
//! maximum by a running one: when a new key raises it, the sums are rescaled by
//! exp(old - new).

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use super::{Guard, KernelDecoder, TokenFeatures};
use crate::attention::{tensor_bytes, Attention, Decoder, Shape};
use crate::decode::LinearState;
use crate::error::VariantError;
use crate::flops::{self, FlopCount};
use crate::info::{Family, VariantInfo};
use crate::registry::AttentionVariant;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Random features m (the paper's default is about d log d).
    pub features: i64,
    /// Chunk length of the causal prefix sums.
    pub chunk: i64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            features: 256,
            chunk: 64,
        }
    }
}

pub struct Performer {
    shape: Shape,
    m: i64,
    /// The causal form's chunks and their mask, built once.
    chunks: super::Chunks,
    /// `[m, d]` orthogonal random projection, a fixed buffer (not trained).
    w: Tensor,
}

/// Keeps every query feature positive, small next to the row's largest feature (1).
const EPS: f64 = 1e-6;
/// Floor of the normaliser, which only an underflow brings near it.
const MIN_DEN: f64 = 1e-30;

/// `m` rows of Gaussian-distributed directions, orthogonal within each block of `d`,
/// each rescaled by the norm of an independent Gaussian vector so that the marginals
/// stay Gaussian (the paper's "ORF" with the chi-distributed multiplier).
pub fn orthogonal_features(m: i64, d: i64) -> Tensor {
    let opts = (Kind::Float, tch::Device::Cpu);
    let blocks = (m + d - 1) / d;
    let rows: Vec<Tensor> = (0..blocks)
        .map(|_| {
            let (q, _) = Tensor::linalg_qr(&Tensor::randn([d, d], opts), "reduced");
            q.transpose(0, 1)
        })
        .collect();
    let rows = Tensor::cat(&rows, 0).narrow(0, 0, m);
    let norms = Tensor::randn([m, d], opts)
        .square()
        .sum_dim_intlist(-1, true, None)
        .sqrt();
    rows * norms
}

impl AttentionVariant for Performer {
    type Config = Config;
    const INFO: VariantInfo = VariantInfo {
        name: "performer",
        family: Family::Kernels,
        time: "O(N m d)",
        memory: "O(N m)",
        time_exponent: 1.0,
        memory_exponent: 1.0,
        paper: "Choromanski et al. 2021, Rethinking Attention with Performers (ICLR)",
        supports_causal: true,
        exact: false,
        decode: Some(super::DECODE),
        scopes: crate::info::CORE_SCOPES,
    };
    const TEST_PARAMS: &'static str = "features=16:chunk=8";

    fn check(config: &Config, _: &Shape) -> Result<(), VariantError> {
        VariantError::positive("performer", "features", config.features)?;
        VariantError::positive("performer", "chunk", config.chunk)?;
        Ok(())
    }

    fn new(config: Config, shape: &Shape, vs: nn::Path) -> Result<Self, VariantError> {
        let w = orthogonal_features(config.features, shape.head_dim)
            .to_kind(vs.kind())
            .to_device(vs.device());
        let w = vs.add("w", w, false);
        Ok(Performer {
            shape: *shape,
            m: config.features,
            chunks: super::Chunks::new(config.chunk, shape, vs.device()),
            w,
        })
    }
}

/// w.x - |x|^2 / 2 for `x` of `[.., n, d]` scaled by d^(-1/4) (softmax's temperature
/// split between queries and keys), for the `[m, d]` projection `w` -> `[.., n, m]`.
fn exponent(x: &Tensor, w: &Tensor) -> Tensor {
    let d = *x.size().last().expect("[.., head_dim]") as f64;
    let x = x * d.powf(-0.25);
    let half_norm = x.square().sum_dim_intlist(-1, true, None) / 2.0;
    x.matmul(&w.transpose(0, 1)) - half_norm
}

impl Performer {
    /// phi(x) for `x` of `[.., n, d]` -> `[.., n, m]`, up to a constant factor.
    ///
    /// Constant factors cancel between numerator and normaliser, so the paper's 1/sqrt(m)
    /// is left out and a stabiliser is subtracted before exp: the largest exponent per row
    /// for queries, per head for keys. The largest feature is then 1, which keeps half
    /// precision away from overflow. Only query features get EPS: added to key features
    /// it would not cancel with the per-head stabiliser, which (causal) would let later
    /// keys change earlier outputs.
    pub fn features(&self, x: &Tensor, query: bool) -> Tensor {
        let exponent = exponent(x, &self.w);
        if query {
            query_features(&exponent)
        } else {
            let stab = exponent.amax([-2, -1], true).detach();
            (exponent - stab).exp()
        }
    }
}

/// Query features from their exponents: stabilised per row, so they do not depend on
/// any other token.
fn query_features(exponent: &Tensor) -> Tensor {
    let stab = exponent.amax(-1, true).detach();
    (exponent - stab).exp() + EPS
}

/// Decoding features: queries as in the forward pass; keys against a running stabiliser
/// (the largest key exponent so far, per head) that replaces the forward pass's
/// per-head maximum. When a new key raises it, the sums are rescaled by
/// exp(old - new), so no feature ever exceeds 1; the constant cancels as before.
struct PerformerTokens {
    shape: Shape,
    w: Tensor,
    /// `[b, h, 1, 1]`: the stabiliser now, and after the context (for reset).
    stab: Tensor,
    start: Tensor,
}

impl TokenFeatures for PerformerTokens {
    fn token(
        &mut self,
        q: &Tensor,
        k: &Tensor,
        _pos: i64,
        state: &mut LinearState,
    ) -> (Tensor, Tensor) {
        let ek = exponent(k, &self.w);
        let stab = self.stab.maximum(&ek.amax([-2, -1], true));
        let (b, h) = (self.shape.batch, self.shape.heads);
        state.scale(&(&self.stab - &stab).exp().view([b, h]));
        let kf = (ek - &stab).exp();
        self.stab = stab;
        (query_features(&exponent(q, &self.w)), kf)
    }

    fn reset(&mut self) {
        self.stab = self.start.copy();
    }

    fn bytes(&self) -> u64 {
        tensor_bytes(&self.stab)
    }
}

impl Performer {
    /// The causal form's chunking and its in-chunk mask, made at construction.
    pub fn chunks(&self) -> &super::Chunks {
        &self.chunks
    }
}

impl Attention for Performer {
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
        let qf = self.features(q, true);
        let kf = self.features(k, false);
        let guard = Guard::Floor(MIN_DEN);
        if self.shape.causal {
            super::causal(&qf, &kf, v, &self.chunks, guard)
        } else {
            super::bidirectional(&qf, &kf, v, guard)
        }
    }

    /// The two feature projections (n x d x m each), plus the family's products
    /// ([`super::product_flops`]). The exp, norms and stabilisers are element-wise. The
    /// projection matrix is a fixed buffer, so the projections' backward is the input's
    /// gradient only ([`FlopCount::fixed_operand`]).
    fn flops(&self) -> FlopCount {
        let s = &self.shape;
        let (n, d, m) = (s.seq_len as u64, s.head_dim as u64, self.m as u64);
        let features = 2 * flops::matmul(s.bh(), n, d, m);
        let chunk = s.causal.then_some(self.chunks.chunk());
        FlopCount::fixed_operand(features)
            + FlopCount::forward(super::product_flops(s, self.m, chunk))
    }

    fn decoder(&self, k: &Tensor, v: &Tensor, _capacity: i64) -> Option<Box<dyn Decoder>> {
        let ek = exponent(k, &self.w);
        let stab = ek.amax([-2, -1], true);
        let kf = (ek - &stab).exp();
        let tokens = PerformerTokens {
            shape: self.shape,
            w: self.w.shallow_clone(),
            start: stab.copy(),
            stab,
        };
        let guard = Guard::Floor(MIN_DEN);
        Some(Box::new(KernelDecoder::new(&kf, v, tokens, guard)))
    }

    /// The new token's two feature projections (1 x d x m each) and one step of the
    /// running sums ([`super::decode_product_flops`]), whatever the context.
    fn decode_flops(&self, _context: i64) -> Option<FlopCount> {
        let s = &self.shape;
        let (d, m) = (s.head_dim as u64, self.m as u64);
        let features = 2 * flops::matmul(s.bh(), 1, d, m);
        Some(FlopCount::forward(
            features + super::decode_product_flops(s, self.m),
        ))
    }
}
