//! Disk faults under a running `throng serve`: the write-ahead log, the history writer and the
//! thresholds store each meet a write that fails, as on a full disk. The log and the thresholds
//! fail for real: the child's `RLIMIT_FSIZE` is lowered (with SIGXFSZ ignored, a write past it
//! gets EFBIG part way, as one that fills a disk gets ENOSPC). The history fails with the path
//! it writes into taken by a file (ENOTDIR), since its files are too small for a size limit to
//! catch them alone. In every case the server stays up, says what fails, acknowledges nothing
//! it did not write, recovers by itself, and a crash afterwards loses nothing acknowledged.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::http::{request, request_text};
use crate::recovery::stop;
use crate::support::{metric, query_with, serve_command, serving, Child};

const HOUR: i64 = 3_600_000;

/// Sets the child's file size limit (None: no limit), keeping its hard limit.
fn limit_file_size(child: &Child, bytes: Option<u64>) {
    let pid = child.0.id() as libc::pid_t;
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: both pointers are to live rlimit values for the duration of the call.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_FSIZE, std::ptr::null(), &mut old) };
    assert_eq!(rc, 0, "prlimit get: {}", std::io::Error::last_os_error());
    let new = libc::rlimit {
        rlim_cur: bytes.unwrap_or(old.rlim_max).min(old.rlim_max),
        rlim_max: old.rlim_max,
    };
    // SAFETY: as above.
    let rc = unsafe { libc::prlimit(pid, libc::RLIMIT_FSIZE, &new, std::ptr::null_mut()) };
    assert_eq!(rc, 0, "prlimit set: {}", std::io::Error::last_os_error());
}

fn pings(ts: i64, prefix: &str, n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "{{\"kind\":\"lbs\",\"ts\":{},\"device\":\"{prefix}-{i}\",\"lat\":31.2405,\"lng\":121.4832}}\n",
                ts + i as i64
            )
        })
        .collect()
}

