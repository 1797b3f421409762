//! Connection admission shared by every listener (HTTP and the PostgreSQL wire): caps on open
//! connections in total and per client address, a throttle on failed tokens per address, and an
//! I/O wrapper that records when a connection last moved a byte (for the idle timeout).
//!
//! A refusal is counted (`throng_connections_refused_total{listener,reason}`) and logged at most
//! once per ten seconds per reason with the count since, so a flood of connections cannot flood
//! the log as well.

use std::collections::HashMap;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Why a connection was not let in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The listener holds its most connections.
    #[error("the server holds its most connections ({0}, limits.max_connections)")]
    Full(usize),
    /// This address holds its most connections.
    #[error("{ip} already has {max} connections open (limits.connections_per_address)")]
    Address {
        /// The client address.
        ip: IpAddr,
        /// The cap.
        max: usize,
    },
}

impl Refusal {
    /// The metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::Full(_) => "max_connections",
            Refusal::Address { .. } => "connections_per_address",
        }
    }
}

/// The open connections of one listener.
#[derive(Debug)]
pub struct Admission {
    listener: &'static str,
    max_total: usize,
    per_address: usize,
    total: AtomicUsize,
    by_address: Mutex<HashMap<IpAddr, usize>>,
    log: Mutex<HashMap<&'static str, (Instant, u64)>>,
}

/// One admitted connection; gives its place back when dropped (with the connection's I/O).
#[derive(Debug)]
pub struct Slot {
    admission: Arc<Admission>,
    ip: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let open = self.admission.total.fetch_sub(1, Ordering::Relaxed) - 1;
        metrics::gauge!("throng_connections_open", "listener" => self.admission.listener).set(open as f64);
        let mut m = self
            .admission
            .by_address
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

impl Admission {
    /// Caps for `listener` (a name for logs and metrics: `http`, `pgwire`).
    pub fn new(listener: &'static str, max_total: usize, per_address: usize) -> Arc<Admission> {
        Arc::new(Admission {
            listener,
            max_total,
            per_address,
            total: AtomicUsize::new(0),
            by_address: Mutex::new(HashMap::new()),
            log: Mutex::new(HashMap::new()),
        })
    }

    /// Lets a connection from `ip` in, or says why not (and counts and logs the refusal).
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, Refusal> {
        let mut m = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
        let refusal = if self.total.load(Ordering::Relaxed) >= self.max_total {
            Some(Refusal::Full(self.max_total))
        } else if m.get(&ip).copied().unwrap_or(0) >= self.per_address {
            Some(Refusal::Address {
                ip,
                max: self.per_address,
            })
        } else {
            None
        };
        if let Some(r) = refusal {
            drop(m);
            self.closed(r.reason(), &r.to_string());
            return Err(r);
        }
        *m.entry(ip).or_default() += 1;
        let open = self.total.fetch_add(1, Ordering::Relaxed) + 1;
        metrics::gauge!("throng_connections_open", "listener" => self.listener).set(open as f64);
        Ok(Slot {
            admission: self.clone(),
            ip,
        })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Counts a connection refused or closed for `reason` and logs it, at most once per ten
    /// seconds per reason (with how many there were since the last line).
    pub fn closed(&self, reason: &'static str, detail: &str) {
        metrics::counter!("throng_connections_refused_total", "listener" => self.listener, "reason" => reason)
            .increment(1);
        let mut log = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let (last, since) = log.entry(reason).or_insert((now - Duration::from_secs(3600), 0));
        *since += 1;
        if now.duration_since(*last) >= Duration::from_secs(10) {
            tracing::warn!(
                listener = self.listener,
                reason,
                count = *since,
                "Connection refused or closed: {detail}."
            );
            *last = now;
            *since = 0;
        }
    }
}

/// Failed tokens per client address: past `budget` in a minute, that address is told to wait.
#[derive(Debug)]
pub struct AuthThrottle {
    budget: u32,
    window: Duration,
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
}

impl AuthThrottle {
    /// `budget` failures per minute per address (0: never throttle).
    pub fn new(budget: u32) -> Arc<AuthThrottle> {
        Arc::new(AuthThrottle {
            budget,
            window: Duration::from_secs(60),
            failures: Mutex::new(HashMap::new()),
        })
    }

