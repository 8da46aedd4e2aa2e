//! `reformer`: LSH attention (Kitaev et al. 2020). Queries and keys share one projection
//! (keys are the unit-normalised queries); each of `rounds` random rotations hashes every
//! position into one of n_b buckets (argmax over [xR; -xR]); positions are sorted by
//! (bucket, position), cut into chunks of c, and each chunk attends to itself and the
//! chunk before it, within the same bucket. A position attends to itself only when
//! nothing else is there (its score is pushed down by 1e5, as in the paper; by 5e4 in
//! f16, whose range ends at 65504). The rounds are combined with weights from their
//! softmax normalisers (log-sum-exp), as in the paper's multi-round attention; a pair met
//! in several rounds counts in each.
//! Time O(r N c d + r N log N), memory O(r N c). `buckets = 0` (the default) picks the
//! paper's n_b = N / c, rounded up to even.
//!
//! Shared QK means the core never reads its keys: the K projection's output goes unused,
//! since the multi-head wrapper computes Q, K and V for every variant (its FLOPs are
//! counted like any other variant's projections).
//!
//! Causal masking hides every later key, but the sort runs over the whole sequence, so
//! later tokens can move the chunk boundaries among earlier ones, as in the paper's
//! implementation: not a strictly autoregressive layer.

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
    /// Chunk length c, also the expected bucket size.
    pub bucket_size: i64,
    /// Hash rounds r.
    pub rounds: i64,
    /// Buckets n_b; 0 picks the paper's N / c (rounded up to even). 1 puts every
    /// position in one bucket.
    pub buckets: i64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            bucket_size: 64,
            rounds: 4,
            buckets: 0,
        }
    }
}

/// The score a position gives itself, so it is attended only when nothing else is; half
/// precision tops out at 65504, so it gets -5e4, as far below any real score.
const SELF_SCORE: f64 = -1e5;
const SELF_SCORE_HALF: f64 = -5e4;

pub struct Reformer {
    shape: Shape,
    chunk: i64,
    rounds: i64,
    buckets: i64,
    /// `[d, rounds, buckets / 2]` random rotations, fixed per layer.
    rotations: Option<Tensor>,
    /// Positions 0..N' of the padded sequence, what marks the real ones and the padding's
    /// bucket, made once on the device (see [`Positions`]).
    positions: Positions,
}

/// What the forward pass needs of the positions of N' = ceil(N / c) c padded tokens;
/// depends on the shape only.
struct Positions {
    /// `[N']` int64.
    pos: Tensor,
    /// `[1, 1, 1, N']`: true for the N real positions.
    real: Tensor,
    /// `[1]` int64: the bucket padding hashes to, past the real ones.
    pad_bucket: Tensor,
}

impl Positions {
    fn new(n: i64, padded: i64, buckets: i64, device: tch::Device) -> Positions {
        let pos = Tensor::arange(padded, (Kind::Int64, device));
        Positions {
            real: pos.lt(n).view([1, 1, 1, padded]),
            pad_bucket: Tensor::full([1], buckets, (Kind::Int64, device)),
            pos,
        }
    }
}

impl AttentionVariant for Reformer {
    type Config = Config;
    const INFO: VariantInfo = VariantInfo {
        name: "reformer",
        family: Family::LearnablePatterns,
        time: "O(r N c d + r N log N)",
        memory: "O(r N c)",
        time_exponent: 1.0,
        memory_exponent: 1.0,
        paper: "Kitaev et al. 2020, Reformer: The Efficient Transformer (ICLR)",
        supports_causal: true,
        exact: false,
        decode: None,
        scopes: crate::info::CORE_SCOPES,
    };
    const TEST_PARAMS: &'static str = "bucket_size=8";

    fn check(config: &Config, _: &Shape) -> Result<(), VariantError> {
        VariantError::positive("reformer", "bucket_size", config.bucket_size)?;
        VariantError::positive("reformer", "rounds", config.rounds)?;
        if config.buckets < 0 || (config.buckets > 1 && config.buckets % 2 == 1) {
            return Err(VariantError::config(
                "reformer",
                format!(
                    "buckets must be 0 (N / bucket_size), 1 or even, got {}",
                    config.buckets
                ),
            ));
        }
        Ok(())
    }

