//! The pre-norm Transformer encoder block that wraps any mixer (Xiong et al. 2020's
//! pre-LN arrangement): x + Mixer(LN(x)), then + FFN(LN(.)) with a 4x GELU FFN.

use tch::{nn, nn::Module, Tensor};

use crate::attention::{Layer, LayerDecoder, Shape};
use crate::flops::{self, FlopCount};

pub struct EncoderBlock {
    mixer: Box<dyn Layer>,
    parts: Parts,
    shape: Shape,
}

/// The block's per-token parts: the norms and the FFN.
struct Parts {
    ln1: nn::LayerNorm,
    ln2: nn::LayerNorm,
    ff1: nn::Linear,
    ff2: nn::Linear,
    d: i64,
}

/// The same parameters, not a copy (tch's layers are neither `Clone` nor `Sync`).
fn share_linear(l: &nn::Linear) -> nn::Linear {
    nn::Linear {
        ws: l.ws.shallow_clone(),
        bs: l.bs.as_ref().map(Tensor::shallow_clone),
    }
}

impl Parts {
    fn new(vs: &nn::Path, d: i64) -> Parts {
        Parts {
            ln1: nn::layer_norm(vs / "ln1", vec![d], Default::default()),
            ln2: nn::layer_norm(vs / "ln2", vec![d], Default::default()),
            ff1: nn::linear(vs / "ff1", d, FFN_MULT * d, Default::default()),
            ff2: nn::linear(vs / "ff2", FFN_MULT * d, d, Default::default()),
            d,
        }
    }

    /// A second handle on the same parameters, for a decoder. LayerNorm's config is
    /// private, so the norms are rebuilt with the same (default) config on a scratch
    /// store and given the shared weights.
    fn share(&self) -> Parts {
        let scratch = nn::VarStore::new(tch::Device::Cpu);
        let norm = |l: &nn::LayerNorm| {
            let mut n = nn::layer_norm(scratch.root(), vec![self.d], Default::default());
            n.ws = l.ws.as_ref().map(Tensor::shallow_clone);
            n.bs = l.bs.as_ref().map(Tensor::shallow_clone);
            n
        };
        Parts {
            ln1: norm(&self.ln1),
            ln2: norm(&self.ln2),
            ff1: share_linear(&self.ff1),
            ff2: share_linear(&self.ff2),
            d: self.d,
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
