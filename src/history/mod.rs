//! History: what a closed window leaves behind — Parquet tables per UTC day and hour (`store`),
//! their schemas (`schema`), and `recorder`, the flow's output that writes a window's rows, its
//! alerts and the late records into a data dir. The only writer of `history/`.

pub mod recorder;
pub mod schema;
pub mod store;

pub use recorder::{Recorder, RecorderMark};
pub use store::{History, HistoryError, Table};
