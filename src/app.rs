//! The server: wires ingest → window engine, runs HTTP, owns shutdown order.
//!
//! Shutdown: the HTTP server stops taking requests, the ingest channel closes, the engine drains it,
//! flushes every open window and exits.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use crate::cli::ServeArgs;
use crate::config::Config;
use crate::durability::Wal;
use crate::history::{History, Table};
use crate::ingest::Sources;
use crate::model::{EventTime, Record, SourceId};
use crate::pipeline::{resolution, Pipeline};
use crate::risk::{Alert, Board, Risk, SegmentMap, ThresholdStore};
use crate::window::{Engine, HexWindow};

/// Period of provisional heatmap frames (the contract asks for at least one every 2 s).
const PROVISIONAL_EVERY_MS: u64 = 1_500;

/// Wall-clock milliseconds since the epoch.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The process-wide Prometheus recorder (installed once, shared by every server in the process).
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only if another recorder is installed; the handle still renders ours.
            let _ = metrics::set_global_recorder(recorder);
            // Every unlabelled series exists from the start, so dashboards and rate() see zeros
            // rather than gaps before the first event.
            for name in [
                "throng_ingest_records_total",
                "throng_ingest_duplicates_total",
                "throng_alerts_total",
                "throng_checkpoints_total",
                "throng_history_rows_written_total",
                "throng_sql_queries_total",
                "throng_live_frames_skipped_total",
                "throng_live_clients_dropped_total",
                "throng_windows_closed_total",
            ] {
                metrics::counter!(name).increment(0);
            }
            metrics::gauge!("throng_live_clients").increment(0.0);
            metrics::gauge!("throng_window_devices_active").set(0.0);
            metrics::gauge!("throng_window_state_bytes").set(0.0);
            handle
        })
        .clone()
}

/// One source's state, for `/api/health`.
#[derive(Debug, Clone, Serialize)]
pub struct SourceHealth {
    /// `lbs/<provider>`, `counter` or `gate`.
    pub source: String,
    /// Newest event time (epoch ms).
    pub max_event_time: i64,
    /// How far the newest event time trails the wall clock (ms).
    pub lag_ms: i64,
    /// False once silent for `idle_timeout`: it no longer holds the watermark back.
    pub active: bool,
    /// Records accepted.
    pub records: u64,
    /// Late records.
    pub late: u64,
}

/// The engine's state, published every tick.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Health {
    /// Watermark (epoch ms; null before any data).
    pub watermark: Option<i64>,
    /// Wall clock minus watermark (ms).
    pub watermark_lag_ms: Option<i64>,
    /// Per source.
    pub sources: Vec<SourceHealth>,
    /// Windows closed since start.
    pub windows_closed: u64,
    /// End of the newest closed window.
    pub last_window_end: Option<i64>,
}

/// What the HTTP layer needs to reach the pipeline.
#[derive(Clone)]
pub struct Handles {
    /// Parser for incoming lines (shared registries and sources).
    pub parser: crate::ingest::Parser,
    /// Into the engine.
    pub ingest: mpsc::Sender<Ingest>,
    /// The write-ahead log: appended (and fsynced) before a batch is queued and acknowledged.
    pub wal: Arc<std::sync::Mutex<Wal>>,
    /// The engine's latest health.
    pub health: watch::Receiver<Health>,
    /// The newest closed window.
    pub latest: watch::Receiver<Option<Arc<HexWindow>>>,
    /// Prometheus rendering.
    pub metrics: PrometheusHandle,
    /// Config in force.
    pub config: Arc<Config>,
    /// Segment statuses, history and alerts.
    pub board: Arc<RwLock<Board>>,
    /// The segments in force (swapped on reload).
    pub segments: Arc<RwLock<Arc<SegmentMap>>>,
    /// Organiser thresholds.
    pub store: Arc<RwLock<ThresholdStore>>,
    /// Requests to the pipeline task.
    pub control: mpsc::Sender<Control>,
    /// Live frames to viewers.
    pub hub: crate::live::Hub,
    /// Cancelled at shutdown (viewer sockets end on it).
    pub stop: CancellationToken,
    /// Per-client limits.
    pub limits: Arc<crate::api::limits::Limits>,
    /// SQL over history.
    pub sql: crate::history::SqlEngine,
}

