//! `/ws/live`: one task per viewer. It reads subscriptions, skips to the newest frames when it falls
//! behind, pings to find dead peers, and drops viewers that cannot take a frame in time.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{Message, Utf8Bytes, WebSocket};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

use super::frames::{self, Subscription};
use super::hub::{FrameKey, FrameKind, Hub, LiveEvent};
use crate::risk::SegmentStatus;
use crate::window::HexWindow;

/// Longest client message accepted.
pub const MAX_CLIENT_MESSAGE: usize = 4096;
/// A frame not written within this is a stalled viewer: it is dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(5);
/// Ping period; a viewer silent for 3 periods is gone.
const PING_EVERY: Duration = Duration::from_secs(10);

/// What a viewer needs beyond the hub.
pub struct ViewerContext {
    /// Engine resolution.
    pub engine_res: u8,
    /// Smallest published count.
    pub k: u32,
    /// Default subscription.
    pub default: Subscription,
    /// Newest final window, sent on connect.
    pub latest_window: Option<std::sync::Arc<HexWindow>>,
    /// Newest segment statuses, sent on connect.
    pub latest_segments: Vec<SegmentStatus>,
}

/// Adds `closed_at`: the server's wall clock (epoch ms) when the window closed or the snapshot was
/// taken, so a viewer (or `throng bench`) can measure close → arrival on its own clock.
fn stamp(text: String, at: Instant) -> String {
    let closed_at = crate::model::now_ms() - at.elapsed().as_millis() as i64;
    match text.strip_prefix('{') {
        Some(rest) => format!("{{\"closed_at\":{closed_at},{rest}"),
        None => text,
    }
}

fn encode(hub: &Hub, e: &LiveEvent, sub: &Subscription, k: u32) -> (FrameKind, Utf8Bytes, Instant) {
    let key = |ptr: usize| FrameKey {
        source: ptr,
        res: sub.res,
        bbox: sub.bbox,
        k,
    };
    match e {
        LiveEvent::Heatmap { window, progress, at } => {
            let text = hub.frame(key(Arc::as_ptr(window) as usize), window.clone(), || {
                stamp(frames::heatmap(window, progress, sub, k), *at)
            });
            (FrameKind::Heatmap, text, *at)
        }
        LiveEvent::Segments {
            window_end,
            segments,
            at,
        } => {
            // Segment frames do not depend on the view: one encoding for everybody.
            let k = FrameKey {
                source: Arc::as_ptr(segments) as usize,
                res: 0,
                bbox: [0.0; 4],
                k: 0,
            };
            let text = hub.frame(k, segments.clone(), || {
                stamp(frames::segments(*window_end, segments), *at)
            });
            (FrameKind::Segments, text, *at)
        }
        LiveEvent::Alert { alert, at } => (FrameKind::Alert, frames::alert(alert).into(), *at),
        LiveEvent::Ack { ack, at } => (FrameKind::Alert, frames::ack(ack).into(), *at),
    }
}

/// Serves one viewer until it leaves, stalls or the server stops.
pub async fn serve_viewer(
    socket: WebSocket,
    hub: Hub,
    ctx: ViewerContext,
    stop: tokio_util::sync::CancellationToken,
) {
    metrics::gauge!("throng_live_clients").increment(1.0);
    let (mut tx, mut rx) = socket.split();
    let mut events = hub.subscribe();
    let mut sub = ctx.default;
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    let mut last_heard = Instant::now();
    let mut bad_messages = 0u32;
    // The picture as it stands, at once.
    let mut ok = true;
    if !ctx.latest_segments.is_empty() {
        let end = ctx.latest_segments[0].window_end;
        ok &= send(&mut tx, frames::segments(end, &ctx.latest_segments)).await;
    }
    if let Some(w) = &ctx.latest_window {
        ok &= send(&mut tx, frames::heatmap(w, &[], &sub, ctx.k)).await;
    }
    while ok {
        tokio::select! {
            _ = stop.cancelled() => break,
            msg = rx.next() => {
                last_heard = Instant::now();
                match msg {
                    None | Some(Err(_)) | Some(Ok(Message::Close(_))) => break,
                    Some(Ok(Message::Text(t))) => {
                        let reply = if t.len() > MAX_CLIENT_MESSAGE {
                            Err(format!("message of {} bytes is over the {MAX_CLIENT_MESSAGE}-byte limit", t.len()))
                        } else {
                            sub.update(t.as_str(), ctx.engine_res)
                        };
                        let text = match reply {
                            Ok(()) => serde_json::json!({"type": "subscribed", "res": sub.res, "bbox": sub.bbox}).to_string(),
                            Err(e) => {
                                bad_messages += 1;
                                serde_json::json!({"type": "error", "error": e}).to_string()
                            }
                        };
                        ok = send(&mut tx, text).await && bad_messages < 20;
                    }
                    Some(Ok(Message::Binary(_))) => {
                        bad_messages += 1;
                        ok = bad_messages < 20;
                    }
                    Some(Ok(_)) => {}
                }
            }
            ev = events.recv() => {
                let batch = match ev {
                    Ok(e) => vec![e],
                    Err(RecvError::Lagged(n)) => {
                        metrics::counter!("throng_live_frames_skipped_total").increment(n);
                        newest(&mut events)
                    }
                    Err(RecvError::Closed) => break,
                };
                for e in batch {
                    let (kind, text, at) = encode(&hub, &e, &sub, ctx.k);
                    if !send(&mut tx, text).await {
                        metrics::counter!("throng_live_clients_dropped_total").increment(1);
                        ok = false;
                        break;
                    }
                    hub.record(kind, at);
                    metrics::counter!("throng_live_frames_total", "type" => kind.as_str()).increment(1);
                }
            }
            _ = ping.tick() => {
                if last_heard.elapsed() > PING_EVERY * 3 {
                    break;
                }
                ok = matches!(tokio::time::timeout(SEND_TIMEOUT, tx.send(Message::Ping(Default::default()))).await, Ok(Ok(())));
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), tx.close()).await;
    metrics::gauge!("throng_live_clients").decrement(1.0);
}

/// Writes one text frame; false when the viewer could not take it in time (it is then dropped).
async fn send(
    tx: &mut futures_util::stream::SplitSink<WebSocket, Message>,
    text: impl Into<Utf8Bytes>,
) -> bool {
    let fut = tx.send(Message::Text(text.into()));
    matches!(tokio::time::timeout(SEND_TIMEOUT, fut).await, Ok(Ok(())))
}

/// After falling behind: the newest heatmap and segments frames, and every alert still held.
fn newest(events: &mut tokio::sync::broadcast::Receiver<LiveEvent>) -> Vec<LiveEvent> {
    let (mut heat, mut segs, mut alerts) = (None, None, Vec::new());
    loop {
        match events.try_recv() {
            Ok(e @ LiveEvent::Heatmap { .. }) => heat = Some(e),
            Ok(e @ LiveEvent::Segments { .. }) => segs = Some(e),
            Ok(e @ (LiveEvent::Alert { .. } | LiveEvent::Ack { .. })) => alerts.push(e),
            Err(TryRecvError::Lagged(n)) => {
                metrics::counter!("throng_live_frames_skipped_total").increment(n)
            }
            Err(_) => break,
        }
    }
    alerts.into_iter().chain(segs).chain(heat).collect()
}
