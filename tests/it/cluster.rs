//! Cluster mode through a real Kafka-API broker (Tansu) on loopback: instances of one consumer
//! group share a region-keyed topic's partitions, each partition's state checkpointed with its
//! offset in a shared folder, the segments evaluated once over every partition's windows by the
//! city stage. Two instances split the partitions; one is killed with SIGKILL and the other takes
//! its partitions (and, if it had it, the city stage) over; a third joins and the group
//! rebalances. The city's `hex_windows`, `segment_windows` and `alerts` (every partition's and the
//! city's history, read as one set of tables) equal a single instance's, row for row, and every
//! instance shows the same city.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::kafka::{bootstrap, night, same, topic};
use crate::recovery::stop;
use crate::support::{query, root, serve_command, serving, throng, Child};

/// The cluster config of one instance: `[[kafka]]` in group `group` (made unique with the topic's
/// name, as a broker that outlives a run keeps its groups), the shared folder `shared`, the
/// partitions' windows on a topic of the group's own.
fn config(dir: &Path, bootstrap: &str, topic: &str, group: &str, shared: &Path, name: &str) -> PathBuf {
    let group = format!("{topic}.{group}");
    // Windows close on event time alone (the partition's own clock; sources never idle here), so
    // the tables do not depend on which instance read which message when. Density thresholds
    // low enough that a night of 2,000 phones moves tiers (alerts to compare).
    let cfg = dir.join(format!("{name}.toml"));
    std::fs::write(
        &cfg,
        format!(
            "scenario = {:?}\n[window]\nsize = \"60s\"\nslide = \"10s\"\nallowed_lateness = \"5s\"\nidle_timeout = \"1h\"\n\
             [privacy]\nk = 0\n[durability]\ncheckpoint_every = \"1s\"\n\
             [risk.thresholds]\ndensity = {{ medium = 0.05, high = 0.1, critical = 0.2 }}\n\
             [lbs.sources.carrier-a]\nscale = 1.25\nping_interval = \"55s\"\n[lbs.sources.carrier-b]\nscale = 1.25\nping_interval = \"17s\"\n\
             [[kafka]]\nbootstrap = \"{bootstrap}\"\ntopics = [\"{topic}\"]\ngroup = \"{group}\"\nsession_timeout = \"3s\"\n\
             [cluster]\ndir = {shared:?}\ninstance = \"{name}\"\nwindows_topic = \"{topic}.windows.{group}\"\n",
            root().join("fixtures/bund")
        ),
    )
    .unwrap();
    cfg
}

/// A cluster instance: its process and address.
struct Instance {
    child: Child,
    addr: SocketAddr,
}

fn start(cfg: &Path, data: &Path) -> Instance {
    let (child, addr) = serving(serve_command(data, &["--config", cfg.to_str().unwrap()]));
    Instance { child, addr }
}

