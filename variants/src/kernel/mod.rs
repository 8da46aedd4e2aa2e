//! Kernels: softmax replaced by a feature map, so attention factorises as phi(Q) (phi(K)^T V).
//!
//! The variants differ only in their feature maps; what follows them is shared here: the
//! bidirectional product, the chunked causal prefix sums, the guarded normaliser, the
//! recurrent decoder and the FLOP counts of all of these.
//!
//! Precision: the products run in the input's kind, but the normaliser phi(q).sum_j
//! phi(k_j) is a sum of N positive terms, which overflows half precision at long
//! sequences, so it is accumulated, and the division done, in f32 for half-precision
//! inputs (as linear-attention kernels keep their sums in f32).
pub mod cosformer;
pub mod linear_transformer;
pub mod performer;

use tch::{Device, Kind, Tensor};

use crate::attention::{Decoder, Shape};
use crate::decode::LinearState;
use crate::error::VariantError;
use crate::flops;
use crate::info::DecodeInfo;

/// What the kernel variants' decoders keep: the running sums, constant in N.
pub const DECODE: DecodeInfo = DecodeInfo {
    state: "O(m d): running sums",
    exponent: 0.0,
};

/// How the normaliser is kept away from zero.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Guard {
    /// den + eps, as in Katharopoulos et al.'s reference code.
    Offset(f64),
    /// max(den, eps), as in cosFormer's reference code (and Performer's underflow floor).
    Floor(f64),
}

/// Rejects an `eps` that is not a positive, finite number.
pub fn check_eps(variant: &str, eps: f64) -> Result<(), VariantError> {
    if !(eps > 0.0 && eps.is_finite()) {
        return Err(VariantError::config(
            variant,
            format!("eps must be a positive number, got {eps}"),
        ));
    }
    Ok(())
}

/// The kind the normaliser is accumulated in: f32 for half precision, else the input's.
pub fn accumulator(kind: Kind) -> Kind {
    match kind {
        Kind::Half | Kind::BFloat16 => Kind::Float,
        other => other,
    }
}

/// num / guard(den) in the accumulator kind, returned in `out`: the gradient of the
/// division goes as 1 / den^2, which half precision cannot hold when den is small.
pub fn normalise(num: &Tensor, den: &Tensor, guard: Guard, out: Kind) -> Tensor {
    let acc = accumulator(out);
    let den = den.to_kind(acc);
    let den = match guard {
        Guard::Offset(eps) => den + eps,
        Guard::Floor(eps) => den.clamp_min(eps),
    };
    let num = num.to_kind(acc);
    if num.requires_grad() || den.requires_grad() {
        (num / den).to_kind(out)
    } else {
        // Inference: divide in place, saving an [.., n, d] allocation.
        let mut num = num;
        num /= den;
        num.to_kind(out)
    }
}

/// Bidirectional linear attention: phi(Q) (phi(K)^T V) / (phi(Q) sum_j phi(K_j)).
///
/// `qf`, `kf` `[.., n, m]` features, `v` `[.., n, d]`; O(n m d) time, O(m d) beyond the
/// inputs.
pub fn bidirectional(qf: &Tensor, kf: &Tensor, v: &Tensor, guard: Guard) -> Tensor {
    let kind = v.kind();
    let acc = accumulator(kind);
    let kv = kf.transpose(-2, -1).matmul(v); // [.., m, d]
    let z = kf.sum_dim_intlist(-2, false, acc).unsqueeze(-1); // [.., m, 1]
    normalise(&qf.matmul(&kv), &qf.to_kind(acc).matmul(&z), guard, kind)
}