/// What the pipeline task's input queue carries, in write-ahead-log order.
#[derive(Debug)]
pub enum Ingest {
    /// Accepted records, already in the log.
    Batch(Vec<Record>),
    /// Every record of the log segments before this one has been queued: checkpoint here.
    Checkpoint(u64),
}

/// Why records could not be committed.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    /// The queue is full (answer 503 with Retry-After); nothing was taken.
    #[error("ingest queue full: nothing from this request was taken; retry after the delay")]
    Full,
    /// The server is stopping.
    #[error("server is shutting down")]
    Closed,
    /// The log could not be written; nothing was taken.
    #[error("could not write the write-ahead log: {0}")]
    Log(std::io::Error),
}

/// Logs `records` and queues them for the engine, all or nothing. When it returns Ok they are
/// durable (per the fsync policy) and will be counted exactly once, even across a crash.
pub async fn commit(h: &Handles, records: Vec<Record>, wait: bool) -> Result<(), CommitError> {
    let permit = if wait {
        h.ingest
            .clone()
            .reserve_owned()
            .await
            .map_err(|_| CommitError::Closed)?
    } else {
        h.ingest.clone().try_reserve_owned().map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => CommitError::Full,
            mpsc::error::TrySendError::Closed(_) => CommitError::Closed,
        })?
    };
    let wal = h.wal.clone();
    // The log and the queue are written under one lock so the queue's order is the log's order.
    tokio::task::spawn_blocking(move || {
        let mut w = wal.lock().unwrap_or_else(|p| p.into_inner());
        w.append(&records).map_err(CommitError::Log)?;
        permit.send(Ingest::Batch(records));
        Ok(())
    })
    .await
    .map_err(|_| CommitError::Closed)?
}

/// Requests to the pipeline task.
#[derive(Debug)]
pub enum Control {
    /// Re-read the segments file; the reply says how many segments are in force.
    ReloadSegments(tokio::sync::oneshot::Sender<Result<usize, String>>),
}

/// Loads the scenario's segments (an empty map when the scenario has none).
pub fn load_segments(cfg: &Config) -> Result<SegmentMap, String> {
    let path = cfg.scenario.join("segments.geojson");
    if !path.exists() {
        tracing::warn!(path = %path.display(), "No segments file: segment tiers are off.");
        return Ok(SegmentMap::default());
    }
    SegmentMap::load(&path, resolution(cfg)).map_err(|e| e.to_string())
}

/// A running server.
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where the PostgreSQL wire listens, if it does.
    pub pg_addr: Option<SocketAddr>,
    /// Whether both speak TLS (`[tls]`).
    pub tls: bool,
    handles: Handles,
    /// Requests to the pipeline task (segment reload).
    pub control: mpsc::Sender<Control>,
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Server {
    /// Feeds NDJSON records in-process, through the same parser and bounded queue as
    /// `POST /api/ingest` (waiting for room rather than refusing). Returns (accepted, rejected).
    pub async fn feed(&self, ndjson: &[u8]) -> anyhow::Result<(usize, usize)> {
        let now = now_ms();
        let mut ok = Vec::new();
        let mut bad = 0;
        for line in ndjson.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            match self.handles.parser.parse_line(line, Some(now)) {
                Ok(r) => ok.push(r),
                Err(_) => bad += 1,
            }
        }
        let n = ok.len();
        if n > 0 {
            commit(&self.handles, ok, true).await?;
            metrics::counter!("throng_ingest_records_total").increment(n as u64);
        }
        Ok((n, bad))
    }

    /// The newest status of every segment.
    pub fn segments(&self) -> Vec<crate::risk::SegmentStatus> {
        self.handles
            .board
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .latest()
            .to_vec()
    }

    /// Stops taking requests, drains the engine and waits (bounded) for every task.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let Server {
            handles,
            token,
            tracker,
            ..
        } = self;
        // The engine ends when the last ingest sender is gone: ours goes now, the HTTP server's
        // when it has stopped.
        drop(handles);
        token.cancel();
        tracker.close();
        tokio::time::timeout(Duration::from_secs(10), tracker.wait())
            .await
            .context("stages did not drain within 10 s")
    }
}

/// Starts the server on `listen` (port 0: an ephemeral port, see `Server::addr`), keeping its files
/// in `data_dir`.
pub async fn start(cfg: Config, listen: SocketAddr, data_dir: &Path) -> anyhow::Result<Server> {
    start_with(cfg, listen, None, data_dir).await
}

