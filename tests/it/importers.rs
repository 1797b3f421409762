//! Importers on real public samples, replayed through the engine, totals checked against an
//! independent reading of the same files.

use std::collections::HashMap;
use std::path::PathBuf;

use serde_json::Value;

use crate::support::{root, throng};

/// Imports, writes the registry into a scenario folder, replays with day-long tumbling windows,
/// and returns the summed `hex_windows` columns plus the import's stderr.
fn import_and_replay(
    format: &str,
    files: &[PathBuf],
    extra: &[&str],
    registry_name: &str,
) -> (HashMap<String, f64>, String) {
    let dir = tempfile::tempdir().unwrap();
    let feed = dir.path().join("feed.ndjson");
    let scenario = dir.path().join("scenario");
    std::fs::create_dir_all(&scenario).unwrap();
    let registry = scenario.join(registry_name);
    let mut args = vec!["import", "--format", format, "--out", feed.to_str().unwrap()];
    if registry_name != "none" {
        args.extend(["--registry-out", registry.to_str().unwrap()]);
    }
    args.extend(extra);
    let files: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
    args.extend(files.iter().map(String::as_str));
    let out = throng(&args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}");
    let cfg = dir.path().join("t.toml");
    std::fs::write(
        &cfg,
        format!(
            "scenario = {:?}\n[window]\nsize = \"24h\"\nslide = \"24h\"\nallowed_lateness = \"1h\"\nidle_timeout = \"48h\"\n[lbs]\nmax_accuracy_m = 100\n",
            scenario.display().to_string()
        ),
    )
    .unwrap();
    let out = throng(&[
        "replay",
        feed.to_str().unwrap(),
        "--print",
        "--config",
        cfg.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut sums: HashMap<String, f64> = HashMap::new();
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        for k in [
            "lbs_devices",
            "counter_in",
            "counter_out",
            "gate_entries",
            "gate_exits",
        ] {
            *sums.entry(k.into()).or_default() += v[k].as_f64().unwrap();
        }
    }
    (sums, stderr)
}

fn shared(rel: &str) -> Option<PathBuf> {
    let p = root().join("../shared/data/real").join(rel);
    if p.exists() {
        Some(p)
    } else if std::env::var_os("CI").is_some() {
        // CI has the shared data: a missing folder there means these tests tested nothing.
        panic!("{} is missing on CI (CI is set)", p.display());
    } else {
        eprintln!(
            "skipped: {} is not beside the repository (on CI, where CI is set, this fails)",
            p.display()
        );
        None
    }
}

#[test]
fn mta_turnstile_registers_are_differenced_and_unknown_units_reported() {
    let d = root().join("fixtures/real/mta_turnstile");
    let files = vec![
        d.join("turnstile_150620_lexington_sample.csv"),
        d.join("turnstile_150919_hudsonyd.csv"),
    ];
    let units = d.join("remote_unit_stations.json");
    let (sums, stderr) = import_and_replay(
        "mta-turnstile",
        &files,
        &["--units", units.to_str().unwrap()],
        "stations.json",
    );
    assert!(
        stderr.contains("UNIT R072") && stderr.contains("no location"),
        "R072 is reported, not guessed: {stderr}"
    );
    // Independently: per device and per register (entries, exits each on its own), consecutive
    // audits in time order; a drop or a jump faster than 50 people/s re-bases that register (no
    // count for it); Hudson Yards (R072) has no location and is left out.
    let mut rows: Vec<(String, i64, u64, u64)> = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for line in text.lines().skip(1) {
            let c: Vec<&str> = line.split(',').map(str::trim).collect();
            if c.len() < 11 || c[1] == "R072" {
                continue;
            }
            let t = chrono::NaiveDateTime::parse_from_str(&format!("{} {}", c[6], c[7]), "%m/%d/%Y %H:%M:%S")
                .unwrap();
            rows.push((
                format!("{}/{}/{}", c[0], c[1], c[2]),
                t.and_utc().timestamp(),
                c[9].parse().unwrap(),
                c[10].parse().unwrap(),
            ));
        }
    }
    rows.sort_by_key(|r| r.1);
    let mut last: HashMap<String, (i64, u64, u64)> = HashMap::new();
    let (mut entries, mut exits, mut backwards) = (0u64, 0u64, 0u64);
    // What the whole-reading rule (a backwards exit register voids the entries too) counted.
    let mut entries_whole_reading = 0u64;
    for (dev, t, e, x) in rows {
        if let Some(&(t0, e0, x0)) = last.get(&dev) {
            if t <= t0 {
                continue;
            }
            let cap = 50.0 * (t - t0).max(1) as f64;
            let ok = |new: u64, old: u64| new >= old && ((new - old) as f64) <= cap;
            if ok(e, e0) {
                entries += e - e0;
            } else {
                backwards += 1;
            }
            if ok(x, x0) {
                exits += x - x0;
            } else {
                backwards += 1;
            }
            if ok(e, e0) && ok(x, x0) {
                entries_whole_reading += e - e0;
            }
        }
        last.insert(dev, (t, e, x));
    }
    eprintln!(
        "MTA sample: {entries} entries per register, {entries_whole_reading} under the whole-reading rule (+{})",
        entries - entries_whole_reading
    );
    assert!(
        entries > entries_whole_reading,
        "a backwards exit register no longer costs entries"
    );
    assert!(
        backwards >= 100,
        "the sample's backwards-running counters are seen: {backwards}"
    );
    assert!(entries > 10_000);
    assert_eq!(sums["gate_entries"], entries as f64);
    assert_eq!(sums["gate_exits"], exits as f64);
}

