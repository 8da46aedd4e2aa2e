//! The xarena runner: sweeps of cases run in isolated workers, measured, and stored as
//! records. The `xarena` binary (src/main.rs) is its command line.
//!
//! Data flows one way: [`sweep`] (flags or TOML -> checked cases) -> [`worker`] (a
//! process per case) -> [`case`] (build, warm up, measure with [`measure`]) -> [`store`]
//! (records appended at once) -> `xarena-reports` (tables).

pub mod case;
pub mod check;
pub mod estimate;
pub mod history;
pub mod kv;
pub mod measure;
pub mod merge;
pub mod quality;
pub mod run;
pub mod store;
pub mod sweep;
pub mod worker;

// Moved to the schema crate (shared by every track that writes a directory); kept at
// their old paths.
pub use xarena_schema::{files, lock};
