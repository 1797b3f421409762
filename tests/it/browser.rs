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

    // Rewind, paused half an hour back (or at the start of history): the table is that window's,
    // as the history API serves it, and the clock says it is not live.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let get = |path: String| rt.block_on(crate::http::request(addr, "GET", &path, None, "")).1;
    let rewind = format!("http://{addr}/?rewind=1800");
    let dom = chromium(&["--virtual-time-budget=8000", "--dump-dom", &rewind], &profile);
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    let at = |dom: &str, key: &str| -> String {
        let k = format!("{key}=\"");
        let i = dom
            .find(&k)
            .unwrap_or_else(|| panic!("no {key} in the page: {dom}"));
        dom[i + k.len()..].split('"').next().unwrap().to_owned()
    };
    assert!(dom.contains("回放 REWIND"), "the clock says rewind: {dom}");
    let end: i64 = at(&dom, "data-window-end").parse().unwrap();
    let hist = get(format!("/api/history/segments?from={end}&to={end}"));
    let segs = hist["windows"][0]["segments"]
        .as_array()
        .expect("that window in history")
        .clone();
    let mut shown = 0;
    for seg in &segs {
        let id = seg["id"].as_str().unwrap();
        let row = format!("<tr data-seg=\"{id}\" data-people=\"");
        let people: i64 = dom
            .split(&row)
            .nth(1)
            .and_then(|t| t.split('"').next())
            .unwrap_or_else(|| panic!("{id} not in the rewound table"))
            .parse()
            .unwrap();
        assert_eq!(
            people,
            seg["people"].as_f64().unwrap().round() as i64,
            "{id} at {end}"
        );
        shown += 1;
    }
    assert!(shown >= 12);
    let png = shots.join("dashboard-rewind.png");
    chromium(
        &[
            "--window-size=1920,1080",
            "--virtual-time-budget=8000",
            &format!("--screenshot={}", png.display()),
            &rewind,
        ],
        &profile,
    );
    assert!(std::fs::read(&png).expect("rewind screenshot").len() > 20_000);

    // Drill-down on the steps: the numbers are the segment's from the API, the chart is drawn
    // with its thresholds, and its sources and alerts are listed.
    let drill = format!("http://{addr}/?drill=chenyi-steps");
    let dom = chromium(&["--virtual-time-budget=8000", "--dump-dom", &drill], &profile);
    let dom = String::from_utf8_lossy(&dom.stdout).into_owned();
    let panel = dom
        .split("id=\"drill\"")
        .nth(1)
        .expect("the drill-down panel")
        .to_owned();
    assert!(!panel.starts_with(" hidden"), "the panel is open: {panel}");
    let end: i64 = at(&panel, "data-window-end").parse().unwrap();
    let people: i64 = at(&panel, "data-people").parse().unwrap();
    let hist = get(format!(
        "/api/history/segments?segment=chenyi-steps&from={end}&to={end}"
    ));
    let api = hist["windows"][0]["segments"][0]["people"]
        .as_f64()
        .expect("that window in history");
    assert_eq!(people, api.round() as i64);
    assert!(
        panel.contains("class=\"drill-chart\"") && panel.contains(">high 2<"),
        "density chart with thresholds: {panel}"
    );
    assert!(panel.contains("id=\"drill-sources\"") && panel.contains("phones (LBS)"));
    // What the segment's trend added to the phones' count is shown, signed, as part of it.
    let trend = panel
        .split("data-k=\"trend\">")
        .nth(1)
        .and_then(|t| t.split('<').next())
        .unwrap_or_default();
    assert!(
        (trend.starts_with('+') || trend.starts_with('−')) && trend.ends_with(" people"),
        "the trend's share of the count: {trend:?}"
    );
    assert!(panel.contains("id=\"drill-alerts\""));
    let png = shots.join("dashboard-drill-down.png");
    chromium(
        &[
            "--window-size=1920,1080",
            "--virtual-time-budget=8000",
            &format!("--screenshot={}", png.display()),
            &drill,
        ],
        &profile,
    );
    assert!(std::fs::read(&png).expect("drill-down screenshot").len() > 20_000);

    // An alert acknowledged through the API shows who acknowledged it on a screen opened after.
    let alerts = get("/api/alerts".into());
    {
        let a = alerts
            .as_array()
            .and_then(|v| v.first())
            .expect("the demo at 30x raises alerts within seconds");
        let body = format!("{{\"segment_id\":{},\"ts\":{}}}", a["segment_id"], a["ts"]);
        let (s, v) = rt.block_on(crate::http::request(addr, "POST", "/api/alerts/ack", None, &body));
        assert_eq!(s, 200, "{v}");
        let dom = chromium(&["--virtual-time-budget=8000", "--dump-dom", &url], &profile);
        let dom = String::from_utf8_lossy(&dom.stdout);
        let key = format!("data-key=\"{}@{}\"", a["segment_id"].as_str().unwrap(), a["ts"]);
        let li = dom
            .split(&key)
            .nth(1)
            .unwrap_or_else(|| panic!("the alert {key} on the page: {dom}"));
        let li = li.split("</li>").next().unwrap();
        assert!(
            li.contains("data-ack-by=\"open-mode\"") && li.contains("✓ open-mode"),
            "{li}"
        );
    }
}
