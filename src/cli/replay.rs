//! `throng replay FILE...`: recorded feeds through the one flow, offline — closed windows printed
//! (`--print`), written into a data dir (`--data-dir`, exactly what a server would have written), or
//! the records sent to a server (`--target`).

use std::io::Write;

use anyhow::Context;

use std::sync::Arc;

use super::ReplayArgs;
use crate::flow::{Closed, Flow, Outputs, WindowKind};
use crate::history::{History, Recorder};
use crate::ingest::replay::Replay;
use crate::ingest::Sources;
use crate::pipeline::Pipeline;
use crate::risk::{Risk, ThresholdStore};
use crate::scenario::SegmentMap;
use crate::window::{json_rows, to_record_batch, HexWindow, LateRecord};

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
    if let Some(target) = args.target.as_deref().filter(|t| t.starts_with("kafka://")) {
        return produce(args, target);
    }
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
    let pipe = Pipeline::from_config(&cfg).context("loading the scenario")?;
    let mut replay = Replay::open(&args.files, pipe.parser.clone(), cfg.ingest.max_line_bytes)?;
    let recorder = match &args.data_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("creating data dir {}", dir.display()))?;
            let history = History::open(dir, cfg.history.retention_days, std::time::Duration::ZERO)
                .with_context(|| format!("opening the history in {}", dir.display()))?;
            Some(Recorder::new(Arc::new(history), dir, cfg.history.flush_every))
        }
        None => None,
    };
    // Segments are evaluated only where their rows are kept: printed output is `hex_windows` only.
    let (map, thresholds) = match &args.data_dir {
        Some(dir) => (
            crate::scenario::load_segments(&cfg)
                .map_err(anyhow::Error::msg)
                .context("loading segments")?,
            ThresholdStore::open(Some(dir)).map_err(|e| anyhow::anyhow!("{e}"))?,
        ),
        None => (
            SegmentMap::default(),
            ThresholdStore::open(None).map_err(|e| anyhow::anyhow!("{e}"))?,
        ),
    };
    let risk = Risk::new(
        Arc::new(map),
        pipe.registry.points().to_vec(),
        cfg.risk.clone(),
        thresholds,
        cfg.window.size.as_millis() as i64,
    );
    let late = match &args.late {
        // A --late file is written afresh.
        Some(path) => Some(std::io::BufWriter::new(
            std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
        )),
        None => None,
    };
    let outputs = Offline {
        print: args.print.then_some(out),
        recorder,
        late,
        windows: 0,
        rows: 0,
        late_records: 0,
        failed: None,
    };
    let Pipeline { engine, sources, .. } = pipe;
    let mut flow = Flow::new(engine, sources, risk, outputs, &cfg.window);
    let mut summary = ReplaySummary::default();
    let mut now = i64::MIN;
    let mut last_progress = std::time::Instant::now();
    while let Some(rec) = replay.next_record()? {
        // Offline, processing time is the newest event time seen: a source idles once the others
        // have run `idle_timeout` of event time past it.
        now = now.max(rec.ts.millis());
        flow.ingest(&rec, now);
        summary.accepted += 1;
        if summary.accepted % 4096 == 0 {
            report_bad(&mut replay, &mut summary);
            if last_progress.elapsed() >= std::time::Duration::from_secs(10) {
                last_progress = std::time::Instant::now();
                tracing::info!(
                    records = summary.accepted,
                    windows = flow.outputs().windows,
                    event_time = %crate::model::EventTime(now),
                    "Replaying…"
                );
            }
        }
        if let Some(e) = flow.outputs_mut().failed.take() {
            return Err(e);
        }
    }
    report_bad(&mut replay, &mut summary);
    for (i, c) in flow.engine().watermark().sources().iter().enumerate() {
        if c.late > 0 {
            tracing::warn!(
                source = %flow.sources().name(crate::model::SourceId(i as u16)),
                late = c.late,
                "Late records: they missed windows already closed and were added to the open ones."
            );
        }
    }
    let register_resets = flow.engine().stats().register_resets;
    let mut outputs = flow.finish();
    if let Some(e) = outputs.failed.take() {
        return Err(e);
    }
    if let Some(r) = outputs.recorder.as_mut() {
        if let Some(e) = r.take_error() {
            return Err(anyhow::Error::new(e).context("writing the history"));
        }
        tracing::info!(history = %r.history().root().display(), "History written; query it with `throng query --data-dir`.");
    }
    summary.windows = outputs.windows;
    summary.rows = outputs.rows;
    summary.late = outputs.late_records;
    tracing::info!(
        accepted = summary.accepted,
        rejected = summary.rejected,
        late = summary.late,
        windows = summary.windows,
        rows = summary.rows,
        register_resets,
        "Replay finished."
    );
    Ok(summary)
}

/// Where an offline replay's results go: standard output, a data dir, a late file.
struct Offline<'a> {
    print: Option<&'a mut dyn Write>,
    recorder: Option<Recorder>,
    late: Option<std::io::BufWriter<std::fs::File>>,
    windows: u64,
    rows: u64,
    late_records: u64,
    /// The first write that failed: the replay stops with it.
    failed: Option<anyhow::Error>,
}

impl Offline<'_> {
    fn print(&mut self, w: &HexWindow) -> anyhow::Result<u64> {
        let Some(out) = self.print.as_mut() else {
            return Ok(0);
        };
        let batch = to_record_batch(w)?;
        let mut n = 0;
        for row in json_rows(&batch)? {
            out.write_all(row.as_bytes())?;
            out.write_all(b"\n")?;
            n += 1;
        }
        Ok(n)
    }
}

