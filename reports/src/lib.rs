//! xarena's results: the record schema (what the runner writes), loading, analysis
//! (scaling fits, ratios against the reference) and presentation (tables).
//!
//! Kept free of LibTorch, so reports can be made where no LibTorch is installed.

pub mod analysis;
pub mod compare;
pub mod load;
pub mod merge;
pub mod schema;
pub mod table;

pub use load::{load_records, LoadError};
pub use schema::{CaseKey, Dtype, Environment, Record, Status, SCHEMA_VERSION};
