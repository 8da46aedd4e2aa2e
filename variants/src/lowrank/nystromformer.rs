//! `nystromformer`: softmax attention through the Nystrom method (Xiong et al. 2021).
//!
//! The N x N softmax matrix S = softmax(Q K^T / sqrt d) is approximated from m
//! landmarks: Q~ and K~, the means of m contiguous segments of the queries and of the
//! keys. With the three small softmax kernels
//!
//! - F = softmax(Q K~^T / sqrt d), N x m,
//! - A = softmax(Q~ K~^T / sqrt d), m x m,
//! - B = softmax(Q~ K^T / sqrt d), m x N,
//!
//! S ~ F A+ B, and the output is F (A+ (B V)). A+ is the Moore-Penrose pseudo-inverse,
//! computed by the paper's iteration (Razavi et al. 2014): Z0 = A^T / (||A||_1 ||A||_inf),
//! then Z <- 1/4 Z (13 I - A Z (15 I - A Z (7 I - A Z))), 6 times by default. The
//! iteration is meant to be stopped early, as the paper does: on a rank-deficient A, once
//! converged, round-off outside A's range grows 3.25x per iteration (the update
//! multiplies it by 13/4). A skip connection adds a depthwise convolution of V along the
//! sequence (one kernel of 33 taps per head, as in the paper's reference code), which the
//! paper uses to recover local detail the landmarks smooth out.
//!
//! Time O(N m d + m^3) and memory O(N m): nothing is N x N.
//!
//! Choices:
//! - Products are associated as F (A+ (B V)) rather than the reference's (F A+) (B V):
//!   the same matrix, but m^2 d instead of N m^2 multiply-adds.
//! - The reference requires m to divide N. Here, when it does not, the segments have
//!   floor(N / m) or ceil(N / m) tokens (the first N mod m are the longer ones), so every
//!   landmark is the mean of real tokens; when m divides N this is the reference's
//!   segmentation. More landmarks than tokens are clamped to N (one token per segment).
//! - The pseudo-inverse (and the m x d product A+ (B V)) runs in f32 for half precision
//!   inputs: the iteration scales near-identity matrices by 13 and 15 and cancels them,
//!   more than an 8- or 11-bit mantissa resolves.
//! - The initial scale 1 / (||A||_1 ||A||_inf) is taken per matrix (per batch and head),
//!   the paper's formula; the reference's default takes one maximum over the batch.
//! - Non-causal: landmarks average over the whole sequence, as in the paper (an encoder).

use serde::{Deserialize, Serialize};
use tch::{nn, Kind, Tensor};

use crate::attention::{Attention, Shape};
use crate::error::VariantError;
use crate::flops::{self, FlopCount};
use crate::info::{Family, VariantInfo};
use crate::registry::AttentionVariant;

/// The paper's defaults: 64 landmarks, 6 pseudo-inverse iterations, a 33-tap convolution.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Landmarks m (clamped to N).
    pub landmarks: i64,
    /// Iterations of the pseudo-inverse.
    pub iterations: i64,
    /// Taps of the depthwise convolution skip on V (odd, so that it is centred); 0
    /// disables it.
    pub conv_kernel: i64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            landmarks: 64,
            iterations: 6,
            conv_kernel: 33,
        }
    }
}

pub struct Nystromformer {
    shape: Shape,
    /// Landmarks actually used: min(config, N).
    m: i64,
    iterations: i64,
    conv_kernel: i64,
    /// `[heads, 1, conv_kernel, 1]`: one kernel along the sequence per head, shared by
    /// the head's channels (a grouped 2-D convolution over `[batch, heads, N, d]`).
    conv: Option<Tensor>,
}

/// Means of `m` contiguous segments along the sequence axis: `[b, h, N, d] -> [b, h, m, d]`
/// for 1 <= m <= N. The first N mod m segments hold one token more than the others.
pub fn segment_means(x: &Tensor, m: i64) -> Tensor {
    let (b, h, n, d) = x.size4().expect("[batch, heads, seq, head_dim]");
    let (len, long) = (n / m, n % m);
    let means = |start: i64, count: i64, len: i64| {
        x.narrow(2, start, count * len)
            .reshape([b, h, count, len, d])
            .mean_dim(3, false, None)
    };
    if long == 0 {
        means(0, m, len)
    } else {
        let first = means(0, long, len + 1);
        let rest = means(long * (len + 1), m - long, len);
        Tensor::cat(&[first, rest], 2)
    }
}

