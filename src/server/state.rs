//! What the routes are handed: typed handles onto the running pipeline, never its state. Each
//! handle keeps its own locks private.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::api::limits::Limits;
use crate::config::Config;
use crate::durability::FeedSink;
use crate::flow::Health;
use crate::live::{Hub, Picture};
use crate::query::SqlEngine;
use crate::risk::ThresholdStore;
use crate::window::HexWindow;

/// Requests to the engine task.
#[derive(Debug)]
pub enum Control {
    /// Re-read the segments file; the reply says how many segments are in force.
    ReloadSegments(oneshot::Sender<Result<usize, String>>),
}

/// Why a request to the engine task got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The engine task has stopped (the server is shutting down).
    #[error("the pipeline is shutting down")]
    Stopped,
    /// The request was refused; the reason says why.
    #[error("{0}")]
    Refused(String),
}

/// The way to the engine task's control queue.
#[derive(Debug, Clone)]
pub struct EngineControl {
    tx: mpsc::Sender<Control>,
}

/// Control requests waiting for the engine task at most.
pub const CONTROL_QUEUE: usize = 8;

impl EngineControl {
    /// A handle and the engine task's receiving end.
    pub fn new() -> (EngineControl, mpsc::Receiver<Control>) {
        let (tx, rx) = mpsc::channel(CONTROL_QUEUE);
        (EngineControl { tx }, rx)
    }

    /// Re-reads the segments file without losing window or tier state; the segments in force.
    pub async fn reload_segments(&self) -> Result<usize, ControlError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(Control::ReloadSegments(tx))
            .await
            .map_err(|_| ControlError::Stopped)?;
        rx.await
            .map_err(|_| ControlError::Stopped)?
            .map_err(ControlError::Refused)
    }
}

/// The routes' state.
#[derive(Clone)]
pub struct AppState {
    /// Feed bodies in: decoded, logged, queued.
    pub sink: FeedSink,
    /// The engine's latest health.
    pub health: watch::Receiver<Health>,
    /// The newest closed window.
    pub latest: watch::Receiver<Option<Arc<HexWindow>>>,
    /// Prometheus rendering.
    pub metrics: PrometheusHandle,
    /// Config in force.
    pub config: Arc<Config>,
    /// Segment statuses, their history, alerts, and the segments in force.
    pub picture: Picture,
    /// Organiser thresholds.
    pub thresholds: ThresholdStore,
    /// Who acknowledged which alert.
    pub acks: crate::live::AckStore,
    /// What each `[[kafka]]` source is doing.
    pub kafka: Vec<crate::transport::kafka::KafkaStatus>,
    /// What each cluster member (one per `[[kafka]]` source in cluster mode) holds.
    pub cluster: Vec<crate::cluster::member::ClusterStatus>,
    /// Requests to the engine task.
    pub control: EngineControl,
    /// Live frames to viewers.
    pub hub: Hub,
    /// Cancelled at shutdown (viewer and feed sockets end on it).
    pub stop: CancellationToken,
    /// Per-client limits.
    pub limits: Arc<Limits>,
    /// Failed tokens per address (shared with the PostgreSQL wire).
    pub throttle: Arc<crate::net::AuthThrottle>,
    /// SQL over history.
    pub sql: SqlEngine,
    /// Storage writes failing now (health shows them).
    pub faults: Arc<crate::faults::Faults>,
}
