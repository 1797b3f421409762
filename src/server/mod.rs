//! The server: `start` wires the layers below into one running process — the commit path, the
//! engine task, HTTP (API, dashboard, WebSockets), the PostgreSQL wire and the MQTT sources — and
//! `Server::shutdown` stops them in order: listeners and feeds stop taking input, the ingest
//! queue closes, the engine drains it, flushes every open window and writes the history.
//! Signals are the binary's business (`cli::serve`); here shutdown is a call or a future.

pub mod api;
pub mod engine;
pub mod http;
pub mod memory;
pub mod metrics;
pub mod state;
pub mod tls;

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Config, FsyncPolicy};
use crate::durability::{Clock, Committer, FeedSink, Logged, Wal, WhenFull};
use crate::flow::{Flow, Health};
use crate::history::{History, Recorder};
use crate::live::{Hub, Picture, Publisher};
use crate::pipeline::Pipeline;
use crate::query::SqlEngine;
use crate::risk::{Risk, SegmentStatus, ThresholdStore};
use engine::EngineTask;
pub use state::{AppState, ControlError, EngineControl};

/// How long the stages may take to drain at shutdown before it is reported as a failure.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Replaced history files outlive the longest query by this much, on top of `sql.timeout`.
const FILE_GRACE_MARGIN: Duration = Duration::from_secs(10);

/// Where a server listens.
#[derive(Debug, Clone, Copy)]
pub struct Listeners {
    /// HTTP: API, dashboard, WebSockets (port 0: ephemeral).
    pub http: SocketAddr,
    /// The PostgreSQL wire, if wanted (port 0: ephemeral).
    pub pg: Option<SocketAddr>,
}

/// A running server.
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Where the PostgreSQL wire listens, if it does.
    pub pg_addr: Option<SocketAddr>,
    /// Whether both speak TLS (`[tls]`).
    pub tls: bool,
    state: AppState,
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Server {
    /// Feeds NDJSON records in-process, through the same decoder and commit path as `POST
    /// /api/ingest` (waiting for room rather than refusing). Returns (accepted, rejected).
    pub async fn feed(&self, ndjson: &[u8]) -> anyhow::Result<(usize, usize)> {
        let taken = self.state.sink.take(ndjson, WhenFull::Wait).await?;
        Ok((taken.accepted, taken.rejected.len()))
    }

    /// The newest status of every segment.
    pub fn segments(&self) -> Vec<SegmentStatus> {
        self.state.picture.latest()
    }

    /// Requests to the engine task (segment reload).
    pub fn control(&self) -> EngineControl {
        self.state.control.clone()
    }

    /// Stops taking requests, drains the engine and waits (bounded) for every task.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        let Server {
            state,
            token,
            tracker,
            ..
        } = self;
        // The engine ends when the last ingest sender is gone: ours goes now, the HTTP server's
        // when it has stopped.
        drop(state);
        token.cancel();
        tracker.close();
        tokio::time::timeout(DRAIN_TIMEOUT, tracker.wait())
            .await
            .with_context(|| format!("stages did not drain within {} s", DRAIN_TIMEOUT.as_secs()))
    }
}

/// Runs a server until `shutdown` resolves, then stops it in order.
pub async fn run(
    cfg: Config,
    listen: Listeners,
    data_dir: &Path,
    shutdown: impl Future<Output = ()>,
    on_start: impl FnOnce(&Server),
) -> anyhow::Result<()> {
    let server = start_on(cfg, listen, data_dir).await?;
    on_start(&server);
    shutdown.await;
    tracing::info!("Shutting down.");
    server.shutdown().await
}

/// Starts the server on `listen` without the PostgreSQL wire, keeping its files in `data_dir`.
pub async fn start(cfg: Config, listen: SocketAddr, data_dir: &Path) -> anyhow::Result<Server> {
    start_on(
        cfg,
        Listeners {
            http: listen,
            pg: None,
        },
        data_dir,
    )
    .await
}