    /// Records one failed token from `ip`.
    pub fn failed(&self, ip: IpAddr) {
        if self.budget == 0 {
            return;
        }
        let now = Instant::now();
        let mut m = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        if m.len() > 100_000 {
            // Addresses whose minute is over hold nothing worth keeping.
            let window = self.window;
            m.retain(|_, (start, _)| now.duration_since(*start) < window);
        }
        let (start, n) = m.entry(ip).or_insert((now, 0));
        if now.duration_since(*start) >= self.window {
            *start = now;
            *n = 0;
        }
        *n += 1;
        if *n == self.budget {
            metrics::counter!("throng_auth_throttled_total").increment(1);
            tracing::warn!(%ip, budget = self.budget, "Too many failed tokens from one address; it waits out the minute (limits.auth_failures_per_minute).");
        }
    }

    /// How long `ip` must wait before its next token is looked at, if it is over its budget.
    pub fn wait(&self, ip: IpAddr) -> Option<Duration> {
        if self.budget == 0 {
            return None;
        }
        let m = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let (start, n) = m.get(&ip)?;
        let elapsed = start.elapsed();
        (*n >= self.budget && elapsed < self.window).then(|| self.window - elapsed)
    }
}

/// When a connection last moved a byte, either way.
#[derive(Debug)]
pub struct Activity {
    epoch: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    /// Active now.
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
        })
    }

    /// Marks activity now.
    pub fn touch(&self) {
        self.last_ms
            .store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// How long since the last activity.
    pub fn idle(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

/// A connection's I/O that marks its `Activity` and holds its `Slot` for as long as it lives
/// (after a WebSocket upgrade too).
#[derive(Debug)]
pub struct Tracked<T> {
    io: T,
    activity: Arc<Activity>,
    _slot: Slot,
}

impl<T> Tracked<T> {
    /// Wraps `io`.
    pub fn new(io: T, activity: Arc<Activity>, slot: Slot) -> Tracked<T> {
        Tracked {
            io,
            activity,
            _slot: slot,
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// Readies the process for many connections and a disk that may refuse writes: raises the
/// open-file limit (warning when it is still below what `max_connections` on two listeners
/// needs) and ignores SIGXFSZ, so a file-size limit (RLIMIT_FSIZE) makes a write fail with EFBIG,
/// which the write-ahead log answers with 503, instead of killing the process.
pub fn prepare_process(max_connections: usize) {
    // SAFETY: setting a signal's disposition to SIG_IGN touches no Rust state.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    let need = 2 * max_connections as u64 + 256;
    match raise_open_files() {
        Some(n) if n < need => tracing::warn!(
            open_files = n,
            need,
            "The open-file limit is below what limits.max_connections needs on HTTP and the PostgreSQL wire; raise it (ulimit -n) or lower the limit."
        ),
        _ => {}
    }
}

/// Raises this process's open-file limit to its hard limit (each connection is a descriptor;
/// the usual soft limit of 1,024 is far below `limits.max_connections`). Returns the limit now.
pub fn raise_open_files() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let want = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    Some(lim.rlim_cur)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_count_in_total_and_per_address_and_slots_come_back() {
        let a = Admission::new("test", 3, 2);
        let x: IpAddr = "127.0.0.1".parse().unwrap();
        let y: IpAddr = "127.0.0.2".parse().unwrap();
        let s1 = a.admit(x).unwrap();
        let _s2 = a.admit(x).unwrap();
        assert_eq!(a.admit(x).unwrap_err(), Refusal::Address { ip: x, max: 2 });
        let _s3 = a.admit(y).unwrap();
        assert_eq!(a.admit(y).unwrap_err(), Refusal::Full(3));
        drop(s1);
        assert_eq!(a.open(), 2);
        assert!(a.admit(x).is_ok(), "a closed connection gives its place back");
    }

    #[test]
    fn an_address_over_its_failure_budget_waits_and_others_do_not() {
        let t = AuthThrottle::new(3);
        let x: IpAddr = "10.0.0.1".parse().unwrap();
        let y: IpAddr = "10.0.0.2".parse().unwrap();
        t.failed(x);
        t.failed(x);
        assert_eq!(t.wait(x), None);
        t.failed(x);
        let w = t.wait(x).expect("the third failure uses the budget up");
        assert!(w <= Duration::from_secs(60) && w > Duration::from_secs(50));
        assert_eq!(t.wait(y), None);
        assert_eq!(AuthThrottle::new(0).wait(x), None);
    }

    #[test]
    fn activity_is_marked_by_bytes_moved() {
        let a = Activity::new();
        std::thread::sleep(Duration::from_millis(30));
        assert!(a.idle() >= Duration::from_millis(30));
        a.touch();
        assert!(a.idle() < Duration::from_millis(30));
    }
}