/// Causal linear attention, out_i = phi(q_i) sum_{j<=i} phi(k_j) v_j^T / normaliser,
/// computed chunk by chunk: each chunk of `chunk` queries reads the m x d state summed
/// over the chunks before it, plus a masked c x c product inside its own chunk. Nothing
/// is N x N, and the running state is kept per chunk (N/c x m x d), never per token.
///
/// `qf`, `kf` `[b, h, n, m]`, `v` `[b, h, n, d]`.
pub fn causal(qf: &Tensor, kf: &Tensor, v: &Tensor, plan: &Chunks, guard: Guard) -> Tensor {
    let (b, h, n, m) = qf.size4().expect("[batch, heads, seq, features]");
    let d = v.size()[3];
    let c = plan.len.clamp(1, n.max(1));
    let nc = (n + c - 1) / c;
    let pad = nc * c - n;
    // Padding goes at the end, where only padded queries can see it.
    let chunks = |t: &Tensor, w: i64| t.constant_pad_nd([0, 0, 0, pad]).view([b, h, nc, c, w]);
    let (qf, kf, v) = (chunks(qf, m), chunks(kf, m), chunks(v, d));
    let kind = v.kind();
    let acc = accumulator(kind);
    // Sums over the chunks strictly before each chunk, accumulated in `acc`.
    let exclusive = |t: &Tensor| {
        t.cumsum(2, acc)
            .narrow(2, 0, nc - 1)
            .constant_pad_nd([0, 0, 0, 0, 1, 0])
    };
    let kv = exclusive(&kf.transpose(-2, -1).matmul(&v)).to_kind(kind); // [b, h, nc, m, d]
    let z = exclusive(&kf.sum_dim_intlist(-2, false, acc).unsqueeze(-1)); // [b, h, nc, m, 1]

    // Masked by selection, not by multiplying with 0: the gradient of a masked score can
    // overflow half precision (a row with a tiny normaliser), and inf * 0 is NaN.
    let built;
    let future = if c == plan.len && plan.future.device() == v.device() {
        &plan.future
    } else {
        // Called at another length or device than built for (tests): correct, built here.
        built = future_mask(c, v.device());
        &built
    };
    let a = qf.matmul(&kf.transpose(-2, -1)).masked_fill(future, 0.0); // [b, h, nc, c, c]
    let num = qf.matmul(&kv) + a.matmul(&v);
    let den = qf.to_kind(acc).matmul(&z) + a.sum_dim_intlist(-1, true, acc);
    normalise(&num, &den, guard, kind)
        .view([b, h, nc * c, d])
        .narrow(2, 0, n)
}

/// The chunk length [`causal`] actually uses at `shape`.
pub fn effective_chunk(chunk: i64, shape: &Shape) -> i64 {
    chunk.clamp(1, shape.seq_len.max(1))
}

/// `[c, c]`, true above the diagonal: the keys after each query inside a chunk.
fn future_mask(c: i64, device: Device) -> Tensor {
    Tensor::ones([c, c], (Kind::Bool, device)).triu(1)
}

/// The chunking of [`causal`] at a built shape, with its in-chunk future mask made once
/// on the variant's device instead of in every forward pass.
pub struct Chunks {
    len: i64,
    future: Tensor,
}

impl Chunks {
    /// Chunks of `chunk` tokens (clamped to `shape`'s length, see [`effective_chunk`]).
    pub fn new(chunk: i64, shape: &Shape, device: Device) -> Chunks {
        let len = effective_chunk(chunk, shape);
        Chunks {
            len,
            future: future_mask(len, device),
        }
    }

    /// The chunk length.
    pub fn chunk(&self) -> i64 {
        self.len
    }

    /// The in-chunk future mask (for tests).
    pub fn future(&self) -> &Tensor {
        &self.future
    }
}

/// FLOPs of the products after the feature maps, per [`bidirectional`] or [`causal`]
/// (`chunk` = `Some(c)`): for m features and head size d, per batch and head,
///
/// - bidirectional: phi(K)^T V (m x n x d), phi(Q) times it (n x m x d) and the
///   normaliser phi(Q) z (n x m x 1);
/// - causal, over the n' = ceil(n / c) c padded rows: the chunk states (m x n' x d), the
///   queries against the states before them (n' x m x d and n' x m x 1), and inside each
///   chunk the masked c x c scores (n' x m x c) and their product with V (n' x c x d).
///
/// Sums over the sequence and the prefix sums across chunks are element-wise additions,
/// not counted (see [`crate::flops`]).
pub fn product_flops(shape: &Shape, m: i64, chunk: Option<i64>) -> u64 {
    let (n, d, m) = (shape.seq_len as u64, shape.head_dim as u64, m as u64);
    let bh = shape.bh();
    match chunk {
        Some(c) => {
            let c = effective_chunk(c, shape) as u64;
            let np = n.div_ceil(c) * c;
            flops::matmul(bh, m, np, d)
                + flops::matmul(bh, np, m, d)
                + flops::matmul(bh, np, m, 1)
                + flops::matmul(bh, np, m, c)
                + flops::matmul(bh, np, c, d)
        }
        None => {
            flops::matmul(bh, m, n, d) + flops::matmul(bh, n, m, d) + flops::matmul(bh, n, m, 1)
        }
    }
}

/// FLOPs of one decoding step after the feature maps: the state update phi(k) v^T
/// (m x 1 x d), and reading it, phi(q) S (1 x m x d) and phi(q) z (1 x m x 1). The
/// update of z is element-wise.
pub fn decode_product_flops(shape: &Shape, m: i64) -> u64 {
    let (d, m) = (shape.head_dim as u64, m as u64);
    let bh = shape.bh();
    flops::matmul(bh, m, 1, d) + flops::matmul(bh, 1, m, d) + flops::matmul(bh, 1, m, 1)
}

