//! The GGUF reader: the dequantisation of each format on blocks made here by hand, the
//! header and every metadata type, the errors, and a tiny Llama GGUF written here (two
//! layers, grouped-query attention, Q and K rows permuted as llama.cpp's converter does,
//! Q8_0, Q4_1, F16 and F32 tensors) read back to Hugging Face's names, shapes and values;
//! the permutation checked against llama.cpp's interleaved rotary positions, and the
//! converted checkpoint loaded by `load_checkpoint` and run.

use std::path::PathBuf;

use half::f16;
use tch::{nn::VarStore, Device, Kind, Tensor};
use xarena_kvcache::model::gguf::{
    convert, dequantize, hf_name, GgmlType, GgufError, GgufFile, GgufValue, DEFAULT_ALIGNMENT,
};
use xarena_kvcache::{load_checkpoint, DecoderLm, LmConfig};

mod common;
use common::gguf_writer::{gguf_bytes, RawTensor};

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("xarena-gguf-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn h(x: f32) -> [u8; 2] {
    let v = f16::from_f32(x);
    assert_eq!(v.to_f32(), x, "{x} is not exact in f16");
    v.to_le_bytes()
}

// ---------------------------------------------------------------------------------------
// Dequantisation on hand-made blocks.

#[test]
fn f32_and_f16_decode_known_bit_patterns() {
    let f32s: Vec<u8> = [1.5f32, -0.1, f32::MAX]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    assert_eq!(
        dequantize(GgmlType::F32, &f32s).unwrap(),
        vec![1.5, -0.1, f32::MAX]
    );
    // IEEE half bit patterns written out: 1, -2, the largest finite, the smallest
    // subnormal (2^-24), 1/3 rounded, negative zero.
    let bits: [u16; 6] = [0x3c00, 0xc000, 0x7bff, 0x0001, 0x3555, 0x8000];
    let bytes: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
    let got = dequantize(GgmlType::F16, &bytes).unwrap();
    let want = [1.0, -2.0, 65504.0, 2f32.powi(-24), 0.333_251_95, -0.0];
    assert_eq!(got, want);
    assert!(got[5].is_sign_negative());
}

#[test]
fn q8_0_is_an_f16_scale_times_32_signed_bytes() {
    // Two blocks: scale 0.5 over -16..16, then scale -0.0625 over the extremes.
    let mut data = Vec::new();
    data.extend(h(0.5));
    data.extend((0..32).map(|i| (i - 16) as i8 as u8));
    data.extend(h(-0.0625));
    data.extend((0..32).map(|i| [127i8, -128, 0, 1][i % 4] as u8));
    assert_eq!(data.len(), 2 * 34);
    let got = dequantize(GgmlType::Q8_0, &data).unwrap();
    let mut want: Vec<f32> = (0..32).map(|i| 0.5 * (i - 16) as f32).collect();
    want.extend((0..32).map(|i| -0.0625 * [127.0, -128.0, 0.0, 1.0][i % 4]));
    assert_eq!(got, want);
}

#[test]
fn q4_1_has_low_nibbles_first_then_high_and_adds_the_minimum() {
    // Byte j holds element j in its low nibble and element 16 + j in its high nibble.
    let (d, m) = (0.25f32, -1.5f32);
    let mut data = Vec::new();
    data.extend(h(d));
    data.extend(h(m));
    data.extend((0..16u8).map(|j| j | ((15 - j) << 4)));
    // A second block: scale 2, minimum 3, every nibble 15 low and 0 high.
    data.extend(h(2.0));
    data.extend(h(3.0));
    data.extend([0x0fu8; 16]);
    assert_eq!(data.len(), 2 * 20);
    let got = dequantize(GgmlType::Q4_1, &data).unwrap();
    let mut want: Vec<f32> = (0..16).map(|j| d * j as f32 + m).collect();
    want.extend((0..16).map(|j| d * (15 - j) as f32 + m));
    want.extend([33.0; 16]);
    want.extend([3.0; 16]);
    assert_eq!(got, want);
}