    fn new(config: Config, shape: &Shape, vs: nn::Path) -> Result<Self, VariantError> {
        let n = shape.seq_len;
        let chunk = config.bucket_size.min(n);
        let buckets = match config.buckets {
            0 => {
                let b = (n + chunk - 1) / chunk;
                (b + b % 2).max(2)
            }
            b => b,
        };
        let rotations = (buckets > 1).then(|| {
            let r = Tensor::randn(
                [shape.head_dim, config.rounds, buckets / 2],
                (Kind::Float, tch::Device::Cpu),
            );
            vs.add(
                "rotations",
                r.to_kind(vs.kind()).to_device(vs.device()),
                false,
            )
        });
        let padded = (n + chunk - 1) / chunk * chunk;
        Ok(Reformer {
            shape: *shape,
            chunk,
            rounds: config.rounds,
            buckets,
            rotations,
            positions: Positions::new(n, padded, buckets, vs.device()),
        })
    }
}

impl Reformer {
    /// Bucket of every position in every round: `[b, h, rounds, N]`.
    pub fn hash(&self, qk: &Tensor) -> Tensor {
        let (b, h, n, _) = qk.size4().expect("[batch, heads, seq, head_dim]");
        match &self.rotations {
            None => Tensor::zeros([b, h, self.rounds, n], (Kind::Int64, qk.device())),
            Some(r) => {
                // [b, h, n, d] x [d, rounds * nb/2] -> [b, h, rounds, n, nb/2]
                let d = r.size()[0];
                let rotated = qk
                    .matmul(&r.reshape([d, -1]))
                    .view([b, h, n, self.rounds, self.buckets / 2])
                    .permute([0, 1, 3, 2, 4]);
                Tensor::cat(&[&rotated, &rotated.neg()], -1).argmax(-1, false)
            }
        }
    }

    pub fn chunk_len(&self) -> i64 {
        self.chunk
    }
}

/// `x` `[b, h, n, d]` gathered per round by `perm` `[b, h, r, n]` -> `[b, h, r, n, d]`.
fn gather_rounds(x: &Tensor, perm: &Tensor) -> Tensor {
    let (b, h, n, d) = x.size4().expect("[batch, heads, seq, head_dim]");
    let r = perm.size()[2];
    x.unsqueeze(2).expand([b, h, r, n, d], false).gather(
        3,
        &perm.unsqueeze(-1).expand([b, h, r, n, d], false),
        false,
    )
}

/// `[.., nc, c, ..]` -> the chunk before each chunk (the last one before the first).
fn previous_chunk(x: &Tensor, dim: i64) -> Tensor {
    x.roll([1], [dim])
}

