//! `transformer-xl`: segment-level recurrence with relative positional attention (Dai et
//! al. 2019).
//!
//! The input `[batch, N, d_model]` is read in segments of `segment` tokens. Each layer
//! caches its inputs for the last `memory` tokens before the current segment, detached
//! (stop-gradient, as when the memory is carried across training steps), and the
//! segment attends over [memory ; segment] with causal masking inside the segment. Scores
//! are `[segment, memory + segment]` per segment, never N x N.
//!
//! Attention uses the paper's relative positions: with sinusoidal encodings R of the
//! distance i - j, a learned projection W_r and learned biases u, v per head,
//! score(i, j) = (q_i + u) . k_j + (q_i + v) . W_r R_{i-j}, scaled by 1/sqrt(head_dim).
//! The position term is computed against the K distances of the key axis and aligned
//! with the keys by the "relative shift" (pad a column, read the buffer with shorter
//! rows; see [`super::rel_shift`]), so no query-key-distance tensor is gathered.
//!
//! Each layer is pre-norm, like [`crate::EncoderBlock`]: x + RelAttn(LN(x)), then the
//! FFN's residual (4x, GELU). Block scope is one layer; model scope stacks `layers` layers,
//! each with its own memory.
//!
//! Time O(N (segment + memory) d) per layer; the live scores of one segment are
//! O(segment (segment + memory)), and training keeps every segment's for backward,
//! O(N (segment + memory)), linear in N.
//!
//! It is a language model, hence causal by construction: a non-causal shape is rejected
//! by `check` rather than silently run causally. Decoding keeps, per layer, the keys and
//! values of the memory and of the current segment so far in a fixed buffer of
//! memory + segment rows; at a segment boundary the oldest rows are dropped. With
//! memory >= N it computes exactly causal relative attention over the whole prefix.
//!
//! A test checks segment-by-segment processing against a dense reference over the whole
//! sequence: the paper's score formula built pair by pair, each token seeing its segment
//! up to itself and the `memory` tokens before the segment
//! (`transformer_xl_equals_the_dense_relative_attention_reference` in
//! variants/tests/recurrence.rs).

use serde::{Deserialize, Serialize};
use tch::nn;

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
    /// Earlier hidden states cached per layer; `null` means equal to `segment` (the
    /// paper's training setting, memory = segment length).
    pub memory: Option<i64>,
    /// Layers at model scope (block scope is always one layer).
    pub layers: i64,
}

/// Segment 128 and memory = segment; 2 layers at model scope (the paper trains with
/// segments and memories of the same length, 128-512 tokens, and many more layers; two
/// keep a model-scope case small).
impl Default for Config {
    fn default() -> Self {
        Config {
            segment: 128,
            memory: None,
            layers: 2,
        }
    }
}

impl Config {
    pub fn memory(&self) -> i64 {
        self.memory.unwrap_or(self.segment)
    }
}

pub struct TransformerXl {
    stack: SegmentStack,
    shape: Shape,
}

impl TransformerXl {
    /// The stack's layers, for tests that compare against a reference.
    pub fn layers(&self) -> usize {
        self.stack.layers.len()
    }
}

/// Checks shared with the compressive transformer: segment, memory, layers, causal shape.
pub(crate) fn check_recurrence(
    name: &str,
    segment: i64,
    memory: i64,
    layers: i64,
    shape: &Shape,
) -> Result<(), VariantError> {
    VariantError::positive(name, "segment", segment)?;
    VariantError::positive(name, "layers", layers)?;
    if memory < 0 {
        return Err(VariantError::config(
            name,
            format!("memory must be at least 0, got {memory}"),
        ));
    }
    if !shape.causal {
        return Err(VariantError::config(
            name,
            "it is a causal language model: run it with a causal shape",
        ));
    }
    Ok(())
}

impl LayerVariant for TransformerXl {
    type Config = Config;
    const INFO: VariantInfo = VariantInfo {
        name: "transformer-xl",
        family: Family::Recurrence,
        time: "O(N (s + m) d): segments of s tokens over a memory of m",
        memory: "O(s (s + m)) scores per segment; O(N (s + m)) kept for backward",
        time_exponent: 1.0,
        memory_exponent: 1.0,
        paper: "Dai et al. 2019, Transformer-XL: Attentive Language Models Beyond a \
                Fixed-Length Context (ACL, arXiv:1901.02860)",
        supports_causal: true,
        exact: false,
        decode: Some(DecodeInfo {
            state: "O((memory + segment) d) per layer",
            exponent: 0.0,
        }),
        scopes: &[Scope::Block, Scope::Model],
    };
    const TEST_PARAMS: &'static str = "segment=10:memory=7:layers=2";

    fn check(config: &Config, shape: &Shape) -> Result<(), VariantError> {
        check_recurrence(
            Self::INFO.name,
            config.segment,
            config.memory(),
            config.layers,
            shape,
        )
    }

    /// Parameters under `layer{i}.`: `ln1`, `q`, `kv`, `r`, `u`, `v`, `out`, `ln2`,
    /// `ff1`, `ff2`.
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
            compressed: 0,
            rate: 1,
        };
        Ok(TransformerXl {
            stack: SegmentStack::new(&vs, layers, shape.heads, shape.head_dim, plan),
            shape: *shape,
        })
    }
}

// FLOPs: Per layer and segment of Q tokens after P memory tokens: the q and output
// projections of Q rows, the k and v projections of P + Q rows, the content and position
// scores and the weighted sum (three Q x (P + Q) x head_dim products per head), the FFN;
// plus W_r on the memory + segment distances of the table, once per layer. The relative
// shift and the masking are element-wise.
// Decode FLOPs: Per layer: one token's four projections, its scores against the memory
// and the segment so far, and its FFN.
super::segment_stack_layer!(TransformerXl);
