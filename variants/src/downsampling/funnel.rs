//! `funnel`: the Funnel-Transformer encoder (Dai et al. 2020), which shortens the
//! sequence between stages of blocks and restores it with a small decoder.
//!
//! Stage 0 runs `blocks[0]` pre-norm encoder blocks on all N tokens. Before each further
//! stage the sequence is mean-pooled with width and stride 2, and the stage's first block
//! is "pool-query-only": its queries (and residual) are the pooled sequence while its keys
//! and values are the unpooled one, so the pooled tokens still read the full-resolution
//! sequence; the other blocks of the stage run on the pooled length. Stage k thus has
//! ceil(N / 2^k) tokens. For per-token outputs, the paper's decoder repeats each token of
//! the last stage 2^(stages - 1) times (truncated to N), adds the output of stage 0 (the
//! full-length residual) and runs `decoder_blocks` full-length blocks. With a single
//! stage nothing was pooled, so there is no up-sampling or residual: the decoder blocks
//! follow the stage directly.
//!
//! Lengths that are not multiples of 2^(stages - 1): a pooling of an odd length pads by
//! repeating the last token, so its last slot is the mean of that token alone (ceil-mode
//! pooling over real tokens only); no padding token ever enters attention, so nothing
//! needs masking.
//!
//! Attention inside blocks is exact softmax attention through LibTorch's fused SDPA
//! (the paper's relative positional attention and separate [CLS] handling are left out:
//! they are orthogonal to what the funnel saves). Blocks are [`EncoderBlock`]s around
//! [`MultiHeadAttention`] with the `sdpa` core; the pool-query-only block is its own type
//! with the same parts. Non-causal: pooling mixes neighbouring tokens.
//!
//! Time: stage k costs O((N / 2^k)^2 d) per block (its first block O(N^2 / 2^(2k-1) d)),
//! so a funnel of equal stages costs a fraction of a full-length stack, still O(N^2 d);
//! memory O(N^2) scores on SDPA's math path, O(N) where a fused kernel runs.
//!
//! Scope `model` only: its point is the shrinking length, which shows across a stack, so
//! it is compared with the other variants' `model` scope, a stack of six encoder blocks of
//! the same width (`block::MODEL_LAYERS`). The defaults, `blocks = [2, 2, 2]` and
//! `decoder_blocks = 2`, make eight blocks: two at N, two at N / 2, two at N / 4 (the
//! first of each pooled stage reading the previous length's keys and values) and two
//! decoder blocks at N.

use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Tensor};

use crate::attention::{Layer, MultiHeadAttention, Shape};
use crate::block::{EncoderBlock, FFN_MULT};
use crate::error::VariantError;
use crate::exact::sdpa::Sdpa;
use crate::flops::{self, FlopCount};
use crate::fused::{join_backends, Backends};
use crate::info::{Family, Scope, VariantInfo};
use crate::registry::{AttentionVariant, LayerVariant};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Blocks per stage; the sequence halves between stages.
    pub blocks: Vec<i64>,
    /// Full-length blocks after the up-sampling.
    pub decoder_blocks: i64,
}

/// Three stages of two blocks and a two-block decoder: the paper's B6-6-6 layout (and its
/// two-layer decoder) scaled down to two blocks per stage.
impl Default for Config {
    fn default() -> Self {
        Config {
            blocks: vec![2, 2, 2],
            decoder_blocks: 2,
        }
    }
}

/// Sequence length of every stage for an input of `n` tokens: n, ceil(n / 2), ...
pub fn stage_lengths(n: i64, stages: usize) -> Vec<i64> {
    let mut lengths = vec![n];
    for _ in 1..stages {
        let last = *lengths.last().unwrap();
        lengths.push((last + 1) / 2);
    }
    lengths
}

/// Mean pooling, width and stride 2, along the sequence of `[b, n, d]`; an odd length
/// repeats its last token first, so the last slot is that token.
pub fn pool(x: &Tensor) -> Tensor {
    let (b, n, d) = x.size3().expect("[batch, seq, d_model]");
    let x = if n % 2 == 1 {
        Tensor::cat(&[x.shallow_clone(), x.narrow(1, n - 1, 1)], 1)
    } else {
        x.shallow_clone()
    };
    let pairs = x.view([b, (n + 1) / 2, 2, d]);
    (pairs.select(2, 0) + pairs.select(2, 1)) * 0.5
}

