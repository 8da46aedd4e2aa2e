//! One file per subcommand: its arguments and its execution, handing the work to the
//! crate that does it (the runner, the reports, training). `check` and `kv` keep theirs
//! beside their code in the runner and the KV-cache track.

pub mod compare;
pub mod history;
pub mod leaderboard;
pub mod list;
pub mod lra;
pub mod merge;
pub mod quality;
pub mod report;
pub mod run;
pub mod train;