/// Opens the history of `data_dir` for a server (replaced files outlive the longest query).
pub fn open_history(cfg: &Config, data_dir: &Path) -> anyhow::Result<Arc<History>> {
    let grace = cfg.sql.timeout + Duration::from_secs(10);
    Ok(Arc::new(
        History::open(data_dir, cfg.history.retention_days, grace)
            .with_context(|| format!("opening the history in {}", data_dir.display()))?,
    ))
}

/// `start`, with the PostgreSQL wire on `pg_listen` as well (port 0: ephemeral, see
/// `Server::pg_addr`).
pub async fn start_with(
    cfg: Config,
    listen: SocketAddr,
    pg_listen: Option<SocketAddr>,
    data_dir: &Path,
) -> anyhow::Result<Server> {
    let cfg = Arc::new(cfg);
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let mut pipe = Pipeline::from_config(&cfg).context("loading the scenario")?;
    let fsync = cfg.durability.fsync == crate::config::FsyncPolicy::Always;
    let (wal, recovery) = Wal::open(data_dir, fsync)
        .with_context(|| format!("opening the write-ahead log in {}", data_dir.display()))?;
    if let Some(engine) = recovery.engine {
        if !engine.matches(&cfg.window) {
            anyhow::bail!(
                "{} was written with other [window] settings; restore them, or move the data dir aside to start fresh",
                data_dir.join("checkpoint.json").display()
            );
        }
        pipe.engine = engine;
    }
    pipe.refresh_scales();
    let replayed = recovery.records.len();
    let now = now_ms();
    for r in &recovery.records {
        pipe.engine.ingest(r, now);
    }
    if replayed > 0 || recovery.torn > 0 {
        tracing::info!(
            records = replayed,
            torn = recovery.torn,
            "Recovered from the write-ahead log."
        );
    }
    let wal = Arc::new(std::sync::Mutex::new(wal));
    let history = open_history(&cfg, data_dir)?;
    let sql = crate::history::SqlEngine::new(history.clone(), data_dir, cfg.sql.clone(), cfg.privacy.k);
    let map = Arc::new(
        load_segments(&cfg)
            .map_err(anyhow::Error::msg)
            .context("loading segments")?,
    );
    let store = Arc::new(RwLock::new(
        ThresholdStore::open(Some(data_dir))
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("loading thresholds")?,
    ));
    let risk = Risk::new(
        map.clone(),
        pipe.registry.points().to_vec(),
        cfg.risk.clone(),
        store.clone(),
        cfg.window.size.as_millis() as i64,
    );
    let (tx, rx) = mpsc::channel(cfg.ingest.queue_batches);
    let (control_tx, control_rx) = mpsc::channel(8);
    let (health_tx, health_rx) = watch::channel(Health::default());
    let (latest_tx, latest_rx) = watch::channel(None);
    let board = Arc::new(RwLock::new(Board::default()));
    let hub = crate::live::Hub::default();
    let segments = Arc::new(RwLock::new(map));
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let Pipeline {
        parser,
        engine,
        sources,
        ..
    } = pipe;
    let stage = Stage {
        engine,
        risk,
        sources,
        health: health_tx,
        latest: latest_tx,
        board: board.clone(),
        segments: segments.clone(),
        cfg: cfg.clone(),
        alerts_file: data_dir.join("alerts.ndjson"),
        late_file: data_dir.join("late-records.ndjson"),
        hub: hub.clone(),
        last_snapshot: std::time::Instant::now(),
        wal: wal.clone(),
        queue: tx.downgrade(),
        data_dir: data_dir.to_owned(),
        checkpoint_every: cfg.durability.checkpoint_every,
        last_checkpoint: std::time::Instant::now(),
        checkpointing: Arc::default(),
        maintaining: Arc::default(),
        last_eval_end: i64::MIN,
        history,
        last_flush: std::time::Instant::now(),
        last_census: std::time::Instant::now(),
        census_every: Duration::from_secs(1),
    };
    tracker.spawn(stage.run(rx, control_rx));
    let handles = Handles {
        parser,
        ingest: tx,
        wal,
        health: health_rx,
        latest: latest_rx,
        metrics: metrics_handle(),
        config: cfg.clone(),
        board,
        segments,
        store,
        control: control_tx.clone(),
        hub,
        stop: token.clone(),
        limits: Arc::default(),
        sql: sql.clone(),
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    for m in &cfg.mqtt {
        tracker.spawn(crate::transport::mqtt::run(
            m.clone(),
            handles.clone(),
            token.clone(),
        ));
    }
    let handles_for_server = handles.clone();
    let router = crate::api::router(handles);
    let t = token.clone();
    let tls = crate::tls::acceptor(&cfg.tls)?;
    match tls.clone() {
        None => {
            tracker.spawn(serve_http(listener, router, t));
        }
        Some(acceptor) => {
            use axum::serve::ListenerExt;
            let listener = crate::tls::TlsListener::new(listener, acceptor, token.clone())?.tap_io(|_| {});
            tracker.spawn(serve_http(listener, router, t));
        }
    }
    let pg_addr = match pg_listen {
        Some(pg) => {
            let l = tokio::net::TcpListener::bind(pg)
                .await
                .with_context(|| format!("binding the PostgreSQL-wire address {pg}"))?;
            let a = l.local_addr()?;
            tracker.spawn(crate::history::pg::serve(
                l,
                tls.clone(),
                sql,
                Arc::new(cfg.auth.clone()),
                token.clone(),
                tracker.clone(),
            ));
            tracing::info!(addr = %a, "PostgreSQL wire listening (psql -h HOST -p PORT -U analyst).");
            Some(a)
        }
        None => None,
    };
    if cfg.auth.tokens.is_empty() {
        tracing::warn!(
            "NO AUTH TOKENS CONFIGURED: every role is open (demo mode). Listening on loopback only."
        );
    }
    tracing::info!(%addr, tls = tls.is_some(), scenario = %cfg.scenario.display(), data_dir = %data_dir.display(), "Listening.");
    Ok(Server {
        addr,
        pg_addr,
        tls: tls.is_some(),
        handles: handles_for_server,
        control: control_tx,
        token,
        tracker,
    })
}

/// Serves the routes on `listener` (plain TCP or TLS) until `stop`.
async fn serve_http<L>(listener: L, router: axum::Router, stop: CancellationToken)
where
    L: axum::serve::Listener<Addr = SocketAddr>,
    for<'a> SocketAddr: axum::extract::connect_info::Connected<axum::serve::IncomingStream<'a, L>>,
{
    let served = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(stop.cancelled_owned())
    .await;
    if let Err(e) = served {
        tracing::error!(error = %e, "HTTP server failed.");
    }
}

/// The single owner of engine and segment state.
struct Stage {
    engine: Engine,
    risk: Risk,
    sources: Arc<Sources>,
    health: watch::Sender<Health>,
    latest: watch::Sender<Option<Arc<HexWindow>>>,
    board: Arc<RwLock<Board>>,
    segments: Arc<RwLock<Arc<SegmentMap>>>,
    cfg: Arc<Config>,
    alerts_file: PathBuf,
    late_file: PathBuf,
    last_eval_end: i64,
    hub: crate::live::Hub,
    last_snapshot: std::time::Instant,
    wal: Arc<std::sync::Mutex<Wal>>,
    /// Weak, so the queue still closes when every producer is gone.
    queue: mpsc::WeakSender<Ingest>,
    data_dir: PathBuf,
    checkpoint_every: Duration,
    last_checkpoint: std::time::Instant,
    /// True while a checkpoint is being written in the background.
    checkpointing: Arc<std::sync::atomic::AtomicBool>,
    history: Arc<History>,
    /// True while history compaction runs in the background.
    maintaining: Arc<std::sync::atomic::AtomicBool>,
    last_flush: std::time::Instant,
    last_census: std::time::Instant,
    census_every: Duration,
}

impl Stage {
    async fn run(mut self, mut rx: mpsc::Receiver<Ingest>, mut control: mpsc::Receiver<Control>) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tokio::select! {
                batch = rx.recv() => match batch {
                    Some(Ingest::Batch(b)) => {
                        let now = now_ms();
                        let mut dups = 0u64;
                        for r in &b {
                            if !self.engine.ingest(r, now) {
                                dups += 1;
                            }
                        }
                        if dups > 0 {
                            metrics::counter!("throng_ingest_duplicates_total").increment(dups);
                        }
                    }
                    Some(Ingest::Checkpoint(seg)) => self.checkpoint(seg),
                    None => break,
                },
                Some(c) = control.recv() => self.control(c),
                _ = tick.tick() => {}
            }
            if self.engine.scales_known() != self.sources.len() {
                self.engine.set_scales(self.sources.scales());
            }
            let closed = self.engine.advance(now_ms());
            self.publish(closed);
            if self.last_census.elapsed() >= self.census_every {
                // A set over every open pane costs milliseconds at city scale: it runs at most every
                // second and never takes more than 1 % of this task's time.
                let t = std::time::Instant::now();
                metrics::gauge!("throng_window_devices_active").set(self.engine.distinct_devices() as f64);
                self.census_every = Duration::from_secs(1).max(t.elapsed() * 100);
                self.last_census = std::time::Instant::now();
            }
            if self.last_flush.elapsed() >= self.cfg.history.flush_every {
                self.flush_history();
            }
            if self.last_checkpoint.elapsed() >= self.checkpoint_every {
                self.last_checkpoint = std::time::Instant::now();
                self.request_checkpoint();
            }
        }
        let closed = self.engine.flush();
        self.publish(closed);
        match self.history.close() {
            Ok(_) => tracing::info!("Engine drained and flushed; history written."),
            Err(e) => tracing::error!(error = %e, "Engine drained, but the history could not be written."),
        }
    }

    /// Writes buffered windows to Parquet. Returns false when that failed.
    fn flush_history(&mut self) -> bool {
        self.last_flush = std::time::Instant::now();
        // Written inline: a flush is a few milliseconds of file writing every `flush_every`, the
        // queue absorbs the pause, and windows stay in order with the engine that closes them.
        // Compaction (seconds, once an hour) and retention run on a blocking thread instead.
        match self.history.write_pending() {
            Ok(s) => {
                if s.files_written > 0 {
                    tracing::debug!(files = s.files_written, rows = s.rows_written, "History flushed.");
                }
                if !self.maintaining.swap(true, std::sync::atomic::Ordering::AcqRel) {
                    let (history, running) = (self.history.clone(), self.maintaining.clone());
                    tokio::task::spawn_blocking(move || {
                        match history.maintain() {
                            Ok(m) if m.hours_compacted > 0 => {
                                tracing::debug!(hours = m.hours_compacted, "History compacted.")
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::error!(error = %e, "History compaction failed; the next flush retries.")
                            }
                        }
                        running.store(false, std::sync::atomic::Ordering::Release);
                    });
                }
                true
            }
            Err(e) => {
                tracing::error!(error = %e, "History flush failed; windows stay in memory and the next flush retries.");
                false
            }
        }
    }

    /// Starts a new log segment and queues a checkpoint marker behind every batch of the old ones.
    fn request_checkpoint(&mut self) {
        let Some(queue) = self.queue.upgrade() else { return };
        let mut wal = self.wal.lock().unwrap_or_else(|p| p.into_inner());
        let Ok(permit) = queue.try_reserve() else { return };
        match wal.rotate() {
            Ok(seg) => permit.send(Ingest::Checkpoint(seg)),
            Err(e) => tracing::error!(error = %e, "Could not start a new log segment."),
        }
    }

    fn checkpoint(&mut self, segment: u64) {
        // Windows closed before the checkpoint are no longer in the log: they must be on disk first.
        if !self.flush_history() {
            tracing::error!("Checkpoint skipped because the history could not be written.");
            return;
        }
        // Serialising a city's window state takes seconds; ingest must not wait for it. The engine
        // is cloned here (tens of milliseconds) and written on a blocking thread. While one write
        // is in flight the next is skipped: the log simply keeps its older segments a while longer.
        if self.checkpointing.swap(true, std::sync::atomic::Ordering::AcqRel) {
            tracing::debug!(
                segment,
                "A checkpoint is still being written; this one is skipped."
            );
            return;
        }
        let started = std::time::Instant::now();
        let snapshot = self.engine.clone();
        let cloned_ms = started.elapsed().as_millis() as u64;
        let (dir, running) = (self.data_dir.clone(), self.checkpointing.clone());
        tokio::task::spawn_blocking(move || {
            match crate::durability::wal::checkpoint(&dir, segment, &snapshot) {
                Ok(()) => {
                    tracing::debug!(
                        segment,
                        cloned_ms,
                        ms = started.elapsed().as_millis() as u64,
                        "Checkpoint written."
                    );
                    metrics::counter!("throng_checkpoints_total").increment(1);
                }
                Err(e) => {
                    tracing::error!(error = %e, "Checkpoint failed; the log keeps growing until one succeeds.")
                }
            }
            running.store(false, std::sync::atomic::Ordering::Release);
        });
    }

    fn control(&mut self, c: Control) {
        match c {
            Control::ReloadSegments(reply) => {
                let result = load_segments(&self.cfg).map(|m| {
                    let m = Arc::new(m);
                    let n = m.segments().len();
                    self.risk.reload(m.clone());
                    let keep: std::collections::HashSet<String> =
                        m.segments().iter().map(|s| s.id.0.clone()).collect();
                    self.board
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .retain(|id| keep.contains(id));
                    *self.segments.write().unwrap_or_else(|p| p.into_inner()) = m;
                    n
                });
                match &result {
                    Ok(n) => tracing::info!(segments = n, "Segments reloaded; window state kept."),
                    Err(e) => {
                        tracing::error!(error = %e, "Segments reload failed; the old segments stay in force.")
                    }
                }
                let _ = reply.send(result);
            }
        }
    }

    fn evaluate(&mut self, w: &HexWindow) {
        let (statuses, alerts) = self.risk.evaluate(w);
        if !statuses.is_empty() {
            match crate::history::schema::segment_batch(&statuses) {
                Ok(b) => {
                    self.history.append(Table::SegmentWindows, w.start.0, b);
                }
                Err(e) => tracing::error!(error = %e, "Could not build the segment_windows rows."),
            }
        }
        self.last_eval_end = self.last_eval_end.max(w.end.0);
        if !alerts.is_empty() {
            persist_alerts(&self.alerts_file, &alerts);
            for a in &alerts {
                tracing::warn!(segment = %a.segment_id, from = a.from_tier, to = a.to_tier, reason = %a.reason, "Tier change.");
            }
            metrics::counter!("throng_alerts_total").increment(alerts.len() as u64);
        }
        let at = std::time::Instant::now();
        for a in &alerts {
            self.hub.publish(crate::live::LiveEvent::Alert {
                alert: Arc::new(a.clone()),
                at,
            });
        }
        if !statuses.is_empty() {
            self.hub.publish(crate::live::LiveEvent::Segments {
                window_end: w.end.0,
                segments: Arc::new(statuses.clone()),
                at,
            });
        }
        self.board
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .publish(statuses, &alerts);
    }

    fn publish(&mut self, closed: Vec<HexWindow>) {
        let slide = self.cfg.slide_ms();
        let size = self.cfg.window.size.as_millis() as i64;
        let had_windows = !closed.is_empty();
        for w in closed {
            tracing::debug!(start = %w.start, cells = w.rows.len(), "Closed window.");
            self.evaluate(&w);
            match crate::window::to_record_batch(&w) {
                Ok(b) => {
                    self.history.append(Table::HexWindows, w.start.0, b);
                }
                Err(e) => tracing::error!(error = %e, "Could not build the hex_windows rows."),
            }
            let w = Arc::new(w);
            self.hub.publish(crate::live::LiveEvent::Heatmap {
                window: w.clone(),
                at: std::time::Instant::now(),
            });
            self.latest.send_replace(Some(w));
        }
        // Viewers see the open window grow: a provisional frame at least every 2 s.
        if self.last_snapshot.elapsed() >= Duration::from_millis(PROVISIONAL_EVERY_MS) {
            self.last_snapshot = std::time::Instant::now();
            if let Some(snap) = self.engine.snapshot() {
                self.hub.publish(crate::live::LiveEvent::Heatmap {
                    window: Arc::new(snap),
                    at: self.last_snapshot,
                });
            }
        }
        // Feeds silent but the clock moving: evaluate the empty window so segments turn degraded
        // instead of showing their last tier forever.
        let wm = self.engine.watermark().current();
        if !had_windows && self.last_eval_end != i64::MIN && wm != i64::MIN {
            let end = wm.div_euclid(slide) * slide;
            if end >= self.last_eval_end + slide {
                let empty = HexWindow {
                    start: EventTime(end - size),
                    end: EventTime(end),
                    rows: Vec::new(),
                    points: Vec::new(),
                    is_final: true,
                };
                self.evaluate(&empty);
            }
        }
        let late = self.engine.take_late();
        if !late.is_empty() {
            // Kept, never dropped: the history stage reads this file as the `late_records` table.
            let mut buf = String::new();
            for l in &late {
                buf.push_str(&crate::window::late_row(l, &self.sources.name(l.source)));
                buf.push('\n');
            }
            append(&self.late_file, buf.as_bytes());
            tracing::info!(late = late.len(), "Late records kept.");
        }
        publish_health(&mut self.engine, &self.sources, &self.health, &self.latest);
    }
}

