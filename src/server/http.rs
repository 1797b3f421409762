//! The HTTP accept loop: axum::serve's, plus what it lacks for a server on an open network.
//! Connections past `limits.max_connections` (503) or `limits.connections_per_address` (429) are
//! answered and closed at once; a request header (also the next one on a kept-alive connection)
//! must arrive within `limits.header_timeout`; a connection that moves no byte mid-request for
//! `limits.idle_timeout` is closed. TLS handshakes get `header_timeout` too. An upgraded
//! WebSocket keeps its connection slot; its own pings and write timeouts (`live::ws`) take over.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::config::LimitsConfig;
use crate::net::{Activity, Admission, Refusal, Slot, Tracked};

/// The connection settings of one HTTP listener.
#[derive(Clone)]
pub struct HttpServing {
    /// Connection caps.
    pub admission: Arc<Admission>,
    /// Header timeout (also the TLS handshake's and the keep-alive wait's).
    pub header_timeout: Duration,
    /// No byte either way for this long mid-request: closed.
    pub idle_timeout: Duration,
}

impl HttpServing {
    /// From `[limits]`; the idle timeout never cuts a query that `sql.timeout` still allows.
    pub fn new(limits: &LimitsConfig, sql_timeout: Duration) -> HttpServing {
        HttpServing {
            admission: Admission::new("http", limits.max_connections, limits.connections_per_address),
            header_timeout: limits.header_timeout,
            idle_timeout: limits.idle_timeout.max(sql_timeout + Duration::from_secs(5)),
        }
    }
}

/// Serves `router` on `listener` (TLS with `tls`) until `stop`; connection tasks go on `tracker`.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    router: axum::Router,
    serving: HttpServing,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors, mostly: back off instead of spinning.
                    tracing::warn!(error = %e, "HTTP accept failed.");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let slot = match serving.admission.admit(peer.ip()) {
            Ok(s) => s,
            Err(refusal) => {
                if tls.is_none() {
                    tokio::spawn(refuse(tcp, refusal));
                }
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let router = router.clone();
        let serving = serving.clone();
        let stop = stop.clone();
        let tls = tls.clone();
        tracker.spawn(async move {
            match tls {
                None => connection(tcp, peer, slot, router, serving, stop).await,
                Some(acceptor) => {
                    match tokio::time::timeout(serving.header_timeout, acceptor.accept(tcp)).await {
                        Ok(Ok(io)) => connection(io, peer, slot, router, serving, stop).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed."),
                        Err(_) => serving.admission.closed(
                            "header_timeout",
                            "a TLS handshake did not finish within limits.header_timeout",
                        ),
                    }
                }
            }
        });
    }
}

/// Answers a connection that was not let in, and closes it.
async fn refuse(mut tcp: TcpStream, refusal: Refusal) {
    let status = match refusal {
        Refusal::Full(_) => "503 Service Unavailable",
        Refusal::Address { .. } => "429 Too Many Requests",
    };
    let body = serde_json::json!({ "error": refusal.to_string() }).to_string();
    let answer = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\nretry-after: 5\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        tcp.write_all(answer.as_bytes()).await?;
        tcp.shutdown().await
    })
    .await;
}

async fn connection<T>(
    io: T,
    peer: SocketAddr,
    slot: Slot,
    router: axum::Router,
    serving: HttpServing,
    stop: CancellationToken,
) where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Activity::new();
    let io = TokioIo::new(Tracked::new(io, activity.clone(), slot));
    let service = router.map_request(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        req.map(axum::body::Body::new)
    });
    let service = TowerToHyperService::new(service);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(serving.header_timeout)
        .keep_alive(true)
        .serve_connection(io, service)
        .with_upgrades();
    tokio::pin!(conn);
    let check = (serving.idle_timeout / 4).max(Duration::from_millis(250));
    let mut ticks = tokio::time::interval(check);
    let mut stopping = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    if e.is_timeout() {
                        serving.admission.closed("header_timeout", "a request header did not arrive within limits.header_timeout");
                    } else {
                        tracing::debug!(%peer, error = %e, "HTTP connection ended with an error.");
                    }
                }
                return;
            }
            _ = stop.cancelled(), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = ticks.tick() => {
                if activity.idle() >= serving.idle_timeout {
                    serving.admission.closed("idle_timeout", "a connection moved no byte for limits.idle_timeout");
                    return;
                }
            }
        }
    }
}
