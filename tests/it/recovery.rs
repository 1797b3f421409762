//! Recovery decides as the live run did: a delayed feed (a carrier panel three minutes behind the
//! rest, and a pause long enough for every source to go idle) posted to one server without
//! interruption, and the same feed posted to another that is killed with SIGKILL at random
//! points, restarted on its data dir and sent again what it had not acknowledged. Both must end
//! with the same tables, row for row.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{query, root, serve_command, serving, throng, Child, Rng};

/// Event time per step; a step is one request.
const STEP_MS: i64 = 10_000;
/// How far the carrier panel runs behind everything else.
const CARRIER_BEHIND_MS: i64 = 180_000;
/// Wall time between steps: well inside `idle_timeout`, so only the pause makes sources idle.
const PACE: Duration = Duration::from_millis(80);
/// The pause: longer than `idle_timeout`, so every source goes idle and the watermark moves on
/// with processing time alone (logged ticks): it closes the carrier's windows before it resumes,
/// and (the step before it ending a second short of a window boundary) carries the watermark
/// past that boundary, so the first second of the realtime feeds' next step is late. Only the
/// ticks make it so: a recovery that did not replay them would count that second in.
const PAUSE: Duration = Duration::from_millis(7_500);
/// How long the server stays down after the first kill: longer than `idle_timeout`, so a
/// recovery that counted the downtime as silence would idle every feed.
const DOWNTIME: Duration = Duration::from_millis(4_000);

const CONFIG: &str = "[window]\nsize = \"60s\"\nslide = \"10s\"\nallowed_lateness = \"5s\"\nidle_timeout = \"3s\"\n\
[privacy]\nk = 0\n[durability]\ncheckpoint_every = \"2500ms\"\n\
[lbs.sources.carrier-a]\nscale = 1.25\nping_interval = \"55s\"\n[lbs.sources.carrier-b]\nscale = 1.25\nping_interval = \"17s\"\n\
[risk.calibration]\nwarmup = \"60s\"\n";

/// One POST that may fail (the server may be killed under it): the status, or None.
pub async fn try_post(addr: std::net::SocketAddr, body: &str) -> Option<u16> {
    let req = format!(
        "POST /api/ingest HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let io = async {
        let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
        s.write_all(req.as_bytes()).await.ok()?;
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf);
        text.split(' ').nth(1)?.parse().ok()
    };
    tokio::time::timeout(Duration::from_secs(10), io)
        .await
        .ok()
        .flatten()
}

fn signal(child: &Child, sig: &str) {
    let _ = Command::new("kill")
        .arg(sig)
        .arg(child.0.id().to_string())
        .status();
}

/// Stops a server with SIGTERM (it drains, flushes every window, writes the history), bounded.
pub fn stop(mut child: Child) {
    signal(&child, "-TERM");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while std::time::Instant::now() < deadline {
        if child.0.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("the server did not stop within 30 s of SIGTERM");
}

/// The feed cut into steps: step i holds everything but the carrier up to `t0 + i·STEP`, then
/// the carrier three minutes behind that (the realtime feeds' records come first in each step, as
/// they would from separate feeds).
fn steps(feed: &str, t0: i64) -> Vec<String> {
    let lines: Vec<(i64, bool, &str)> = feed
        .lines()
        .filter_map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).ok()?;
            Some((v["ts"].as_i64()?, v["source"] == "carrier-a", l))
        })
        .collect();
    let end = lines.iter().map(|l| l.0).max().unwrap() + CARRIER_BEHIND_MS + STEP_MS;
    let n = ((end - t0) / STEP_MS) as usize + 1;
    let (mut realtime, mut carrier) = (vec![String::new(); n], vec![String::new(); n]);
    for (ts, is_carrier, l) in lines {
        let due = if is_carrier { ts + CARRIER_BEHIND_MS } else { ts };
        let i = ((due - t0).max(0) / STEP_MS) as usize;
        let out = if is_carrier {
            &mut carrier[i]
        } else {
            &mut realtime[i]
        };
        out.push_str(l);
        out.push('\n');
    }
    realtime.into_iter().zip(carrier).map(|(a, b)| a + &b).collect()
}