/// What differs between the kernel variants' decoders: how the next token's query and
/// key become features.
pub trait TokenFeatures: Send {
    /// Features `[b, h, 1, m]` of the query and key (`[b, h, 1, d]`) of the token at
    /// position `pos` (0-based). May rescale `state` first (Performer's running
    /// stabiliser), before the key's features join it.
    fn token(
        &mut self,
        q: &Tensor,
        k: &Tensor,
        pos: i64,
        state: &mut LinearState,
    ) -> (Tensor, Tensor);

    /// Back to the end of the context.
    fn reset(&mut self) {}

    /// Bytes held besides the running sums.
    fn bytes(&self) -> u64 {
        0
    }
}

/// The recurrent form of [`causal`]: the running sums after the context, one token at a
/// time. Constant in the context length.
pub struct KernelDecoder<F: TokenFeatures> {
    state: LinearState,
    features: F,
    guard: Guard,
    /// The next token's position.
    pos: i64,
    /// Tokens of the context, where [`Decoder::reset`] returns to.
    context: i64,
}

impl<F: TokenFeatures> KernelDecoder<F> {
    /// `kf` `[b, h, N, m]`: the context keys' features; `v` its values.
    pub fn new(kf: &Tensor, v: &Tensor, features: F, guard: Guard) -> Self {
        let context = kf.size()[2];
        KernelDecoder {
            state: LinearState::new(kf, v),
            features,
            guard,
            pos: context,
            context,
        }
    }
}

impl<F: TokenFeatures> Decoder for KernelDecoder<F> {
    fn step(&mut self, q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
        let (qf, kf) = self.features.token(q, k, self.pos, &mut self.state);
        self.state.update(&kf, v);
        let (num, den) = self.state.read(&qf);
        self.pos += 1;
        normalise(&num, &den, self.guard, v.kind())
    }

    fn reset(&mut self) {
        self.state.reset();
        self.features.reset();
        self.pos = self.context;
    }

    fn state_bytes(&self) -> u64 {
        self.state.bytes() + self.features.bytes()
    }
}

/// What one deterministic-feature kernel variant adds to the family's engine (linear
/// transformer, cosFormer): its feature map phi, the features per head m, the
/// denominator's guard and the per-token features of its decoder. [`feature_attention!`]
/// makes it an [`crate::Attention`] with the shared causal sums, products and decoder.
pub trait FeatureMap {
    type Tokens: TokenFeatures + 'static;
    fn shape(&self) -> &Shape;
    /// The causal form's chunking and its in-chunk mask, made at construction.
    fn chunks(&self) -> &Chunks;
    /// phi(x) for `x` `[.., n, d]` at positions 0..n.
    fn phi(&self, x: &Tensor) -> Tensor;
    /// m, the features per head (the products' inner size).
    fn feature_dim(&self) -> i64;
    fn guard(&self, kind: Kind) -> Guard;
    /// The decoder's features of one token at a given position.
    fn tokens(&self) -> Self::Tokens;
}

/// The [`crate::Attention`] of a [`FeatureMap`]: attention is phi(Q) (phi(K)^T V) over
/// the guarded normaliser, chunked prefix sums when causal; FLOPs are the family's
/// products with the variant's m (feature maps are element-wise and not counted, see
/// [`crate::flops`]); decoding keeps the running sums.
macro_rules! feature_attention {
    ($variant:ty) => {
        impl $crate::attention::Attention for $variant {
            fn attend(&self, q: &tch::Tensor, k: &tch::Tensor, v: &tch::Tensor) -> tch::Tensor {
                use $crate::kernel::FeatureMap;
                let (qf, kf) = (self.phi(q), self.phi(k));
                let guard = self.guard(v.kind());
                if self.shape().causal {
                    $crate::kernel::causal(&qf, &kf, v, self.chunks(), guard)
                } else {
                    $crate::kernel::bidirectional(&qf, &kf, v, guard)
                }
            }

            fn flops(&self) -> $crate::flops::FlopCount {
                use $crate::kernel::FeatureMap;
                let s = self.shape();
                let chunk = s.causal.then_some(self.chunks().chunk());
                $crate::flops::FlopCount::forward($crate::kernel::product_flops(
                    s,
                    self.feature_dim(),
                    chunk,
                ))
            }

            fn decoder(
                &self,
                k: &tch::Tensor,
                v: &tch::Tensor,
                _capacity: i64,
            ) -> Option<Box<dyn $crate::attention::Decoder>> {
                use $crate::kernel::FeatureMap;
                Some(Box::new($crate::kernel::KernelDecoder::new(
                    &self.phi(k),
                    v,
                    self.tokens(),
                    self.guard(v.kind()),
                )))
            }

            fn decode_flops(&self, _context: i64) -> Option<$crate::flops::FlopCount> {
                use $crate::kernel::FeatureMap;
                Some($crate::flops::FlopCount::forward(
                    $crate::kernel::decode_product_flops(self.shape(), self.feature_dim()),
                ))
            }
        }
    };
}
pub(crate) use feature_attention;
