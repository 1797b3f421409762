//! The stages after the engine, per closed window at Bund scale (~3,000 active res-11 cells):
//! segment tiering (14 segments' people → tiers) and live frame encoding, each beside a naive peer
//! measured in the same run.
//!
//! `cargo bench --bench stages` prints criterion's figures, then per-window times and ratios.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use criterion::{criterion_group, Criterion};
use throng::config::RiskConfig;
use throng::live::frames::{self, Subscription};
use throng::model::{CellId, EventTime};
use throng::risk::{Risk, ThresholdStore};
use throng::scenario::SegmentMap;
use throng::window::{HexRow, HexWindow, SegmentPeople};

const T0: i64 = 1_767_193_200_000;

/// A closed window over the Bund with ~3,000 active cells, and segment people spread from them
/// (the engine's attribution is the pipeline bench's; here the tier stage gets realistic people).
fn window(i: i64, map: &SegmentMap) -> HexWindow {
    let mut rows = Vec::new();
    let mut seen = std::collections::BTreeSet::new();
    for a in 0..120 {
        for b in 0..120 {
            let lat = 31.226 + a as f64 * 0.00021;
            let lng = 121.470 + b as f64 * 0.00025;
            let c = u64::from(
                h3o::LatLng::new(lat, lng)
                    .unwrap()
                    .to_cell(h3o::Resolution::Eleven),
            );
            if seen.insert(c) {
                let n = 5 + ((a * 31 + b * 17 + i as usize) % 200) as u64;
                rows.push(HexRow {
                    cell: CellId(c),
                    lbs_devices: n,
                    lbs_people: n as f64 * 1.3,
                    ..HexRow::default()
                });
            }
        }
    }
    let mut people = vec![0.0; map.segments().len()];
    for r in &rows {
        for (seg, share) in map.shares(r.cell) {
            people[*seg] += r.lbs_people * share;
        }
    }
    HexWindow {
        start: EventTime(T0 + i * 10_000),
        end: EventTime(T0 + i * 10_000 + 60_000),
        rows,
        points: Vec::new(),
        segments: SegmentPeople {
            carried: vec![0.0; people.len()],
            people,
            ..Default::default()
        },
        is_final: true,
    }
}

fn per_window<F: FnMut(i64)>(n: i64, mut f: F) -> f64 {
    let t = Instant::now();
    for i in 0..n {
        f(i);
    }
    t.elapsed().as_secs_f64() / n as f64
}

fn bench(c: &mut Criterion) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let map = Arc::new(
        SegmentMap::load(
            &root.join("fixtures/bund/segments.geojson"),
            h3o::Resolution::Eleven,
        )
        .expect("the Bund segments"),
    );
    let store = ThresholdStore::open(None).expect("store");
    let windows: Vec<HexWindow> = (0..32).map(|i| window(i, &map)).collect();
    let mut risk = Risk::new(map, Vec::new(), RiskConfig::default(), store, 60_000);
    let cells = windows[0].rows.len();
    let fine = Subscription {
        res: 11,
        bbox: [-180.0, -90.0, 180.0, 90.0],
    };
    let coarse = Subscription {
        res: 9,
        bbox: [-180.0, -90.0, 180.0, 90.0],
    };
    let mut g = c.benchmark_group("stages");
    g.bench_function("segment tiering, one window", |b| {
        let mut i = 0;
        b.iter(|| {
            i += 1;
            black_box(risk.evaluate(&windows[i % windows.len()]))
        })
    });
    g.bench_function("heatmap frame, res 11", |b| {
        b.iter(|| black_box(frames::heatmap(&windows[0], &[], &fine, 10)))
    });
    g.bench_function("heatmap frame, rolled up to res 9", |b| {
        b.iter(|| black_box(frames::heatmap(&windows[0], &[], &coarse, 10)))
    });
    g.finish();

    // Per-window figures beside naive peers, in one run.
    let n = 200;
    let tier = per_window(n, |i| {
        black_box(risk.evaluate(&windows[i as usize % windows.len()]));
    });
    // Peer for tiering: one pass summing every cell's people (the least any cells → segments
    // stage must do).
    let sum = per_window(n, |i| {
        let w = &windows[i as usize % windows.len()];
        black_box(w.rows.iter().map(|r| r.people()).sum::<f64>());
    });
    let frame = per_window(n, |_| {
        black_box(frames::heatmap(&windows[0], &[], &fine, 10));
    });
    // Peer for frames: serde_json of the same cells as [h3 string, people] pairs, no filtering.
    let naive = per_window(n, |_| {
        let v: Vec<(String, f64)> = windows[0]
            .rows
            .iter()
            .map(|r| (r.cell.to_string(), r.people()))
            .collect();
        black_box(serde_json::to_string(&v).unwrap());
    });
    let frame_bytes = frames::heatmap(&windows[0], &[], &fine, 10).len();
    println!("\n{cells} cells per window");
    println!(
        "segment tiering: {:.1} µs per window (a plain sum over the cells: {:.1} µs, ratio {:.1})",
        tier * 1e6,
        sum * 1e6,
        tier / sum
    );
    println!(
        "heatmap frame at res 11: {:.1} µs, {} bytes (naive serde_json of the cells: {:.1} µs, ratio {:.2})",
        frame * 1e6,
        frame_bytes,
        naive * 1e6,
        frame / naive
    );
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