#[test]
fn dequantize_refuses_partial_blocks_and_other_types_by_name() {
    let e = dequantize(GgmlType::Q8_0, &[0u8; 35]).unwrap_err();
    assert!(e.contains("35 bytes") && e.contains("Q8_0"), "{e}");
    let e = dequantize(GgmlType(12), &[0u8; 144]).unwrap_err();
    assert!(e.contains("Q4_K"), "{e}");
    assert_eq!(GgmlType(99).to_string(), "type 99");
}

// ---------------------------------------------------------------------------------------
// Header, metadata and directory.

#[test]
fn header_metadata_of_every_type_and_the_directory_read_back() {
    let strings = GgufValue::Array(vec![
        GgufValue::String("<|im_start|>".into()),
        GgufValue::String("Ġthe".into()),
        GgufValue::String(String::new()),
    ]);
    let meta = vec![
        ("a.u8", GgufValue::U8(200)),
        ("a.i8", GgufValue::I8(-5)),
        ("a.u16", GgufValue::U16(60000)),
        ("a.i16", GgufValue::I16(-30000)),
        ("a.u32", GgufValue::U32(4_000_000_000)),
        ("a.i32", GgufValue::I32(-7)),
        ("a.f32", GgufValue::F32(1e-5)),
        ("a.bool", GgufValue::Bool(true)),
        ("a.string", GgufValue::String("héllo".into())),
        ("a.strings", strings.clone()),
        (
            "a.ints",
            GgufValue::Array(vec![GgufValue::I32(1), GgufValue::I32(-2)]),
        ),
        (
            "a.nested",
            GgufValue::Array(vec![
                GgufValue::Array(vec![GgufValue::U8(1)]),
                GgufValue::Array(vec![GgufValue::U8(2), GgufValue::U8(3)]),
            ]),
        ),
        ("a.u64", GgufValue::U64(u64::MAX)),
        ("a.i64", GgufValue::I64(i64::MIN)),
        ("a.f64", GgufValue::F64(0.1)),
        ("general.alignment", GgufValue::U32(64)),
    ];
    let f32_data: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let tensors = vec![
        RawTensor {
            name: "x".into(),
            dims: vec![3, 2],
            ty: 0,
            data: f32_data,
        },
        RawTensor {
            name: "y".into(),
            dims: vec![32],
            ty: 8,
            data: [h(1.0).to_vec(), vec![2u8; 32]].concat(),
        },
    ];
    let bytes = gguf_bytes(3, &meta, &tensors, 64);
    let f = GgufFile::parse("mem.gguf", bytes).unwrap();
    assert_eq!(f.version, 3);
    assert_eq!(f.alignment, 64);
    assert_eq!(f.data_offset % 64, 0);
    for (k, v) in &meta {
        assert_eq!(f.get(k), Some(v), "{k}");
    }
    assert_eq!(f.get("a.f32").unwrap().as_f64(), Some(1e-5));
    assert_eq!(f.get("a.i8").unwrap().as_u64(), None);
    assert_eq!(f.get("a.strings").unwrap().as_array().unwrap().len(), 3);
    assert_eq!(f.tensors.len(), 2);
    assert_eq!(f.tensors[0].dims, vec![3, 2]);
    assert_eq!(f.tensors[0].shape(), vec![2, 3]);
    assert_eq!(f.tensors[1].offset, 64);
    assert_eq!(f.tensors[1].ty, GgmlType::Q8_0);
    let x = f.tensor_f32("x").unwrap();
    assert_eq!(x.size(), vec![2, 3]);
    // Row-major in PyTorch's shape: ne0 (3) is the fastest.
    assert_eq!(x.double_value(&[1, 0]), 3.0);
    let y = Vec::<f32>::try_from(f.tensor_f32("y").unwrap()).unwrap();
    assert_eq!(y, vec![2.0; 32]);

    // Without general.alignment the data starts at a multiple of 32; version 2 reads.
    let bytes = gguf_bytes(2, &meta[..15], &tensors, DEFAULT_ALIGNMENT);
    let f = GgufFile::parse("v2.gguf", bytes).unwrap();
    assert_eq!((f.version, f.alignment), (2, 32));
    assert_eq!(f.tensors[1].offset, 32);
    assert_eq!(
        Vec::<f32>::try_from(f.tensor_f32("y").unwrap()).unwrap()[0],
        2.0
    );
}