/// The first block of a pooled stage: queries and residual from the pooled sequence, keys
/// and values from the unpooled one; otherwise a pre-norm block like [`EncoderBlock`].
struct PoolQueryBlock {
    ln1: nn::LayerNorm,
    q: nn::Linear,
    kv: nn::Linear,
    out: nn::Linear,
    ln2: nn::LayerNorm,
    ff1: nn::Linear,
    ff2: nn::Linear,
    heads: i64,
    head_dim: i64,
    backends: Backends,
}

impl PoolQueryBlock {
    fn new(vs: &nn::Path, heads: i64, head_dim: i64) -> PoolQueryBlock {
        let d = heads * head_dim;
        PoolQueryBlock {
            ln1: nn::layer_norm(vs / "ln1", vec![d], Default::default()),
            q: nn::linear(vs / "q", d, d, Default::default()),
            kv: nn::linear(vs / "kv", d, 2 * d, Default::default()),
            out: nn::linear(vs / "out", d, d, Default::default()),
            ln2: nn::layer_norm(vs / "ln2", vec![d], Default::default()),
            ff1: nn::linear(vs / "ff1", d, FFN_MULT * d, Default::default()),
            ff2: nn::linear(vs / "ff2", FFN_MULT * d, d, Default::default()),
            heads,
            head_dim,
            backends: Backends::default(),
        }
    }

    /// `[b, n, d] -> [b, ceil(n / 2), d]`.
    fn forward(&self, x: &Tensor) -> Tensor {
        let (b, n, d) = x.size3().expect("[batch, seq, d_model]");
        let pooled = pool(x);
        let m = pooled.size()[1];
        let (h, dh) = (self.heads, self.head_dim);
        let q = self
            .ln1
            .forward(&pooled)
            .apply(&self.q)
            .view([b, m, h, dh])
            .transpose(1, 2);
        let kv = self
            .ln1
            .forward(x)
            .apply(&self.kv)
            .view([b, n, 2, h, dh])
            .permute([2, 0, 3, 1, 4]);
        let attn = self.backends.sdpa(&q, &kv.get(0), &kv.get(1), None, false);
        let hidden = &pooled + attn.transpose(1, 2).reshape([b, m, d]).apply(&self.out);
        let f = self
            .ln2
            .forward(&hidden)
            .apply(&self.ff1)
            .gelu("none")
            .apply(&self.ff2);
        hidden + f
    }

    /// An `n`-token input pooled to `m`: the q, out and FFN products on m rows, k and v
    /// on n rows, scores and weighted sum m x n per head.
    fn flops(&self, batch: u64, n: u64, m: u64) -> u64 {
        let (h, dh) = (self.heads as u64, self.head_dim as u64);
        let d = h * dh;
        flops::matmul(batch, m, d, d)
            + flops::matmul(batch, n, d, 2 * d)
            + flops::matmul(batch, m, d, d)
            + 2 * flops::matmul(batch * h, m, dh, n)
            + 2 * flops::matmul(batch, m, d, FFN_MULT as u64 * d)
    }
}

/// One full-length pre-norm block with SDPA, named as the registry names an `sdpa` block
/// (`attn.*`, `block.*`, under `vs`).
fn sdpa_block(vs: &nn::Path, shape: Shape) -> Result<EncoderBlock, VariantError> {
    let core = Sdpa::new(Default::default(), &shape, vs / "core")?;
    let mha = MultiHeadAttention::new(vs / "attn", shape, Box::new(core));
    Ok(EncoderBlock::new(vs / "block", shape, Box::new(mha)))
}

pub struct Funnel {
    /// Per stage: the pool-query-only block (stages after the first) and the plain ones.
    stages: Vec<(Option<PoolQueryBlock>, Vec<EncoderBlock>)>,
    decoder: Vec<EncoderBlock>,
    shape: Shape,
}

impl Funnel {
    /// The output of every stage, `[b, ceil(n / 2^k), d]` for stage k.
    pub fn encode(&self, x: &Tensor) -> Vec<Tensor> {
        let mut outs: Vec<Tensor> = Vec::new();
        let mut h = x.shallow_clone();
        for (pool_block, blocks) in &self.stages {
            if let Some(p) = pool_block {
                h = p.forward(&h);
            }
            for block in blocks {
                h = block.forward(&h);
            }
            outs.push(h.shallow_clone());
        }
        outs
    }
}

