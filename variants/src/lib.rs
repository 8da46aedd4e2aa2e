//! The X-formers of xarena: efficient attention mechanisms on LibTorch.
//!
//! Each mechanism lives in one file named after its paper's common name, grouped by the
//! survey's families (Tay et al., "Efficient Transformers: A Survey"). A mechanism is a
//! plain struct built from a serde `Config`; it implements [`Attention`] (the core on
//! per-head queries, keys and values) and is wrapped by [`MultiHeadAttention`] (the
//! projections) and, at block scope, by [`EncoderBlock`] (pre-norm, FFN). Variants that
//! replace a whole block or model implement [`Layer`] directly. The [`registry`] maps
//! names to constructors and metadata.
//!
//! Nothing here measures or prints: timing, memory and reporting live in `xarena-bench`.

pub mod attention;
pub mod baseline;
pub mod block;
pub mod combined;
pub mod conditional;
pub mod decode;
pub mod downsampling;
pub mod error;
pub mod exact;
pub mod fixed;
pub mod flops;
pub mod fused;
pub mod info;
pub mod kernel;
pub mod learnable;
pub mod lowrank;
pub mod memory;
pub mod recurrence;
pub mod registry;
pub mod sparse;

pub use attention::{Attention, Decoder, Layer, LayerDecoder, MultiHeadAttention, Shape};
pub use block::EncoderBlock;
pub use error::VariantError;
pub use flops::FlopCount;
pub use info::{Family, Scope, VariantInfo};
pub use registry::{build_layer, find, registry, Entry, VariantSpec};