#[test]
fn format_errors_name_the_file_and_what_is_wrong() {
    let t = RawTensor {
        name: "blk.0.ffn_up.weight".into(),
        dims: vec![256, 1],
        ty: 12, // Q4_K
        data: vec![0; 144],
    };
    let meta = [("general.architecture", GgufValue::String("llama".into()))];
    let good = gguf_bytes(3, &meta, std::slice::from_ref(&t), 32);

    let mut bad = good.clone();
    bad[..4].copy_from_slice(b"GGML");
    let e = GgufFile::parse("m.gguf", bad).err().unwrap().to_string();
    assert!(e.starts_with("m.gguf: ") && e.contains("bad magic"), "{e}");

    for version in [1u32, 4] {
        let mut bad = good.clone();
        bad[4..8].copy_from_slice(&version.to_le_bytes());
        let e = GgufFile::parse("m.gguf", bad).err().unwrap().to_string();
        assert!(
            e.contains(&format!("GGUF version {version} is not supported")),
            "{e}"
        );
    }

    let e = GgufFile::parse("m.gguf", good[..30].to_vec())
        .err()
        .unwrap()
        .to_string();
    assert!(e.contains("m.gguf") && e.contains("truncated"), "{e}");

    let f = GgufFile::parse("m.gguf", good).unwrap();
    let e = f.tensor_f32("blk.0.ffn_up.weight").err().unwrap();
    assert!(matches!(e, GgufError::UnsupportedType { .. }));
    let e = e.to_string();
    assert!(
        e.contains("m.gguf") && e.contains("blk.0.ffn_up.weight") && e.contains("Q4_K"),
        "{e}"
    );

    // Data past the end of the file.
    let short = RawTensor {
        data: vec![0; 10],
        ty: 0,
        dims: vec![8],
        name: "w".into(),
    };
    let mut bytes = gguf_bytes(3, &[], &[short], 32);
    bytes.truncate(bytes.len() - 24);
    let e = GgufFile::parse("s.gguf", bytes).err().unwrap().to_string();
    assert!(e.contains("`w`") && e.contains("truncated"), "{e}");
}

// ---------------------------------------------------------------------------------------
// A tiny Llama GGUF.

const HIDDEN: usize = 64;
const HEADS: usize = 4;
const KV_HEADS: usize = 2;
const HEAD_DIM: usize = HIDDEN / HEADS;
const FFN: usize = 96;
const VOCAB: usize = 40;
const LAYERS: usize = 2;
const THETA: f64 = 500.0;

/// A deterministic stream of small integers.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, n: u64) -> i64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 33) % n) as i64
    }
}

/// The per-block parameters of the quantised types, by block column only, so that they
/// survive llama.cpp's permutation of rows: Q8_0's scale, Q4_1's scale and minimum.
fn q8_scale(block: usize) -> f32 {
    [0.0625, 0.125, 0.03125][block % 3]
}
fn q4_params(block: usize) -> (f32, f32) {
    ([0.125, 0.25][block % 2], -0.5 * (block + 1) as f32)
}

/// A `[rows, cols]` matrix (row-major) whose values the type represents exactly.
fn matrix(ty: GgmlType, rows: usize, cols: usize, rng: &mut Lcg) -> Vec<f32> {
    (0..rows * cols)
        .map(|i| {
            let b = (i % cols) / 32;
            match ty {
                GgmlType::Q8_0 => q8_scale(b) * (rng.next(255) - 127) as f32,
                GgmlType::Q4_1 => {
                    let (d, m) = q4_params(b);
                    d * rng.next(16) as f32 + m
                }
                GgmlType::F16 => (rng.next(129) - 64) as f32 / 128.0,
                _ => (rng.next(2001) - 1000) as f32 / 997.0,
            }
        })
        .collect()
}

