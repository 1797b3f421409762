//! `throng simulate`: the Bund night as NDJSON feeds, with the truth beside them.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use crate::tools::sim::{Emitter, SimConfig, World};

/// `throng simulate`.
#[derive(Debug, Args, Clone)]
pub struct SimulateArgs {
    /// Scenario folder (segments.geojson, sensors.json, stations.json, routes.json).
    #[arg(long, default_value = "fixtures/bund")]
    pub scenario: PathBuf,
    /// People simulated; 80 % of them carry a phone in one of the two LBS panels.
    #[arg(long, default_value_t = 20_000)]
    pub devices: usize,
    /// Length of the night, seconds (midnight falls two thirds of the way through).
    #[arg(long, default_value_t = 5400.0)]
    pub duration: f64,
    /// Event time of the first record (RFC 3339; default: now).
    #[arg(long)]
    pub start: Option<String>,
    /// Seed: the same seed gives the same feeds.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where records go (`-`: standard output).
    #[arg(long, default_value = "-", conflicts_with = "target")]
    pub out: PathBuf,
    /// Send the records to a server (`http://HOST:PORT`) over HTTP ingest instead, in real time
    /// (event time = the wall clock) or at --rate; or produce them to Kafka
    /// (`kafka://HOST:PORT/TOPIC`, keyed by region, see --key-res) as fast as the broker takes them.
    #[arg(long)]
    pub target: Option<String>,
    /// With a kafka:// target: the H3 resolution of the region key (6 ≈ 36 km², a district).
    #[arg(long, default_value_t = 6)]
    pub key_res: u8,
    /// Feed token for --target.
    #[arg(long, env = "THRONG_TOKEN")]
    pub token: Option<String>,
    /// With --target: records per second, regardless of their event times (0: real time).
    #[arg(long, default_value_t = 0.0)]
    pub rate: f64,
    /// Also write the true people per segment per window here (NDJSON).
    #[arg(long)]
    pub truth: Option<PathBuf>,
    /// Config whose `[window]` sets the truth's windows (default 60 s / 10 s).
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
}

/// Where simulated records go, one scenario second at a time.
type Sink = Box<dyn FnMut(&[u8]) -> anyhow::Result<()> + Send>;

/// Parses `--start`.
pub fn parse_start(start: Option<&str>) -> anyhow::Result<i64> {
    match start {
        None => Ok(crate::model::now_ms()),
        Some(s) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| t.timestamp_millis())
            .with_context(|| format!("--start {s:?} is not RFC 3339 (e.g. 2025-12-31T23:00:00+08:00)")),
    }
}

