//! `throng wal dump`: the write-ahead log as NDJSON, for a person (the log itself is binary).

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};

/// `throng wal`.
#[derive(Debug, Args, Clone)]
pub struct WalArgs {
    /// What to do with the log.
    #[command(subcommand)]
    pub command: WalCommand,
}

/// `throng wal` subcommands.
#[derive(Debug, Subcommand, Clone)]
pub enum WalCommand {
    /// Print every logged batch, record and tick of a data dir as NDJSON on standard output
    /// (records in the JSON form the log used to hold), with a summary on standard error.
    Dump {
        /// The server's data dir (the one holding `wal/`).
        #[arg(long)]
        data_dir: PathBuf,
        /// Exit with status 1 when a segment ends in a torn or corrupt entry (after a crash
        /// mid-write that is expected in the newest segment, and recovery skips it).
        #[arg(long)]
        check: bool,
    },
}

/// Runs `throng wal …`; the exit status is 1 for `dump --check` on a torn log.
pub fn run(args: &WalArgs) -> anyhow::Result<i32> {
    match &args.command {
        WalCommand::Dump { data_dir, check } => {
            let wal = data_dir.join(crate::durability::files::names::WAL);
            if !wal.is_dir() {
                anyhow::bail!(
                    "{} has no write-ahead log (no {} folder): pass the --data-dir a server ran with",
                    data_dir.display(),
                    wal.display()
                );
            }
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let sum = crate::durability::dump(data_dir, &mut out)
                .with_context(|| format!("reading the log in {}", wal.display()))?;
            out.flush()?;
            eprintln!(
                "{} segments, {} batches, {} records, {} ticks",
                sum.segments, sum.batches, sum.records, sum.ticks
            );
            for (path, at, why) in &sum.torn {
                eprintln!(
                    "{}: at byte {at}: {why} (a write cut short by a crash; it was never acknowledged, and recovery skips it)",
                    path.display()
                );
            }
            Ok(if *check && !sum.torn.is_empty() { 1 } else { 0 })
        }
    }
}
