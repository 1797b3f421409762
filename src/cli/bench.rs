//! `throng bench`: the load harness. Simulated Bund traffic over HTTP ingest into a server
//! (in-process, or `--target URL`), with M live viewers on `/ws/live`, for a bounded time; then a
//! report: accepted ev/s (and the offline pipeline's rate on the same records, as a ratio), ack
//! latency, window close → frame-at-viewer latency, frames skipped, memory.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde::Serialize;

use crate::config::Config;
use crate::pipeline::Pipeline;
use crate::tools::sim::{Emitter, SimConfig, World};

/// `throng bench`.
#[derive(Debug, Args, Clone)]
pub struct BenchArgs {
    /// Load this server (`http://HOST:PORT`) instead of one started in-process on loopback with a
    /// temporary data dir.
    #[arg(long)]
    pub target: Option<String>,
    /// Feed token for --target (viewers use --viewer-token).
    #[arg(long, env = "THRONG_TOKEN")]
    pub token: Option<String>,
    /// Viewer token for --target.
    #[arg(long)]
    pub viewer_token: Option<String>,
    /// Scenario folder the simulator walks.
    #[arg(long, default_value = "fixtures/bund")]
    pub scenario: PathBuf,
    /// Configuration of the in-process server (default: the scenario's throng.toml).
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// People simulated.
    #[arg(long, default_value_t = 200_000)]
    pub devices: usize,
    /// Event-time seconds of traffic (the night compressed into them). They start a minute
    /// ahead of the clock and are sent faster than real time, so at most 230 s keeps every record
    /// inside the server's 5-minute `ingest.max_future`. With --soak: the length of one night.
    #[arg(long, default_value_t = 180.0)]
    pub duration: f64,
    /// Soak mode: stream the traffic in real time (event time = wall clock) for this many seconds,
    /// the night repeating every --duration seconds, generated as it is sent; reports resident
    /// memory minute by minute. No offline comparison (the records are not kept).
    #[arg(long, value_name = "SECONDS")]
    pub soak: Option<u64>,
    /// Records per second to offer (0: as fast as the server acknowledges; with --soak the clock
    /// paces the stream and this is ignored).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Live viewers connected to /ws/live.
    #[arg(long, default_value_t = 100)]
    pub viewers: usize,
    /// Parallel HTTP senders.
    #[arg(long, default_value_t = 4)]
    pub senders: usize,
    /// Records per request.
    #[arg(long, default_value_t = 5_000)]
    pub batch: usize,
    /// Stop sending after this many wall-clock seconds, whatever is left.
    #[arg(long, default_value_t = 120)]
    pub max_seconds: u64,
    /// Seed of the simulation.
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// What a bench run measured.
#[derive(Debug, Clone, Serialize, Default)]
pub struct BenchReport {
    /// Records generated.
    pub records: u64,
    /// Records the server acknowledged.
    pub accepted: u64,
    /// Wall-clock seconds of sending.
    pub send_seconds: f64,
    /// Accepted records per second, sustained over the sending time.
    pub accepted_per_s: f64,
    /// The offline pipeline (parse → windows, no transport, no log, no push) on the same records.
    pub offline_per_s: Option<f64>,
    /// accepted_per_s / offline_per_s.
    pub ratio_to_offline: Option<f64>,
    /// Requests answered 429/503 and retried.
    pub retries: u64,
    /// Ack latency per request (ms): p50, p99, p99.9, max.
    pub ack_ms: [f64; 4],
    /// Viewers connected.
    pub viewers: usize,
    /// Final heatmap frames received, over all viewers.
    pub heatmap_frames: u64,
    /// Window close → final heatmap frame at the viewer (ms): p50, p99, max.
    pub close_to_viewer_ms: [f64; 3],
    /// Windows a viewer never got a final heatmap for (gaps in its sequence), over all viewers.
    pub viewer_gaps: u64,
    /// Frames the server skipped for viewers that fell behind (`throng_live_frames_skipped_total`).
    pub frames_skipped: Option<f64>,
    /// Peak resident memory of this process, MiB (the server's, when it runs in-process).
    pub peak_rss_mib: Option<f64>,
    /// Resident memory sampled each second over the second half of sending (MiB): min and max.
    pub rss_second_half_mib: Option<[f64; 2]>,
    /// Window state bytes (estimated heap), at the sample with the most active devices.
    pub state_bytes: Option<f64>,
    /// Distinct devices in open windows.
    pub active_devices: Option<f64>,
    /// Soak mode: the highest resident memory (MiB) seen in each minute of sending.
    pub rss_by_minute_mib: Vec<f64>,
    /// state_bytes / active_devices.
    pub state_bytes_per_device: Option<f64>,
    /// Records the engine has taken into windows (`/api/health`, every source), once sending
    /// stopped and the queue drained. With `duplicates`, equal to `accepted` when nothing
    /// acknowledged was lost.
    pub engine_records: Option<u64>,
    /// Records the engine recognised as resends of one already counted and dropped
    /// (`throng_ingest_duplicates_total`).
    pub duplicates: Option<u64>,
}

/// What a viewer reads of a frame.
#[derive(serde::Deserialize)]
struct FrameHead {
    #[serde(rename = "type")]
    kind: String,
    #[serde(rename = "final", default)]
    is_final: bool,
    closed_at: Option<i64>,
    window_end: Option<i64>,
}

fn rss_kib(field: &str) -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .reduce(|a, b| a + b)
}