/// Encodes a row-major `[rows, cols]` matrix as `ty` (blocks along the columns).
fn encode(ty: GgmlType, cols: usize, values: &[f32]) -> Vec<u8> {
    let mut out = Vec::new();
    for row in values.chunks(cols) {
        match ty {
            GgmlType::F32 => row.iter().for_each(|v| out.extend(v.to_le_bytes())),
            GgmlType::F16 => row.iter().for_each(|&v| out.extend(h(v))),
            GgmlType::Q8_0 => {
                for (b, block) in row.chunks(32).enumerate() {
                    let d = q8_scale(b);
                    out.extend(h(d));
                    for &v in block {
                        let q = v / d;
                        assert_eq!(q.fract(), 0.0);
                        out.push(q as i8 as u8);
                    }
                }
            }
            GgmlType::Q4_1 => {
                for (b, block) in row.chunks(32).enumerate() {
                    let (d, m) = q4_params(b);
                    out.extend(h(d));
                    out.extend(h(m));
                    let q: Vec<u8> = block.iter().map(|&v| ((v - m) / d) as u8).collect();
                    assert!(block.iter().zip(&q).all(|(&v, &q)| d * q as f32 + m == v));
                    out.extend((0..16).map(|j| q[j] | (q[j + 16] << 4)));
                }
            }
            _ => unreachable!(),
        }
    }
    out
}

/// llama.cpp's `permute`: `w.reshape(heads, 2, rows / heads / 2, cols).swapaxes(1, 2)`,
/// written as the row index each new row comes from.
fn permute_rows(w: &[f32], heads: usize, cols: usize) -> Vec<f32> {
    let rows = w.len() / cols;
    let half = rows / heads / 2;
    let mut out = Vec::with_capacity(w.len());
    for head in 0..heads {
        for i in 0..half {
            for j in 0..2 {
                let src = head * 2 * half + j * half + i;
                out.extend(&w[src * cols..(src + 1) * cols]);
            }
        }
    }
    out
}

/// One tensor of the tiny model: its llama.cpp and Hugging Face names, type and the
/// Hugging Face-layout values `[rows, cols]`.
struct Weight {
    gguf: String,
    hf: String,
    ty: GgmlType,
    rows: usize,
    cols: usize,
    values: Vec<f32>,
}

