//! A causal decoder LM with the Llama architecture (Touvron et al. 2023): pre-RMSNorm
//! blocks, SwiGLU MLP, rotary positions (Hugging Face's `rotate_half` convention) and
//! grouped-query attention, no biases. Parameters carry Hugging Face's names, so a
//! `LlamaForCausalLM` checkpoint loads as is (see [`super::llama`]) and a model trained
//! here can be read back by Hugging Face.

use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};

use xarena_variants::VariantError;

/// The name errors carry.
const NAME: &str = "llama";

/// Rotary scaling as Hugging Face's `rope_scaling` (`default`, `linear`, `llama3`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeScaling {
    /// Older configs call it `type`.
    #[serde(alias = "type")]
    pub rope_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub factor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub low_freq_factor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_freq_factor: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_max_position_embeddings: Option<i64>,
}

/// The model's shape, with the keys of Hugging Face's Llama `config.json` (unknown keys
/// are ignored). [`Default`] is a tiny model for tests and demos.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "RawLmConfig")]
pub struct LmConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    /// Absent from older configs: then equal to `num_attention_heads` (no grouping).
    pub num_key_value_heads: i64,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    /// Recorded for reports; rotary positions work beyond it.
    pub max_position_embeddings: i64,
    /// `lm_head` reuses `model.embed_tokens.weight`.
    pub tie_word_embeddings: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rope_scaling: Option<RopeScaling>,
}

impl Default for LmConfig {
    fn default() -> Self {
        LmConfig {
            vocab_size: 256,
            hidden_size: 64,
            intermediate_size: 176,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            rms_norm_eps: 1e-6,
            rope_theta: 10_000.0,
            max_position_embeddings: 2048,
            tie_word_embeddings: false,
            rope_scaling: None,
        }
    }
}

/// `config.json` as Hugging Face writes it: defaults of `LlamaConfig`, and the keys that
/// must hold a value this implementation supports (checked, then dropped).
#[derive(Deserialize)]
struct RawLmConfig {
    vocab_size: i64,
    hidden_size: i64,
    intermediate_size: i64,
    num_hidden_layers: i64,
    num_attention_heads: i64,
    #[serde(default)]
    num_key_value_heads: Option<i64>,
    #[serde(default = "default_eps")]
    rms_norm_eps: f64,
    /// Absent from configs written by transformers 5, which keep it in `rope_parameters`.
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default = "default_max_positions")]
    max_position_embeddings: i64,
    #[serde(default)]
    tie_word_embeddings: bool,
    #[serde(default)]
    rope_scaling: Option<RopeScaling>,
    /// transformers 5's form of both: `rope_theta`, `rope_type` and the scaling's keys.
    #[serde(default)]
    rope_parameters: Option<RopeParameters>,
    #[serde(default)]
    head_dim: Option<i64>,
    #[serde(default)]
    hidden_act: Option<String>,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
    #[serde(default)]
    model_type: Option<String>,
}

/// transformers 5's `rope_parameters`: the rotary base and the scaling in one object.
#[derive(Deserialize)]
struct RopeParameters {
    #[serde(default)]
    rope_theta: Option<f64>,
    #[serde(default, alias = "type")]
    rope_type: Option<String>,
    #[serde(flatten)]
    scaling: serde_json::Map<String, serde_json::Value>,
}

fn default_eps() -> f64 {
    1e-6
}
/// `LlamaConfig`'s rotary base when a config names none.
const DEFAULT_THETA: f64 = 10_000.0;
fn default_max_positions() -> i64 {
    2048
}

impl TryFrom<RawLmConfig> for LmConfig {
    type Error = String;

