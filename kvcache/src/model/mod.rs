//! The decoder LM and its checkpoints.
//!
//! - [`lm`]: the model ([`LmConfig`](lm::LmConfig), [`DecoderLm`](lm::DecoderLm)),
//!   uncached forward for training;
//! - [`llama`]: checkpoints in Hugging Face's layout (config.json + safetensors);
//! - [`gguf`]: llama.cpp's GGUF files, read and converted to that layout;
//! - [`tokenizer`]: the byte-level BPE tokenizer a GGUF's metadata describes.

pub mod gguf;
pub mod llama;
pub mod lm;
pub mod tokenizer;
