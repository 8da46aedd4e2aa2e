//! `compressive`: the Compressive Transformer (Rae et al. 2020), Transformer-XL with a
//! second, compressed memory.
//!
//! As in [`super::transformer_xl`], the input is read in segments and each layer keeps a
//! FIFO memory of its last `memory` inputs. What falls out of that memory is not
//! discarded but compressed: every `compression` consecutive evicted hidden states become
//! one slot through a strided 1-D convolution (kernel = stride = compression, the paper's
//! best compression function), and the last `compressed` slots are kept. A segment
//! attends over [compressed memory ; memory ; segment] with Transformer-XL's relative
//! attention (the relative distance is the index difference on that key axis, as in the
//! paper's code).
//!
//! Groups are aligned to absolute positions (slot g compresses tokens
//! [g c, (g + 1) c)); when segment and memory are multiples of the rate, as in the
//! paper, that is exactly the paper's "compress the evicted segment"; otherwise a
//! remainder of fewer than c evicted tokens waits for its group to fill.
//!
//! Training the compressor: the paper stops the task loss from reaching it and trains it
//! with the attention-reconstruction loss instead; here the compressed memory is
//! detached in the forward, and [`Compressive::reconstruction_loss`] gives that loss for
//! the last compression of a forward: the mean squared difference between the layer's
//! content attention of the evicting segment over the evicted states and over their
//! compression, with everything except the compressor detached.
//!
//! Time O(N (s + m + cm) d) per layer (plus O(N d^2) for the compression of every
//! evicted token), scores O(s (s + m + cm)) per segment. Causal only (a language model);
//! decoding keeps per layer keys and values of [compressed ; memory ; segment so far]
//! and the fewer than m + s + c inputs not compressed yet, a constant state.
//!
//! With `compressed = 0` it is Transformer-XL, and a test checks that it computes the same
//! function (`compressive_without_compressed_memory_is_transformer_xl`).

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use super::transformer_xl::check_recurrence;
use super::{Plan, SegmentStack};
use crate::attention::Shape;
use crate::error::VariantError;
use crate::info::{DecodeInfo, Family, Scope, VariantInfo};
use crate::registry::LayerVariant;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Tokens per segment.
    pub segment: i64,
    /// FIFO memory per layer; `null`: equal to `segment`.
    pub memory: Option<i64>,
    /// Compressed slots per layer; `null`: equal to the memory. 0 disables compression
    /// (Transformer-XL).
    pub compressed: Option<i64>,
    /// Compression rate c: evicted states per compressed slot.
    pub compression: i64,
    /// Layers at model scope (block scope is always one layer).
    pub layers: i64,
}

/// Segment 128, memory = segment, compressed memory = memory, rate 3: the paper's models
/// keep memories as long as the segment, compressed memories of the same order, and use
/// c = 3 as their main rate; 2 layers keep a model-scope case small.
impl Default for Config {
    fn default() -> Self {
        Config {
            segment: 128,
            memory: None,
            compressed: None,
            compression: 3,
            layers: 2,
        }
    }
}

impl Config {
    pub fn memory(&self) -> i64 {
        self.memory.unwrap_or(self.segment)
    }

    pub fn compressed(&self) -> i64 {
        self.compressed.unwrap_or_else(|| self.memory())
    }
}

pub struct Compressive {
    stack: SegmentStack,
    shape: Shape,
}

impl Compressive {
    /// The attention-reconstruction loss of the last compression a forward on `x`
    /// performs (see the module doc), averaged over layers; `None` when `x` is too short
    /// for anything to be compressed. Differentiable with respect to the compressors
    /// only.
    pub fn reconstruction_loss(&self, x: &Tensor) -> Option<Tensor> {
        self.stack.reconstruction_loss(x)
    }

    /// Compressed slots a segment starting at token `start` attends to (for tests).
    pub fn compressed_len(&self, start: i64) -> i64 {
        let s = self.stack.plan.span_of(start, start + 1);
        s.groups_hi - s.groups_lo
    }
}

impl LayerVariant for Compressive {
    type Config = Config;
    const INFO: VariantInfo = VariantInfo {
        name: "compressive",
        family: Family::Recurrence,
        time: "O(N (s + m + cm) d): segments of s over memory m and compressed memory cm",
        memory: "O(s (s + m + cm)) scores per segment; O(N (s + m + cm)) kept for backward",
        time_exponent: 1.0,
        memory_exponent: 1.0,
        paper: "Rae et al. 2020, Compressive Transformers for Long-Range Sequence \
                Modelling (ICLR, arXiv:1911.05507)",
        supports_causal: true,
        exact: false,
        decode: Some(DecodeInfo {
            state: "O((compressed + memory + segment) d) per layer",
            exponent: 0.0,
        }),
        scopes: &[Scope::Block, Scope::Model],
    };
    const TEST_PARAMS: &'static str = "segment=10:memory=7:compressed=3:compression=2:layers=2";

    fn check(config: &Config, shape: &Shape) -> Result<(), VariantError> {
        let name = Self::INFO.name;
        check_recurrence(name, config.segment, config.memory(), config.layers, shape)?;
        VariantError::positive(name, "compression", config.compression)?;
        let compressed = config.compressed();
        if compressed < 0 {
            return Err(VariantError::config(
                name,
                format!("compressed must be at least 0, got {compressed}"),
            ));
        }
        Ok(())
    }

    /// Parameters as Transformer-XL's, plus `layer{i}.compressor` (the convolution) when
    /// `compressed` > 0.
    fn new(
        config: Config,
        shape: &Shape,
        scope: Scope,
        vs: nn::Path,
    ) -> Result<Self, VariantError> {
        let layers = if scope == Scope::Model {
            config.layers
        } else {
            1
        };
        let plan = Plan {
            segment: config.segment,
            memory: config.memory(),
            compressed: config.compressed(),
            rate: config.compression,
        };
        Ok(Compressive {
            stack: SegmentStack::new(&vs, layers, shape.heads, shape.head_dim, plan),
            shape: *shape,
        })
    }
}

// FLOPs: Transformer-XL's count with the compressed slots among each segment's prefix
// keys, plus the compression of every slot the segments use: a (c d) x d product per
// slot and layer.
// Decode FLOPs: Per layer: one token's projections, its scores against the compressed
// memory, the memory and the segment so far, its FFN. The compression at a segment
// boundary (once per segment) is not in a step's count.
super::segment_stack_layer!(Compressive);