/// `start`, with the PostgreSQL wire on `pg_listen` as well.
pub async fn start_with(
    cfg: Config,
    listen: SocketAddr,
    pg_listen: Option<SocketAddr>,
    data_dir: &Path,
) -> anyhow::Result<Server> {
    start_on(
        cfg,
        Listeners {
            http: listen,
            pg: pg_listen,
        },
        data_dir,
    )
    .await
}

/// Opens the history of `data_dir` for a server (replaced files outlive the longest query).
pub fn open_history(cfg: &Config, data_dir: &Path) -> anyhow::Result<Arc<History>> {
    let grace = cfg.sql.timeout + FILE_GRACE_MARGIN;
    Ok(Arc::new(
        History::open(data_dir, cfg.history.retention_days, grace)
            .with_context(|| format!("opening the history in {}", data_dir.display()))?,
    ))
}

/// The machine's name for a cluster member's default name (`HOSTNAME`, else /etc/hostname).
fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "throng".into())
}

/// Replays what the log holds beyond the checkpoint through the flow, with the processing times
/// the live run logged: the same records, times and ticks in the same order make the same
/// decisions (what is late, which windows close when, which tiers change), and what the history
/// already holds is recognised and not written again.
fn recover(
    flow: &mut engine::ServerFlow,
    recovery: crate::durability::Recovery,
    checkpointed: bool,
    clock: Clock,
) -> anyhow::Result<()> {
    let recovering = checkpointed || !recovery.entries.is_empty();
    let mut resume = engine::Resume::default();
    if let Some(v) = recovery.flow {
        match serde_json::from_value::<engine::Resume>(v) {
            Ok(r) => resume = r,
            Err(e) => {
                tracing::warn!(error = %e, "The checkpoint's tier state could not be read; tiers start afresh.")
            }
        }
    }
    flow.restore(resume.flow);
    if recovering {
        flow.outputs_mut()
            .1
            .resume(resume.recorder)
            .context("counting the alerts and late records already in the data dir")?;
    }
    let (mut records, mut ticks) = (0usize, 0usize);
    for entry in recovery.entries {
        match entry {
            Logged::Batch { at, records: batch } => {
                // A log written before batches carried their time replays at the time of start.
                let at = at.unwrap_or_else(|| clock.now());
                records += batch.len();
                for r in &batch {
                    flow.ingest(r, at);
                }
            }
            Logged::Tick(at) => {
                ticks += 1;
                flow.advance(at);
            }
        }
    }
    if records > 0 || ticks > 0 || recovery.torn > 0 {
        tracing::info!(
            records,
            ticks,
            torn = recovery.torn,
            downtime_s = clock.offset_ms() / 1000,
            "Recovered from the write-ahead log."
        );
    }
    Ok(())
}