fn persist_alerts(path: &Path, alerts: &[Alert]) {
    let mut buf = Vec::new();
    for a in alerts {
        if serde_json::to_writer(&mut buf, a).is_ok() {
            buf.push(b'\n');
        }
    }
    append(path, &buf);
}

/// Appends to a file in the data dir; a failure is logged, the pipeline goes on.
fn append(path: &Path, buf: &[u8]) {
    use std::io::Write;
    let written = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .and_then(|mut f| f.write_all(buf));
    if let Err(e) = written {
        tracing::error!(error = %e, path = %path.display(), "Could not append to the data dir.");
    }
}

fn publish_health(
    engine: &mut Engine,
    sources: &Sources,
    health: &watch::Sender<Health>,
    latest: &watch::Sender<Option<Arc<HexWindow>>>,
) {
    let now = now_ms();
    let wm = engine.watermark().current();
    let stats = engine.stats().clone();
    metrics::gauge!("throng_watermark_lag_seconds").set(if wm == i64::MIN {
        0.0
    } else {
        (now - wm) as f64 / 1000.0
    });
    metrics::counter!("throng_windows_closed_total").absolute(stats.windows_closed);
    metrics::counter!("throng_register_resets_total").absolute(stats.register_resets);
    metrics::gauge!("throng_window_device_entries").set(engine.device_entries() as f64);
    metrics::gauge!("throng_window_state_bytes").set(engine.state_bytes() as f64);
    let mut srcs = Vec::new();
    for (i, c) in engine.watermark().sources().iter().enumerate() {
        if c.records == 0 {
            continue;
        }
        let name = sources.name(SourceId(i as u16));
        metrics::counter!("throng_late_records_total", "source" => name.clone()).absolute(c.late);
        srcs.push(SourceHealth {
            source: name,
            max_event_time: c.max_event,
            lag_ms: now - c.max_event,
            active: engine.watermark().is_active(i, now),
            records: c.records,
            late: c.late,
        });
    }
    let last_window_end = latest.borrow().as_ref().map(|w| w.end.0);
    health.send_replace(Health {
        watermark: (wm != i64::MIN).then_some(wm),
        watermark_lag_ms: (wm != i64::MIN).then_some(now - wm),
        sources: srcs,
        windows_closed: stats.windows_closed,
        last_window_end,
    });
}

