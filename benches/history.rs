//! A day of Bund-scale history (8,640 ten-second windows × ~3,000 active cells, 14 segments) in
//! Parquet, and the analyst's typical queries timed over it.
//!
//! `cargo bench --bench history` builds the day once (under `target/bench-history/`, reused by
//! later runs), then times each query with criterion and prints the rows it returned.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion};
use throng::config::SqlConfig;
use throng::history::{History, Table};
use throng::model::{CellId, EventTime};
use throng::query::SqlEngine;
use throng::window::{to_record_batch, HexRow, HexWindow};

const T0: i64 = 1_767_139_200_000; // 2025-12-31T00:00Z
const WINDOWS: i64 = 8_640;
const SLIDE: i64 = 10_000;

fn cells() -> Vec<CellId> {
    let mut out = std::collections::BTreeSet::new();
    // A grid over the Bund and East Nanjing Road, dense enough to touch ~3,000 res-11 cells.
    for i in 0..120 {
        for j in 0..120 {
            let lat = 31.226 + i as f64 * 0.00021;
            let lng = 121.470 + j as f64 * 0.00025;
            let c = h3o::LatLng::new(lat, lng)
                .unwrap()
                .to_cell(h3o::Resolution::Eleven);
            out.insert(u64::from(c));
        }
    }
    out.into_iter().map(CellId).collect()
}

fn build(dir: &std::path::Path) -> anyhow::Result<()> {
    let cells = cells();
    let history = History::open(dir, 0, Duration::ZERO)?;
    let started = Instant::now();
    for w in 0..WINDOWS {
        let start = T0 + w * SLIDE;
        let (win, evening) = window(&cells, w);
        history.append(Table::HexWindows, start, to_record_batch(&win)?);
        let seg_rows: Vec<throng::risk::SegmentStatus> =
            (0..14).map(|s| segment_row(s, start, evening)).collect();
        history.append(
            Table::SegmentWindows,
            start,
            throng::history::schema::segment_batch(&seg_rows)?,
        );
        if w % 360 == 359 {
            history.flush()?;
            eprintln!("built {} of 24 hours ({:.0?})", (w + 1) / 360, started.elapsed());
        }
    }
    history.close()?;
    Ok(())
}

/// Window `w` of the day (and how far into the evening crowd it is).
fn window(cells: &[CellId], w: i64) -> (HexWindow, f64) {
    let start = T0 + w * SLIDE;
    // Crowds build towards midnight (Shanghai), with a ripple across cells.
    let hour = (w * SLIDE) as f64 / 3_600_000.0;
    let evening = (-(hour - 16.0).powi(2) / 8.0).exp();
    let rows = cells
        .iter()
        .enumerate()
        .map(|(k, &cell)| {
            let base = 5.0 + 400.0 * evening * (1.0 + ((k as f64) * 0.37 + hour).sin()) / 2.0;
            let devices = base as u64;
            HexRow {
                cell,
                lbs_devices: devices,
                lbs_people: devices as f64 * 1.3,
                counter_in: (k as u64 + w as u64) % 7,
                counter_out: (k as u64 * 3 + w as u64) % 5,
                occupancy: None,
                gate_entries: 0,
                gate_exits: 0,
                lbs_off_network: 0,
            }
        })
        .collect();
    let win = HexWindow {
        start: EventTime(start),
        end: EventTime(start + 60_000),
        rows,
        points: Vec::new(),
        segments: Default::default(),
        is_final: true,
    };
    (win, evening)
}

/// What the server does once an hour, timed: an hour of windows written the way the server writes
/// them (a part file every 30 s), then the compaction of that hour into one file — which runs off
/// the engine's task — beside one 30 s flush, which runs on it.
fn compaction(cells: &[CellId]) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let history = History::open(dir.path(), 0, Duration::ZERO)?;
    let hour0 = 15 * 360; // 15:00Z, the evening peak
    let mut flushes = Vec::new();
    for w in hour0..hour0 + 361 {
        history.append(
            Table::HexWindows,
            T0 + w * SLIDE,
            to_record_batch(&window(cells, w).0)?,
        );
        if w % 3 == 2 || w == hour0 + 360 {
            let t = Instant::now();
            history.write_pending()?;
            flushes.push(t.elapsed().as_secs_f64());
        }
    }
    let t = Instant::now();
    let m = history.maintain()?;
    let compact = t.elapsed().as_secs_f64();
    flushes.sort_by(f64::total_cmp);
    let flush = flushes[flushes.len() / 2];
    eprintln!(
        "compacting one Bund-scale hour ({} part files, {} rows): {:.0} ms off the engine task; \
         a 30 s flush (3 windows) on it: {:.1} ms median",
        flushes.len() - 1,
        360 * cells.len(),
        compact * 1e3,
        flush * 1e3
    );
    anyhow::ensure!(m.hours_compacted == 1, "expected one hour compacted");
    Ok(())
}

