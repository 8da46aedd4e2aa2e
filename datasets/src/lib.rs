//! Inputs for xarena's cases and the LRA-style tasks. Efficiency cases need only the
//! right shapes and realistic values ([`inputs`]). The tasks generate seeded, cached
//! splits: [`task`] (the common API and the cache), [`listops`], [`synthetic`]
//! (associative recall, passkey, selective copy) and [`pathfinder`]; [`lra_files`] reads
//! the official LRA data a user has downloaded.

pub mod inputs;
pub mod listops;
pub mod lra_files;
pub mod pathfinder;
pub mod synthetic;
pub mod task;
