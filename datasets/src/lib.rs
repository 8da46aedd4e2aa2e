//! Inputs for xarena's cases and the LRA-style tasks. Efficiency cases need only the
//! right shapes and realistic values ([`inputs`]). The tasks generate seeded, cached
//! splits: [`task`] (the common API and the cache), [`listops`], [`synthetic`]
//! (associative recall, passkey, selective copy) and [`pathfinder`]; [`lra_files`] reads
//! the official LRA data a user has downloaded. [`lm_tasks`] holds the decoding tasks of
//! the KV-cache track (passkey, associative recall, MQAR: a prompt and answer tokens).

pub mod inputs;
pub mod listops;
pub mod lm_tasks;
pub mod lra_files;
pub mod pathfinder;
pub mod ruler;
pub mod synthetic;
pub mod task;