fn quantiles(h: &Histogram<u64>, qs: &[f64]) -> Vec<f64> {
    qs.iter()
        .map(|q| {
            if h.is_empty() {
                0.0
            } else if *q >= 1.0 {
                h.max() as f64 / 1000.0
            } else {
                h.value_at_quantile(*q) as f64 / 1000.0
            }
        })
        .collect()
}

/// How far ahead of the clock the generated traffic starts: room to generate it and time the
/// offline pipeline before sending. Records must not be older than the watermark when they arrive
/// (a server with silent feeds holds its watermark at the wall clock), nor too far ahead.
const LEAD_MS: i64 = 60_000;

/// Generates the feed: `batch`-line NDJSON bodies, the records' total, and their first event time.
fn generate(args: &BenchArgs) -> anyhow::Result<(Vec<Vec<u8>>, u64, i64)> {
    if !(10.0..=230.0).contains(&args.duration) {
        anyhow::bail!(
            "--duration must be between 10 and 230 seconds (records must stay within the server's 5-minute ingest.max_future)"
        );
    }
    let start_ms = crate::model::now_ms() + LEAD_MS;
    let world = night(args, start_ms, args.seed)?;
    let mut em = Emitter::new(&world);
    let mut all = Vec::new();
    em.emit_until(args.duration + 1.0, &mut all);
    let mut bodies = Vec::new();
    let total = split_bodies(&all, args.batch, |b| bodies.push(b));
    Ok((bodies, total, start_ms))
}

/// One simulated night of `--duration` seconds from `start_ms`.
fn night(args: &BenchArgs, start_ms: i64, seed: u64) -> anyhow::Result<World> {
    let cfg = SimConfig {
        people: args.devices,
        duration_s: args.duration,
        start_ms,
        speed: 1.0,
        seed,
        panel: crate::tools::sim::Panel::bund(),
        changes: Default::default(),
    };
    World::load(&args.scenario, cfg).map_err(anyhow::Error::msg)
}

/// Cuts NDJSON into bodies of at most `batch` lines; returns the number of lines.
fn split_bodies(all: &[u8], batch: usize, mut push: impl FnMut(Vec<u8>)) -> u64 {
    let mut body = Vec::with_capacity(batch * 140);
    let (mut n, mut total) = (0, 0u64);
    for line in all.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        body.extend_from_slice(line);
        body.push(b'\n');
        n += 1;
        total += 1;
        if n == batch {
            push(std::mem::replace(&mut body, Vec::with_capacity(batch * 140)));
            n = 0;
        }
    }
    if !body.is_empty() {
        push(body);
    }
    total
}

