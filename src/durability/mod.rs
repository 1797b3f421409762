//! Nothing acknowledged is lost: the write-ahead log and the engine's checkpoints (`wal`), the
//! commit path every feed takes (`commit`: log, then queue), and the data dir's two ways of
//! writing a file (`files`: atomic replace, line appends). The only writer of `wal/` and
//! `checkpoint.json`.

pub mod commit;
pub mod files;
pub mod frame;
pub mod wal;

pub use commit::{CommitError, Committer, FeedSink, Ingest, Taken, WhenFull};
pub use wal::{dump, Checkpointed, Clock, DumpSummary, Logged, Recovery, Wal};
