//! Crash safety: a server killed with SIGKILL in the middle of a request and restarted on the same
//! data dir ends with every acknowledged record counted exactly once, re-sends included — pings,
//! camera counts and gate counts, in short tumbling windows that close into history before and
//! after the kill.

use std::collections::HashMap;
use std::time::Duration;

use h3o::{LatLng, Resolution};

use crate::recovery::{stop, try_post, wait_for_checkpoint};
use crate::support::{metric, query_with, Child, Rng};

const HOUR: i64 = 3_600_000;
const WINDOW_MS: i64 = 10_000;
const BATCHES: usize = 40;
const PER_BATCH: usize = 60;
/// Event time between records: a batch spans 36 s, so three to four windows close per batch.
const STEP_MS: i64 = 600;

fn spawn(cfg: &std::path::Path, data: &std::path::Path) -> (Child, std::net::SocketAddr) {
    crate::support::serving(crate::support::serve_command(
        data,
        &["--config", cfg.to_str().unwrap()],
    ))
}

/// One record of the feed: what it is and where it counts.
enum Rec {
    Ping { device: u32, lat: f64, lng: f64 },
    Counter { sensor: usize, inn: u32, out: u32 },
    Gate { entries: u32, exits: u32 },
}

/// Cell (res 11, hex) of a registry entry's position in `fixtures/bund/FILE`.
fn registry_cell(file: &str, pick: impl Fn(&serde_json::Value) -> Option<&serde_json::Value>) -> String {
    let path = crate::support::root().join("fixtures/bund").join(file);
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let e = pick(&v).expect("registry entry");
    let ll = LatLng::new(e["lat"].as_f64().unwrap(), e["lng"].as_f64().unwrap()).unwrap();
    format!("{:x}", u64::from(ll.to_cell(Resolution::Eleven)))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_killed_mid_request_loses_no_acknowledged_record_and_counts_none_twice() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("t.toml");
    // Tumbling 10 s windows that close as the feed goes (the watermark trails it by 1 s); no source
    // goes idle while the server restarts.
    std::fs::write(
        &cfg,
        "scenario = \"fixtures/bund\"\n[window]\nsize = \"10s\"\nslide = \"10s\"\nallowed_lateness = \"1s\"\nidle_timeout = \"60s\"\n\
         [privacy]\nk = 0\n[durability]\ncheckpoint_every = \"300ms\"\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let sensors = ["enr-xizang-cam", "enr-henan-cam"];
    let sensor_cells: Vec<String> = sensors
        .iter()
        .map(|id| registry_cell("sensors.json", |v| v.as_array()?.iter().find(|s| s["id"] == *id)))
        .collect();
    let gate_cell = registry_cell("stations.json", |v| {
        v.as_array()?.iter().find(|s| s["id"] == "east-nanjing-road")?["exits"]
            .as_array()?
            .iter()
            .find(|e| e["id"] == "exit-3")
    });
    let base = (throng::model::now_ms() - 2 * HOUR).div_euclid(HOUR) * HOUR + 1_000;
    let mut rng = Rng(0x00c4_a511);
    let feed: Vec<(i64, Rec)> = (0..BATCHES * PER_BATCH)
        .map(|i| {
            let ts = base + i as i64 * STEP_MS;
            let rec = match rng.below(10) {
                0..=6 => Rec::Ping {
                    device: rng.below(300) as u32,
                    lat: rng.range(31.2380, 31.2420),
                    lng: rng.range(121.4780, 121.4900),
                },
                7 | 8 => Rec::Counter {
                    sensor: rng.below(2) as usize,
                    inn: rng.below(20) as u32,
                    out: rng.below(20) as u32,
                },
                _ => Rec::Gate {
                    entries: rng.below(30) as u32,
                    exits: rng.below(30) as u32,
                },
            };
            (ts, rec)
        })
        .collect();
    let line = |(ts, r): &(i64, Rec)| {
        match r {
        Rec::Ping { device, lat, lng } => format!(
            "{{\"kind\":\"lbs\",\"ts\":{ts},\"device\":\"dev-{device}\",\"lat\":{lat},\"lng\":{lng}}}\n"
        ),
        Rec::Counter { sensor, inn, out } => format!(
            "{{\"kind\":\"counter\",\"ts\":{ts},\"sensor\":\"{}\",\"in\":{inn},\"out\":{out},\"period_s\":10}}\n",
            sensors[*sensor]
        ),
        Rec::Gate { entries, exits } => format!(
            "{{\"kind\":\"gate\",\"ts\":{ts},\"station\":\"east-nanjing-road\",\"gate\":\"exit-3\",\"entries\":{entries},\"exits\":{exits},\"period_s\":10}}\n"
        ),
    }
    };
    let batches: Vec<String> = feed
        .chunks(PER_BATCH)
        .map(|c| c.iter().map(line).collect())
        .collect();

    // Expected, from the contract alone: per (window, cell), each device once in the cell of its
    // latest ping in that window; interval counts at ts − 1 ms (the period they close).
    type Row = [u64; 5]; // lbs_devices, counter_in, counter_out, gate_entries, gate_exits
    let mut latest: HashMap<(i64, u32), (i64, String)> = HashMap::new();
    let mut expected: HashMap<(i64, String), Row> = HashMap::new();
    for (ts, r) in &feed {
        match r {
            Rec::Ping { device, lat, lng } => {
                let cell = format!(
                    "{:x}",
                    u64::from(LatLng::new(*lat, *lng).unwrap().to_cell(Resolution::Eleven))
                );
                latest.insert((ts.div_euclid(WINDOW_MS) * WINDOW_MS, *device), (*ts, cell));
            }
            Rec::Counter { sensor, inn, out } => {
                let w = (ts - 1).div_euclid(WINDOW_MS) * WINDOW_MS;
                let row = expected.entry((w, sensor_cells[*sensor].clone())).or_default();
                row[1] += *inn as u64;
                row[2] += *out as u64;
            }
            Rec::Gate { entries, exits } => {
                let w = (ts - 1).div_euclid(WINDOW_MS) * WINDOW_MS;
                let row = expected.entry((w, gate_cell.clone())).or_default();
                row[3] += *entries as u64;
                row[4] += *exits as u64;
            }
        }
    }
    for ((w, _), (_, cell)) in latest {
        expected.entry((w, cell)).or_default()[0] += 1;
    }
    let mut expected: Vec<String> = expected
        .into_iter()
        .map(|((w, cell), r)| format!("{w},{cell},{},{},{},{},{}", r[0], r[1], r[2], r[3], r[4]))
        .collect();
    expected.sort();

    let mut kill_rng = Rng(throng::model::now_ms() as u64 | 1);
    let kill_at = 12 + kill_rng.below(20) as usize; // an arbitrary batch, after checkpoints exist
    let (first, addr) = spawn(&cfg, &data);
    for (i, b) in batches[..kill_at].iter().enumerate() {
        assert_eq!(try_post(addr, b).await, Some(202), "batch {i}");
        tokio::time::sleep(Duration::from_millis(20)).await;
        if i == 5 {
            wait_for_checkpoint(&data).await;
        }
    }
    assert!(
        data.join("checkpoint.json").exists(),
        "no checkpoint before the kill"
    );
    // SIGKILL a few milliseconds into the request: no shutdown, no flush.
    let pid = first.0.id();
    let after = Duration::from_millis(kill_rng.below(6));
    let killer = std::thread::spawn(move || {
        std::thread::sleep(after);
        let _ = std::process::Command::new("kill")
            .arg("-9")
            .arg(pid.to_string())
            .status();
    });
    let acked = try_post(addr, &batches[kill_at]).await == Some(202);
    killer.join().unwrap();
    drop(first);

    let (second, addr) = spawn(&cfg, &data);
    // The feed never saw the last acknowledgement before the kill ("lost"): it sends that batch
    // again, and the one in flight, and the rest.
    for (i, b) in batches.iter().enumerate().skip(kill_at - 1) {
        assert_eq!(try_post(addr, b).await, Some(202), "batch {i} after restart");
    }
    let (_, page) = crate::http::request_text(addr, "GET", "/metrics", None, "").await;
    let dups = metric(&page, "throng_ingest_duplicates_total").unwrap_or(0.0) as usize;
    let why = format!("killed {after:?} into batch {kill_at} (acknowledged: {acked})");
    if acked {
        assert_eq!(dups, 2 * PER_BATCH, "both re-sent batches recognised, {why}");
    } else {
        assert!(
            dups == PER_BATCH || dups == 2 * PER_BATCH,
            "the re-sent batch recognised (and the one in flight if it was logged): {dups}, {why}"
        );
    }
    stop(second); // SIGTERM: every window closes into history

    let got = query_with(
        &data,
        Some(&cfg),
        "SELECT CAST(window_start AS BIGINT) AS w, h3, lbs_devices, counter_in, counter_out, gate_entries, gate_exits \
         FROM hex_windows ORDER BY w, h3",
    );
    let mut got: Vec<&str> = got.lines().skip(1).collect();
    got.sort_unstable();
    assert_eq!(got.len(), expected.len(), "row count, {why}");
    for (g, e) in got.iter().zip(&expected) {
        assert_eq!(*g, e.as_str(), "(window, cell) row, {why}");
    }
    let late = query_with(&data, Some(&cfg), "SELECT count(*) AS n FROM late_records");
    assert_eq!(
        late.lines().nth(1),
        Some("0"),
        "nothing re-sent was taken as late, {why}"
    );
    // The log and checkpoints hold pseudonyms only: no raw device id reaches the disk.
    let mut files = vec![data.join("checkpoint.json")];
    files.extend(
        std::fs::read_dir(data.join("wal"))
            .unwrap()
            .map(|e| e.unwrap().path()),
    );
    for f in files {
        let bytes = std::fs::read(&f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
        assert!(
            !String::from_utf8_lossy(&bytes).contains("dev-"),
            "raw device id in {}",
            f.display()
        );
    }
}

#[tokio::test]
async fn replay_target_sends_a_recorded_feed_to_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("t.toml");
    std::fs::write(
        &cfg,
        // 500 records/s (at most 1,000 records per request): the replay's batch of all 3,000 is
        // refused as too large (413) and split in order until it fits, then the parts meet 429s
        // with `Retry-After` and must wait them out, resending each refused part whole.
        "scenario = \"fixtures/bund\"\n[window]\nsize = \"1h\"\nslide = \"1h\"\nallowed_lateness = \"6h\"\nidle_timeout = \"1s\"\n[privacy]\nk = 0\n[limits]\ningest_records_per_s = 500\n",
    )
    .unwrap();
    let (_server, addr) = spawn(&cfg, &dir.path().join("data"));
    let base = (throng::model::now_ms() - 2 * HOUR).div_euclid(HOUR) * HOUR + 1_000;
    // Two files, each in time order, interleaved in event time by the replay; one bad line.
    let (mut a, mut b) = (String::new(), String::new());
    for i in 0..3000i64 {
        let line = format!(
            "{{\"kind\":\"lbs\",\"ts\":{},\"device\":\"r{}\",\"lat\":31.2405,\"lng\":121.4832}}\n",
            base + i * 100,
            i % 400
        );
        if i % 2 == 0 {
            a.push_str(&line)
        } else {
            b.push_str(&line)
        }
    }
    a.push_str("{\"kind\":\"lbs\",\"ts\":1}\n");
    let (fa, fb) = (dir.path().join("a.ndjson"), dir.path().join("b.ndjson"));
    std::fs::write(&fa, a).unwrap();
    std::fs::write(&fb, b).unwrap();
    let target = format!("http://{addr}");
    let out = tokio::task::spawn_blocking(move || {
        crate::support::throng(&[
            "replay",
            fa.to_str().unwrap(),
            fb.to_str().unwrap(),
            "--target",
            &target,
            "--max",
        ])
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("accepted=3000"), "{stderr}");
    let retries: u64 = stderr
        .split("retries=")
        .nth(1)
        .and_then(|r| r.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no retry count: {stderr}"));
    assert!(retries > 0, "the server's 429s were waited out: {stderr}");
    assert!(
        stderr.contains("a.ndjson:1501"),
        "the bad line is reported with its place: {stderr}"
    );
    crate::http::wait_lbs_records(addr, 3000).await;
}

#[test]
fn a_checkpoint_taken_under_other_window_settings_is_refused_at_start_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (a, b) = (dir.path().join("a.toml"), dir.path().join("b.toml"));
    std::fs::write(&a, "[window]\nsize = \"60s\"\nslide = \"10s\"\n").unwrap();
    std::fs::write(&b, "[window]\nsize = \"30s\"\nslide = \"10s\"\n").unwrap();
    let (child, _) = spawn(&a, &data);
    stop(child); // a clean stop writes a final checkpoint
    assert!(data.join("checkpoint.json").exists());
    // Bounded: a server that wrongly starts is killed and the test fails.
    let args = crate::support::serve_args(&data, &["--config", b.to_str().unwrap()]);
    let out = crate::support::throng_within(
        &args.iter().map(String::as_str).collect::<Vec<_>>(),
        Duration::from_secs(20),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "started on a checkpoint of other windows");
    assert!(
        stderr.contains("was written with other [window] settings")
            && stderr.contains("move the data dir aside"),
        "{stderr}"
    );
}

/// Each LBS provider's clock and counts, by name, from `/api/health`.
async fn provider_health(addr: std::net::SocketAddr) -> HashMap<String, (i64, u64)> {
    let (_, h) = crate::http::request(addr, "GET", "/api/health", None, "").await;
    h["engine"]["sources"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| {
            let name = s["source"].as_str()?.strip_prefix("lbs/")?.to_string();
            Some((name, (s["max_event_time"].as_i64()?, s["records"].as_u64()?)))
        })
        .collect()
}

/// Pings of `n` devices of `provider` at `ts`.
fn provider_pings(provider: &str, ts: i64, n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "{{\"kind\":\"lbs\",\"source\":\"{provider}\",\"ts\":{ts},\"device\":\"{provider}-{i}\",\"lat\":31.2405,\"lng\":121.4832}}\n"
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn providers_keep_their_clocks_and_counts_when_they_first_arrive_in_another_order_after_a_restart() {
    // Source ids are numbers in the log and the checkpoint, handed out in order of arrival. Two
    // unconfigured providers arrive east then west; after a kill (log replay) and after a clean
    // stop (checkpoint), west speaks first. Each must keep its own clock and its own records.
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("t.toml");
    std::fs::write(
        &cfg,
        "[window]\nsize = \"10s\"\nslide = \"10s\"\nallowed_lateness = \"1s\"\nidle_timeout = \"60s\"\n[privacy]\nk = 0\n[durability]\ncheckpoint_every = \"1h\"\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let base = (throng::model::now_ms() - 2 * HOUR).div_euclid(HOUR) * HOUR;
    let send = |addr, body: String| async move {
        let (s, v) = crate::http::request(addr, "POST", "/api/ingest", None, &body).await;
        assert_eq!(s, 202, "{v}");
    };

    let (child, addr) = spawn(&cfg, &data);
    send(addr, provider_pings("east", base + 50_000, 5)).await;
    send(addr, provider_pings("west", base + 20_000, 3)).await;
    let want = HashMap::from([
        ("east".to_string(), (base + 50_000, 5)),
        ("west".to_string(), (base + 20_000, 3)),
    ]);
    wait_health(addr, &want).await;
    drop(child); // SIGKILL: no checkpoint, the log alone holds both providers

    let (child, addr) = spawn(&cfg, &data);
    send(addr, provider_pings("west", base + 30_000, 2)).await;
    send(addr, provider_pings("east", base + 60_000, 4)).await;
    let want = HashMap::from([
        ("east".to_string(), (base + 60_000, 9)),
        ("west".to_string(), (base + 30_000, 5)),
    ]);
    wait_health(addr, &want).await;
    stop(child); // SIGTERM: a final checkpoint, the log emptied

    let (child, addr) = spawn(&cfg, &data);
    send(addr, provider_pings("west", base + 40_000, 1)).await;
    // A 202 means logged and queued, not yet applied: wait (bounded) for the engine to take it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let got = loop {
        let got = provider_health(addr).await;
        if got.get("west").map(|w| w.0) == Some(base + 40_000) || tokio::time::Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(got.get("west").map(|w| w.0), Some(base + 40_000), "{got:?}");
    assert_eq!(got.get("east").map(|e| e.0), Some(base + 60_000), "{got:?}");
    stop(child);
}

/// Waits (bounded) until the providers' (newest event time, records) are `want`.
async fn wait_health(addr: std::net::SocketAddr, want: &HashMap<String, (i64, u64)>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let got = provider_health(addr).await;
        if &got == want {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "providers (newest event time, records): {got:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
