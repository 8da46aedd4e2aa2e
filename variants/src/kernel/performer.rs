//! `performer`: FAVOR+ (Choromanski et al. 2021). Softmax attention approximated with
//! positive orthogonal random features, phi(x) = exp(w.x - |x|^2 / 2) / sqrt(m), so that
//! attention factorises as phi(Q) (phi(K)^T V) in O(N m d) time and O(N m) memory.
//!
//! The causal form computes the prefix sums chunk by chunk: a running m x d state for the
//! chunks before, and a small masked c x c product inside the chunk, so nothing grows as
//! N x N and the state never grows as N x m x d.

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use crate::attention::{Attention, Shape};
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
    chunk: i64,
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
        decode: None,
        scopes: crate::info::CORE_SCOPES,
    };

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
            chunk: config.chunk.min(shape.seq_len),
            w,
        })
    }
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
        let d = self.shape.head_dim as f64;
        let x = x * d.powf(-0.25);
        let half_norm = x.square().sum_dim_intlist(-1, true, None) / 2.0;
        let exponent = x.matmul(&self.w.transpose(0, 1)) - half_norm;
        let stab = if query {
            exponent.amax(-1, true)
        } else {
            exponent.amax([-2, -1], true)
        }
        .detach();
        let f = (exponent - stab).exp();
        if query {
            f + EPS
        } else {
            f
        }
    }

    /// num / den, divided in f32 when the inputs are half precision: the normaliser can be
    /// small, and its gradient goes as 1 / den^2.
    fn normalise(num: &Tensor, den: &Tensor) -> Tensor {
        match num.kind() {
            Kind::Half | Kind::BFloat16 => (num.to_kind(Kind::Float)
                / den.to_kind(Kind::Float).clamp_min(MIN_DEN))
            .to_kind(num.kind()),
            _ => num / den.clamp_min(MIN_DEN),
        }
    }

    fn bidirectional(&self, qf: &Tensor, kf: &Tensor, v: &Tensor) -> Tensor {
        let kv = kf.transpose(-2, -1).matmul(v);
        let z = kf.sum_dim_intlist(-2, false, None).unsqueeze(-1);
        Self::normalise(&qf.matmul(&kv), &qf.matmul(&z))
    }

    /// Chunked prefix sums: state before each chunk plus the masked product inside it.
    fn causal(&self, qf: &Tensor, kf: &Tensor, v: &Tensor) -> Tensor {
        let (b, h, n, m) = qf.size4().expect("[batch, heads, seq, features]");
        let d = v.size()[3];
        let c = self.chunk;
        let nc = (n + c - 1) / c;
        let pad = nc * c - n;
        // Padding goes at the end, where only padded queries can see it.
        let chunks = |t: &Tensor, w: i64| t.constant_pad_nd([0, 0, 0, pad]).view([b, h, nc, c, w]);
        let (qf, kf, v) = (chunks(qf, m), chunks(kf, m), chunks(v, d));
        let kind = v.kind();
        // Exclusive prefix over chunks, accumulated in f32 for half precision inputs.
        let acc = match kind {
            Kind::Half | Kind::BFloat16 => Kind::Float,
            other => other,
        };
        let exclusive = |t: &Tensor| {
            t.cumsum(2, acc)
                .to_kind(kind)
                .narrow(2, 0, nc - 1)
                .constant_pad_nd([0, 0, 0, 0, 1, 0])
        };
        let kv = exclusive(&kf.transpose(-2, -1).matmul(&v)); // [b, h, nc, m, d]
        let z = exclusive(&kf.sum_dim_intlist(-2, false, None).unsqueeze(-1)); // [b, h, nc, m, 1]
        let tril = Tensor::ones([c, c], (Kind::Bool, v.device())).tril(0);
        let a = qf.matmul(&kf.transpose(-2, -1)) * tril.to_kind(kind); // [b, h, nc, c, c]
        let num = qf.matmul(&kv) + a.matmul(&v);
        let den = qf.matmul(&z) + a.sum_dim_intlist(-1, true, None);
        Self::normalise(&num, &den)
            .view([b, h, nc * c, d])
            .narrow(2, 0, n)
    }
}

impl Attention for Performer {
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
        let qf = self.features(q, true);
        let kf = self.features(k, false);
        if self.shape.causal {
            self.causal(&qf, &kf, v)
        } else {
            self.bidirectional(&qf, &kf, v)
        }
    }

    fn flops(&self) -> FlopCount {
        let s = &self.shape;
        let (n, d, m) = (s.seq_len as u64, s.head_dim as u64, self.m as u64);
        let bh = s.bh();
        let features = 2 * flops::matmul(bh, n, d, m);
        let rest = if s.causal {
            let c = self.chunk as u64;
            let np = n.div_ceil(c) * c;
            flops::matmul(bh, m, np, d) // chunk states
                + flops::matmul(bh, np, m, d) + flops::matmul(bh, np, m, 1) // across chunks
                + flops::matmul(bh, np, m, c) + flops::matmul(bh, np, c, d) // inside chunks
        } else {
            flops::matmul(bh, m, n, d) + flops::matmul(bh, n, m, d) + flops::matmul(bh, n, m, 1)
        };
        FlopCount::forward(features + rest)
    }
}