/// Starts every part of a server.
pub async fn start_on(cfg: Config, listen: Listeners, data_dir: &Path) -> anyhow::Result<Server> {
    let cfg = Arc::new(cfg);
    crate::net::prepare_process(cfg.limits.max_connections);
    std::fs::create_dir_all(data_dir).with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let fsync = cfg.durability.fsync == FsyncPolicy::Always;
    let (mut wal, mut recovery) = Wal::open(data_dir, fsync)
        .with_context(|| format!("opening the write-ahead log in {}", data_dir.display()))?;
    // The log's records are numbered by the source table of the run that wrote them.
    let mut pipe = Pipeline::resuming(&cfg, &recovery.sources).context("loading the scenario")?;
    wal.log_sources(pipe.sources.clone());
    let checkpointed = recovery.engine.is_some();
    if let Some(engine) = recovery.engine.take() {
        if !engine.matches(&cfg.window) {
            anyhow::bail!(
                "{} was written with other [window] settings; restore them, or move the data dir aside to start fresh",
                data_dir.join(crate::durability::files::names::CHECKPOINT).display()
            );
        }
        pipe.engine = engine;
        // The config in force now decides presence, not the one the checkpoint was taken under.
        pipe.engine.apply_lbs(&cfg.lbs);
        pipe.engine.set_resend_horizon(&cfg.window);
    }
    pipe.refresh_scales();
    let history = open_history(&cfg, data_dir)?;
    let mut sql = SqlEngine::new(history.clone(), data_dir, cfg.sql.clone(), cfg.privacy.k);
    if let Some(c) = &cfg.cluster {
        std::fs::create_dir_all(&c.dir)
            .with_context(|| format!("creating the cluster folder {} (cluster.dir)", c.dir.display()))?;
        sql = sql.with_cluster(c.dir.clone());
    }
    let map = Arc::new(
        crate::scenario::load_segments(&cfg)
            .map_err(anyhow::Error::msg)
            .context("loading segments")?,
    );
    // In a cluster the organisers' thresholds live in the shared folder, beside the city stage.
    let thresholds_dir = cfg.cluster.as_ref().map_or(data_dir, |c| c.dir.as_path());
    let thresholds = ThresholdStore::open(Some(thresholds_dir))
        .map_err(|e| anyhow::anyhow!("{e}"))
        .context("loading thresholds")?;
    let kafka_status: Vec<crate::transport::kafka::KafkaStatus> =
        cfg.kafka.iter().map(|_| Default::default()).collect();
    let cluster_status: Vec<crate::cluster::member::ClusterStatus> = match &cfg.cluster {
        Some(_) => cfg.kafka.iter().map(|_| Default::default()).collect(),
        None => Vec::new(),
    };
    let acks = crate::live::AckStore::open(Some(data_dir)).with_context(|| {
        format!(
            "reading {}",
            data_dir
                .join(crate::durability::files::names::ALERT_ACKS)
                .display()
        )
    })?;
    let risk = Risk::new(
        map.clone(),
        pipe.registry.points().to_vec(),
        cfg.risk.clone(),
        thresholds.clone(),
        cfg.window.size.as_millis() as i64,
    );

    let (control, control_rx) = EngineControl::new();
    let (health_tx, health_rx) = watch::channel(Health::default());
    let (latest_tx, latest_rx) = watch::channel(None);
    let hub = Hub::default();
    let faults = Arc::new(crate::faults::Faults::default());
    let picture = Picture::new(map.clone());
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let registry = pipe.registry.clone();
    let Pipeline {
        parser,
        engine,
        sources,
        ..
    } = pipe;
    // In a cluster the viewers see the city (the city stage's viewer publishes); this instance's
    // own flow, fed only by what is posted to it, publishes nowhere.
    let (local_publisher, city_publisher) = if cfg.cluster.is_some() {
        let detached = Publisher::new(Hub::default(), Picture::new(map.clone()), watch::channel(None).0);
        (
            detached,
            Some(Publisher::new(hub.clone(), picture.clone(), latest_tx)),
        )
    } else {
        (Publisher::new(hub.clone(), picture.clone(), latest_tx), None)
    };
    let outputs = (
        local_publisher,
        Recorder::new(history, data_dir, cfg.history.flush_every).with_faults(faults.clone()),
    );
    let mut flow = Flow::new(engine, sources, risk, outputs, &cfg.window);
    recover(&mut flow, recovery, checkpointed, wal.clock())?;
    // The time start-up and the replay took is not feed silence either.
    wal.resume_clock();
    let (committer, rx) = Committer::new(wal, cfg.ingest.queue_batches, faults.clone());
    let task = EngineTask::new(
        flow,
        committer.checkpoints(),
        picture.clone(),
        health_tx,
        cfg.clone(),
        data_dir.to_owned(),
    );
    tracker.spawn(task.run(rx, control_rx));
    let sink = FeedSink::new(parser, committer, cfg.ingest.max_line_bytes);
    let throttle = crate::net::AuthThrottle::new(cfg.limits.auth_failures_per_minute);
    let state = AppState {
        sink: sink.clone(),
        health: health_rx,
        latest: latest_rx,
        metrics: metrics::handle(),
        config: cfg.clone(),
        picture,
        thresholds: thresholds.clone(),
        acks,
        kafka: kafka_status.clone(),
        cluster: cluster_status.clone(),
        control,
        hub,
        stop: token.clone(),
        limits: Arc::default(),
        throttle: throttle.clone(),
        faults,
        sql: sql.clone(),
    };
    let listener = tokio::net::TcpListener::bind(listen.http)
        .await
        .with_context(|| format!("binding {}", listen.http))?;
    let addr = listener.local_addr()?;
    for m in &cfg.mqtt {
        tracker.spawn(crate::transport::mqtt::run(
            m.clone(),
            sink.clone(),
            token.clone(),
        ));
    }
    if let (Some(c), Some(k), Some(viewer)) = (&cfg.cluster, cfg.kafka.first(), city_publisher) {
        crate::cluster::windows::ensure_topic(k, &c.windows_topic)
            .await
            .map_err(anyhow::Error::msg)
            .with_context(|| format!("the windows topic {:?} at {}", c.windows_topic, k.bootstrap))?;
        let windows = crate::cluster::windows::WindowsOut::new(k, &c.windows_topic)
            .with_context(|| format!("a producer to {}", k.bootstrap))?;
        let shared = crate::cluster::partition::Shared {
            cfg: cfg.clone(),
            registry: registry.clone(),
            map: map.clone(),
            root: c.dir.clone(),
            instance: c
                .instance
                .clone()
                .unwrap_or_else(|| format!("{}-{}", host_name(), std::process::id())),
            windows: Arc::new(windows),
        };
        let topic = c.windows_topic.clone();
        let (s, k2, status, stop) = (
            shared.clone(),
            k.clone(),
            cluster_status[0].clone(),
            token.clone(),
        );
        tracker.spawn_blocking(move || crate::cluster::member::run(s, k2, status, stop));
        let (s, k2, t, th, st, stop) = (
            shared.clone(),
            k.clone(),
            topic.clone(),
            thresholds.clone(),
            cluster_status[0].clone(),
            token.clone(),
        );
        tracker.spawn_blocking(move || crate::cluster::city::run_recorder(s, k2, t, th, st, stop));
        let (s, k2, t, th, st, stop) = (
            shared,
            k.clone(),
            topic,
            thresholds.clone(),
            cluster_status[0].clone(),
            token.clone(),
        );
        tracker.spawn_blocking(move || crate::cluster::city::run_viewer(s, k2, t, th, viewer, st, stop));
    }
    for (k, status) in cfg
        .kafka
        .iter()
        .zip(&kafka_status)
        .filter(|_| cfg.cluster.is_none())
    {
        let offsets = crate::transport::kafka::OffsetStore::open(Some(data_dir), &k.group)
            .with_context(|| format!("reading the Kafka offsets of group {:?}", k.group))?;
        tracker.spawn(crate::transport::kafka::run(
            k.clone(),
            sink.clone(),
            offsets,
            status.clone(),
            token.clone(),
        ));
    }
    let router = api::router(state.clone());
    let tls = tls::acceptor(&cfg.tls)?;
    let serving = http::HttpServing::new(&cfg.limits, cfg.sql.timeout);
    tracker.spawn(http::serve(
        listener,
        tls.clone(),
        router,
        serving,
        token.clone(),
        tracker.clone(),
    ));
    let pg_addr = match listen.pg {
        Some(pg) => {
            let l = tokio::net::TcpListener::bind(pg)
                .await
                .with_context(|| format!("binding the PostgreSQL-wire address {pg}"))?;
            let a = l.local_addr()?;
            tracker.spawn(crate::query::pg::serve(
                l,
                tls.clone(),
                sql,
                crate::query::pg::Guards::new(&cfg, throttle.clone()),
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
        state,
        token,
        tracker,
    })
}