/// `throng serve`: runs until Ctrl-C or SIGTERM.
pub fn serve_blocking(args: ServeArgs) -> anyhow::Result<()> {
    let cfg = args.config.load()?;
    for addr in [args.place.listen, args.place.pg_listen] {
        if cfg.auth.tokens.is_empty() && !addr.ip().is_loopback() {
            anyhow::bail!(
                "refusing to listen on {addr} with no auth tokens configured: add [[auth.tokens]] to the config or listen on 127.0.0.1"
            );
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let server = start_with(cfg, args.place.listen, Some(args.place.pg_listen), &args.place.data_dir).await?;
        spawn_sighup_reload(server.control.clone());
        println!(
            "throng is serving on {}://{}/ (health: /api/health, metrics: /metrics); SQL: psql -h {} -p {} -U analyst",
            if server.tls { "https" } else { "http" },
            server.addr,
            server.pg_addr.map(|a| a.ip().to_string()).unwrap_or_default(),
            server.pg_addr.map(|a| a.port()).unwrap_or_default(),
        );
        shutdown_signal().await;
        tracing::info!("Shutting down.");
        server.shutdown().await
    })
}

/// SIGHUP re-reads the segments file, like the reload API.
fn spawn_sighup_reload(control: mpsc::Sender<Control>) {
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            return;
        };
        while hup.recv().await.is_some() {
            let (tx, rx) = tokio::sync::oneshot::channel();
            if control.send(Control::ReloadSegments(tx)).await.is_err() {
                return;
            }
            let _ = rx.await;
        }
    });
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
}
