//! The KV-cache memory track (issue 5) on the runner's side: evolving NAMM's parameters.

pub mod cmaes;