fn tiny_llama(tied: bool) -> (Vec<(&'static str, GgufValue)>, Vec<Weight>) {
    let mut rng = Lcg(7);
    let mut weights = Vec::new();
    let mut add = |gguf: String, hf: String, ty: GgmlType, rows: usize, cols: usize| {
        let values = matrix(ty, rows, cols, &mut rng);
        weights.push(Weight {
            gguf,
            hf,
            ty,
            rows,
            cols,
            values,
        });
    };
    use GgmlType as T;
    add(
        "token_embd.weight".into(),
        "model.embed_tokens.weight".into(),
        T::Q8_0,
        VOCAB,
        HIDDEN,
    );
    for l in 0..LAYERS {
        // The types differ between the layers, so each projection meets two formats.
        let (qa, qb) = if l == 0 {
            (T::Q8_0, T::Q4_1)
        } else {
            (T::Q4_1, T::Q8_0)
        };
        let g = |s: &str| format!("blk.{l}.{s}.weight");
        let hf = |s: &str| format!("model.layers.{l}.{s}.weight");
        add(g("attn_q"), hf("self_attn.q_proj"), qa, HIDDEN, HIDDEN);
        add(
            g("attn_k"),
            hf("self_attn.k_proj"),
            qb,
            KV_HEADS * HEAD_DIM,
            HIDDEN,
        );
        add(
            g("attn_v"),
            hf("self_attn.v_proj"),
            T::F16,
            KV_HEADS * HEAD_DIM,
            HIDDEN,
        );
        add(g("attn_output"), hf("self_attn.o_proj"), qb, HIDDEN, HIDDEN);
        add(g("ffn_gate"), hf("mlp.gate_proj"), qa, FFN, HIDDEN);
        add(g("ffn_up"), hf("mlp.up_proj"), qb, FFN, HIDDEN);
        add(g("ffn_down"), hf("mlp.down_proj"), T::F16, HIDDEN, FFN);
        add(g("attn_norm"), hf("input_layernorm"), T::F32, 1, HIDDEN);
        add(
            g("ffn_norm"),
            hf("post_attention_layernorm"),
            T::F32,
            1,
            HIDDEN,
        );
    }
    add(
        "output_norm.weight".into(),
        "model.norm.weight".into(),
        T::F32,
        1,
        HIDDEN,
    );
    if !tied {
        add(
            "output.weight".into(),
            "lm_head.weight".into(),
            T::Q4_1,
            VOCAB,
            HIDDEN,
        );
    }
    let tokens = (0..VOCAB)
        .map(|i| GgufValue::String(format!("tok{i}")))
        .collect();
    let meta = vec![
        ("general.architecture", GgufValue::String("llama".into())),
        ("general.name", GgufValue::String("tiny".into())),
        ("llama.block_count", GgufValue::U32(LAYERS as u32)),
        ("llama.context_length", GgufValue::U32(256)),
        ("llama.embedding_length", GgufValue::U32(HIDDEN as u32)),
        ("llama.feed_forward_length", GgufValue::U32(FFN as u32)),
        ("llama.attention.head_count", GgufValue::U32(HEADS as u32)),
        (
            "llama.attention.head_count_kv",
            GgufValue::U32(KV_HEADS as u32),
        ),
        ("llama.rope.freq_base", GgufValue::F32(THETA as f32)),
        (
            "llama.rope.dimension_count",
            GgufValue::U32(HEAD_DIM as u32),
        ),
        (
            "llama.attention.layer_norm_rms_epsilon",
            GgufValue::F32(1e-5),
        ),
        ("tokenizer.ggml.model", GgufValue::String("gpt2".into())),
        ("tokenizer.ggml.tokens", GgufValue::Array(tokens)),
        ("tokenizer.ggml.merges", GgufValue::Array(vec![])),
    ];
    (meta, weights)
}

/// The file: Q and K rows permuted, dims in llama.cpp's order (norms 1-D).
fn tiny_gguf(meta: &[(&str, GgufValue)], weights: &[Weight]) -> Vec<u8> {
    let tensors: Vec<RawTensor> = weights
        .iter()
        .map(|w| {
            let values = if w.gguf.ends_with("attn_q.weight") {
                permute_rows(&w.values, HEADS, w.cols)
            } else if w.gguf.ends_with("attn_k.weight") {
                permute_rows(&w.values, KV_HEADS, w.cols)
            } else {
                w.values.clone()
            };
            RawTensor {
                name: w.gguf.clone(),
                dims: if w.rows == 1 {
                    vec![w.cols as u64]
                } else {
                    vec![w.cols as u64, w.rows as u64]
                },
                ty: w.ty.0,
                data: encode(w.ty, w.cols, &values),
            }
        })
        .collect();
    gguf_bytes(3, meta, &tensors, DEFAULT_ALIGNMENT)
}

fn expected_config(tied: bool) -> LmConfig {
    LmConfig {
        vocab_size: VOCAB as i64,
        hidden_size: HIDDEN as i64,
        intermediate_size: FFN as i64,
        num_hidden_layers: LAYERS as i64,
        num_attention_heads: HEADS as i64,
        num_key_value_heads: KV_HEADS as i64,
        rms_norm_eps: 1e-5,
        rope_theta: THETA,
        max_position_embeddings: 256,
        tie_word_embeddings: tied,
        rope_scaling: None,
    }
}

fn values(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.to_kind(Kind::Float).contiguous().view(-1)).unwrap()
}

#[test]
fn tiny_llama_gguf_reads_back_to_hugging_face_names_shapes_and_values() {
    for tied in [true, false] {
        let (meta, weights) = tiny_llama(tied);
        let f = GgufFile::parse("tiny.gguf", tiny_gguf(&meta, &weights)).unwrap();
        assert_eq!(f.tensors.len(), weights.len());
        for w in &weights {
            let t = f.tensor(&w.gguf).unwrap();
            let shape = if w.rows == 1 {
                vec![w.cols as i64]
            } else {
                vec![w.rows as i64, w.cols as i64]
            };
            assert_eq!(t.shape(), shape, "{}", w.gguf);
            assert_eq!(t.ty, w.ty, "{}", w.gguf);
            assert_eq!(hf_name(&w.gguf).as_deref(), Some(w.hf.as_str()));
        }
        // The file holds Q rows in llama.cpp's order: not Hugging Face's.
        let q0 = &weights[1];
        assert_eq!(q0.gguf, "blk.0.attn_q.weight");
        let raw = values(&f.tensor_f32(&q0.gguf).unwrap());
        assert_eq!(raw, permute_rows(&q0.values, HEADS, HIDDEN));
        assert_ne!(raw, q0.values);

        assert_eq!(f.llama_config().unwrap(), expected_config(tied));
        let (vs, _lm, cfg) = f.llama_checkpoint().unwrap();
        assert_eq!(cfg, expected_config(tied));
        let vars = vs.variables();
        assert_eq!(vars.len(), weights.len());
        for w in &weights {
            let var = &vars[&w.hf];
            assert_eq!(values(var), w.values, "{} ({})", w.hf, w.gguf);
        }
        assert_eq!(vars.contains_key("lm_head.weight"), !tied);
    }
}

