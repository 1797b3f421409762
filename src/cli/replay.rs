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
    if let Some(target) = &args.target {
        return send(args, target);
    }
    if !args.print && args.data_dir.is_none() {
        anyhow::bail!(
            "say where the feed goes: --print writes closed windows to standard output, --data-dir DIR writes them to history for SQL, --target URL sends the records to a server"
        );
    }
    for f in &args.files {
        super::must_exist(f, "feed file")?;
    }
    let cfg = args.config.load()?;
    let mut pipe = Pipeline::from_config(&cfg).context("loading the scenario")?;
    let mut replay = Replay::open(&args.files, pipe.parser.clone(), cfg.ingest.max_line_bytes)?;
    let mut summary = ReplaySummary::default();
    let mut now = i64::MIN;
    let mut store = match &args.data_dir {
        Some(dir) => Some(StoreSink::open(&cfg, &pipe, dir)?),
        None => None,
    };
    let mut emit =
        |windows: Vec<HexWindow>, summary: &mut ReplaySummary, out: &mut dyn Write| -> anyhow::Result<()> {
            for w in windows {
                summary.windows += 1;
                let batch = to_record_batch(&w)?;
                if let Some(store) = store.as_mut() {
                    summary.rows += batch.num_rows() as u64;
                    store.window(&w, batch)?;
                    continue;
                }
                for row in json_rows(&batch)? {
                    summary.rows += 1;
                    out.write_all(row.as_bytes())?;
                    out.write_all(b"\n")?;
                }
            }
            Ok(())
        };
    let mut last_progress = std::time::Instant::now();
    while let Some(rec) = replay.next_record()? {
        // Offline, processing time is the newest event time seen: a source idles once the others
        // have run `idle_timeout` of event time past it.
        now = now.max(rec.ts.millis());
        pipe.engine.ingest(&rec, now);
        summary.accepted += 1;
        if summary.accepted % 4096 == 0 {
            report_bad(&mut replay, &mut summary);
            if last_progress.elapsed() >= std::time::Duration::from_secs(10) {
                last_progress = std::time::Instant::now();
                tracing::info!(
                    records = summary.accepted,
                    windows = summary.windows,
                    event_time = %crate::model::EventTime(now),
                    "Replaying…"
                );
            }
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
    let late_path = args
        .late
        .clone()
        .or_else(|| args.data_dir.as_ref().map(|d| d.join("late-records.ndjson")));
    if let Some(store) = store.take() {
        store.finish()?;
    }
    if let Some(path) = &late_path {
        // Into a data dir the log grows like the server's; a --late file is written afresh.
        let file = if args.late.is_some() {
            std::fs::File::create(path)
        } else {
            std::fs::OpenOptions::new().create(true).append(true).open(path)
        };
        let mut f = std::io::BufWriter::new(file.with_context(|| format!("creating {}", path.display()))?);
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

/// `replay --target`: the records, unchanged, to a server in event-time order.
fn send(args: &ReplayArgs, target: &str) -> anyhow::Result<ReplaySummary> {
    for f in &args.files {
        super::must_exist(f, "feed file")?;
    }
    if let Some(x) = args.speed {
        if !(x.is_finite() && x > 0.0) {
            anyhow::bail!("--speed must be a positive number, got {x}");
        }
    }
    let cfg = args.config.load()?;
    let pipe = Pipeline::from_config(&cfg).context("loading the scenario")?;
    let mut replay = Replay::open(&args.files, pipe.parser.clone(), cfg.ingest.max_line_bytes)?;
    let mut sender = super::send::Sender::new(target, args.token.clone())?;
    let started = std::time::Instant::now();
    let mut first_ts = None;
    let mut batch = Vec::with_capacity(1 << 20);
    let mut in_batch = 0;
    let mut summary = ReplaySummary::default();
    let mut last_flush = std::time::Instant::now();
    while let Some((rec, line)) = replay.next_line()? {
        if let Some(x) = args.speed {
            // Hold each record until its event time, scaled, has come.
            let t0 = *first_ts.get_or_insert(rec.ts.millis());
            let due = std::time::Duration::from_millis(((rec.ts.millis() - t0).max(0) as f64 / x) as u64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                sender.send(&batch)?;
                batch.clear();
                in_batch = 0;
                last_flush = std::time::Instant::now();
                std::thread::sleep(wait);
            }
        }
        batch.extend_from_slice(&line);
        batch.push(b'\n');
        in_batch += 1;
        summary.accepted += 1;
        if in_batch >= 1000 || last_flush.elapsed() > std::time::Duration::from_millis(200) {
            sender.send(&batch)?;
            batch.clear();
            in_batch = 0;
            last_flush = std::time::Instant::now();
        }
    }
    sender.send(&batch)?;
    report_bad(&mut replay, &mut summary);
    tracing::info!(
        sent = summary.accepted,
        accepted = sender.accepted,
        rejected_by_server = sender.rejected,
        rejected_locally = summary.rejected,
        retries = sender.retries,
        "Replay sent."
    );
    summary.accepted = sender.accepted;
    Ok(summary)
}

/// `replay --data-dir`: closed windows and segment evaluations into the data dir's history, tier
/// changes into its `alerts.ndjson` — what a server would have written, without a server.
struct StoreSink {
    history: crate::history::History,
    risk: crate::risk::Risk,
    alerts: std::path::PathBuf,
    unflushed: usize,
    skipped: u64,
}

impl StoreSink {
    fn open(
        cfg: &crate::config::Config,
        pipe: &Pipeline,
        dir: &std::path::Path,
    ) -> anyhow::Result<StoreSink> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating data dir {}", dir.display()))?;
        let history =
            crate::history::History::open(dir, cfg.history.retention_days, std::time::Duration::ZERO)
                .with_context(|| format!("opening the history in {}", dir.display()))?;
        let map = std::sync::Arc::new(
            crate::app::load_segments(cfg)
                .map_err(anyhow::Error::msg)
                .context("loading segments")?,
        );
        let store = crate::risk::ThresholdStore::open(Some(dir)).map_err(|e| anyhow::anyhow!("{e}"))?;
        let risk = crate::risk::Risk::new(
            map,
            pipe.registry.points().to_vec(),
            cfg.risk.clone(),
            std::sync::Arc::new(std::sync::RwLock::new(store)),
            cfg.window.size.as_millis() as i64,
        );
        Ok(StoreSink {
            history,
            risk,
            alerts: dir.join("alerts.ndjson"),
            unflushed: 0,
            skipped: 0,
        })
    }

    fn window(&mut self, w: &HexWindow, batch: arrow::array::RecordBatch) -> anyhow::Result<()> {
        use crate::history::Table;
        let (statuses, alerts) = self.risk.evaluate(w);
        if !self.history.append(Table::HexWindows, w.start.0, batch) {
            self.skipped += 1;
            return Ok(());
        }
        if !statuses.is_empty() {
            self.history.append(
                Table::SegmentWindows,
                w.start.0,
                crate::history::schema::segment_batch(&statuses)?,
            );
        }
        if !alerts.is_empty() {
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.alerts)
                .with_context(|| format!("opening {}", self.alerts.display()))?;
            for a in &alerts {
                serde_json::to_writer(&mut f, a)?;
                f.write_all(b"\n")?;
            }
        }
        self.unflushed += 1;
        // About an hour of 10-second windows per file keeps memory bounded on a long replay.
        if self.unflushed >= 360 {
            self.history.flush()?;
            self.unflushed = 0;
        }
        Ok(())
    }

    fn finish(self) -> anyhow::Result<()> {
        let s = self.history.close()?;
        if self.skipped > 0 {
            tracing::warn!(
                windows = self.skipped,
                "Windows already in this history were skipped (not written twice)."
            );
        }
        tracing::info!(files = s.files_written, history = %self.history.root().display(), "History written; query it with `throng query --data-dir`.");
        Ok(())
    }
}
