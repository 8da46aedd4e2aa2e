//! The xarena runner: sweeps of cases run in isolated workers, measured, and stored as
//! records. The `xarena` binary (the `cli` crate) is its command line.
//!
//! Data flows one way: [`sweep`] (flags or TOML -> checked cases) -> [`worker`] (a
//! process per case) -> [`case`] (build, warm up, measure with `xarena_measure`) -> [`store`]
//! (records appended at once) -> `xarena-reports` (tables).

pub mod case;
pub mod check;
pub mod estimate;
pub mod history;
pub mod merge;
pub mod quality;
pub mod roofline;
pub mod rounds;
pub mod run;
pub mod store;
pub mod sweep;
pub mod worker;