/// The newest write-ahead log segment (the one appended to).
fn open_segment(data: &Path) -> PathBuf {
    let mut segs: Vec<PathBuf> = std::fs::read_dir(data.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    segs.sort();
    segs.pop().expect("a log segment")
}

/// Every entry of the log is whole: a write that went part way was cut back (`throng wal dump
/// --check` reads every frame and fails on a torn or corrupt one).
fn assert_whole_entries(data: &Path) {
    let o = crate::support::throng(&["wal", "dump", "--check", "--data-dir", data.to_str().unwrap()]);
    assert!(
        o.status.success(),
        "a torn entry in the log: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let text = String::from_utf8(o.stdout).unwrap();
    assert!(text
        .lines()
        .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok()));
}

fn len(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let cfg = dir.join("t.toml");
    std::fs::write(
        &cfg,
        format!(
            "scenario = \"fixtures/bund\"\n[window]\nsize = \"10s\"\nslide = \"10s\"\nallowed_lateness = \"1s\"\nidle_timeout = \"60s\"\n\
             [privacy]\nk = 0\n{extra}"
        ),
    )
    .unwrap();
    cfg
}

fn spawn(cfg: &Path, data: &Path) -> (Child, std::net::SocketAddr) {
    serving(serve_command(data, &["--config", cfg.to_str().unwrap()]))
}

async fn health(addr: std::net::SocketAddr) -> serde_json::Value {
    request(addr, "GET", "/api/health", None, "").await.1
}

/// Waits (at most 20 s) until `/api/health` satisfies `ok`; the last health on timeout.
async fn wait_health(addr: std::net::SocketAddr, what: &str, ok: impl Fn(&serde_json::Value) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let h = health(addr).await;
        if ok(&h) {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: {h}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn faulty(h: &serde_json::Value, component: &str) -> Option<String> {
    h["faults"]
        .as_array()?
        .iter()
        .find(|f| f["component"] == component)
        .map(|f| f["error"].as_str().unwrap_or_default().to_owned())
}

/// Devices counted in the 10 s window starting at `start`, from the stopped server's history.
fn devices_in(data: &Path, cfg: &Path, start: i64) -> u64 {
    let out = query_with(
        data,
        Some(cfg),
        &format!("SELECT coalesce(sum(lbs_devices), 0) AS n FROM hex_windows WHERE CAST(window_start AS BIGINT) = {start}"),
    );
    out.lines()
        .nth(1)
        .and_then(|l| l.parse().ok())
        .unwrap_or_else(|| panic!("{out}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_log_that_cannot_be_written_acknowledges_nothing_and_recovers_when_space_returns() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "[durability]\ncheckpoint_every = \"1h\"\n");
    let data = dir.path().join("data");
    let w0 = (throng::model::now_ms() - 2 * HOUR).div_euclid(HOUR) * HOUR;
    let (child, addr) = spawn(&cfg, &data);

    let (s, v) = request(addr, "POST", "/api/ingest", None, &pings(w0 + 1_000, "a", 100)).await;
    assert_eq!(s, 202, "{v}");
    // Room for a few hundred bytes more: the next batch (~8 kB) is written part way.
    let seg = open_segment(&data);
    let before = len(&seg);
    limit_file_size(&child, Some(before + 300));
    for _ in 0..2 {
        let (s, v) = request(addr, "POST", "/api/ingest", None, &pings(w0 + 2_000, "b", 200)).await;
        assert_eq!(s, 503, "a batch the log could not hold is refused: {v}");
        let e = v["error"].as_str().unwrap_or_default();
        assert!(
            e.contains("write-ahead log") && e.contains("File too large"),
            "the reason is named: {e}"
        );
        assert_whole_entries(&data);
    }
    let h = health(addr).await;
    assert_eq!(h["status"], "degraded", "{h}");
    let e = faulty(&h, "wal").unwrap_or_else(|| panic!("health names the log: {h}"));
    assert!(e.contains("File too large"), "{e}");
    let (_, page) = request_text(addr, "GET", "/metrics", None, "").await;
    assert_eq!(
        metric(&page, "throng_storage_degraded{component=\"wal\"}"),
        Some(1.0)
    );
    assert!(metric(&page, "throng_storage_failures_total{component=\"wal\"}").unwrap_or(0.0) >= 2.0);

    // Space returns: the next batch is taken and health clears by itself.
    limit_file_size(&child, None);
    let (s, v) = request(addr, "POST", "/api/ingest", None, &pings(w0 + 3_000, "c", 100)).await;
    assert_eq!(s, 202, "{v}");
    let h = health(addr).await;
    assert_eq!(h["status"], "ok", "{h}");
    assert!(faulty(&h, "wal").is_none(), "{h}");

    // A crash now: the restart replays the log, which must hold a and c whole and nothing of b.
    let _ = std::process::Command::new("kill")
        .args(["-9", &child.0.id().to_string()])
        .status();
    drop(child);
    let (second, addr) = spawn(&cfg, &data);
    // A later record closes the window; a clean stop writes it.
    let (s, v) = request(addr, "POST", "/api/ingest", None, &pings(w0 + 30_000, "d", 1)).await;
    assert_eq!(s, 202, "{v}");
    stop(second);
    assert_eq!(
        devices_in(&data, &cfg, w0),
        200,
        "every acknowledged device (100 + 100) once, none of the refused batch"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_history_flush_that_fails_keeps_the_windows_retries_and_shows_degraded() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "[durability]\ncheckpoint_every = \"300ms\"\n[history]\nflush_every = \"300ms\"\n",
    );
    let data = dir.path().join("data");
    let w0 = (throng::model::now_ms() - 2 * HOUR).div_euclid(HOUR) * HOUR;
    let (child, addr) = spawn(&cfg, &data);

    // The table's folder is taken by a file: every flush into it fails with ENOTDIR.
    let table = data.join("history").join("hex_windows");
    let aside = data.join("history").join("hex_windows.aside");
    std::fs::rename(&table, &aside).unwrap();
    std::fs::write(&table, b"not a folder").unwrap();

    let body = pings(w0 + 1_000, "a", 50) + &pings(w0 + 30_000, "late-closer", 1);
    let (s, v) = request(addr, "POST", "/api/ingest", None, &body).await;
    assert_eq!(s, 202, "{v}");
    wait_health(addr, "health names the failing history", |h| {
        h["status"] == "degraded" && faulty(h, "history").is_some_and(|e| e.contains("Not a directory"))
    })
    .await;
    // The closed window is kept in memory and still answers SQL.
    let sql =
        format!("SELECT sum(lbs_devices) AS n FROM hex_windows WHERE CAST(window_start AS BIGINT) = {w0}");
    let (s, v) = crate::history::sql(addr, None, &sql).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v[0]["n"], 50, "{v}");
    // While the windows are not on disk no checkpoint drops the log that holds them.
    assert!(
        !data.join("checkpoint.json").exists(),
        "no checkpoint while history fails"
    );

    // The folder is back: the next flush writes the windows and health clears.
    std::fs::remove_file(&table).unwrap();
    std::fs::rename(&aside, &table).unwrap();
    wait_health(addr, "health clears once a flush succeeds", |h| {
        h["status"] == "ok"
    })
    .await;
    let parquet = walk(&table)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "parquet"))
        .count();
    assert!(parquet > 0, "the windows are on disk");

    // A crash now loses nothing and writes nothing twice.
    let _ = std::process::Command::new("kill")
        .args(["-9", &child.0.id().to_string()])
        .status();
    drop(child);
    let (second, _) = spawn(&cfg, &data);
    stop(second);
    assert_eq!(devices_in(&data, &cfg, w0), 50);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thresholds_change_that_cannot_be_written_is_refused_and_the_old_ones_stay() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    let data = dir.path().join("data");
    let (child, addr) = spawn(&cfg, &data);
    let path = "/api/segments/chenyi-steps/thresholds";
    let capacity = |addr| async move {
        let (_, list) = request(addr, "GET", "/api/segments", None, "").await;
        list.as_array()
            .and_then(|l| l.iter().find(|s| s["id"] == "chenyi-steps"))
            .and_then(|s| s["thresholds"]["capacity"].as_f64())
    };
    let (s, v) = request(addr, "PUT", path, None, r#"{"capacity":900}"#).await;
    assert_eq!(s, 200, "{v}");
    let audit = data.join("thresholds-audit.ndjson");
    let overrides = data.join("thresholds.json");
    let (audit_before, overrides_before) = (len(&audit), std::fs::read(&overrides).unwrap());

    // Nothing can be written at all: the new overrides file is refused.
    limit_file_size(&child, Some(0));
    let (s, v) = request(addr, "PUT", path, None, r#"{"capacity":500}"#).await;
    assert_eq!(s, 503, "{v}");
    let e = v["error"].as_str().unwrap_or_default();
    assert!(e.contains("File too large") && e.contains("unchanged"), "{e}");
    assert_eq!(
        capacity(addr).await,
        Some(900.0),
        "the old capacity stays in force"
    );
    let h = health(addr).await;
    assert!(faulty(&h, "thresholds").is_some(), "{h}");

    // Room for the overrides file but not for the audit line: the change is refused and the
    // overrides file put back, so a restart cannot bring in what the organiser was told failed.
    limit_file_size(&child, Some(audit_before + 10));
    let (s, v) = request(addr, "PUT", path, None, r#"{"capacity":400}"#).await;
    assert_eq!(s, 503, "{v}");
    assert!(v["error"].as_str().unwrap_or_default().contains("audit"), "{v}");
    assert_eq!(capacity(addr).await, Some(900.0));
    assert_eq!(len(&audit), audit_before, "no torn audit line");
    assert_eq!(
        std::fs::read(&overrides).unwrap(),
        overrides_before,
        "the overrides file is the old one"
    );

    limit_file_size(&child, None);
    let (s, v) = request(addr, "PUT", path, None, r#"{"capacity":700}"#).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(health(addr).await["status"], "ok");
    stop(child);
    let (again, addr) = spawn(&cfg, &data);
    assert_eq!(
        capacity(addr).await,
        Some(700.0),
        "the change that succeeded is the one kept"
    );
    let audit_lines = std::fs::read_to_string(&audit).unwrap().lines().count();
    assert_eq!(audit_lines, 2, "two changes made, two audited");
    stop(again);
}