/// Runs the simulation; returns the number of records written.
pub fn run(args: &SimulateArgs) -> anyhow::Result<u64> {
    if args.devices == 0 || args.duration < 10.0 {
        anyhow::bail!("--devices must be positive and --duration at least 10 s");
    }
    let cfg = match &args.config {
        Some(p) => crate::config::Config::load_for(p, Some(&args.scenario))?,
        None => crate::config::Config::default(),
    };
    let start_ms = parse_start(args.start.as_deref())?;
    let built = std::time::Instant::now();
    let sim = SimConfig {
        people: args.devices,
        duration_s: args.duration,
        start_ms,
        speed: 1.0,
        seed: args.seed,
        panel: crate::tools::sim::Panel::bund(),
        changes: Default::default(),
    };
    let world = World::load(&args.scenario, sim).map_err(anyhow::Error::msg)?;
    if !(args.rate.is_finite() && args.rate >= 0.0) {
        anyhow::bail!("--rate must be a positive number of records per second (or 0: real time)");
    }
    let kafka: Option<std::sync::Arc<std::sync::Mutex<crate::transport::kafka::KafkaSink>>> =
        match &args.target {
            Some(url) if url.starts_with("kafka://") => {
                let registry =
                    crate::scenario::registry::Registry::load_dir(&args.scenario, h3o::Resolution::Eleven)
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                // The simulator's pings are WGS-84; the engine files them at the default
                // resolution, which `serve` uses unless `h3.resolution` says otherwise.
                let keys =
                    crate::transport::kafka::RegionKey::new(args.key_res, h3o::Resolution::Eleven, registry)
                        .map_err(anyhow::Error::msg)?;
                Some(std::sync::Arc::new(std::sync::Mutex::new(
                    crate::transport::kafka::KafkaSink::new(url, keys).map_err(anyhow::Error::msg)?,
                )))
            }
            _ => None,
        };
    let mut sink: Sink = match &args.target {
        Some(_) if kafka.is_some() => {
            let k = kafka
                .clone()
                .ok_or_else(|| anyhow::anyhow!("no Kafka producer"))?;
            Box::new(move |chunk: &[u8]| {
                k.lock()
                    .map_err(|_| anyhow::anyhow!("the Kafka producer panicked"))?
                    .send(chunk)
                    .map_err(anyhow::Error::msg)
            })
        }
        Some(url) => {
            let mut sender = super::send::Sender::new(url, args.token.clone())?;
            let started = std::time::Instant::now();
            let (rate, mut sent, mut second) = (args.rate, 0u64, 0u64);
            Box::new(move |chunk: &[u8]| {
                // One chunk is one scenario second: real time holds it until that second has
                // come; --rate spaces records evenly instead.
                second += 1;
                let lines: Vec<&[u8]> = chunk.split(|b| *b == b'\n').filter(|l| !l.is_empty()).collect();
                for part in lines.chunks(5_000) {
                    let due = if rate > 0.0 {
                        std::time::Duration::from_secs_f64(sent as f64 / rate)
                    } else {
                        std::time::Duration::from_secs(second - 1)
                    };
                    if let Some(wait) = due.checked_sub(started.elapsed()) {
                        std::thread::sleep(wait);
                    }
                    let mut body = part.join(&b'\n');
                    body.push(b'\n');
                    sender.send(&body)?;
                    sent += part.len() as u64;
                }
                Ok(())
            })
        }
        None => {
            let mut out: Box<dyn Write + Send> = if args.out.as_os_str() == "-" {
                Box::new(std::io::stdout())
            } else {
                let f = std::fs::File::create(&args.out)
                    .with_context(|| format!("creating {}", args.out.display()))?;
                Box::new(f)
            };
            Box::new(move |chunk: &[u8]| Ok(out.write_all(chunk)?))
        }
    };
    // Writing on its own thread overlaps the kernel's copy with generating the next minute.
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
    let (back_tx, back_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
    let writer = std::thread::spawn(move || -> anyhow::Result<()> {
        for mut chunk in rx {
            sink(&chunk)?;
            chunk.clear();
            let _ = back_tx.try_send(chunk);
        }
        Ok(())
    });
    let mut em = Emitter::new(&world);
    tracing::info!(
        people = args.devices,
        seconds = built.elapsed().as_secs_f64(),
        "Agents and sensor counts prepared."
    );
    let emitting = std::time::Instant::now();
    let mut buf = Vec::with_capacity(1 << 22);
    // One scenario second at a time keeps buffers small and warm; they go back and forth.
    let step = 1.0;
    let mut t = 0.0;
    let mut next_report = 0.0;
    while !em.done() {
        t += step;
        em.emit_until(t, &mut buf);
        let spare = back_rx.try_recv().unwrap_or_else(|_| Vec::with_capacity(1 << 22));
        let full = std::mem::replace(&mut buf, spare);
        if tx.send(full).is_err() {
            break;
        }
        if t >= next_report {
            tracing::info!(
                minute = (t / 60.0) as u64,
                of = (args.duration / 60.0).ceil() as u64,
                records = em.records,
                "Simulating."
            );
            next_report += args.duration / 10.0;
        }
    }
    drop(tx);
    writer
        .join()
        .map_err(|_| anyhow::anyhow!("the writer thread panicked"))?
        .context("writing feeds")?;
    if let Some(k) = kafka {
        let k = std::sync::Arc::try_unwrap(k)
            .map_err(|_| anyhow::anyhow!("the Kafka producer is still in use"))?
            .into_inner()
            .map_err(|_| anyhow::anyhow!("the Kafka producer panicked"))?;
        let n = k.finish().map_err(anyhow::Error::msg)?;
        tracing::info!(
            messages = n,
            "Produced to Kafka; every message acknowledged by the broker."
        );
    }
    let secs = emitting.elapsed().as_secs_f64();
    tracing::info!(
        records = em.records,
        seconds = secs,
        records_per_s = (em.records as f64 / secs) as u64,
        "Feeds written."
    );
    if let Some(p) = &args.truth {
        let rows = em.truth(cfg.window.size.as_millis() as i64, cfg.slide_ms());
        let mut f = std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        );
        for r in rows {
            serde_json::to_writer(&mut f, &r)?;
            f.write_all(b"\n")?;
        }
        f.flush()?;
    }
    tracing::info!(records = em.records, people = args.devices, "Simulation written.");
    Ok(em.records)
}
