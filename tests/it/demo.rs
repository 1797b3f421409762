//! `throng demo` starts, serves, and its counts move.

use crate::support::Child;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::http::request;

#[tokio::test]
async fn demo_serves_and_its_counts_move() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("fast.toml");
    std::fs::write(
        &cfg,
        "[window]\nsize = \"2s\"\nslide = \"1s\"\nallowed_lateness = \"200ms\"\nidle_timeout = \"1s\"\n\
         [lbs.sources.carrier-a]\nscale = 1.36\n[lbs.sources.carrier-b]\nscale = 1.25\n",
    )
    .unwrap();
    let mut child = Child::new(
        Command::new(env!("CARGO_BIN_EXE_throng"))
            .args([
                "demo",
                "--speed",
                "60",
                "--devices",
                "3000",
                "--listen",
                "127.0.0.1:0",
                "--pg-listen",
                "127.0.0.1:0",
                "--table-every",
                "1",
            ])
            .args([
                "--config",
                cfg.to_str().unwrap(),
                "--data-dir",
                dir.path().join("data").to_str().unwrap(),
            ])
            .current_dir(crate::support::root())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let addr = loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("demo prints its URL");
        if let Some(rest) = line.split("http://").nth(1) {
            break rest
                .split('/')
                .next()
                .unwrap()
                .parse::<std::net::SocketAddr>()
                .unwrap();
        }
    };
    let people = |v: &serde_json::Value| -> f64 {
        v.as_array()
            .unwrap()
            .iter()
            .filter_map(|s| s["people"].as_f64())
            .sum()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let (s, v) = request(addr, "GET", "/api/segments", None, "").await;
        assert_eq!(s, 200);
        let p = people(&v);
        if p > 0.0 && seen.last() != Some(&p) {
            seen.push(p);
        }
        if seen.len() >= 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    assert!(seen.len() >= 3, "segment people never moved: {seen:?}");
    // The terminal table names the busiest segments.
    let mut table = false;
    while let Ok(line) = rx.recv_timeout(Duration::from_secs(5)) {
        if line.contains("p/m²") {
            table = true;
            break;
        }
    }
    assert!(table, "no segment table in the terminal");
}
