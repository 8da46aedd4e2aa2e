//! The KV-cache memory track (issue 5) on the runner's side: `xarena kv train | evolve |
//! bench | report`. The model, cache, policies, CMA-ES and decoding evaluation are in
//! `xarena_kvcache`; these commands stay beside the runner whose files, locks,
//! environment capture and training loop helpers they use.
//!
//! Data flows one way: [`train`] (a small Llama-architecture decoder trained on the
//! decoding tasks of `xarena_datasets::lm_tasks`, saved in Hugging Face's layout) ->
//! [`evolve`] (CMA-ES, `xarena_kvcache::cmaes`, over a NAMM's parameters with the model
//! frozen) -> [`bench`] (policies x compression ratios x contexts x tasks, one record per
//! case, `xarena_reports::kv`). `xarena_kvcache::eval` decodes one prompt under a policy
//! for all three; [`model_dir`] loads a model directory.

pub mod bench;
pub mod cli;
pub mod evolve;
pub mod model_dir;
pub mod train;

pub use crate::files::{check_new_dir, read_json, write_atomic, write_json_atomic};