impl Outputs for Offline<'_> {
    fn closed(&mut self, c: &Closed<'_>) {
        if let Some(r) = self.recorder.as_mut() {
            r.closed(c);
        }
        if c.kind != WindowKind::Data {
            return;
        }
        self.windows += 1;
        match self.print(c.window) {
            Ok(n) => self.rows += n,
            Err(e) => {
                self.failed.get_or_insert(e);
            }
        }
        if self.print.is_none() {
            self.rows += c.window.rows.len() as u64;
        }
    }

    fn late(&mut self, late: &[LateRecord], sources: &Sources) {
        self.late_records += late.len() as u64;
        if let Some(r) = self.recorder.as_mut() {
            r.late(late, sources);
        }
        if let Some(f) = self.late.as_mut() {
            for l in late {
                if let Err(e) = writeln!(f, "{}", crate::window::late_row(l, &sources.name(l.source))) {
                    self.failed.get_or_insert(e.into());
                    return;
                }
            }
        }
    }

    fn finish(&mut self) {
        if let Some(r) = self.recorder.as_mut() {
            r.finish();
        }
        let printed = self.print.as_mut().map_or(Ok(()), |p| p.flush());
        let late = self.late.as_mut().map_or(Ok(()), |l| l.flush());
        if let Err(e) = printed.and(late) {
            self.failed.get_or_insert(e.into());
        }
    }
}

fn report_bad(replay: &mut Replay, summary: &mut ReplaySummary) {
    for bad in replay.take_bad() {
        summary.rejected += 1;
        tracing::warn!("Rejected {bad}");
    }
}

/// `replay --target kafka://…`: the records, unchanged, produced to a topic in event-time order,
/// one message each, keyed by region.
fn produce(args: &ReplayArgs, target: &str) -> anyhow::Result<ReplaySummary> {
    for f in &args.files {
        super::must_exist(f, "feed file")?;
    }
    let cfg = args.config.load()?;
    let pipe = Pipeline::from_config(&cfg).context("loading the scenario")?;
    let keys =
        crate::transport::kafka::RegionKey::new(args.key_res, cfg.resolution(), (*pipe.registry).clone())
            .map_err(anyhow::Error::msg)?;
    let mut replay = Replay::open(&args.files, pipe.parser.clone(), cfg.ingest.max_line_bytes)?;
    let mut sink = crate::transport::kafka::KafkaSink::new(target, keys).map_err(anyhow::Error::msg)?;
    let mut summary = ReplaySummary::default();
    let mut line = Vec::with_capacity(512);
    while let Some(rec) = replay.next_line_into(&mut line)? {
        sink.send_parsed(&line, rec.cell).map_err(anyhow::Error::msg)?;
        line.clear();
        summary.accepted += 1;
    }
    report_bad(&mut replay, &mut summary);
    let n = sink.finish().map_err(anyhow::Error::msg)?;
    tracing::info!(
        messages = n,
        rejected_locally = summary.rejected,
        "Replay produced to Kafka; every message acknowledged by the broker."
    );
    Ok(summary)
}

/// Lines per request when sending flat out (~2.4 MB of pings, well under the server's 16 MiB
/// `ingest.max_body_bytes`). With one request in flight, each waits for the log's fsync: 5,000
/// lines a request spent a quarter of the time in those waits, 20,000 an eighth.
const FLAT_OUT_BATCH: usize = 20_000;

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
    // Lines go out unchanged: read their time and refuse bad ones here, leave the rest to the server.
    let parser = pipe.parser.clone().forward_only();
    let mut replay = Replay::open(&args.files, parser, cfg.ingest.max_line_bytes)?;
    let mut sender = super::send::Pipelined::new(super::send::Sender::new(target, args.token.clone())?);
    let started = std::time::Instant::now();
    let mut first_ts = None;
    let mut batch = Vec::with_capacity(1 << 20);
    let mut in_batch = 0;
    let mut summary = ReplaySummary::default();
    let mut last_flush = std::time::Instant::now();
    loop {
        // The line goes straight into the batch; the record only says when it falls due.
        let at = batch.len();
        let Some(rec) = replay.next_line_into(&mut batch)? else {
            break;
        };
        if let Some(x) = args.speed {
            // Hold each record until its event time, scaled, has come.
            let t0 = *first_ts.get_or_insert(rec.ts.millis());
            let due = std::time::Duration::from_millis(((rec.ts.millis() - t0).max(0) as f64 / x) as u64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                // What came before this record goes now; it waits for its time in the next batch.
                let line = batch.split_off(at);
                sender.send(std::mem::replace(&mut batch, line))?;
                in_batch = 0;
                last_flush = std::time::Instant::now();
                std::thread::sleep(wait);
            }
        }
        batch.push(b'\n');
        in_batch += 1;
        summary.accepted += 1;
        // Flat out, big batches spread the server's fsync over more records; paced, a batch goes
        // out at least every 200 ms.
        if in_batch >= FLAT_OUT_BATCH || last_flush.elapsed() > std::time::Duration::from_millis(200) {
            sender.send(std::mem::replace(&mut batch, Vec::with_capacity(1 << 20)))?;
            in_batch = 0;
            last_flush = std::time::Instant::now();
        }
    }
    sender.send(batch)?;
    let sender = sender.finish()?;
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
