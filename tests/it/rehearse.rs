//! `throng rehearse`: the Bund night with metro exit 7 closed at 23:30 against the night as
//! planned, through the real binary; the report opened in the real headless Chromium.

use crate::support::{root, throng};

fn summary(dir: &std::path::Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(dir.join("summary.json")).expect("summary.json written")).unwrap()
}

fn segment<'a>(run: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    run["segments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("{id} in the summary"))
}

#[test]
fn closing_metro_exit_7_at_2330_shows_which_segments_change_and_when() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("rehearsal");
    let what_if = root().join("fixtures/bund/what-if-exit-7.toml");
    let run = throng(&[
        "rehearse",
        "--what-if",
        what_if.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--devices",
        "8000",
        "--duration",
        "3600",
        "--midnight",
        "2027-01-01T00:00:00+08:00",
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let s = summary(&out);
    assert_eq!(s["time_zone"], "Asia/Shanghai");
    assert_eq!(
        (
            s["night"]["start_local"].as_str(),
            s["night"]["end_local"].as_str()
        ),
        (Some("23:20"), Some("00:20")),
        "midnight two thirds into the night, in local time"
    );
    let (base, other) = (&s["baseline"], &s["what_if_run"]);
    let n = base["segments"].as_array().unwrap().len();
    assert!(n >= 12 && other["segments"].as_array().unwrap().len() == n);
    // With its exit closed from 23:30, exit 7's plaza empties: nobody arrives there any more.
    let (b7, o7) = (
        segment(base, "enr-station-exit-7"),
        segment(other, "enr-station-exit-7"),
    );
    assert!(
        o7["peak_people"].as_f64().unwrap() < 0.5 * b7["peak_people"].as_f64().unwrap(),
        "exit 7 plaza: baseline {b7}, what-if {o7}"
    );
    // Its arrivals come by another exit of the station instead: as many people in all.
    let total = |run: &serde_json::Value| -> f64 {
        run["segments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x["peak_people"].as_f64().unwrap())
            .sum()
    };
    let (tb, to) = (total(base), total(other));
    assert!((to / tb - 1.0).abs() < 0.15, "Σ peaks {tb} vs {to}");
    // The differences list names exit 7's plaza, and every entry is a real change.
    let diffs = s["differences"].as_array().unwrap();
    assert!(diffs.iter().any(|d| d["id"] == "enr-station-exit-7"), "{diffs:?}");
    for d in diffs {
        let (b, o) = (
            segment(base, d["id"].as_str().unwrap()),
            segment(other, d["id"].as_str().unwrap()),
        );
        assert!(
            b["highest_tier"] != o["highest_tier"]
                || b["first"]["high"] != o["first"]["high"]
                || b["first"]["critical"] != o["first"]["critical"]
                || (b["peak_density"].as_f64().unwrap() - o["peak_density"].as_f64().unwrap()).abs()
                    > 0.1 * b["peak_density"].as_f64().unwrap().max(0.1),
            "{d}"
        );
    }
    // A tier first reached has its time in local clock form and the reason that raised it.
    for x in other["segments"].as_array().unwrap() {
        for tier in ["medium", "high", "critical"] {
            assert_eq!(x["first"][tier].is_null(), x["first_local"][tier].is_null());
            assert_eq!(
                x["first"][tier].is_null(),
                x["first_reason"][tier].is_null(),
                "{x}"
            );
        }
    }

    // The report, in the browser: every segment charted, the numbers on the page the summary's.
    let html = std::fs::read_to_string(out.join("report.html")).unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "self-contained: no link out"
    );
    let profile = dir.path().join("chromium");
    let url = format!("file://{}", out.join("report.html").display());
    let dom = crate::browser::chromium(&["--dump-dom", &url], &profile);
    let dom = String::from_utf8_lossy(&dom.stdout);
    assert_eq!(
        dom.matches("<svg class=\"chart\"").count(),
        n,
        "a chart per segment"
    );
    // Each chart reads in people as well as density: its ticks say both (density × area).
    let steps = dom
        .split("<svg class=\"chart\" data-segment=\"chenyi-steps\"")
        .nth(1)
        .and_then(|t| t.split("</svg>").next())
        .expect("the steps' chart");
    assert!(
        steps.contains("p/m² · people") && steps.contains(">0.0 · 0<"),
        "{steps}"
    );
    let row = dom
        .split("<table class=\"segments\" data-run=\"what-if\">")
        .nth(1)
        .and_then(|t| t.split("<tr data-segment=\"enr-station-exit-7\">").nth(1))
        .and_then(|t| t.split("</tr>").next())
        .expect("exit 7 in the what-if table");
    let cells: Vec<&str> = row
        .split("<td>")
        .skip(1)
        .map(|c| c.split('<').next().unwrap_or(""))
        .collect();
    assert_eq!(
        cells[6],
        format!("{:.0}", o7["peak_people"].as_f64().unwrap()),
        "{row}"
    );
    assert_eq!(
        cells[7],
        format!("{:.2}", o7["peak_density"].as_f64().unwrap()),
        "{row}"
    );
    assert!(dom.contains("close metro exit east-nanjing-road/exit-7 from 23:30"));
    let shots = root().join("target/test-output");
    std::fs::create_dir_all(&shots).unwrap();
    let png = shots.join("rehearsal.png");
    crate::browser::chromium(
        &[
            "--window-size=1920,1080",
            &format!("--screenshot={}", png.display()),
            &url,
        ],
        &profile,
    );
    let bytes = std::fs::read(&png).expect("screenshot written");
    assert!(bytes.len() > 20_000 && bytes.starts_with(b"\x89PNG"));
}

#[test]
fn a_wrong_what_if_is_named_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[[close]]\nexit = \"east-nanjing-road/exit-70\"\nat = \"23:55\"\n",
    )
    .unwrap();
    let out = dir.path().join("out");
    let run = throng(&[
        "rehearse",
        "--what-if",
        bad.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--devices",
        "100",
        "--duration",
        "600",
    ]);
    assert!(!run.status.success());
    let err = String::from_utf8_lossy(&run.stderr);
    assert!(
        err.contains("exit-70") && err.contains("east-nanjing-road/exit-7"),
        "{err}"
    );
    assert!(!out.join("report.html").exists());
}
