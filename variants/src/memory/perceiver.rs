//! `perceiver`: a learned latent array as the bottleneck (Jaegle et al. 2021), with the
//! Perceiver IO read-out (Jaegle et al. 2022), as an attention core.
//!
//! Per head, m learned latents L (m x d):
//! 1. cross-attention, the latents query the sequence: Z = L + Attn(L, K, V);
//! 2. `latent_layers` latent self-attention layers, each with its own per-head d x d
//!    query, key and value maps: Z <- Z + Attn(Z Wq, Z Wk, Z Wv);
//! 3. the read-out, every token's query attends to the latents through per-head key and
//!    value maps: out = Attn(Q, Z Wk', Z Wv'), so the core returns one output per token.
//!
//! Score matrices are m x N, m x m and N x m: time O(N m d + m^2 d), memory
//! O(N m + m^2). The latent stack's cost does not grow with N, which is the paper's point
//! (depth decoupled from input size).
//!
//! Choices: the paper's blocks also carry layer norms and MLPs; here the core is the
//! attention path with its residuals, and the encoder block adds its norm and FFN around
//! the whole, as for every other core. The cross-attention keeps the paper's residual on
//! the latents. Each head has its own latents (the heads' split of the latent width),
//! initialised normal with standard deviation 0.02 (the paper's truncated normal, not
//! truncated); the maps like PyTorch's nn.Linear (uniform, bound 1 / sqrt(d)), without
//! biases. Not causal: every latent reads the whole sequence.

use serde::{Deserialize, Serialize};
use tch::{nn, Tensor};

use crate::attention::{Attention, Shape};
use crate::error::VariantError;
use crate::exact::vanilla::softmax_attention;
use crate::flops::{self, FlopCount};
use crate::info::{Family, VariantInfo};
use crate::registry::AttentionVariant;

/// Defaults: 64 latents and one latent self-attention layer per cross-attention.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Latents m.
    pub latents: i64,
    /// Latent self-attention layers between the cross-attention and the read-out.
    pub latent_layers: i64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            latents: 64,
            latent_layers: 1,
        }
    }
}

/// One latent self-attention layer's maps, each `[heads, d, d]`.
pub struct LatentLayer {
    pub w_q: Tensor,
    pub w_k: Tensor,
    pub w_v: Tensor,
}

pub struct Perceiver {
    shape: Shape,
    m: i64,
    /// `[heads, m, d]`: the latent array. Public so that tests can set it (the
    /// VarStore's variable `latents`).
    pub latents: Tensor,
    pub layers: Vec<LatentLayer>,
    /// `[heads, d, d]`: the read-out's keys and values of the latents.
    pub read_k: Tensor,
    pub read_v: Tensor,
}

impl Perceiver {
    /// The latents after the cross-attention and the latent layers, `[b, h, m, d]`.
    pub fn encode(&self, k: &Tensor, v: &Tensor) -> Tensor {
        let l = self.latents.unsqueeze(0);
        let mut z = softmax_attention(&l, k, v, None) + &l;
        for layer in &self.layers {
            let update = softmax_attention(
                &z.matmul(&layer.w_q),
                &z.matmul(&layer.w_k),
                &z.matmul(&layer.w_v),
                None,
            );
            // Not `+=`: on a tensor that is in place, and z is saved for the backward pass.
            z = z.g_add(&update);
        }
        z
    }
}

impl AttentionVariant for Perceiver {
    type Config = Config;
    const INFO: VariantInfo = VariantInfo {
        name: "perceiver",
        family: Family::NeuralMemory,
        time: "O(N m d + m^2 d)",
        memory: "O(N m + m^2)",
        time_exponent: 1.0,
        memory_exponent: 1.0,
        paper: "Jaegle et al. 2021, Perceiver: General Perception with Iterative Attention \
                (ICML, arXiv:2103.03206); read-out from Jaegle et al. 2022, Perceiver IO \
                (ICLR, arXiv:2107.14795)",
        supports_causal: false,
        exact: false,
        decode: None,
        scopes: crate::info::CORE_SCOPES,
    };

    fn check(config: &Config, _: &Shape) -> Result<(), VariantError> {
        VariantError::positive("perceiver", "latents", config.latents)?;
        if config.latent_layers < 0 {
            return Err(VariantError::config(
                "perceiver",
                format!(
                    "latent_layers must be at least 0, got {}",
                    config.latent_layers
                ),
            ));
        }
        Ok(())
    }

    fn new(config: Config, shape: &Shape, vs: nn::Path) -> Result<Self, VariantError> {
        let (h, m, d) = (shape.heads, config.latents, shape.head_dim);
        let bound = (d as f64).powf(-0.5);
        let map = |vs: &nn::Path, name: &str| vs.uniform(name, &[h, d, d], -bound, bound);
        let init = nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let layers = (0..config.latent_layers)
            .map(|i| {
                let p = &vs / format!("layer{i}");
                LatentLayer {
                    w_q: map(&p, "w_q"),
                    w_k: map(&p, "w_k"),
                    w_v: map(&p, "w_v"),
                }
            })
            .collect();
        Ok(Perceiver {
            shape: *shape,
            m,
            latents: vs.var("latents", &[h, m, d], init),
            layers,
            read_k: map(&vs, "read_k"),
            read_v: map(&vs, "read_v"),
        })
    }
}

impl Attention for Perceiver {
    fn attend(&self, q: &Tensor, k: &Tensor, v: &Tensor) -> Tensor {
        let z = self.encode(k, v);
        softmax_attention(q, &z.matmul(&self.read_k), &z.matmul(&self.read_v), None)
    }

    /// Per batch and head: the cross-attention (m d N + m N d); per latent layer three
    /// maps (3 m d d) and self-attention (m d m + m m d); the read-out's maps (2 m d d)
    /// and attention (N d m + N m d).
    fn flops(&self) -> FlopCount {
        let s = &self.shape;
        let (n, d, m) = (s.seq_len as u64, s.head_dim as u64, self.m as u64);
        let bh = s.bh();
        let cross = flops::matmul(bh, m, d, n) + flops::matmul(bh, m, n, d);
        let layer = 3 * flops::matmul(bh, m, d, d)
            + flops::matmul(bh, m, d, m)
            + flops::matmul(bh, m, m, d);
        let read = 2 * flops::matmul(bh, m, d, d)
            + flops::matmul(bh, n, d, m)
            + flops::matmul(bh, n, m, d);
        FlopCount::forward(cross + self.layers.len() as u64 * layer + read)
    }
}
