//! xarena's results made readable: analysis (scaling fits, ratios against the reference)
//! and presentation (tables, plots, the published report in Markdown, HTML, CSV and
//! JSON) of the records that `xarena-schema` defines and loads.
//!
//! Kept free of LibTorch, so reports can be made where no LibTorch is installed.

// The record types and their loading live in `xarena-schema`; these paths keep naming them.
pub use xarena_schema::{load, record as schema};

pub mod accuracy;
pub mod analysis;
pub mod anchors;
pub mod compare;
pub mod grid;
pub mod kv;
pub mod leaderboard;
pub mod lra;
pub mod merge;
pub mod plots;
pub mod publish;
pub mod table;

pub use load::{load_records, LoadError};
pub use publish::{Report, ReportError};
pub use schema::{CaseKey, Dtype, Environment, Record, Status, SCHEMA_VERSION};
