//! Inputs for xarena's cases and the LRA-style tasks. Efficiency cases need only the
//! right shapes and realistic values ([`inputs`]); the tasks ([`task`] for the common
//! API and the cache, [`listops`], [`synthetic`]) generate seeded, cached splits.

pub mod inputs;
pub mod listops;
pub mod pathfinder;
pub mod synthetic;
pub mod task;
