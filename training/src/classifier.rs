//! A sequence classifier around any variant: token embedding + positions, `layers`
//! pre-norm encoder blocks of the variant (`Scope::Block`), pooling, a final LayerNorm
//! and a linear head.

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tch::{nn, nn::Module, Kind, Tensor};
use xarena_variants::{build_layer, find, Layer, Scope, Shape, VariantSpec};

/// How the sequence becomes one vector for the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Pooling {
    /// The mean over every position (pad tokens included: the variants take no mask).
    Mean,
    /// A learned token prepended to the sequence; the variant then sees seq_len + 1.
    Cls,
}

/// Position information added to the token embeddings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Positions {
    /// A learned vector per position.
    Learned,
    /// The fixed sine/cosine table of Vaswani et al. (2017).
    Sinusoidal,
}

/// The classifier's shape; the width is `heads x head_dim`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClassifierConfig {
    pub heads: i64,
    pub head_dim: i64,
    /// Encoder blocks of the variant.
    pub layers: usize,
    pub pooling: Pooling,
    pub positions: Positions,
    /// Dropout on the embeddings and on the pooled vector (training only).
    pub dropout: f64,
}

impl Default for ClassifierConfig {
    fn default() -> Self {
        ClassifierConfig {
            heads: 4,
            head_dim: 16,
            layers: 2,
            pooling: Pooling::Mean,
            positions: Positions::Learned,
            dropout: 0.0,
        }
    }
}

impl ClassifierConfig {
    pub fn d_model(&self) -> i64 {
        self.heads * self.head_dim
    }

    pub fn check(&self) -> Result<()> {
        anyhow::ensure!(
            self.heads >= 1 && self.head_dim >= 1 && self.layers >= 1,
            "classifier: heads, head_dim and layers must be at least 1 (got {}, {}, {})",
            self.heads,
            self.head_dim,
            self.layers
        );
        anyhow::ensure!(
            (0.0..1.0).contains(&self.dropout),
            "classifier: dropout must be in [0, 1), got {}",
            self.dropout
        );
        Ok(())
    }
}

/// What the classifier is built for, besides its config: enough to rebuild it from a
/// checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    pub variant: VariantSpec,
    pub config: ClassifierConfig,
    pub vocab: u32,
    pub classes: u32,
    /// Tokens per input sequence (without the CLS token).
    pub seq_len: usize,
    /// The batch the variant is built for; [`crate::trainer`] pads every batch to
    /// it, since a variant is built per shape.
    pub batch: i64,
    /// 1, or 2 for the two-tower (dual encoder) form of LRA's retrieval: each example is
    /// two sequences of `seq_len` tokens, encoded by the same blocks.
    #[serde(default = "one_tower")]
    pub towers: u32,
}

fn one_tower() -> u32 {
    1
}

impl ModelSpec {
    /// The shape the variant's blocks see.
    pub fn shape(&self) -> Shape {
        let extra = i64::from(self.config.pooling == Pooling::Cls);
        Shape {
            batch: self.batch,
            seq_len: self.seq_len as i64 + extra,
            heads: self.config.heads,
            head_dim: self.config.head_dim,
            causal: false,
        }
    }

    /// Everything that can be checked without building: the config, the variant's name,
    /// parameters, block scope and limits at this shape.
    pub fn check(&self) -> Result<()> {
        self.config.check()?;
        anyhow::ensure!(
            self.vocab >= 1 && self.classes >= 2 && self.seq_len >= 1 && self.batch >= 1,
            "classifier: needs vocab >= 1, classes >= 2, seq_len >= 1, batch >= 1"
        );
        anyhow::ensure!(
            self.towers == 1 || self.towers == 2,
            "classifier: towers must be 1 or 2, got {}",
            self.towers
        );
        let entry = find(&self.variant.name)?;
        entry.check_scope(Scope::Block).with_context(|| {
            format!(
                "variant `{}` cannot be trained as a classifier: the classifier stacks \
                 encoder blocks (scope `block`)",
                self.variant.name
            )
        })?;
        let params = serde_json::Value::Object(self.variant.params.clone());
        entry.normalize(&params)?;
        entry.check(&params, &self.shape())?;
        Ok(())
    }
}

/// The sine/cosine position table, `[n, d]`.
pub fn sinusoidal_table(n: i64, d: i64) -> Tensor {
    let pos = Tensor::arange(n, (Kind::Float, tch::Device::Cpu)).unsqueeze(1);
    let i = Tensor::arange(d, (Kind::Float, tch::Device::Cpu));
    // Pairs of dimensions (2k, 2k + 1) share the frequency 1 / 10000^(2k / d).
    let pair = (&i / 2.0).floor() * 2.0;
    let freq = (pair * (-(10000f64.ln()) / d as f64)).exp().unsqueeze(0);
    let angle = pos * freq;
    let even = i.remainder(2.0).eq(0.0).unsqueeze(0);
    angle.sin().where_self(&even, &angle.cos())
}

