//! Inputs for xarena's cases. Efficiency cases need only the right shapes and realistic
//! values; the LRA-style tasks (generators and loaders) will live here beside them.

pub mod inputs;