#[test]
fn geolife_tracks_become_one_device_each() {
    let d = root().join("fixtures/real/geolife");
    let files: Vec<PathBuf> = std::fs::read_dir(&d)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "plt"))
        .collect();
    let (sums, _) = import_and_replay("geolife-plt", &files, &[], "none");
    // Independently: one device per file per UTC day it has fixes on.
    let mut days = std::collections::HashSet::new();
    for f in &files {
        for line in std::fs::read_to_string(f).unwrap().lines().skip(6) {
            if let Some(date) = line.split(',').nth(5) {
                days.insert((f.clone(), date.to_string()));
            }
        }
    }
    assert_eq!(sums["lbs_devices"], days.len() as f64);
}

#[test]
fn melbourne_hourly_counts_add_up() {
    let Some(f) = shared("melbourne_pedestrian/hourly_counts_2019-05-02_joined_locations.csv") else {
        return;
    };
    let (sums, _) = import_and_replay("melbourne-counts", std::slice::from_ref(&f), &[], "sensors.json");
    let mut rdr = csv::Reader::from_path(&f).unwrap();
    let col = rdr
        .headers()
        .unwrap()
        .iter()
        .position(|h| h == "hourly_counts")
        .unwrap();
    let total: u64 = rdr
        .records()
        .map(|r| r.unwrap()[col].replace(',', "").parse::<u64>().unwrap())
        .sum();
    assert!(total > 100_000);
    assert_eq!(
        sums["counter_in"], total as f64,
        "thousands separators read as numbers"
    );
}

#[test]
fn shanghai_card_taps_count_entries_and_exits() {
    let (Some(f), Some(st)) = (
        shared("shanghai_metro_soda2015/smartcard_sample_20150401.csv"),
        shared("shanghai_metro_soda2015/stations_by_name.json"),
    ) else {
        return;
    };
    let (sums, stderr) = import_and_replay(
        "sptcc-card",
        std::slice::from_ref(&f),
        &["--stations", st.to_str().unwrap()],
        "stations.json",
    );
    let table: HashMap<String, Value> = serde_json::from_str(&std::fs::read_to_string(&st).unwrap()).unwrap();
    // The spellings a person reads as the same station (card data → station table), written out
    // here by hand rather than by the importer's rule.
    let same: HashMap<&str, &str> = [
        ("李子园路", "李子园"),
        ("上海大学站", "上海大学"),
        ("外高桥保税区北", "外高桥保税区北站"),
        ("淞浜路", "淞滨路"),
    ]
    .into_iter()
    .filter(|(_, t)| table.contains_key(*t))
    .collect();
    let (mut ins, mut outs, mut unknown) = (0u64, 0u64, 0u64);
    let mut variants_seen = std::collections::BTreeSet::new();
    for line in std::fs::read_to_string(&f).unwrap().lines().skip(1) {
        let c: Vec<&str> = line.split(',').collect();
        let name = c[3].split("号线").nth(1).unwrap_or(c[3]).trim();
        if c[4] != "地铁" {
            continue;
        }
        if !table.contains_key(name) {
            match same.get(name) {
                Some(t) => {
                    variants_seen.insert(format!("{name} → {t}"));
                }
                None => {
                    unknown += 1;
                    continue;
                }
            }
        }
        if c[5].parse::<f64>().unwrap() == 0.0 {
            ins += 1;
        } else {
            outs += 1;
        }
    }
    assert!(
        !variants_seen.is_empty(),
        "the sample spells some stations differently"
    );
    for v in &variants_seen {
        assert!(
            stderr.contains(v.as_str()),
            "the importer reports the match {v}: {stderr}"
        );
    }
    eprintln!("resolved: {variants_seen:?}; still unknown: {unknown} taps");
    assert_eq!(
        stderr.contains("not in the station table"),
        unknown > 0,
        "{stderr}"
    );
    assert_eq!(
        (sums["gate_entries"], sums["gate_exits"]),
        (ins as f64, outs as f64)
    );
}