impl LayerVariant for Funnel {
    type Config = Config;
    const INFO: VariantInfo = VariantInfo {
        name: "funnel",
        family: Family::Downsampling,
        time: "O(N^2 d) with stage k at N / 2^k tokens: a fraction of a full stack",
        memory: "O(N^2) on SDPA's math path, O(N) fused; stage k holds N / 2^k tokens",
        time_exponent: 2.0,
        memory_exponent: 1.0,
        paper: "Dai et al. 2020, Funnel-Transformer: Filtering out Sequential Redundancy \
                for Efficient Language Processing (NeurIPS, arXiv:2006.03236)",
        supports_causal: false,
        exact: false,
        decode: None,
        scopes: &[Scope::Model],
    };

    fn check(config: &Config, _: &Shape) -> Result<(), VariantError> {
        let name = Self::INFO.name;
        if config.blocks.is_empty() {
            return Err(VariantError::config(
                name,
                "blocks must list at least one stage, got []",
            ));
        }
        for (i, &b) in config.blocks.iter().enumerate() {
            VariantError::positive(name, &format!("blocks[{i}]"), b)?;
        }
        if config.decoder_blocks < 0 {
            return Err(VariantError::config(
                name,
                format!(
                    "decoder_blocks must be at least 0, got {}",
                    config.decoder_blocks
                ),
            ));
        }
        Ok(())
    }

    /// Stage k's blocks under `stage{k}.block{j}` (block 0 of a pooled stage is the
    /// pool-query-only block: `ln1`, `q`, `kv`, `out`, `ln2`, `ff1`, `ff2`), the decoder's
    /// under `decoder.block{j}`.
    fn new(config: Config, shape: &Shape, _: Scope, vs: nn::Path) -> Result<Self, VariantError> {
        let lengths = stage_lengths(shape.seq_len, config.blocks.len());
        let mut stages = Vec::new();
        for (k, (&count, &len)) in config.blocks.iter().zip(&lengths).enumerate() {
            let stage = &vs / format!("stage{k}");
            let at = Shape {
                seq_len: len,
                ..*shape
            };
            let pool_block = (k > 0)
                .then(|| PoolQueryBlock::new(&(&stage / "block0"), shape.heads, shape.head_dim));
            let first_plain = if k > 0 { 1 } else { 0 };
            let blocks = (first_plain..count)
                .map(|j| sdpa_block(&(&stage / format!("block{j}")), at))
                .collect::<Result<Vec<_>, _>>()?;
            stages.push((pool_block, blocks));
        }
        let decoder = (0..config.decoder_blocks)
            .map(|j| sdpa_block(&(&vs / "decoder" / format!("block{j}")), *shape))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Funnel {
            stages,
            decoder,
            shape: *shape,
        })
    }
}

impl Layer for Funnel {
    fn forward(&self, x: &Tensor) -> Tensor {
        let n = x.size()[1];
        let outs = self.encode(x);
        let mut h = if outs.len() > 1 {
            let factor = 1 << (outs.len() - 1);
            let up = outs
                .last()
                .unwrap()
                .repeat_interleave_self_int(factor, 1, None)
                .narrow(1, 0, n);
            up + &outs[0]
        } else {
            outs[0].shallow_clone()
        };
        for block in &self.decoder {
            h = block.forward(&h);
        }
        h
    }

    /// Every SDPA call of the stack, in the order they run.
    fn backend(&self) -> Option<String> {
        let mut parts = Vec::new();
        for (pool_block, blocks) in &self.stages {
            parts.extend(pool_block.iter().map(|p| p.backends.get()));
            parts.extend(blocks.iter().map(|b| b.backend()));
        }
        parts.extend(self.decoder.iter().map(|b| b.backend()));
        join_backends(&parts)
    }

    /// Every block at its stage's length (each [`EncoderBlock`] counts its projections,
    /// SDPA's full score and value products, and its FFN), the pool-query-only blocks'
    /// pooled-queries-by-unpooled-keys products, and the decoder's full-length blocks.
    /// Pooling, repetition and the residual are element-wise.
    fn flops(&self) -> FlopCount {
        let lengths = stage_lengths(self.shape.seq_len, self.stages.len());
        let b = self.shape.batch as u64;
        let mut total = FlopCount::default();
        for (k, (pool_block, blocks)) in self.stages.iter().enumerate() {
            if let Some(p) = pool_block {
                total = total
                    + FlopCount::forward(p.flops(b, lengths[k - 1] as u64, lengths[k] as u64));
            }
            for block in blocks {
                total = total + block.flops();
            }
        }
        for block in &self.decoder {
            total = total + block.flops();
        }
        total
    }
}