fn segment_row(s: usize, start: i64, evening: f64) -> throng::risk::SegmentStatus {
    let area = 2_000.0 + 1_000.0 * s as f64;
    let people = area * (0.2 + 2.5 * evening * (1.0 + s as f64 / 14.0) / 2.0);
    let density = people / area;
    throng::risk::SegmentStatus {
        id: throng::scenario::SegmentId(format!("seg-{s:02}")),
        name: format!("Segment {s}"),
        kind: "street".into(),
        area_m2: area,
        window_start: start,
        window_end: start + 60_000,
        people,
        density,
        inflow: 10,
        outflow: 8,
        flow: Some(20.0),
        trend: 0.0,
        trend_dir: "steady",
        next_tier: None,
        minutes_to_next: None,
        tier: if density > 2.0 {
            throng::risk::Shown::High
        } else if density > 1.0 {
            throng::risk::Shown::Medium
        } else {
            throng::risk::Shown::Low
        },
        degraded: false,
        silent_s: Some(1.0),
        thresholds: throng::risk::Thresholds::default(),
        sources: Default::default(),
    }
}

fn data_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    target.join("bench-history")
}

const QUERIES: &[(&str, &str)] = &[
    (
        "peak density per segment per hour",
        "SELECT segment_id, date_trunc('hour', window_start) AS hour, max(density) AS peak \
         FROM segment_windows GROUP BY 1, 2 ORDER BY 3 DESC",
    ),
    (
        "one segment's time series",
        "SELECT window_end, people, density, tier FROM segment_windows \
         WHERE segment_id = 'seg-03' ORDER BY window_end",
    ),
    (
        "top cells in an hour",
        "SELECT h3, max(people) AS peak FROM hex_windows \
         WHERE window_start >= '2025-12-31T15:00:00Z' AND window_start < '2025-12-31T16:00:00Z' \
         GROUP BY h3 ORDER BY peak DESC LIMIT 20",
    ),
    (
        "people per res-9 parent over the day",
        "SELECT h3_parent(cell, 9) AS parent, sum(people) / 8640 AS mean_people FROM hex_windows \
         GROUP BY 1 ORDER BY 2 DESC LIMIT 10",
    ),
    (
        // The same roll-up with the resolution read from a column: the row-by-row path, measured
        // beside the column kernel that a constant resolution takes.
        "people per res-9 parent, resolution per row",
        "SELECT h3_parent(cell, CAST(res AS BIGINT) - 2) AS parent, sum(people) / 8640 AS mean_people \
         FROM hex_windows GROUP BY 1 ORDER BY 2 DESC LIMIT 10",
    ),
];

fn bench(c: &mut Criterion) {
    let dir = data_dir();
    if !dir.join("history/hex_windows").is_dir() {
        let started = Instant::now();
        build(&dir).expect("building the day of history");
        eprintln!(
            "a day of history built in {:.1?} at {}",
            started.elapsed(),
            dir.display()
        );
    }
    compaction(&cells()).expect("timing compaction");
    let history = Arc::new(History::open_read_only(&dir).expect("history"));
    let limits = SqlConfig {
        timeout: Duration::from_secs(600),
        ..SqlConfig::default()
    };
    let engine = SqlEngine::new(history, &dir, limits, 0);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let total = rt
        .block_on(engine.query("SELECT count(*) AS n FROM hex_windows"))
        .unwrap();
    eprintln!(
        "hex_windows rows: {}",
        throng::query::format::json(&total).unwrap()
    );
    let mut g = c.benchmark_group("history_sql");
    g.sample_size(10);
    for (name, sql) in QUERIES {
        let answer = rt.block_on(engine.query(sql)).unwrap();
        eprintln!("{name}: {} rows", answer.rows());
        g.bench_function(*name, |b| {
            b.iter(|| rt.block_on(engine.query(sql)).unwrap().rows())
        });
    }
    g.finish();
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
