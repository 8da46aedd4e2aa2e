//! The KV-cache memory track: a causal decoder LM (Llama architecture) that decodes with
//! a managed cache, the policies that decide which cached tokens it keeps, and the
//! search and evaluation around them.
//!
//! Data flows one way: model + policy -> session -> decoded answer (-> a `KvRecord`,
//! written by `xarena kv bench`).
//!
//! - [`model`]: the decoder ([`LmConfig`], [`DecoderLm`]), uncached forward for training,
//!   and its checkpoints in Hugging Face's layout (config.json + safetensors);
//! - [`cache`]: one layer's cache, per KV head, evicted rows really gone;
//! - [`session`]: decoding one sequence with a policy ([`Session`], [`SessionStats`]);
//! - [`policy`]: the [`CachePolicy`] trait, one file per policy (NAMM included) and
//!   [`POLICIES`], the one table of them that the CLI, the report order and the tests read;
//! - [`cmaes`]: CMA-ES, as NAMM's parameters are evolved;
//! - [`eval`]: decoding one prompt under a policy and scoring the answer.
//!
//! - [`commands`]: `xarena kv train | evolve | bench | report`, writing their directories
//!   with `xarena_schema`'s atomic files and locks and measuring with `xarena_measure`.
//!
//! Tasks come from `xarena_datasets::lm_tasks`.

pub mod cache;
pub mod cmaes;
pub mod commands;
pub mod eval;
pub mod model;
pub mod policy;
pub mod session;

pub use cache::KvLayerCache;
pub use model::llama::{load_checkpoint, save_checkpoint, CheckpointError};
pub use model::lm::{DecoderLm, LmConfig, RopeScaling};
pub use policy::{build_policy, policy_names, CachePolicy, Observation, PolicyInfo, POLICIES};
pub use session::{Session, SessionStats};
