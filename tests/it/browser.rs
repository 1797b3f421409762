//! The dashboard in a real headless Chromium against a running `throng demo`: it draws hexagons and
//! segment rows and shows a live clock. A screenshot is saved for a person to look at.

use std::process::{Command, Stdio};
use std::time::Duration;

/// Runs headless Chromium with `args` (killed after 90 s); its output.
pub fn chromium(args: &[&str], profile: &std::path::Path) -> std::process::Output {
    let mut cmd = Command::new("chromium");
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args)
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    let child = cmd
        .spawn()
        .expect("Debian's chromium is installed by the test command (.ci/run)");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(Duration::from_secs(90)) {
        Ok(out) => out.unwrap(),
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("chromium did not finish in 90 s");
        }
    }
}

#[test]
fn dashboard_draws_hexagons_segments_and_a_live_clock() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("fast.toml");
    std::fs::write(
        &cfg,
        "time_zone = \"Asia/Shanghai\"\n[window]\nsize = \"4s\"\nslide = \"2s\"\nallowed_lateness = \"300ms\"\nidle_timeout = \"2s\"\n\
         [lbs.sources.carrier-a]\nscale = 1.36\n[lbs.sources.carrier-b]\nscale = 1.25\n",
    )
    .unwrap();
    let (_demo, addr) = crate::support::serving(crate::support::throng_command(&[
        "demo",
        "--speed",
        "30",
        "--devices",
        "20000",
        "--listen",
        "127.0.0.1:0",
        "--pg-listen",
        "127.0.0.1:0",
        "--config",
        cfg.to_str().unwrap(),
        "--data-dir",
        dir.path().join("data").to_str().unwrap(),
    ]));
    let url = format!("http://{addr}/");
    // Let a few windows close so there is something to draw.
    std::thread::sleep(Duration::from_secs(8));
    let profile = dir.path().join("chromium");
    let dom = chromium(&["--virtual-time-budget=8000", "--dump-dom", &url], &profile);
    let dom = String::from_utf8_lossy(&dom.stdout);
    let attr = |name: &str| -> u64 {
        let key = format!("{name}=\"");
        let at = dom
            .find(&key)
            .unwrap_or_else(|| panic!("no {name} in the page: {dom}"));
        dom[at + key.len()..].split('"').next().unwrap().parse().unwrap()
    };
    assert!(attr("data-hexagons") > 10, "hexagons drawn");
    assert!(attr("data-rows") >= 12, "segment rows");
    assert!(
        attr("data-window-end") > 1_700_000_000_000,
        "the clock shows an event time"
    );
    // In the event's own zone (the scenario's time_zone), not the viewing machine's (UTC here).
    let end = attr("data-window-end") as i64;
    let shown = dom
        .split("id=\"clock\"")
        .nth(1)
        .and_then(|t| t.split('>').nth(1))
        .and_then(|t| t.split('<').next())
        .unwrap_or_default();
    let local = chrono::DateTime::from_timestamp_millis(end)
        .unwrap()
        .with_timezone(&chrono_tz::Asia::Shanghai)
        .format("%H:%M:%S")
        .to_string();
    assert!(
        shown.starts_with(&local),
        "clock {shown:?}, window end in Shanghai {local}"
    );
    assert!(
        dom.contains(">Asia/Shanghai<"),
        "the zone is named beside the clock"
    );
    // Delay is visible: the sources view lists every feed with its delays, the lag badge holds a
    // number, and provisional frames say which feeds are in for the open window.
    assert!(
        dom.matches("<tr data-source=").count() >= 3,
        "the sources view lists the feeds: {dom}"
    );
    assert!(
        attr("data-lag-ms") < 3_600_000,
        "the watermark-lag badge shows a lag"
    );
    assert!(
        dom.contains("data-state=\"in\"") || dom.contains("data-state=\"due\""),
        "the feeds badge says which sources are in for the open window"
    );
    let shots = crate::support::root().join("target/test-output");
    std::fs::create_dir_all(&shots).unwrap();
    let png = shots.join("dashboard.png");
    chromium(
        &[
            "--window-size=1920,1080",
            "--virtual-time-budget=8000",
            &format!("--screenshot={}", png.display()),
            &url,
        ],
        &profile,
    );
    let bytes = std::fs::read(&png).expect("screenshot written");
    assert!(
        bytes.len() > 20_000 && bytes.starts_with(b"\x89PNG"),
        "a real picture"
    );
    // A laptop screen too (below 1100 px the page stacks the map above the tables).
    let laptop = shots.join("dashboard-laptop.png");
    chromium(
        &[
            "--window-size=1366,768",
            "--virtual-time-budget=8000",
            &format!("--screenshot={}", laptop.display()),
            &url,
        ],
        &profile,
    );
    assert!(std::fs::read(&laptop).expect("laptop screenshot").len() > 20_000);
}