/// The paper's iterative Moore-Penrose pseudo-inverse of `a` (`[.., m, m]`), batched:
/// Z0 = A^T / (||A||_1 ||A||_inf) per matrix, then
/// Z <- 1/4 Z (13 I - A Z (15 I - A Z (7 I - A Z))). Half precision inputs are iterated in
/// f32 (see the module doc); the result is returned in f32 then.
///
/// Meant to be stopped early, as the paper does: the error contracts as E <- 3/4 E^3 +
/// 1/4 E^4 (E = I - A Z), but on a rank-deficient A round-off outside A's range grows
/// 3.25x per iteration once converged; and a partly converged inverse of an
/// ill-conditioned A is a regularised one.
pub fn iterative_pinv(a: &Tensor, iterations: i64) -> Tensor {
    let a = match a.kind() {
        Kind::Half | Kind::BFloat16 => a.to_kind(Kind::Float),
        _ => a.shallow_clone(),
    };
    let m = *a.size().last().expect("a matrix");
    let eye = Tensor::eye(m, (a.kind(), a.device()));
    let abs = a.abs();
    // ||A||_1: the largest column sum; ||A||_inf: the largest row sum.
    let norm_1 = abs.sum_dim_intlist(-2, false, None).amax(-1, true);
    let norm_inf = abs.sum_dim_intlist(-1, false, None).amax(-1, true);
    let mut z = a.transpose(-2, -1) / (norm_1 * norm_inf).unsqueeze(-1);
    for _ in 0..iterations {
        let az = a.matmul(&z);
        let inner = &eye * 7.0 - &az;
        let inner = &eye * 15.0 - az.matmul(&inner);
        let inner = &eye * 13.0 - az.matmul(&inner);
        z = z.matmul(&inner) * 0.25;
    }
    z
}

impl AttentionVariant for Nystromformer {
    type Config = Config;
    const INFO: VariantInfo = VariantInfo {
        name: "nystromformer",
        family: Family::LowRank,
        time: "O(N m d + m^3)",
        memory: "O(N m)",
        time_exponent: 1.0,
        memory_exponent: 1.0,
        paper: "Xiong et al. 2021, Nystromformer: A Nystrom-Based Algorithm for \
                Approximating Self-Attention (AAAI, arXiv:2102.03902)",
        supports_causal: false,
        exact: false,
        decode: None,
        scopes: crate::info::CORE_SCOPES,
    };

    fn check(config: &Config, _: &Shape) -> Result<(), VariantError> {
        VariantError::positive("nystromformer", "landmarks", config.landmarks)?;
        VariantError::positive("nystromformer", "iterations", config.iterations)?;
        let k = config.conv_kernel;
        if k < 0 || (k > 0 && k % 2 == 0) {
            return Err(VariantError::config(
                "nystromformer",
                format!("conv_kernel must be 0 (off) or odd, got {k}"),
            ));
        }
        Ok(())
    }

    fn new(config: Config, shape: &Shape, vs: nn::Path) -> Result<Self, VariantError> {
        let k = config.conv_kernel;
        // PyTorch's Conv2d default init: bound 1 / sqrt(fan_in), fan_in = 1 channel x k.
        let conv = (k > 0).then(|| {
            let bound = (k as f64).powf(-0.5);
            vs.uniform("conv", &[shape.heads, 1, k, 1], -bound, bound)
        });
        Ok(Nystromformer {
            shape: *shape,
            m: config.landmarks.min(shape.seq_len),
            iterations: config.iterations,
            conv_kernel: k,
            conv,
        })
    }
}

impl Attention for Nystromformer {
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
        let d = q.size()[3];
        let kind = q.kind();
        // d^-1/4 on each side: every kernel is scaled by 1 / sqrt(d), as in the reference.
        let scale = (d as f64).powf(-0.25);
        let (q, k) = (q * scale, k * scale);
        let (ql, kl) = (segment_means(&q, self.m), segment_means(&k, self.m));
        let softmax = |x: Tensor| x.softmax(-1, kind);
        let f = softmax(q.matmul(&kl.transpose(-2, -1))); // [b, h, N, m]
        let a = softmax(ql.matmul(&kl.transpose(-2, -1))); // [b, h, m, m]
        let b = softmax(ql.matmul(&k.transpose(-2, -1))); // [b, h, m, N]
        let pinv = iterative_pinv(&a, self.iterations);
        let bv = b.matmul(v).to_kind(pinv.kind());
        let out = f.matmul(&pinv.matmul(&bv).to_kind(kind));
        match &self.conv {
            Some(w) => {
                let pad = self.conv_kernel / 2;
                let skip = v.conv2d(
                    w,
                    None::<Tensor>,
                    [1, 1],
                    [pad, 0],
                    [1, 1],
                    self.shape.heads,
                );
                out + skip
            }
            None => out,
        }
    }

    /// Per batch and head: the three kernels' scores (N d m + m d m + m d N), B V (m N d),
    /// the pseudo-inverse (4 m x m x m products per iteration), A+ (B V) (m m d), F times
    /// that (N m d), and the convolution (conv_kernel multiply-adds per element of V).
    /// Segment means and softmaxes are element-wise and not counted.
    fn flops(&self) -> FlopCount {
        let s = &self.shape;
        let (n, d, m) = (s.seq_len as u64, s.head_dim as u64, self.m as u64);
        let bh = s.bh();
        let kernels =
            flops::matmul(bh, n, d, m) + flops::matmul(bh, m, d, m) + flops::matmul(bh, m, d, n);
        let pinv = 4 * self.iterations as u64 * flops::matmul(bh, m, m, m);
        let products =
            flops::matmul(bh, m, n, d) + flops::matmul(bh, m, m, d) + flops::matmul(bh, n, m, d);
        let conv = 2 * bh * n * d * self.conv_kernel as u64;
        FlopCount::forward(kernels + pinv + products + conv)
    }
}