    fn try_from(raw: RawLmConfig) -> Result<Self, String> {
        if let Some(t) = raw.model_type.as_deref() {
            if t != "llama" {
                return Err(format!(
                    "model_type `{t}` is not supported (only `llama`: other families differ \
                     in biases, norms or attention)"
                ));
            }
        }
        if let Some(act) = raw.hidden_act.as_deref() {
            if act != "silu" {
                return Err(format!("hidden_act `{act}` is not supported (only `silu`)"));
            }
        }
        if raw.attention_bias || raw.mlp_bias {
            return Err("attention_bias / mlp_bias must be false (no biases here)".into());
        }
        if let Some(hd) = raw.head_dim {
            if raw.num_attention_heads > 0 && hd * raw.num_attention_heads != raw.hidden_size {
                return Err(format!(
                    "head_dim {hd} differs from hidden_size / num_attention_heads = {} / {} \
                     (not supported)",
                    raw.hidden_size, raw.num_attention_heads
                ));
            }
        }
        // The rotary base: top-level `rope_theta` (transformers 4), else
        // `rope_parameters.rope_theta` (transformers 5), else LlamaConfig's default.
        let params = raw.rope_parameters;
        let rope_theta = raw
            .rope_theta
            .or_else(|| params.as_ref().and_then(|p| p.rope_theta))
            .unwrap_or(DEFAULT_THETA);
        // The scaling: `rope_scaling`, else `rope_parameters` unless its type is `default`.
        let rope_scaling = match (raw.rope_scaling, params) {
            (Some(s), _) => Some(s),
            (None, Some(p)) => match p.rope_type.as_deref() {
                None | Some("default") => None,
                Some(t @ ("linear" | "llama3")) => {
                    let mut map = p.scaling;
                    map.insert("rope_type".into(), t.into());
                    Some(
                        serde_json::from_value::<RopeScaling>(map.into())
                            .map_err(|e| format!("rope_parameters: {e}"))?,
                    )
                }
                Some(t) => {
                    return Err(format!(
                        "rope_parameters: rope_type `{t}` is not supported (default, linear, \
                         llama3)"
                    ))
                }
            },
            (None, None) => None,
        };
        Ok(LmConfig {
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            num_key_value_heads: raw.num_key_value_heads.unwrap_or(raw.num_attention_heads),
            rms_norm_eps: raw.rms_norm_eps,
            rope_theta,
            max_position_embeddings: raw.max_position_embeddings,
            tie_word_embeddings: raw.tie_word_embeddings,
            rope_scaling,
        })
    }
}