/// What an instance's `/api/health` says it holds: (partition, next offset) of each.
fn holds(rt: &tokio::runtime::Runtime, addr: SocketAddr) -> Vec<(i64, i64)> {
    let (_, h) = rt.block_on(crate::http::request(addr, "GET", "/api/health", None, ""));
    h["cluster"][0]["partitions"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| {
                    (
                        p["partition"].as_i64().unwrap(),
                        p["next_offset"].as_i64().unwrap(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Messages read so far by the live `instances`, over the partitions they hold (each partition is
/// held by one of them once the group is settled).
fn read(rt: &tokio::runtime::Runtime, instances: &[&Instance]) -> (i64, usize) {
    let all: Vec<(i64, i64)> = instances.iter().flat_map(|i| holds(rt, i.addr)).collect();
    (all.iter().map(|p| p.1).sum(), all.len())
}

/// Waits (bounded) until `instances` hold all `partitions` between them and have read `total`.
fn until_read(rt: &tokio::runtime::Runtime, instances: &[&Instance], partitions: usize, total: i64) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let (n, held) = read(rt, instances);
        if n >= total && held == partitions {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{n} of {total} read by the cluster after 180 s ({held} partitions held)"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits (bounded) until `instance` holds `n` partitions; how long that took.
fn until_holds(rt: &tokio::runtime::Runtime, instance: &Instance, n: usize, what: &str) -> Duration {
    let t = Instant::now();
    while holds(rt, instance.addr).len() != n {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{what}: holds {:?} after 60 s",
            holds(rt, instance.addr)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    t.elapsed()
}

/// The city stage's state on `instance` (`recorder` or `viewer`), Null when it holds none.
fn city(rt: &tokio::runtime::Runtime, instance: &Instance, role: &str) -> serde_json::Value {
    let (_, h) = rt.block_on(crate::http::request(
        instance.addr,
        "GET",
        "/api/health",
        None,
        "",
    ));
    h["cluster"][0]["city"][role].clone()
}

/// The newest window end every partition holding records has closed (what the city can merge
/// to), over the partitions `instances` hold.
fn closed_to(rt: &tokio::runtime::Runtime, instances: &[&Instance]) -> Option<String> {
    instances
        .iter()
        .flat_map(|i| {
            let (_, h) = rt.block_on(crate::http::request(i.addr, "GET", "/api/health", None, ""));
            h["cluster"][0]["partitions"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|p| p["closed_to"].as_str().map(str::to_owned))
        .min()
}

/// Waits (bounded) until the city recorder (on one of `instances`) and every instance's viewer
/// have read the whole windows topic and merged every window all partitions have closed.
fn until_city_caught_up(rt: &tokio::runtime::Runtime, instances: &[&Instance]) {
    let started = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(120);
    let to = closed_to(rt, instances);
    assert!(to.is_some(), "no partition closed a window");
    // (`>=`: Tansu's high watermark can trail the next offset by one.)
    let caught_up = |v: &serde_json::Value| {
        v["merged_to"].as_str() == to.as_deref()
            && v["topic_end"]
                .as_i64()
                .is_some_and(|e| e > 0 && v["next_offset"].as_i64().is_some_and(|n| n >= e))
    };
    loop {
        let recorders = instances
            .iter()
            .filter(|i| caught_up(&city(rt, i, "recorder")))
            .count();
        let viewers = instances
            .iter()
            .filter(|i| caught_up(&city(rt, i, "viewer")))
            .count();
        if recorders == 1 && viewers == instances.len() {
            break;
        }
        let brief = |v: serde_json::Value| {
            format!(
                "merged_to {} next {} end {}",
                v["merged_to"], v["next_offset"], v["topic_end"]
            )
        };
        assert!(
            Instant::now() < deadline,
            "the city stage did not merge up to {to:?} in 120 s: {:?}",
            instances
                .iter()
                .map(|i| (brief(city(rt, i, "recorder")), brief(city(rt, i, "viewer"))))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    eprintln!("city caught up after {:?}", started.elapsed());
}

/// `GET /api/segments` of one instance: (id, people, tier) of each segment.
fn segments(rt: &tokio::runtime::Runtime, instance: &Instance) -> Vec<(String, String, String)> {
    let (_, v) = rt.block_on(crate::http::request(
        instance.addr,
        "GET",
        "/api/segments",
        None,
        "",
    ));
    v.as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].to_string(),
                format!("{:.6}", s["people"].as_f64().unwrap_or(-1.0)),
                s["tier"].to_string(),
            )
        })
        .collect()
}

const TABLES: [&str; 2] = [
    // People rounded to 9 digits: sums may add in another order in another process.
    "SELECT window_start, window_end, cell, lbs_devices, counter_in, counter_out, gate_entries, gate_exits, round(people, 9) AS people FROM hex_windows ORDER BY window_start, cell",
    "SELECT window_start, window_end, segment_id, round(people, 9) AS people, inflow, outflow, tier FROM segment_windows ORDER BY window_start, segment_id",
];

/// Produces `feed` to `target` keyed at res 9 in `parts` consecutive slices, one every `gap`, on
/// a thread (the night arrives while the cluster reads it); the handle says when all is sent.
fn produce_slowly(
    dir: &Path,
    feed: &Path,
    target: String,
    parts: usize,
    gap: Duration,
) -> std::thread::JoinHandle<()> {
    let text = std::fs::read_to_string(feed).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let per = lines.len().div_ceil(parts);
    let slices: Vec<PathBuf> = lines
        .chunks(per)
        .enumerate()
        .map(|(i, c)| {
            let p = dir.join(format!("slice-{i}.ndjson"));
            std::fs::write(&p, c.join("\n") + "\n").unwrap();
            p
        })
        .collect();
    std::thread::spawn(move || {
        for s in slices {
            let sent = throng(&[
                "replay",
                s.to_str().unwrap(),
                "--target",
                &target,
                "--key-res",
                "9",
            ]);
            assert!(sent.status.success(), "{}", String::from_utf8_lossy(&sent.stderr));
            std::thread::sleep(gap);
        }
    })
}

#[test]
fn two_instances_share_the_partitions_and_a_kill_9_or_a_third_joining_changes_no_row() {
    let (b, _broker) = bootstrap();
    let dir = tempfile::tempdir().unwrap();
    let (feed, total) = night(dir.path(), 2000, 1200, 7);
    // Keyed at res 9 (~0.1 km² blocks), the Bund spreads over the four partitions.
    let t = topic(&b, "night", 4);
    let rt = tokio::runtime::Runtime::new().unwrap();

    // Two instances of one group: two partitions each.
    let pair = dir.path().join("pair-shared");
    let cfg_a = config(dir.path(), &b, &t, "pair", &pair, "a");
    let cfg_b = config(dir.path(), &b, &t, "pair", &pair, "b");
    let a = start(&cfg_a, &dir.path().join("a-data"));
    until_holds(&rt, &a, 4, "a alone");
    let b_ = start(&cfg_b, &dir.path().join("b-data"));
    until_holds(&rt, &b_, 2, "b after joining");
    until_holds(&rt, &a, 2, "a after b joined");
    // The night arrives in twenty slices over about 25 s while the cluster reads it.
    let producer = produce_slowly(
        dir.path(),
        &feed,
        format!("kafka://{b}/{t}"),
        20,
        Duration::from_millis(1200),
    );
    // At a random point between a fifth and two thirds of the night, `a` dies without a word.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64;
    let mut rng = crate::support::Rng(nanos | 1);
    let kill_at = (total as f64 * rng.range(0.2, 0.67)) as i64;
    let deadline = Instant::now() + Duration::from_secs(120);
    while read(&rt, &[&a, &b_]).0 < kill_at {
        assert!(Instant::now() < deadline, "the pair read too little in 120 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    let at_kill = read(&rt, &[&a, &b_]).0;
    assert!(at_kill < total * 9 / 10, "the kill came after the night was read");
    let killed = Instant::now();
    let _ = Command::new("kill")
        .arg("-9")
        .arg(a.child.0.id().to_string())
        .status();
    drop(a);
    let failover = until_holds(&rt, &b_, 4, "b after a was killed");
    eprintln!(
        "failover: b held all four partitions {:?} after the kill (session timeout 3 s), {at_kill} of {total} read by then",
        killed.elapsed().max(failover)
    );
    // A third instance joins while the night is still arriving: the group rebalances.
    let cfg_c = config(dir.path(), &b, &t, "pair", &pair, "c");
    let joined = Instant::now();
    let c = start(&cfg_c, &dir.path().join("c-data"));
    until_holds(&rt, &c, 2, "c after joining");
    until_holds(&rt, &b_, 2, "b after c joined");
    let still = read(&rt, &[&b_, &c]).0;
    eprintln!(
        "rebalance: c held two partitions {:?} after it was started, {still} of {total} read by then",
        joined.elapsed()
    );
    producer.join().unwrap();
    until_read(&rt, &[&b_, &c], 4, total);
    until_city_caught_up(&rt, &[&b_, &c]);
    // Either instance shows the whole city: the same segments, people and tiers.
    let (sb, sc) = (segments(&rt, &b_), segments(&rt, &c));
    assert_eq!(sb, sc, "the two instances show different cities");
    assert!(
        sb.iter()
            .filter(|s| s.1 != "-1.000000" && s.1 != "0.000000")
            .count()
            > 5,
        "{sb:?}"
    );
    stop(b_.child);
    stop(c.child);

    // The reference: one instance of another group, reading the whole topic at once.
    let solo = dir.path().join("solo-shared");
    let cfg = config(dir.path(), &b, &t, "solo", &solo, "solo");
    let one = start(&cfg, &dir.path().join("solo-data"));
    until_read(&rt, &[&one], 4, total);
    until_city_caught_up(&rt, &[&one]);
    stop(one.child);

    // A cell is one partition's: the producer keys a record by the region holding its cell.
    let dup = query(
        &pair,
        "SELECT count(*) AS n FROM (SELECT window_start, cell FROM hex_windows GROUP BY 1, 2 HAVING count(*) > 1)",
    );
    assert_eq!(
        dup.lines().nth(1).map(str::trim),
        Some("0"),
        "cells in two partitions"
    );
    // Every partition's history, read as one table, is the single instance's, row for row.
    for sql in TABLES {
        let (s, p) = (query(&solo, sql), query(&pair, sql));
        assert!(s.lines().count() > 100, "{sql}: {} rows", s.lines().count());
        same(&s, &p, sql);
    }
    // The city's tiers moved (alerts were raised) and were recorded once.
    let alerts = "SELECT ts, segment_id, from_tier, to_tier FROM alerts ORDER BY ts, segment_id";
    let (sa, pa) = (query(&solo, alerts), query(&pair, alerts));
    assert!(sa.lines().count() > 1, "no tier changed all night: {sa}");
    same(&sa, &pa, "alerts");
    // The partitions really were split: each wrote its own share of the cells.
    let per_partition: Vec<usize> = (0..4)
        .map(|p| {
            let dir = pair.join("partitions").join(format!("{t}-{p}"));
            query(&dir, "SELECT count(*) AS n FROM hex_windows")
                .lines()
                .nth(1)
                .and_then(|n| n.trim().parse().ok())
                .unwrap_or(0)
        })
        .collect();
    assert!(
        per_partition.iter().filter(|n| **n > 0).count() >= 2,
        "rows per partition {per_partition:?}"
    );
}

#[test]
fn keyed_by_district_a_cluster_counts_what_one_offline_replay_counts() {
    let (b, _broker) = bootstrap();
    let dir = tempfile::tempdir().unwrap();
    let (feed, total) = night(dir.path(), 800, 600, 3);
    // Keyed at the default res 6 the whole Bund is one region: one partition holds it, and the
    // cluster's tables are exactly those of the file replayed offline.
    let t = topic(&b, "district", 2);
    let sent = throng(&[
        "replay",
        feed.to_str().unwrap(),
        "--target",
        &format!("kafka://{b}/{t}"),
    ]);
    assert!(sent.status.success(), "{}", String::from_utf8_lossy(&sent.stderr));
    let rt = tokio::runtime::Runtime::new().unwrap();
    let shared = dir.path().join("shared");
    let cfg = config(dir.path(), &b, &t, "district", &shared, "one");
    let one = start(&cfg, &dir.path().join("data"));
    until_read(&rt, &[&one], 2, total);
    until_city_caught_up(&rt, &[&one]);
    stop(one.child);
    let offline = dir.path().join("offline");
    crate::kafka::replay_offline(&feed, &cfg, &offline);
    // The replay closes its last windows at the end of the file; the cluster keeps them open for
    // more of the partition. Compared up to the last window both closed.
    let last = query(&shared, "SELECT max(window_end) AS e FROM hex_windows");
    let e = last.lines().nth(1).unwrap().trim().to_owned();
    for sql in TABLES {
        let sql = sql.replace(" ORDER BY", &format!(" WHERE window_end <= '{e}' ORDER BY"));
        let (o, c) = (query(&offline, &sql), query(&shared, &sql));
        assert!(c.lines().count() > 50, "{sql}: {} rows", c.lines().count());
        same(&o, &c, &sql);
    }
}
