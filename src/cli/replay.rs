//! `throng replay FILE... --print`: recorded feeds through the engine, offline, closed windows out.

use std::io::Write;

use anyhow::Context;

use super::ReplayArgs;
use crate::ingest::replay::Replay;
use crate::pipeline::Pipeline;
use crate::window::{json_rows, to_record_batch, HexWindow};

/// What a replay did.
#[derive(Debug, Default, Clone)]
pub struct ReplaySummary {
    /// Records accepted.
    pub accepted: u64,
    /// Lines rejected.
    pub rejected: u64,
    /// Late records.
    pub late: u64,
    /// Windows closed.
    pub windows: u64,
    /// Rows printed.
    pub rows: u64,
}

/// Runs the replay; windows are written to `out`, problems to the log.
pub fn run(args: &ReplayArgs, out: &mut dyn Write) -> anyhow::Result<ReplaySummary> {
    if !args.print {
        anyhow::bail!("say where closed windows go: --print writes them to standard output");
    }
    for f in &args.files {
        super::must_exist(f, "feed file")?;
    }
    let cfg = args.config.load()?;
    let mut pipe = Pipeline::from_config(&cfg).context("loading the scenario")?;
    let mut replay = Replay::open(&args.files, pipe.parser.clone(), cfg.ingest.max_line_bytes)?;
    let mut summary = ReplaySummary::default();
    let mut now = i64::MIN;
    let emit =
        |windows: Vec<HexWindow>, summary: &mut ReplaySummary, out: &mut dyn Write| -> anyhow::Result<()> {
            for w in windows {
                summary.windows += 1;
                let batch = to_record_batch(&w)?;
                for row in json_rows(&batch)? {
                    summary.rows += 1;
                    out.write_all(row.as_bytes())?;
                    out.write_all(b"\n")?;
                }
            }
            Ok(())
        };
    while let Some(rec) = replay.next_record()? {
        // Offline, processing time is the newest event time seen: a source idles once the others
        // have run `idle_timeout` of event time past it.
        now = now.max(rec.ts.millis());
        pipe.engine.ingest(&rec, now);
        summary.accepted += 1;
        if summary.accepted % 4096 == 0 {
            report_bad(&mut replay, &mut summary);
        }
        pipe.refresh_scales();
        let closed = pipe.engine.advance(now);
        if !closed.is_empty() {
            emit(closed, &mut summary, out)?;
        }
    }
    report_bad(&mut replay, &mut summary);
    pipe.refresh_scales();
    let closed = pipe.engine.flush();
    emit(closed, &mut summary, out)?;
    out.flush()?;
    let late = pipe.engine.take_late();
    summary.late = late.len() as u64;
    if let Some(path) = &args.late {
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        );
        for l in &late {
            writeln!(f, "{}", crate::window::late_row(l, &pipe.sources.name(l.source)))?;
        }
        f.flush()?;
    }
    for (i, c) in pipe.engine.watermark().sources().iter().enumerate() {
        if c.late > 0 {
            tracing::warn!(
                source = %pipe.sources.name(crate::model::SourceId(i as u16)),
                late = c.late,
                "Late records: they missed windows already closed and were added to the open ones."
            );
        }
    }
    tracing::info!(
        accepted = summary.accepted,
        rejected = summary.rejected,
        late = summary.late,
        windows = summary.windows,
        rows = summary.rows,
        register_resets = pipe.engine.stats().register_resets,
        "Replay finished."
    );
    Ok(summary)
}

fn report_bad(replay: &mut Replay, summary: &mut ReplaySummary) {
    for bad in replay.take_bad() {
        summary.rejected += 1;
        tracing::warn!("Rejected {bad}");
    }
}
