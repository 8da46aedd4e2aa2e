//! xarena's results: the record schema (what the runner writes), loading, analysis
//! (scaling fits, ratios against the reference) and presentation (tables, plots, the
//! published report in Markdown, HTML, CSV and JSON).
//!
//! Kept free of LibTorch, so reports can be made where no LibTorch is installed.

pub mod accuracy;
pub mod analysis;
pub mod anchors;
pub mod compare;
pub mod grid;
pub mod kv;
pub mod load;
pub mod lra;
pub mod merge;
pub mod plots;
pub mod publish;
pub mod schema;
pub mod table;

pub use load::{load_records, LoadError};
pub use publish::{Report, ReportError};
pub use schema::{CaseKey, Dtype, Environment, Record, Status, SCHEMA_VERSION};