impl LmConfig {
    /// Checks every field; the error names the bad one.
    pub fn check(&self) -> Result<(), VariantError> {
        for (field, value) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            VariantError::positive(NAME, field, value)?;
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            return Err(VariantError::config(
                NAME,
                format!(
                    "num_attention_heads ({}) must divide hidden_size ({})",
                    self.num_attention_heads, self.hidden_size
                ),
            ));
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return Err(VariantError::config(
                NAME,
                format!(
                    "num_key_value_heads ({}) must divide num_attention_heads ({})",
                    self.num_key_value_heads, self.num_attention_heads
                ),
            ));
        }
        if self.head_dim() % 2 != 0 {
            return Err(VariantError::config(
                NAME,
                format!(
                    "hidden_size / num_attention_heads = {} must be even (rotary positions \
                     turn pairs of features)",
                    self.head_dim()
                ),
            ));
        }
        for (field, value) in [
            ("rms_norm_eps", self.rms_norm_eps),
            ("rope_theta", self.rope_theta),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return Err(VariantError::config(
                    NAME,
                    format!("{field} must be positive, got {value}"),
                ));
            }
        }
        if let Some(s) = &self.rope_scaling {
            check_rope_scaling(s)?;
        }
        Ok(())
    }

    /// Features per head: `hidden_size / num_attention_heads`.
    pub fn head_dim(&self) -> i64 {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// Query heads per KV head.
    pub fn kv_groups(&self) -> i64 {
        self.num_attention_heads / self.num_key_value_heads.max(1)
    }

    /// Rotary inverse frequencies `[head_dim / 2]`, scaled as `rope_scaling` says
    /// (Hugging Face's `_compute_default_rope_parameters`, `_linear`, `_llama3`).
    pub fn inv_freq(&self) -> Vec<f64> {
        let hd = self.head_dim();
        let base: Vec<f64> = (0..hd / 2)
            .map(|i| 1.0 / self.rope_theta.powf((2 * i) as f64 / hd as f64))
            .collect();
        let Some(s) = &self.rope_scaling else {
            return base;
        };
        let factor = s.factor.unwrap_or(1.0);
        match s.rope_type.as_str() {
            "linear" => base.iter().map(|f| f / factor).collect(),
            "llama3" => {
                let low = s.low_freq_factor.unwrap_or(1.0);
                let high = s.high_freq_factor.unwrap_or(4.0);
                let old = s.original_max_position_embeddings.unwrap_or(8192) as f64;
                let (low_wavelen, high_wavelen) = (old / low, old / high);
                base.iter()
                    .map(|&f| {
                        let wavelen = 2.0 * std::f64::consts::PI / f;
                        if wavelen < high_wavelen {
                            f
                        } else if wavelen > low_wavelen {
                            f / factor
                        } else {
                            let smooth = (old / wavelen - low) / (high - low);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect()
            }
            _ => base,
        }
    }
}

fn check_rope_scaling(s: &RopeScaling) -> Result<(), VariantError> {
    let bad = |m: String| Err(VariantError::config(NAME, format!("rope_scaling: {m}")));
    match s.rope_type.as_str() {
        "default" => return Ok(()),
        "linear" | "llama3" => {}
        t => {
            return bad(format!(
                "rope_type `{t}` is not supported (default, linear, llama3)"
            ))
        }
    }
    match s.factor {
        Some(f) if f.is_finite() && f > 0.0 => {}
        f => return bad(format!("factor must be positive, got {f:?}")),
    }
    if s.rope_type == "llama3" {
        let (Some(low), Some(high), Some(old)) = (
            s.low_freq_factor,
            s.high_freq_factor,
            s.original_max_position_embeddings,
        ) else {
            return bad("llama3 needs low_freq_factor, high_freq_factor and \
                 original_max_position_embeddings"
                .into());
        };
        if !(low > 0.0 && high > low && old > 0) {
            return bad(format!(
                "llama3 needs 0 < low_freq_factor < high_freq_factor and a positive \
                 original_max_position_embeddings, got {low}, {high}, {old}"
            ));
        }
    }
    Ok(())
}

/// Root-mean-square norm, computed in f32 as Hugging Face's `LlamaRMSNorm` does.
pub(crate) fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Tensor {
    let xf = x.to_kind(Kind::Float);
    let var = xf.square().mean_dim(-1, true, Kind::Float);
    (xf * (var + eps).rsqrt()).to_kind(x.kind()) * weight
}

/// `[-x2, x1]` for `x = [x1, x2]` split in halves of the last dimension (Hugging Face's
/// convention, not the interleaved pairs of the original RoPE code).
fn rotate_half(x: &Tensor) -> Tensor {
    let half = x.size().last().copied().unwrap_or(0) / 2;
    Tensor::cat(&[-x.narrow(-1, half, half), x.narrow(-1, 0, half)], -1)
}

/// Rotary positions on `x` (`[..., n, head_dim]`) with `cos`, `sin` (`[n, head_dim]`).
pub(crate) fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    x * cos + rotate_half(x) * sin
}

/// Expands `[.., kv_heads, n, m]` to `[.., kv_heads * groups, n, m]`: query head `j` reads
/// KV head `j / groups` (Hugging Face's `repeat_kv`).
pub(crate) fn repeat_kv(x: &Tensor, groups: i64) -> Tensor {
    if groups == 1 {
        return x.shallow_clone();
    }
    let mut size = x.size();
    let at = size.len() - 3;
    let heads = size[at];
    let mut expanded = size.clone();
    expanded.insert(at + 1, groups);
    size[at] = heads * groups;
    x.unsqueeze(at as i64 + 1)
        .expand(&expanded, false)
        .reshape(&size)
}

/// One decoder block's weights (`[out, in]`, as `nn.Linear` stores them).
pub(crate) struct DecoderLayer {
    pub(crate) q: Tensor,
    pub(crate) k: Tensor,
    pub(crate) v: Tensor,
    pub(crate) o: Tensor,
    pub(crate) gate: Tensor,
    pub(crate) up: Tensor,
    pub(crate) down: Tensor,
    pub(crate) input_norm: Tensor,
    pub(crate) post_norm: Tensor,
}

impl DecoderLayer {
    fn new(vs: &nn::Path, cfg: &LmConfig) -> DecoderLayer {
        let (d, hd) = (cfg.hidden_size, cfg.head_dim());
        let (h, kv, f) = (
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            cfg.intermediate_size,
        );
        // Hugging Face's initialisation: N(0, initializer_range = 0.02), norms at one.
        let init = nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let linear = |p: nn::Path, out: i64, inp: i64| p.var("weight", &[out, inp], init);
        let attn = vs / "self_attn";
        let mlp = vs / "mlp";
        DecoderLayer {
            q: linear(&attn / "q_proj", h * hd, d),
            k: linear(&attn / "k_proj", kv * hd, d),
            v: linear(&attn / "v_proj", kv * hd, d),
            o: linear(&attn / "o_proj", d, h * hd),
            gate: linear(&mlp / "gate_proj", f, d),
            up: linear(&mlp / "up_proj", f, d),
            down: linear(&mlp / "down_proj", d, f),
            input_norm: (vs / "input_layernorm").var("weight", &[d], nn::Init::Const(1.0)),
            post_norm: (vs / "post_attention_layernorm").var("weight", &[d], nn::Init::Const(1.0)),
        }
    }

    /// Queries `[b, heads, n, hd]`, keys and values `[b, kv_heads, n, hd]` of the
    /// normalised input `h` (`[b, n, d]`), rotary positions applied to q and k.
    pub(crate) fn project(
        &self,
        h: &Tensor,
        cfg: &LmConfig,
        cos: &Tensor,
        sin: &Tensor,
    ) -> (Tensor, Tensor, Tensor) {
        let (b, n, _) = h.size3().expect("[batch, seq, hidden]");
        let hd = cfg.head_dim();
        let split = |w: &Tensor, heads: i64| {
            h.linear(w, None::<Tensor>)
                .view([b, n, heads, hd])
                .transpose(1, 2)
        };
        let q = split(&self.q, cfg.num_attention_heads);
        let k = split(&self.k, cfg.num_key_value_heads);
        let v = split(&self.v, cfg.num_key_value_heads);
        (apply_rotary(&q, cos, sin), apply_rotary(&k, cos, sin), v)
    }

    /// The output projection of per-head results `[b, heads, n, hd]` -> `[b, n, d]`.
    pub(crate) fn output(&self, att: &Tensor) -> Tensor {
        let (b, h, n, hd) = att.size4().expect("[batch, heads, seq, head_dim]");
        att.transpose(1, 2)
            .reshape([b, n, h * hd])
            .linear(&self.o, None::<Tensor>)
    }

    /// SwiGLU: `down(silu(gate(h)) * up(h))`.
    pub(crate) fn mlp(&self, h: &Tensor) -> Tensor {
        (h.linear(&self.gate, None::<Tensor>).silu() * h.linear(&self.up, None::<Tensor>))
            .linear(&self.down, None::<Tensor>)
    }
}

/// The Llama decoder: embeddings, `num_hidden_layers` blocks, the final norm and the LM
/// head (tied to the embeddings or not).
pub struct DecoderLm {
    cfg: LmConfig,
    pub(crate) embed: Tensor,
    pub(crate) layers: Vec<DecoderLayer>,
    pub(crate) norm: Tensor,
    lm_head: Option<Tensor>,
    /// `[head_dim / 2]` f32; not a parameter (Hugging Face does not save it either).
    inv_freq: Tensor,
}

impl DecoderLm {
    /// The model's parameters under `vs`, named as Hugging Face names them when `vs` is a
    /// VarStore's root (`model.embed_tokens.weight`, ..., `lm_head.weight`).
    pub fn new(vs: &nn::Path, cfg: &LmConfig) -> Result<DecoderLm, VariantError> {
        cfg.check()?;
        let init = nn::Init::Randn {
            mean: 0.0,
            stdev: 0.02,
        };
        let model = vs / "model";
        let embed =
            (&model / "embed_tokens").var("weight", &[cfg.vocab_size, cfg.hidden_size], init);
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| DecoderLayer::new(&(&model / "layers" / i), cfg))
            .collect();
        let norm = (&model / "norm").var("weight", &[cfg.hidden_size], nn::Init::Const(1.0));
        let lm_head = (!cfg.tie_word_embeddings)
            .then(|| (vs / "lm_head").var("weight", &[cfg.vocab_size, cfg.hidden_size], init));
        let inv: Vec<f32> = cfg.inv_freq().iter().map(|&f| f as f32).collect();
        Ok(DecoderLm {
            cfg: cfg.clone(),
            embed,
            layers,
            norm,
            lm_head,
            inv_freq: Tensor::from_slice(&inv).to_device(vs.device()),
        })
    }

    pub fn config(&self) -> &LmConfig {
        &self.cfg
    }

    pub fn device(&self) -> Device {
        self.embed.device()
    }

    /// The parameters' kind (f32 unless the VarStore was converted).
    pub fn kind(&self) -> Kind {
        self.embed.kind()
    }

    /// `cos`, `sin` (`[n, head_dim]`, the model's kind) of the int64 `positions` (`[n]`).
    pub(crate) fn rotary(&self, positions: &Tensor) -> (Tensor, Tensor) {
        let freqs = positions.to_kind(Kind::Float).unsqueeze(-1) * self.inv_freq.unsqueeze(0);
        let emb = Tensor::cat(&[&freqs, &freqs], -1);
        (
            emb.cos().to_kind(self.kind()),
            emb.sin().to_kind(self.kind()),
        )
    }

    /// Token embeddings `[.., hidden]` of int64 `tokens`.
    pub(crate) fn embed(&self, tokens: &Tensor) -> Tensor {
        Tensor::embedding(&self.embed, tokens, -1, false, false)
    }

    /// Final norm and LM head: `[.., hidden]` -> `[.., vocab]`.
    pub(crate) fn logits(&self, x: &Tensor) -> Tensor {
        let h = rms_norm(x, &self.norm, self.cfg.rms_norm_eps);
        h.linear(self.lm_head.as_ref().unwrap_or(&self.embed), None::<Tensor>)
    }

    /// Causal logits `[b, n, vocab]` of int64 `tokens` `[b, n]`, without a cache: for
    /// training and as the reference of cached decoding.
    pub fn forward(&self, tokens: &Tensor) -> Tensor {
        self.forward_masked(tokens, None)
    }

    /// As [`DecoderLm::forward`], with the keys each query may see given per layer as
    /// `[kv_heads, n, n]` bool (true: query row attends key column) instead of the causal
    /// mask: the dense reference of a cache that evicted tokens.
    pub fn forward_masked(&self, tokens: &Tensor, allowed: Option<&[Tensor]>) -> Tensor {
        let (_, n) = tokens.size2().expect("tokens: [batch, seq] int64");
        if let Some(masks) = allowed {
            assert_eq!(
                masks.len(),
                self.layers.len(),
                "forward_masked: one mask per layer"
            );
        }
        let positions = Tensor::arange(n, (Kind::Int64, self.device()));
        let (cos, sin) = self.rotary(&positions);
        let groups = self.cfg.kv_groups();
        let eps = self.cfg.rms_norm_eps;
        let mut x = self.embed(tokens);
        for (i, layer) in self.layers.iter().enumerate() {
            let h = rms_norm(&x, &layer.input_norm, eps);
            let (q, k, v) = layer.project(&h, &self.cfg, &cos, &sin);
            let (k, v) = (repeat_kv(&k, groups), repeat_kv(&v, groups));
            let att = match allowed {
                None => Tensor::scaled_dot_product_attention(
                    &q,
                    &k,
                    &v,
                    None::<Tensor>,
                    0.0,
                    true,
                    None,
                    false,
                ),
                Some(masks) => Tensor::scaled_dot_product_attention(
                    &q,
                    &k,
                    &v,
                    Some(repeat_kv(&masks[i], groups)),
                    0.0,
                    false,
                    None,
                    false,
                ),
            };
            x = &x + layer.output(&att);
            x = &x + layer.mlp(&rms_norm(&x, &layer.post_norm, eps));
        }
        self.logits(&x)
    }
}
