//! The pre-norm Transformer encoder block that wraps any mixer (Xiong et al. 2020's
//! pre-LN arrangement): x + Mixer(LN(x)), then + FFN(LN(.)) with a 4x GELU FFN.

use tch::{nn, Tensor};

use crate::attention::{share, Layer, LayerDecoder, Norm, Shape};
use crate::flops::{self, FlopCount};

pub struct EncoderBlock {
    mixer: Box<dyn Layer>,
    parts: Parts,
    shape: Shape,
}

/// The block's per-token parts: the norms and the FFN.
struct Parts {
    ln1: Norm,
    ln2: Norm,
    ff1: nn::Linear,
    ff2: nn::Linear,
}

impl Parts {
    fn new(vs: &nn::Path, d: i64) -> Parts {
        Parts {
            ln1: Norm::new(&(vs / "ln1"), d),
            ln2: Norm::new(&(vs / "ln2"), d),
            ff1: nn::linear(vs / "ff1", d, FFN_MULT * d, Default::default()),
            ff2: nn::linear(vs / "ff2", FFN_MULT * d, d, Default::default()),
        }
    }

    /// A second handle on the same parameters, for a decoder.
    fn share(&self) -> Parts {
        Parts {
            ln1: self.ln1.share(),
            ln2: self.ln2.share(),
            ff1: share(&self.ff1),
            ff2: share(&self.ff2),
        }
    }

    /// Everything after the mixer: the residual, then the FFN's.
    fn finish(&self, x: &Tensor, mixed: Tensor) -> Tensor {
        let h = x + mixed;
        let f = self
            .ln2
            .forward(&h)
            .apply(&self.ff1)
            .gelu("none")
            .apply(&self.ff2);
        h + f
    }
}

/// FFN width over model width, as in the original Transformer.
pub const FFN_MULT: i64 = 4;

impl EncoderBlock {
    pub fn new(vs: nn::Path, shape: Shape, mixer: Box<dyn Layer>) -> Self {
        let d = shape.d_model();
        EncoderBlock {
            mixer,
            parts: Parts::new(&vs, d),
            shape,
        }
    }
}

impl Layer for EncoderBlock {
    fn forward(&self, x: &Tensor) -> Tensor {
        let mixed = self.mixer.forward(&self.parts.ln1.forward(x));
        self.parts.finish(x, mixed)
    }

    fn flops(&self) -> FlopCount {
        let s = &self.shape;
        let (b, n, d) = (s.batch as u64, s.seq_len as u64, s.d_model() as u64);
        let m = FFN_MULT as u64;
        let ffn = flops::matmul(b, n, d, m * d) + flops::matmul(b, n, m * d, d);
        self.mixer.flops() + FlopCount::forward(ffn)
    }

    fn backend(&self) -> Option<String> {
        self.mixer.backend()
    }

    fn decoder(&self, x: &Tensor, capacity: i64) -> Option<Box<dyn LayerDecoder>> {
        let mixer = self.mixer.decoder(&self.parts.ln1.forward(x), capacity)?;
        Some(Box::new(BlockDecoder {
            mixer,
            parts: self.parts.share(),
        }))
    }

    fn decode_flops(&self, context: i64) -> Option<FlopCount> {
        let s = &self.shape;
        let (b, d) = (s.batch as u64, s.d_model() as u64);
        let m = FFN_MULT as u64;
        let ffn = flops::matmul(b, 1, d, m * d) + flops::matmul(b, 1, m * d, d);
        Some(self.mixer.decode_flops(context)? + FlopCount::forward(ffn))
    }
}

/// The block around its mixer's decoder: the FFN is per token, so it needs no state.
struct BlockDecoder {
    mixer: Box<dyn LayerDecoder>,
    parts: Parts,
}

impl LayerDecoder for BlockDecoder {
    fn step(&mut self, x: &Tensor) -> Tensor {
        let mixed = self.mixer.step(&self.parts.ln1.forward(x));
        self.parts.finish(x, mixed)
    }

    fn reset(&mut self) {
        self.mixer.reset()
    }

    fn state_bytes(&self) -> u64 {
        self.mixer.state_bytes()
    }
}

/// Blocks in a `model`-scope stack of an attention core: the depth of Funnel's default
/// encoder (three stages of two), so model-scope tables compare like with like.
pub const MODEL_LAYERS: usize = 6;

/// A stack of blocks: the `model` scope of an attention core.
pub struct Stack {
    blocks: Vec<Box<dyn Layer>>,
    /// The length the blocks were built for.
    seq_len: i64,
}

impl Stack {
    pub fn new(blocks: Vec<Box<dyn Layer>>, shape: &Shape) -> Self {
        Stack {
            blocks,
            seq_len: shape.seq_len,
        }
    }
}

impl Layer for Stack {
    fn forward(&self, x: &Tensor) -> Tensor {
        self.blocks
            .iter()
            .fold(x.shallow_clone(), |h, block| block.forward(&h))
    }

    fn flops(&self) -> FlopCount {
        self.blocks
            .iter()
            .fold(FlopCount::default(), |acc, b| acc + b.flops())
    }

    fn backend(&self) -> Option<String> {
        crate::fused::join_backends(&self.blocks.iter().map(|b| b.backend()).collect::<Vec<_>>())
    }

    /// Each block's state is built from the context as it reaches that block. Blocks are
    /// built for one length, so a shorter context is padded to it for the forward pass
    /// that feeds the next block: decoders are causal, so the padding never reaches the
    /// context's rows.
    fn decoder(&self, x: &Tensor, capacity: i64) -> Option<Box<dyn LayerDecoder>> {
        let n = x.size()[1];
        if n > self.seq_len {
            return None;
        }
        let mut h = x.shallow_clone();
        let mut states = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            states.push(block.decoder(&h, capacity)?);
            h = block
                .forward(&h.constant_pad_nd([0, 0, 0, self.seq_len - n]))
                .narrow(1, 0, n);
        }
        Some(Box::new(StackDecoder { states }))
    }

    fn decode_flops(&self, context: i64) -> Option<FlopCount> {
        self.blocks.iter().try_fold(FlopCount::default(), |acc, b| {
            Some(acc + b.decode_flops(context)?)
        })
    }
}

struct StackDecoder {
    states: Vec<Box<dyn LayerDecoder>>,
}

impl LayerDecoder for StackDecoder {
    fn step(&mut self, x: &Tensor) -> Tensor {
        self.states
            .iter_mut()
            .fold(x.shallow_clone(), |h, state| state.step(&h))
    }

    fn reset(&mut self) {
        self.states.iter_mut().for_each(|s| s.reset());
    }

    fn state_bytes(&self) -> u64 {
        self.states.iter().map(|s| s.state_bytes()).sum()
    }
}
