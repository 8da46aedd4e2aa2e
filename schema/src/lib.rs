//! Everything xarena writes to disk and reads back, defined once for writer and reader
//! alike: the efficiency record of a case ([`record`]), the accuracy line of a trained
//! model ([`accuracy`]), the KV-cache track's record ([`kv`]), the enums and claims they
//! share, and their checked, versioned loading ([`load`]). How the commands write their
//! output directories is here too, for every track alike: atomic writes and new-directory
//! checks ([`files`]) and one writer per directory ([`lock`]).
//!
//! Free of LibTorch, so results can be read and reported where no LibTorch is installed.

pub mod accuracy;
pub mod files;
pub mod kv;
pub mod load;
pub mod lock;
pub mod record;

pub use accuracy::AccuracyRecord;
pub use kv::KvRecord;
pub use load::{load_records, read_results, LoadError, RESULTS_FILE};
pub use record::{
    CaseKey, Claims, Dtype, Environment, Mode, Record, Scope, Status, SCHEMA_VERSION,
};
