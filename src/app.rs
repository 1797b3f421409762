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

use crate::cli::ServeArgs;
use crate::config::Config;
use crate::ingest::Sources;
use crate::model::{EventTime, Record, SourceId};
use crate::pipeline::Pipeline;
use crate::window::{Engine, HexWindow};

/// Batches of parsed records waiting for the engine.
const INGEST_QUEUE_BATCHES: usize = 256;

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
    pub ingest: mpsc::Sender<Vec<Record>>,
    /// The engine's latest health.
    pub health: watch::Receiver<Health>,
    /// The newest closed window.
    pub latest: watch::Receiver<Option<Arc<HexWindow>>>,
    /// Prometheus rendering.
    pub metrics: PrometheusHandle,
    /// Config in force.
    pub config: Arc<Config>,
}

/// A running server.
pub struct Server {
    /// Where it listens.
    pub addr: SocketAddr,
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Server {
    /// Stops taking requests, drains the engine and waits (bounded) for every task.
    pub async fn shutdown(self) -> anyhow::Result<()> {
        self.token.cancel();
        self.tracker.close();
        tokio::time::timeout(Duration::from_secs(10), self.tracker.wait())
            .await
            .context("stages did not drain within 10 s")
    }
}

/// Starts the server on `listen` (port 0: an ephemeral port, see `Server::addr`).
pub async fn start(cfg: Config, listen: SocketAddr) -> anyhow::Result<Server> {
    let cfg = Arc::new(cfg);
    let pipe = Pipeline::from_config(&cfg).context("loading the scenario")?;
    let (tx, rx) = mpsc::channel(INGEST_QUEUE_BATCHES);
    let (health_tx, health_rx) = watch::channel(Health::default());
    let (latest_tx, latest_rx) = watch::channel(None);
    let token = CancellationToken::new();
    let tracker = TaskTracker::new();
    let Pipeline {
        parser,
        engine,
        sources,
    } = pipe;
    tracker.spawn(run_engine(engine, sources, rx, health_tx, latest_tx));
    let handles = Handles {
        parser,
        ingest: tx,
        health: health_rx,
        latest: latest_rx,
        metrics: metrics_handle(),
        config: cfg.clone(),
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    let addr = listener.local_addr()?;
    let router = crate::api::router(handles);
    let t = token.clone();
    tracker.spawn(async move {
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(t.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "HTTP server failed.");
        }
    });
    if cfg.auth.tokens.is_empty() {
        tracing::warn!(
            "NO AUTH TOKENS CONFIGURED: every role is open (demo mode). Listening on loopback only."
        );
    }
    tracing::info!(%addr, scenario = %cfg.scenario.display(), "Listening.");
    Ok(Server { addr, token, tracker })
}

async fn run_engine(
    mut engine: Engine,
    sources: Arc<Sources>,
    mut rx: mpsc::Receiver<Vec<Record>>,
    health: watch::Sender<Health>,
    latest: watch::Sender<Option<Arc<HexWindow>>>,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            batch = rx.recv() => match batch {
                Some(b) => {
                    let now = now_ms();
                    for r in &b {
                        engine.ingest(r, now);
                    }
                }
                None => break,
            },
            _ = tick.tick() => {}
        }
        if engine.scales_known() != sources.len() {
            engine.set_scales(sources.scales());
        }
        let closed = engine.advance(now_ms());
        publish(&mut engine, &sources, closed, &health, &latest);
    }
    let closed = engine.flush();
    publish(&mut engine, &sources, closed, &health, &latest);
    tracing::info!("Engine drained and flushed.");
}

fn publish(
    engine: &mut Engine,
    sources: &Sources,
    closed: Vec<HexWindow>,
    health: &watch::Sender<Health>,
    latest: &watch::Sender<Option<Arc<HexWindow>>>,
) {
    for w in closed {
        tracing::debug!(start = %w.start, cells = w.rows.len(), "Closed window.");
        latest.send_replace(Some(Arc::new(w)));
    }
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
    // Late records are kept for the history stage; until it lands they are logged in summary.
    let late = engine.take_late();
    if !late.is_empty() {
        tracing::info!(late = late.len(), oldest = %late.iter().map(|l| l.ts).min().unwrap_or(EventTime(0)), "Late records.");
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
    if cfg.auth.tokens.is_empty() && !args.listen.ip().is_loopback() {
        anyhow::bail!(
            "refusing to listen on {} with no auth tokens configured: add [[auth.tokens]] to the config or listen on 127.0.0.1",
            args.listen
        );
    }
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("creating data dir {}", args.data_dir.display()))?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(async move {
        let server = start(cfg, args.listen).await?;
        println!(
            "throng is serving on http://{}/ (health: /api/health, metrics: /metrics)",
            server.addr
        );
        shutdown_signal().await;
        tracing::info!("Shutting down.");
        server.shutdown().await
    })
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