/// Soak mode's generator: nights back to back in real time, each second's records sent as they
/// fall due, until `stop_at`. Returns the records generated. The next night is built while the
/// current one plays, so the stream has no pause between nights.
fn stream(
    args: &BenchArgs,
    tx: std::sync::mpsc::SyncSender<(usize, Vec<u8>)>,
    stop_at: Instant,
) -> anyhow::Result<u64> {
    let cycle_ms = (args.duration * 1000.0) as i64;
    let mut start_ms = crate::model::now_ms();
    let mut world = night(args, start_ms, args.seed)?;
    let (mut total, mut seq, mut cycle) = (0u64, 0usize, 0u64);
    loop {
        cycle += 1;
        let next_start = start_ms + cycle_ms;
        let next = std::thread::scope(|s| -> anyhow::Result<Option<World>> {
            let builder = s.spawn(|| night(args, next_start, args.seed + cycle));
            let mut em = Emitter::new(&world);
            let mut buf = Vec::new();
            while !em.done() {
                if Instant::now() >= stop_at {
                    return Ok(None);
                }
                let t = (crate::model::now_ms() - start_ms) as f64 / 1000.0;
                buf.clear();
                em.emit_until(t, &mut buf);
                let mut gone = false;
                total += split_bodies(&buf, args.batch, |b| {
                    gone |= tx.send((seq, b)).is_err();
                    seq += 1;
                });
                if gone {
                    return Ok(None);
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            let w = builder
                .join()
                .map_err(|_| anyhow::anyhow!("building the next night panicked"))??;
            Ok(Some(w))
        })?;
        match next {
            Some(w) => world = w,
            None => return Ok(total),
        }
        start_ms = next_start;
        // The night's last second may end before the next begins on the clock.
        if let Some(wait) = u64::try_from(start_ms - crate::model::now_ms())
            .ok()
            .filter(|w| *w > 0)
        {
            std::thread::sleep(Duration::from_millis(wait));
        }
    }
}

fn offline_rate(cfg: &Config, bodies: &[Vec<u8>], records: u64) -> anyhow::Result<f64> {
    let mut pipe = Pipeline::from_config(cfg).context("loading the scenario")?;
    let all: Vec<u8> = bodies.concat();
    let started = Instant::now();
    let mut windows = 0u64;
    pipe.process_ndjson(&all, |_| {
        windows += 1;
        Ok(())
    })?;
    Ok(records as f64 / started.elapsed().as_secs_f64())
}

/// Runs the bench and prints the report.
pub fn run(args: &BenchArgs) -> anyhow::Result<BenchReport> {
    if args.senders == 0 || args.batch == 0 {
        anyhow::bail!("--senders and --batch must be at least 1");
    }
    // The in-process server runs under the same allocator policy as `serve`, so its memory
    // figures are a server's.
    if args.target.is_none() {
        crate::server::memory::return_freed_memory();
    }
    let mut cfg = super::scenario_config(&args.scenario, args.config.as_deref())?;
    // Every viewer and sender of the in-process run comes from 127.0.0.1: the per-address caps
    // that protect a real server from one client would refuse the harness itself.
    cfg.limits.ws_per_address = cfg.limits.ws_per_address.max(args.viewers + 8);
    let clients = args.viewers + args.senders + 64;
    cfg.limits.connections_per_address = cfg.limits.connections_per_address.max(clients);
    cfg.limits.max_connections = cfg.limits.max_connections.max(clients + 64);
    let (feed, records, first_ts, offline) = match args.soak {
        Some(secs) => {
            if !(10.0..=3600.0).contains(&args.duration) || secs < 10 {
                anyhow::bail!(
                    "with --soak, --duration (one night) must be 10 to 3600 s and --soak at least 10 s"
                );
            }
            eprintln!(
                "soak: {} people, a {} s night repeating, streamed in real time for {secs} s…",
                args.devices, args.duration
            );
            (None, 0, i64::MAX, None)
        }
        None => {
            eprintln!(
                "generating {} people over {} s of event time…",
                args.devices, args.duration
            );
            let (bodies, records, first_ts) = generate(args)?;
            eprintln!(
                "{records} records in {} requests; timing the offline pipeline on them…",
                bodies.len()
            );
            let offline = if args.target.is_none() {
                Some(offline_rate(&cfg, &bodies, records)?)
            } else {
                None
            };
            (Some(bodies), records, first_ts, offline)
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let data = tempfile::tempdir()?;
    let (server, base) = match &args.target {
        Some(t) => (None, t.trim_end_matches('/').to_owned()),
        None => {
            let s = rt.block_on(crate::server::start(
                cfg.clone(),
                "127.0.0.1:0".parse()?,
                data.path(),
            ))?;
            let base = format!("http://{}", s.addr);
            (Some(s), base)
        }
    };
    if crate::model::now_ms() > first_ts - 5_000 {
        anyhow::bail!(
            "preparing the traffic took over {} s, so its event times are no longer ahead of the clock; lower --devices or --duration",
            LEAD_MS / 1000 - 5
        );
    }
    let (feed, generator) = match feed {
        Some(bodies) => (
            Feed::Fixed(Mutex::new(bodies.into_iter().enumerate().collect())),
            None,
        ),
        None => {
            let (tx, rx) = std::sync::mpsc::sync_channel(64);
            let stop_at = Instant::now() + Duration::from_secs(args.soak.unwrap_or(0));
            let a = args.clone();
            let generator = std::thread::spawn(move || stream(&a, tx, stop_at));
            (Feed::Stream(Mutex::new(rx)), Some(generator))
        }
    };
    let report = rt.block_on(drive(args, &base, feed, records));
    let generated = generator.map(|g| {
        g.join()
            .map_err(|_| anyhow::anyhow!("the traffic generator panicked"))?
    });
    if let Some(s) = server {
        rt.block_on(s.shutdown())?;
    }
    let mut report = report?;
    if let Some(g) = generated {
        report.records = g?;
    }
    report.offline_per_s = offline;
    report.ratio_to_offline = offline.map(|o| report.accepted_per_s / o);
    if args.target.is_none() {
        report.peak_rss_mib = rss_kib("VmHWM:").map(|k| k / 1024.0);
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    Ok(report)
}

/// Where senders take request bodies from: pre-generated, or streamed by the soak generator.
enum Feed {
    Fixed(Mutex<VecDeque<(usize, Vec<u8>)>>),
    Stream(Mutex<std::sync::mpsc::Receiver<(usize, Vec<u8>)>>),
}

impl Feed {
    /// The next body and its sequence number; None when the feed is exhausted.
    fn next(&self) -> Option<(usize, Vec<u8>)> {
        match self {
            Feed::Fixed(q) => q.lock().ok()?.pop_front(),
            Feed::Stream(rx) => rx.lock().ok()?.recv().ok(),
        }
    }
}

async fn drive(args: &BenchArgs, base: &str, feed: Feed, records: u64) -> anyhow::Result<BenchReport> {
    let host = base
        .strip_prefix("http://")
        .context("--target must be an http:// URL")?
        .to_owned();
    // Viewers first, so they see every window the load closes.
    let stop = Arc::new(AtomicBool::new(false));
    let frames = Arc::new(AtomicU64::new(0));
    let gaps = Arc::new(AtomicU64::new(0));
    let close_lat = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?));
    let mut viewer_tasks = Vec::new();
    let token = args.viewer_token.clone();
    for _ in 0..args.viewers {
        let url = match &token {
            Some(t) => format!("ws://{host}/ws/live?token={t}"),
            None => format!("ws://{host}/ws/live"),
        };
        let (ws, _) = tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(url))
            .await
            .context("a viewer could not connect in 10 s")?
            .context("connecting a viewer")?;
        let (stop, frames, gaps, close_lat) = (stop.clone(), frames.clone(), gaps.clone(), close_lat.clone());
        viewer_tasks.push(tokio::spawn(async move {
            let (_tx, mut rx) = ws.split();
            let mut last_end: Option<i64> = None;
            let mut slide: Option<i64> = None;
            while !stop.load(Ordering::Relaxed) {
                let msg = match tokio::time::timeout(Duration::from_millis(200), rx.next()).await {
                    Ok(Some(Ok(m))) => m,
                    Ok(_) => break,
                    Err(_) => continue,
                };
                let tokio_tungstenite::tungstenite::Message::Text(t) = msg else {
                    continue;
                };
                // Only the head: the cells are skipped without being built, so many viewers in this
                // process take as little CPU from the server as they can.
                let Ok(v) = serde_json::from_str::<FrameHead>(&t) else {
                    continue;
                };
                if v.kind != "heatmap" || !v.is_final {
                    continue;
                }
                let arrived = crate::model::now_ms();
                frames.fetch_add(1, Ordering::Relaxed);
                if let Some(c) = v.closed_at {
                    if let Ok(mut h) = close_lat.lock() {
                        let _ = h.record(((arrived - c).max(0) as u64) * 1000 + 1);
                    }
                }
                let end = v.window_end.unwrap_or(0);
                if let Some(prev) = last_end {
                    let step = end - prev;
                    let s = *slide.get_or_insert(step.max(1));
                    if step > s {
                        gaps.fetch_add((step / s - 1) as u64, Ordering::Relaxed);
                    }
                    slide = Some(s.min(step.max(1)));
                }
                last_end = Some(end);
            }
        }));
    }
    // Senders: blocking HTTP in threads, sharing one feed of bodies, paced when --rate is set
    // (a streamed soak feed is paced by the clock already).
    let streamed = matches!(feed, Feed::Stream(_));
    let queue = Arc::new(feed);
    let accepted = Arc::new(AtomicU64::new(0));
    let retries = Arc::new(AtomicU64::new(0));
    let acks = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?));
    let started = Instant::now();
    // A soak's senders outlive its generator, so the stream always drains.
    let deadline = started + Duration::from_secs(args.max_seconds.max(args.soak.unwrap_or(0) + 60));
    let mut threads = Vec::new();
    for _ in 0..args.senders {
        let (queue, accepted, retries, acks) =
            (queue.clone(), accepted.clone(), retries.clone(), acks.clone());
        let url = format!("{base}/api/ingest");
        let token = args.token.clone();
        let (rate, batch) = (if streamed { 0.0 } else { args.rate }, args.batch);
        threads.push(std::thread::spawn(move || -> anyhow::Result<()> {
            let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(60)).build();
            loop {
                let Some((i, body)) = queue.next() else {
                    return Ok(());
                };
                if Instant::now() > deadline {
                    return Ok(());
                }
                if rate > 0.0 {
                    let due = started + Duration::from_secs_f64((i * batch) as f64 / rate);
                    if let Some(wait) = due.checked_duration_since(Instant::now()) {
                        std::thread::sleep(wait);
                    }
                }
                let sent = Instant::now();
                loop {
                    let mut req = agent.post(&url).set("Content-Type", "application/x-ndjson");
                    if let Some(t) = &token {
                        req = req.set("Authorization", &format!("Bearer {t}"));
                    }
                    match req.send_bytes(&body) {
                        Ok(r) => {
                            let v: serde_json::Value =
                                serde_json::from_reader(r.into_reader()).unwrap_or_default();
                            accepted.fetch_add(v["accepted"].as_u64().unwrap_or(0), Ordering::Relaxed);
                            if let Ok(mut h) = acks.lock() {
                                let _ = h.record(sent.elapsed().as_micros().max(1) as u64);
                            }
                            break;
                        }
                        Err(ureq::Error::Status(429 | 503, r)) => {
                            retries.fetch_add(1, Ordering::Relaxed);
                            let wait = r
                                .header("Retry-After")
                                .and_then(|s| s.parse::<f64>().ok())
                                .unwrap_or(0.05);
                            std::thread::sleep(Duration::from_secs_f64(wait.min(0.2)));
                        }
                        Err(e) => return Err(anyhow::anyhow!("sending to {url}: {e}")),
                    }
                }
            }
        }));
    }
    // Sample memory, and the server's window state, while sending: state per device is taken at
    // the sample with the most active devices.
    let metrics_url = format!("{base}/metrics");
    let fetch = || {
        let url = metrics_url.clone();
        tokio::task::spawn_blocking(move || {
            ureq::get(&url)
                .timeout(Duration::from_secs(5))
                .call()
                .ok()
                .and_then(|r| r.into_string().ok())
                .unwrap_or_default()
        })
    };
    let mut rss = Vec::new();
    let mut state: Option<(f64, f64)> = None;
    let mut keep_state = |text: &str| {
        if let (Some(b), Some(a)) = (
            metric(text, "throng_window_state_bytes"),
            metric(text, "throng_window_devices_active"),
        ) {
            if a > 0.0 && state.is_none_or(|(_, best)| a > best) {
                state = Some((b, a));
            }
        }
    };
    let mut last_sample = Instant::now();
    while threads.iter().any(|t| !t.is_finished()) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Some(k) = rss_kib("VmRSS:") {
            rss.push((started.elapsed().as_secs_f64(), k / 1024.0));
        }
        if last_sample.elapsed() >= Duration::from_secs(1) {
            last_sample = Instant::now();
            keep_state(&fetch().await?);
        }
    }
    let send_seconds = started.elapsed().as_secs_f64();
    for t in threads {
        t.join().map_err(|_| anyhow::anyhow!("a sender panicked"))??;
    }
    // Let the windows closed by the last records reach the viewers, and the state census catch up.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let acc = accepted.load(Ordering::Relaxed);
    let health_url = format!("{base}/api/health");
    let mut engine_records = None;
    for _ in 0..40 {
        let url = health_url.clone();
        let taken = tokio::task::spawn_blocking(move || {
            let text = ureq::get(&url)
                .timeout(Duration::from_secs(5))
                .call()
                .ok()?
                .into_string()
                .ok()?;
            let h: serde_json::Value = serde_json::from_str(&text).ok()?;
            h["engine"]["sources"]
                .as_array()
                .map(|s| s.iter().filter_map(|x| x["records"].as_u64()).sum::<u64>())
        })
        .await?;
        // Drained when the count stops moving (identical resends are dropped, so it may stay
        // under `acc`) or reaches what was acknowledged.
        let settled = taken.is_some_and(|t| t >= acc) || (taken.is_some() && taken == engine_records);
        engine_records = taken;
        if settled {
            break;
        }
        // Health is published once per engine tick.
        tokio::time::sleep(Duration::from_millis(600)).await;
    }
    let metrics_text = fetch().await?;
    keep_state(&metrics_text);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for t in viewer_tasks {
        let _ = t.await;
    }
    let ack = quantiles(
        &*acks.lock().map_err(|_| anyhow::anyhow!("poisoned"))?,
        &[0.5, 0.99, 0.999, 1.0],
    );
    let close = quantiles(
        &*close_lat.lock().map_err(|_| anyhow::anyhow!("poisoned"))?,
        &[0.5, 0.99, 1.0],
    );
    let half: Vec<f64> = rss
        .iter()
        .filter(|(t, _)| *t >= send_seconds / 2.0)
        .map(|(_, m)| *m)
        .collect();
    let rss_by_minute_mib = if streamed {
        let minutes = (send_seconds / 60.0).ceil() as usize;
        (0..minutes)
            .map(|m| {
                rss.iter()
                    .filter(|(t, _)| (*t / 60.0) as usize == m)
                    .map(|(_, v)| *v)
                    .fold(0.0, f64::max)
            })
            .collect()
    } else {
        Vec::new()
    };
    let (state_bytes, active) = match state {
        Some((b, a)) => (Some(b), Some(a)),
        None => (None, None),
    };
    Ok(BenchReport {
        records,
        accepted: acc,
        send_seconds,
        accepted_per_s: acc as f64 / send_seconds,
        retries: retries.load(Ordering::Relaxed),
        ack_ms: [ack[0], ack[1], ack[2], ack[3]],
        viewers: args.viewers,
        heatmap_frames: frames.load(Ordering::Relaxed),
        close_to_viewer_ms: [close[0], close[1], close[2]],
        viewer_gaps: gaps.load(Ordering::Relaxed),
        frames_skipped: metric(&metrics_text, "throng_live_frames_skipped_total"),
        rss_second_half_mib: (!half.is_empty()).then(|| {
            [
                half.iter().cloned().fold(f64::MAX, f64::min),
                half.iter().cloned().fold(0.0, f64::max),
            ]
        }),
        state_bytes,
        active_devices: active,
        rss_by_minute_mib,
        state_bytes_per_device: match (state_bytes, active) {
            (Some(b), Some(a)) if a > 0.0 => Some(b / a),
            _ => None,
        },
        engine_records,
        duplicates: metric(&metrics_text, "throng_ingest_duplicates_total").map(|d| d as u64),
        ..BenchReport::default()
    })
}

