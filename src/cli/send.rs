//! Sending feeds to a server: batches POSTed to `/api/ingest`, paced by event time or flat out,
//! retried on 429/503 after `Retry-After` so nothing is dropped.

use std::time::{Duration, Instant};

/// Posts NDJSON batches to a throng server.
pub struct Sender {
    url: String,
    token: Option<String>,
    agent: ureq::Agent,
    /// Records the server accepted.
    pub accepted: u64,
    /// Records it rejected (with reasons logged).
    pub rejected: u64,
    /// Times it asked us to wait.
    pub retries: u64,
}

impl Sender {
    /// A sender to `base` (e.g. `http://127.0.0.1:8080`), with an optional feed token.
    pub fn new(base: &str, token: Option<String>) -> anyhow::Result<Sender> {
        let base = base.trim_end_matches('/');
        if !base.starts_with("http://") {
            anyhow::bail!("--target must be an http:// URL such as http://127.0.0.1:8080, got {base:?}");
        }
        let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(30)).build();
        Ok(Sender {
            url: format!("{base}/api/ingest"),
            token,
            agent,
            accepted: 0,
            rejected: 0,
            retries: 0,
        })
    }

    /// Sends one batch, waiting and retrying while the server is over capacity, and splitting it
    /// in two (in order) while the server says it is too large for one request.
    pub fn send(&mut self, body: &[u8]) -> anyhow::Result<()> {
        if body.is_empty() {
            return Ok(());
        }
        match self.send_whole(body)? {
            None => Ok(()),
            Some(refusal) => {
                // Split at the line boundary nearest the middle.
                let mid = body.len() / 2;
                let cut = body[mid..]
                    .iter()
                    .position(|b| *b == b'\n')
                    .map(|i| mid + i + 1)
                    .filter(|c| *c < body.len())
                    .or_else(|| body[..mid].iter().rposition(|b| *b == b'\n').map(|i| i + 1))
                    .filter(|c| *c > 0);
                let Some(cut) = cut else {
                    anyhow::bail!("the server refused a single line as too large: {refusal}");
                };
                self.retries += 1;
                self.send(&body[..cut])?;
                self.send(&body[cut..])
            }
        }
    }

    /// One batch as it is; Some(the server's reason) when it is too large for one request.
    fn send_whole(&mut self, body: &[u8]) -> anyhow::Result<Option<String>> {
        let started = Instant::now();
        loop {
            let mut req = self
                .agent
                .post(&self.url)
                .set("Content-Type", "application/x-ndjson");
            if let Some(t) = &self.token {
                req = req.set("Authorization", &format!("Bearer {t}"));
            }
            match req.send_bytes(body) {
                Ok(resp) => {
                    let v: serde_json::Value =
                        serde_json::from_str(&resp.into_string().unwrap_or_default()).unwrap_or_default();
                    self.accepted += v["accepted"].as_u64().unwrap_or(0);
                    for r in v["rejected"].as_array().into_iter().flatten() {
                        self.rejected += 1;
                        tracing::warn!(line = %r["line"], "Rejected by the server: {}", r["error"].as_str().unwrap_or(""));
                    }
                    return Ok(None);
                }
                Err(ureq::Error::Status(413, resp)) => {
                    return Ok(Some(resp.into_string().unwrap_or_default()))
                }
                Err(ureq::Error::Status(code @ (429 | 503), resp)) => {
                    let wait = resp
                        .header("Retry-After")
                        .and_then(|s| s.parse::<u64>().ok())
                        .unwrap_or(1);
                    self.retries += 1;
                    if started.elapsed() > Duration::from_secs(600) {
                        anyhow::bail!("the server answered {code} for 10 minutes; giving up on this batch");
                    }
                    std::thread::sleep(Duration::from_secs(wait.clamp(1, 30)));
                }
                Err(ureq::Error::Status(code, resp)) => {
                    let text = resp.into_string().unwrap_or_default();
                    anyhow::bail!("the server refused the batch with {code}: {text}");
                }
                Err(e) => anyhow::bail!("cannot reach {}: {e}", self.url),
            }
        }
    }
}

/// A `Sender` on its own thread: the caller builds the next batch while the last one is in
/// flight. Batches go out one at a time, in the order given, so event-time order is kept.
pub struct Pipelined {
    tx: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    worker: Option<std::thread::JoinHandle<anyhow::Result<Sender>>>,
}

impl Pipelined {
    /// Starts the sending thread.
    pub fn new(sender: Sender) -> Pipelined {
        // One batch queued behind the one in flight: enough to hide the reading, and memory
        // stays at three batches.
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(1);
        let worker = std::thread::spawn(move || {
            let mut sender = sender;
            for body in rx {
                sender.send(&body)?;
            }
            Ok(sender)
        });
        Pipelined {
            tx: Some(tx),
            worker: Some(worker),
        }
    }

    /// Queues a batch; fails with the sending thread's error if it has stopped.
    pub fn send(&mut self, body: Vec<u8>) -> anyhow::Result<()> {
        if body.is_empty() {
            return Ok(());
        }
        let sent = self.tx.as_ref().is_some_and(|tx| tx.send(body).is_ok());
        if sent {
            return Ok(());
        }
        // The thread stopped: its error says why.
        match self.finish() {
            Err(e) => Err(e),
            Ok(_) => anyhow::bail!("the sending thread stopped"),
        }
    }

    /// Waits for every queued batch to be acknowledged; returns the sender with its counts.
    pub fn finish(&mut self) -> anyhow::Result<Sender> {
        self.tx = None;
        match self.worker.take() {
            Some(w) => w
                .join()
                .map_err(|_| anyhow::anyhow!("the sending thread panicked"))?,
            None => anyhow::bail!("the sender was already finished"),
        }
    }
}