/// llama.cpp turns adjacent pairs `(2i, 2i + 1)` of a head (its "normal" rotary mode),
/// Hugging Face turns `(i, i + head_dim / 2)`. The permuted rows are what makes the two
/// agree: attention scores of the file's Q and K under llama.cpp's rotary positions must
/// equal those of the unpermuted ones under Hugging Face's.
#[test]
fn unpermuted_q_and_k_under_rotate_half_score_as_llama_cpp_does() {
    let (meta, weights) = tiny_llama(true);
    let f = GgufFile::parse("tiny.gguf", tiny_gguf(&meta, &weights)).unwrap();
    let (vs, _, _) = f.llama_checkpoint().unwrap();
    let vars = vs.variables();
    let n = 5;
    let mut rng = Lcg(11);
    let x: Vec<f64> = (0..n * HIDDEN)
        .map(|_| (rng.next(201) - 100) as f64 / 100.0)
        .collect();
    let project = |w: &[f32], rows: usize| -> Vec<f64> {
        (0..n)
            .flat_map(|p| {
                let x = &x[p * HIDDEN..(p + 1) * HIDDEN];
                (0..rows)
                    .map(|r| {
                        (0..HIDDEN)
                            .map(|c| w[r * HIDDEN + c] as f64 * x[c])
                            .sum::<f64>()
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    let angle = |p: usize, i: usize| p as f64 * THETA.powf(-((2 * i) as f64) / HEAD_DIM as f64);
    // Rotates one head's features at position p; `pair(i)` gives the two indices turned
    // by frequency i.
    let rotate = |v: &[f64], p: usize, pair: &dyn Fn(usize) -> (usize, usize)| {
        let mut out = v.to_vec();
        for i in 0..HEAD_DIM / 2 {
            let (a, b) = pair(i);
            let (c, s) = (angle(p, i).cos(), angle(p, i).sin());
            out[a] = v[a] * c - v[b] * s;
            out[b] = v[a] * s + v[b] * c;
        }
        out
    };
    let interleaved = |i: usize| (2 * i, 2 * i + 1);
    let halves = |i: usize| (i, i + HEAD_DIM / 2);
    for layer in 0..LAYERS {
        let gguf_q = values(&f.tensor_f32(&format!("blk.{layer}.attn_q.weight")).unwrap());
        let gguf_k = values(&f.tensor_f32(&format!("blk.{layer}.attn_k.weight")).unwrap());
        let hf_q = values(&vars[&format!("model.layers.{layer}.self_attn.q_proj.weight")]);
        let hf_k = values(&vars[&format!("model.layers.{layer}.self_attn.k_proj.weight")]);
        let scores = |q: &[f32], k: &[f32], pair: &dyn Fn(usize) -> (usize, usize)| {
            let (q, k) = (project(q, HIDDEN), project(k, KV_HEADS * HEAD_DIM));
            let head = |v: &[f64], width: usize, p: usize, h: usize| {
                let s = p * width + h * HEAD_DIM;
                rotate(&v[s..s + HEAD_DIM], p, pair)
            };
            let mut out = Vec::new();
            for h in 0..HEADS {
                for i in 0..n {
                    for j in 0..n {
                        let qi = head(&q, HIDDEN, i, h);
                        let kj = head(&k, KV_HEADS * HEAD_DIM, j, h / (HEADS / KV_HEADS));
                        out.push(qi.iter().zip(&kj).map(|(a, b)| a * b).sum::<f64>());
                    }
                }
            }
            out
        };
        let llama_cpp = scores(&gguf_q, &gguf_k, &interleaved);
        let hf = scores(&hf_q, &hf_k, &halves);
        let worst = llama_cpp
            .iter()
            .zip(&hf)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(worst < 1e-9, "layer {layer}: scores differ by {worst}");
        // Without the inverse permutation they would not agree.
        let wrong = scores(&gguf_q, &gguf_k, &halves);
        let off = llama_cpp
            .iter()
            .zip(&wrong)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f64::max);
        assert!(off > 1e-3, "layer {layer}: the permutation changed nothing");
    }
}

#[test]
fn converted_tiny_llama_loads_with_load_checkpoint_and_runs() {
    for tied in [true, false] {
        let (meta, weights) = tiny_llama(tied);
        let dir = temp_dir(&format!("convert-{tied}"));
        std::fs::create_dir_all(&dir).unwrap();
        let gguf = dir.join("tiny.gguf");
        std::fs::write(&gguf, tiny_gguf(&meta, &weights)).unwrap();
        let out = dir.join("hf");
        let cfg = convert(&gguf, &out).unwrap();
        assert_eq!(cfg, expected_config(tied));
        // The tokenizer beside the weights (tests/tokenizer.rs checks what it does).
        let tok = tokenizers::Tokenizer::from_file(out.join("tokenizer.json")).unwrap();
        assert_eq!(tok.token_to_id("tok5"), Some(5));
        assert!(out.join("tokenizer_config.json").is_file());
        let (_vs, lm, loaded) = load_checkpoint(&out, Device::Cpu).unwrap();
        assert_eq!(loaded, expected_config(tied));

        // The reference: a decoder whose variables are the Hugging Face-layout values.
        let ref_vs = VarStore::new(Device::Cpu);
        let reference = DecoderLm::new(&ref_vs.root(), &expected_config(tied)).unwrap();
        let vars = ref_vs.variables();
        tch::no_grad(|| {
            for w in &weights {
                let v = &vars[&w.hf];
                let t = Tensor::from_slice(&w.values).view(v.size().as_slice());
                v.shallow_clone().copy_(&t);
            }
        });
        let toks = Tensor::from_slice(&[3i64, 17, 0, 39, 8, 8, 21]).unsqueeze(0);
        let logits = lm.forward(&toks);
        assert_eq!(logits.size(), vec![1, 7, VOCAB as i64]);
        assert!(bool::try_from(logits.isfinite().all()).unwrap());
        let diff = (&logits - reference.forward(&toks))
            .abs()
            .max()
            .double_value(&[]);
        assert_eq!(diff, 0.0);

        // A second conversion into the same directory is refused; so is a file that is
        // not a GGUF, by name.
        let e = convert(&gguf, &out).unwrap_err().to_string();
        assert!(e.contains("not empty"), "{e}");
        let e = convert(dir.join("hf/config.json"), dir.join("other"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("config.json") && e.contains("bad magic"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

#[test]
fn model_errors_name_the_tensor_or_key() {
    let (meta, mut weights) = tiny_llama(true);
    // An architecture other than llama.
    let mut other = meta.clone();
    other[0].1 = GgufValue::String("qwen2".into());
    let f = GgufFile::parse("t.gguf", tiny_gguf(&other, &weights)).unwrap();
    let e = f.llama_config().unwrap_err().to_string();
    assert!(e.contains("t.gguf") && e.contains("qwen2"), "{e}");
    // A missing key.
    let f = GgufFile::parse("t.gguf", tiny_gguf(&meta[..4], &weights)).unwrap();
    let e = f.llama_config().unwrap_err().to_string();
    assert!(
        e.contains("llama.embedding_length") && e.contains("missing"),
        "{e}"
    );
    // A tensor the decoder has no place for.
    weights.push(Weight {
        gguf: "blk.0.attn_q.bias".into(),
        hf: String::new(),
        ty: GgmlType::F32,
        rows: 1,
        cols: HIDDEN,
        values: vec![0.0; HIDDEN],
    });
    let f = GgufFile::parse("t.gguf", tiny_gguf(&meta, &weights)).unwrap();
    let e = f.llama_checkpoint().err().unwrap().to_string();
    assert!(e.contains("blk.0.attn_q.bias"), "{e}");
    weights.pop();
    // A missing one.
    weights.retain(|w| w.gguf != "blk.1.ffn_up.weight");
    let f = GgufFile::parse("t.gguf", tiny_gguf(&meta, &weights)).unwrap();
    let e = f.llama_checkpoint().err().unwrap().to_string();
    assert!(e.contains("model.layers.1.mlp.up_proj.weight"), "{e}");
}