fn print_report(r: &BenchReport) {
    let opt = |v: Option<f64>, unit: &str| v.map_or("n/a".to_owned(), |v| format!("{v:.1}{unit}"));
    println!("throng bench");
    println!(
        "  records        {} generated, {} accepted in {:.1} s",
        r.records, r.accepted, r.send_seconds
    );
    println!(
        "  ingest         {:.0} records/s over HTTP (WAL on, {} viewers)",
        r.accepted_per_s, r.viewers
    );
    if let Some(e) = r.engine_records {
        let d = r.duplicates.unwrap_or(0);
        let verdict = if e + d == r.accepted { "equal" } else { "DIFFERENT" };
        println!(
            "  accounting     {} acknowledged = {e} taken into windows + {d} identical resends dropped: {verdict}",
            r.accepted
        );
    }
    if let (Some(o), Some(x)) = (r.offline_per_s, r.ratio_to_offline) {
        println!("  offline        {o:.0} records/s (same records, pipeline only) → ratio {x:.2}");
    }
    println!(
        "  ack latency    p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms ({} retries)",
        r.ack_ms[0], r.ack_ms[1], r.ack_ms[2], r.ack_ms[3], r.retries
    );
    println!(
        "  close → viewer p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} final heatmap frames",
        r.close_to_viewer_ms[0], r.close_to_viewer_ms[1], r.close_to_viewer_ms[2], r.heatmap_frames
    );
    println!(
        "  frames lost    {} gaps seen by viewers; {} skipped by the server for slow viewers",
        r.viewer_gaps,
        opt(r.frames_skipped, "")
    );
    println!(
        "  memory         peak RSS {}, RSS over the second half {}",
        opt(r.peak_rss_mib, " MiB"),
        r.rss_second_half_mib
            .map_or("n/a".into(), |[a, b]| format!("{a:.0}–{b:.0} MiB"))
    );
    if !r.rss_by_minute_mib.is_empty() {
        let by: Vec<String> = r.rss_by_minute_mib.iter().map(|m| format!("{m:.0}")).collect();
        println!("  RSS by minute  {} MiB", by.join(" · "));
    }
    println!(
        "  window state   {} bytes for {} active devices = {} bytes/device",
        opt(r.state_bytes, ""),
        opt(r.active_devices, ""),
        opt(r.state_bytes_per_device, "")
    );
}