/// Waits (at most 2 s) until the server has a checkpoint on disk.
pub async fn wait_for_checkpoint(data: &Path) {
    let cp = data.join("checkpoint.json");
    for _ in 0..40 {
        if cp.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Posts every step to a server on `data`; before the steps in `kills` the server is killed with
/// SIGKILL a random few milliseconds into that step's request, restarted, and the step sent again.
async fn run(cfg: &Path, data: &Path, steps: &[String], pause_at: usize, kills: &[usize], rng: &mut Rng) {
    let start = || serving(serve_command(data, &["--config", cfg.to_str().unwrap()]));
    let (mut child, mut addr) = start();
    for (i, body) in steps.iter().enumerate() {
        if i == pause_at {
            tokio::time::sleep(PAUSE).await;
        }
        if body.is_empty() {
            tokio::time::sleep(PACE).await;
            continue;
        }
        if kills.contains(&i) {
            if i + 4 == pause_at {
                wait_for_checkpoint(data).await;
            }
            let pid = child.0.id();
            let after = Duration::from_millis(rng.below(25));
            let killer = std::thread::spawn(move || {
                std::thread::sleep(after);
                let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            });
            let _ = try_post(addr, body).await; // acknowledged or not: sent again below
            killer.join().unwrap();
            child.0.wait().unwrap();
            if Some(&i) == kills.first() {
                tokio::time::sleep(DOWNTIME).await;
            }
            (child, addr) = start();
        }
        let status = try_post(addr, body).await;
        assert_eq!(status, Some(202), "step {i} of {}", steps.len());
        tokio::time::sleep(PACE).await;
    }
    stop(child);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_killed_and_restarted_five_times_ends_with_the_uninterrupted_runs_tables() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("throng.toml");
    let scenario = root().join("fixtures/bund");
    std::fs::write(
        &cfg,
        format!("scenario = {:?}\n{CONFIG}", scenario.display().to_string()),
    )
    .unwrap();
    // A night recorded a day ago: event time is the feed's own, nothing to do with the clock.
    // Steps end a second short of the 10 s window boundaries (see PAUSE).
    let t0 = (throng::model::now_ms() - 86_400_000).div_euclid(STEP_MS) * STEP_MS - 1_000;
    let start = chrono::DateTime::from_timestamp_millis(t0).unwrap().to_rfc3339();
    let feed = dir.path().join("feed.ndjson");
    let sim = throng(&[
        "simulate",
        "--devices",
        "8000",
        "--duration",
        "420",
        "--seed",
        "5",
        "--start",
        &start,
        "--out",
        &feed.display().to_string(),
    ]);
    assert!(sim.status.success(), "{}", String::from_utf8_lossy(&sim.stderr));
    let steps = steps(&std::fs::read_to_string(&feed).unwrap(), t0);
    let pause_at = steps.len() / 2;

    let seed = throng::model::now_ms() as u64 | 1;
    let mut rng = Rng(seed);
    // Five distinct kill points: one a few steps before the pause, once a checkpoint is on disk
    // (a recovery must then rebuild the sources' clocks from it: the realtime lines come first in
    // each step, and without the carrier's clock they would close its windows); one just after
    // the pause, so the log's tail holds the ticks the pause produced; three at random. None at
    // the pause itself, whose length must match across runs.
    let mut kills = vec![pause_at - 4, pause_at + 1];
    while kills.len() < 5 {
        let k = 2 + rng.below(steps.len() as u64 - 4) as usize;
        if !kills.contains(&k) && !(pause_at - 1..=pause_at).contains(&k) && !steps[k].is_empty() {
            kills.push(k);
        }
    }
    kills.sort_unstable();

    let (calm, crashed) = (dir.path().join("calm"), dir.path().join("crashed"));
    run(&cfg, &calm, &steps, pause_at, &[], &mut rng).await;
    run(&cfg, &crashed, &steps, pause_at, &kills, &mut rng).await;

    let why = format!(
        "killed before steps {kills:?} of {} (rng seed {seed})",
        steps.len()
    );
    for (table, sql) in [
        (
            "hex_windows",
            "SELECT * FROM hex_windows ORDER BY window_start, cell",
        ),
        (
            "segment_windows",
            "SELECT * FROM segment_windows ORDER BY window_start, segment_id",
        ),
        ("alerts", "SELECT * FROM alerts ORDER BY ts, segment_id, to_tier"),
        // People per device learnt from Chen Yi Square's zone count (a short warm-up, so most of
        // the night calibrates): a recovery must learn exactly what the live run learnt.
        (
            "calibration",
            "SELECT * FROM calibration ORDER BY window_start, source",
        ),
        // The watermark a record met during the pause depends on how long the pause took in
        // wall time in each run, so that one column is left out.
        (
            "late_records",
            "SELECT ts, source, kind, cell, windows_missed FROM late_records ORDER BY ts, source, cell, kind",
        ),
    ] {
        let (a, b) = (query(&calm, sql), query(&crashed, sql));
        assert!(
            a.lines().count() > 1,
            "{table} is empty: the comparison would mean nothing"
        );
        if let Some((i, (x, y))) = a.lines().zip(b.lines()).enumerate().find(|(_, (x, y))| x != y) {
            panic!(
                "{table} differs at row {i}, {why}:\n{}\n  uninterrupted: {x}\n  crashed:       {y}",
                a.lines().next().unwrap_or("")
            );
        }
        assert_eq!(
            a.lines().count(),
            b.lines().count(),
            "{table}: row counts differ, {why}"
        );
    }
    let learnt = query(
        &calm,
        "SELECT count(*) AS n FROM calibration WHERE status = 'calibrated'",
    );
    let n: u64 = learnt.lines().nth(1).unwrap().trim().parse().unwrap();
    assert!(n > 0, "calibration never learnt: its recovery went untested");
    // The feed is delayed and pauses: some records were late in both runs, the same ones.
    let late = query(
        &calm,
        "SELECT count(*) AS n FROM late_records WHERE source = 'lbs/carrier-a'",
    );
    let n: u64 = late.lines().nth(1).unwrap().trim().parse().unwrap();
    assert!(
        n > 0,
        "the pause made none of the carrier's records late: ticks went untested"
    );
}