impl Attention for Reformer {
    fn attend(&self, q: &Tensor, _k: &Tensor, v: &Tensor) -> Tensor {
        let (b, h, n, d) = q.size4().expect("[batch, heads, seq, head_dim]");
        let (r, c) = (self.rounds, self.chunk);
        let nc = (n + c - 1) / c;
        let np = nc * c;
        // Shared QK: keys are the unit-normalised queries.
        let keys = q / (q.square().sum_dim_intlist(-1, true, None).sqrt() + 1e-6);
        let pad = |t: &Tensor| t.constant_pad_nd([0, 0, 0, np - n]);
        let (qp, kp, vp) = (pad(q), pad(&keys), pad(v));
        // Padding positions hash to their own bucket past the real ones, so they sort last.
        let buckets = self.hash(&kp);
        let built;
        let at = &self.positions;
        let at = if at.pos.size()[0] == np
            && at.real.device() == q.device()
            && n == self.shape.seq_len
        {
            at
        } else {
            // Another length or device than built for (tests): the same values.
            built = Positions::new(n, np, self.buckets, q.device());
            &built
        };
        let pos = &at.pos;
        let buckets = buckets.where_self(&at.real, &at.pad_bucket);
        // Sort by bucket, then position.
        let order = (&buckets * np + pos.view([1, 1, 1, np])).argsort(-1, false);
        let chunks = |t: &Tensor, w: i64| t.reshape([b, h, r, nc, c, w]);
        let sq = chunks(&gather_rounds(&qp, &order), d);
        let sk = chunks(&gather_rounds(&kp, &order), d);
        let sv = chunks(&gather_rounds(&vp, &order), d);
        let spos = chunks(&order, 1).squeeze_dim(-1); // [b, h, r, nc, c]
        let sbucket = chunks(&buckets.gather(3, &order, false), 1).squeeze_dim(-1);
        // With one chunk, the chunk before is itself: meet it once.
        let with_prev = |t: &Tensor, dim: i64| {
            if nc == 1 {
                t.shallow_clone()
            } else {
                Tensor::cat(&[previous_chunk(t, 3), t.shallow_clone()], dim)
            }
        };
        let (kk, vv) = (with_prev(&sk, 4), with_prev(&sv, 4)); // [b, h, r, nc, 2c, d]
        let (kpos, kbucket) = (with_prev(&spos, 4), with_prev(&sbucket, 4)); // [b, h, r, nc, 2c]

        let scores = (sq * (d as f64).powf(-0.5)).matmul(&kk.transpose(-2, -1)); // [.., c, 2c]
        let (qi, kj) = (spos.unsqueeze(-1), kpos.unsqueeze(-2));
        let mut hidden = sbucket.unsqueeze(-1).ne_tensor(&kbucket.unsqueeze(-2));
        hidden = hidden.logical_or(&kj.ge(n).logical_and(&qi.lt(n)));
        if self.shape.causal {
            hidden = hidden.logical_or(&kj.gt_tensor(&qi));
        }
        let scores = scores
            .masked_fill(
                &qi.eq_tensor(&kj),
                if q.kind() == Kind::Half {
                    SELF_SCORE_HALF
                } else {
                    SELF_SCORE
                },
            )
            .masked_fill(&hidden, f64::NEG_INFINITY);
        let lse = scores.logsumexp([-1], true); // [.., c, 1]
        let out = (scores - &lse).exp().matmul(&vv); // [b, h, r, nc, c, d]

        // Undo the sort, then weight the rounds by their normalisers.
        let undo = order.argsort(-1, false);
        let out = gather_rounds_back(&out.reshape([b, h, r, np, d]), &undo);
        let lse = lse.reshape([b, h, r, np]).gather(3, &undo, false);
        let weights = lse.softmax(2, lse.kind()).unsqueeze(-1);
        (out * weights)
            .sum_dim_intlist(2, false, None)
            .narrow(2, 0, n)
    }

    /// Hashing and the chunk products (the round combination's weighted sum is
    /// element-wise). The hash feeds an argmax, whose indices carry no gradient, and the
    /// rotations are fixed: its backward is 0 ([`FlopCount::no_grad`]).
    fn flops(&self) -> FlopCount {
        let s = &self.shape;
        let (d, r, c) = (s.head_dim as u64, self.rounds as u64, self.chunk as u64);
        let np = (s.seq_len as u64).div_ceil(c) * c;
        let hashing = flops::matmul(s.bh(), np, d, r * (self.buckets as u64 / 2));
        let width = if np == c { c } else { 2 * c };
        let chunks =
            flops::matmul(s.bh() * r, np, d, width) + flops::matmul(s.bh() * r, np, width, d);
        FlopCount::no_grad(hashing) + FlopCount::forward(chunks)
    }
}

/// Per round, puts sorted rows `[b, h, r, n, d]` back in position order.
fn gather_rounds_back(x: &Tensor, undo: &Tensor) -> Tensor {
    let (b, h, r, n, d) = {
        let s = x.size();
        (s[0], s[1], s[2], s[3], s[4])
    };
    x.gather(3, &undo.unsqueeze(-1).expand([b, h, r, n, d], false), false)
}
