//! The KV-cache memory track: a causal decoder LM (Llama architecture) that decodes with
//! a managed cache, and the policies that decide which cached tokens it keeps.
//!
//! - [`lm`]: the model ([`LmConfig`], [`DecoderLm`]), uncached forward for training;
//! - [`cache`]: one layer's cache, per KV head, evicted rows really gone;
//! - [`session`]: decoding one sequence with a policy ([`Session`], [`SessionStats`]);
//! - [`policy`]: the [`CachePolicy`] trait, the policies and their registry;
//! - [`llama`]: checkpoints in Hugging Face's layout (config.json + safetensors).

pub mod cache;
pub mod llama;
pub mod lm;
pub mod policy;
pub mod session;

pub use cache::LayerCache;
pub use llama::{load_checkpoint, save_checkpoint, CheckpointError};
pub use lm::{DecoderLm, LmConfig, RopeScaling};
pub use policy::{build_policy, CachePolicy, Observation, PolicyInfo, POLICIES};
pub use session::{Session, SessionStats};