pub struct Classifier {
    spec: ModelSpec,
    embed: nn::Embedding,
    positions: Tensor,
    cls: Option<Tensor>,
    blocks: Vec<Box<dyn Layer>>,
    norm: nn::LayerNorm,
    /// Two towers: `[u, v, u*v, u-v]` -> width d (ReLU), as LRA's dual encoder.
    pair: Option<nn::Linear>,
    head: nn::Linear,
}

impl Classifier {
    /// Builds the classifier under `vs` (checked first: a variant without a block scope
    /// or a bad configuration is an error, not a panic).
    pub fn new(vs: &nn::Path, spec: &ModelSpec) -> Result<Classifier> {
        spec.check()?;
        let shape = spec.shape();
        let d = spec.config.d_model();
        let small = nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        // Token vectors on the scale of the positions they are added to: the sine table's
        // entries are of order 1 (Vaswani et al. scale embeddings by sqrt(d) for this).
        let token_init = match spec.config.positions {
            Positions::Learned => small,
            Positions::Sinusoidal => nn::Init::Randn {
                mean: 0.0,
                stdev: 1.0,
            },
        };
        let embed = nn::embedding(
            vs / "embed",
            i64::from(spec.vocab),
            d,
            nn::EmbeddingConfig {
                ws_init: token_init,
                ..Default::default()
            },
        );
        let positions = match spec.config.positions {
            Positions::Learned => vs.var("positions", &[shape.seq_len, d], small),
            Positions::Sinusoidal => sinusoidal_table(shape.seq_len, d).to_device(vs.device()),
        };
        let cls = (spec.config.pooling == Pooling::Cls).then(|| vs.var("cls", &[1, 1, d], small));
        let blocks = (0..spec.config.layers)
            .map(|i| {
                build_layer(
                    &spec.variant,
                    &shape,
                    Scope::Block,
                    vs / format!("block{i}"),
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Classifier {
            spec: spec.clone(),
            embed,
            positions,
            cls,
            blocks,
            norm: nn::layer_norm(vs / "norm", vec![d], Default::default()),
            pair: (spec.towers == 2).then(|| nn::linear(vs / "pair", 4 * d, d, Default::default())),
            head: nn::linear(vs / "head", d, i64::from(spec.classes), Default::default()),
        })
    }

    pub fn spec(&self) -> &ModelSpec {
        &self.spec
    }

    /// Logits `[b, classes]` for tokens `[b, towers x seq_len]`.
    pub fn forward_t(&self, tokens: &Tensor, train: bool) -> Tensor {
        let p = self.spec.config.dropout;
        let Some(pair) = &self.pair else {
            return self
                .encode(tokens, train)
                .dropout(p, train)
                .apply(&self.head);
        };
        let n = self.spec.seq_len as i64;
        let u = self.encode(&tokens.narrow(1, 0, n), train);
        let v = self.encode(&tokens.narrow(1, n, n), train);
        let uv = u.multiply(&v);
        let diff = &u - &v;
        Tensor::cat(&[u, v, uv, diff], 1)
            .apply(pair)
            .relu()
            .dropout(p, train)
            .apply(&self.head)
    }

    /// One sequence `[b, seq_len]` to its pooled, normalised representation `[b, d]`.
    fn encode(&self, tokens: &Tensor, train: bool) -> Tensor {
        let p = self.spec.config.dropout;
        let mut x = self.embed.forward(tokens);
        if let Some(cls) = &self.cls {
            let b = tokens.size()[0];
            x = Tensor::cat(&[cls.expand([b, 1, -1], false), x], 1);
        }
        x = (x + &self.positions).dropout(p, train);
        for block in &self.blocks {
            x = block.forward(&x);
        }
        let pooled = match self.spec.config.pooling {
            Pooling::Mean => x.mean_dim(1, false, Kind::Float),
            Pooling::Cls => x.select(1, 0),
        };
        self.norm.forward(&pooled)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sine_table_follows_its_formula() {
        let (n, d) = (7, 6);
        let t = sinusoidal_table(n, d);
        assert_eq!(t.size(), vec![n, d]);
        for p in 0..n {
            for i in 0..d {
                let freq = 10000f64.powf(-((i - i % 2) as f64) / d as f64);
                let a = p as f64 * freq;
                let want = if i % 2 == 0 { a.sin() } else { a.cos() };
                let got = t.double_value(&[p, i]);
                assert!((got - want).abs() < 1e-5, "({p}, {i}): {got} vs {want}");
            }
        }
    }
}
