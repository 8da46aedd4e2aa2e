//! The track's commands, `xarena kv train | evolve | bench | report` (the CLI crate only
//! parses `kv` and hands the subcommand to [`cli::run`]).
//!
//! Data flows one way: [`train`] (a small Llama-architecture decoder trained on the
//! decoding tasks of `xarena_datasets::lm_tasks`, saved in Hugging Face's layout) ->
//! [`evolve`] (CMA-ES, [`crate::cmaes`], over a NAMM's parameters with the model
//! frozen) -> [`bench`] (policies x compression ratios x contexts x tasks, one record per
//! case, `xarena_reports::kv`). [`crate::eval`] decodes one prompt under a policy
//! for all three; [`model_dir`] loads a model directory.

pub mod bench;
pub mod cli;
pub mod evolve;
pub mod model_dir;
pub mod ruler_text;
pub mod train;

pub use xarena_schema::files::{check_new_dir, read_json, write_atomic, write_json_atomic};
