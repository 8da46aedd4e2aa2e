//! The pre-norm Transformer encoder block that wraps any mixer (Xiong et al. 2020's
//! pre-LN arrangement): x + Mixer(LN(x)), then + FFN(LN(.)) with a 4x GELU FFN.

use tch::{nn, nn::Module, Tensor};

use crate::attention::{Layer, Shape};
use crate::flops::{self, FlopCount};

pub struct EncoderBlock {
    ln1: nn::LayerNorm,
    mixer: Box<dyn Layer>,
    ln2: nn::LayerNorm,
    ff1: nn::Linear,
    ff2: nn::Linear,
    shape: Shape,
}

/// FFN width over model width, as in the original Transformer.
pub const FFN_MULT: i64 = 4;

impl EncoderBlock {
    pub fn new(vs: nn::Path, shape: Shape, mixer: Box<dyn Layer>) -> Self {
        let d = shape.d_model();
        EncoderBlock {
            ln1: nn::layer_norm(&vs / "ln1", vec![d], Default::default()),
            mixer,
            ln2: nn::layer_norm(&vs / "ln2", vec![d], Default::default()),
            ff1: nn::linear(&vs / "ff1", d, FFN_MULT * d, Default::default()),
            ff2: nn::linear(&vs / "ff2", FFN_MULT * d, d, Default::default()),
            shape,
        }
    }
}

impl Layer for EncoderBlock {
    fn forward(&self, x: &Tensor) -> Tensor {
        let h = x + self.mixer.forward(&self.ln1.forward(x));
        let f = self
            .ln2
            .forward(&h)
            .apply(&self.ff1)
            .gelu("none")
            .apply(&self.ff2);
        h + f
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
}
