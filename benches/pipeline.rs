//! Core pipeline throughput: NDJSON bytes → closed-window Arrow batches, beside the naive floor
//! (serde_json parse of each line + raw h3o `LatLng::to_cell`) on the same lines, in one run.
//!
//! `cargo bench --bench pipeline` prints criterion's figures, then events/s for both and the ratio.
//! With `PIPELINE_FEED=FILE` (an NDJSON feed of the Bund, e.g. `throng simulate`'s), it also
//! measures the segment people's cost on that feed, under the Bund's config: the bench's own
//! pings jump at random over 2 km² and mostly match no segment, while a crowd walking the streets
//! is matched, and projected, in every window (it costs more: docs/PERFORMANCE.md).

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, Criterion, Throughput};
use h3o::{LatLng, Resolution};
use serde::Deserialize;
use throng::config::Config;
use throng::pipeline::Pipeline;
use throng::scenario::{Registry, SegmentMap};

const PINGS: usize = 1_000_000;
const DEVICES: u64 = 50_000;
const SPAN_MS: i64 = 600_000; // ten minutes of event time
const T0: i64 = 1_767_193_200_000;

/// 1 M pings from 50 k devices over 10 min around East Nanjing Road and the Bund.
fn feed() -> Vec<u8> {
    use std::io::Write;
    let mut out = Vec::with_capacity(PINGS * 110);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rnd = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for i in 0..PINGS {
        let ts = T0 + (i as i64 * SPAN_MS) / PINGS as i64 + (rnd() % 3000) as i64;
        let dev = rnd() % DEVICES;
        let lat = 31.233 + (rnd() % 11_500) as f64 * 1e-6;
        let lng = 121.476 + (rnd() % 17_500) as f64 * 1e-6;
        writeln!(out, r#"{{"kind":"lbs","ts":{ts},"device":"dev-{dev:08x}","lat":{lat:.6},"lng":{lng:.6},"accuracy_m":15,"source":"carrier-a"}}"#).unwrap();
    }
    out
}

#[derive(Deserialize)]
struct NaivePing<'a> {
    #[allow(dead_code)]
    ts: i64,
    #[allow(dead_code)]
    device: &'a str,
    lat: f64,
    lng: f64,
}

/// The floor: parse every line with serde_json and index it with h3o, nothing else.
fn naive(bytes: &[u8]) -> u64 {
    let mut acc = 0u64;
    for line in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let p: NaivePing = serde_json::from_slice(line).unwrap();
        acc ^= u64::from(LatLng::new(p.lat, p.lng).unwrap().to_cell(Resolution::Eleven));
    }
    acc
}

fn pipeline(bytes: &[u8], registry: &Arc<Registry>, segments: Option<&Arc<SegmentMap>>) -> usize {
    let cfg = Config::default();
    let mut p = Pipeline::with_registry(&cfg, registry.clone());
    if let Some(m) = segments {
        // Segment people from positions: each device of each window matched to the Bund's segments.
        p.engine.set_segments(m.clone());
    }
    let mut rows = 0;
    let (ok, _) = p
        .process_ndjson(bytes, |w| {
            rows += throng::window::to_record_batch(&w)?.num_rows();
            Ok(())
        })
        .unwrap();
    assert_eq!(ok as usize, PINGS);
    rows
}

fn bench(c: &mut Criterion) {
    let bytes = feed();
    let registry = Arc::new(Registry::default());
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/bund");
    let segments = Arc::new(SegmentMap::load(&dir.join("segments.geojson"), Resolution::Eleven).unwrap());
    let mut g = c.benchmark_group("pipeline_1M_pings");
    g.throughput(Throughput::Elements(PINGS as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(20));
    g.bench_function("naive_serde_json_plus_h3o", |b| {
        b.iter(|| black_box(naive(&bytes)))
    });
    g.bench_function("throng_ndjson_to_batches", |b| {
        b.iter(|| black_box(pipeline(&bytes, &registry, None)))
    });
    g.bench_function("throng_ndjson_to_batches_and_segment_people", |b| {
        b.iter(|| black_box(pipeline(&bytes, &registry, Some(&segments))))
    });
    g.finish();

    // The ratio, measured here in one run: best of 3 alternating runs each.
    let (mut best_naive, mut best_pipe, mut best_seg) = (f64::MAX, f64::MAX, f64::MAX);
    for _ in 0..3 {
        let t = Instant::now();
        black_box(naive(&bytes));
        best_naive = best_naive.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        black_box(pipeline(&bytes, &registry, None));
        best_pipe = best_pipe.min(t.elapsed().as_secs_f64());
        let t = Instant::now();
        black_box(pipeline(&bytes, &registry, Some(&segments)));
        best_seg = best_seg.min(t.elapsed().as_secs_f64());
    }
    let (n, p, s) = (
        PINGS as f64 / best_naive,
        PINGS as f64 / best_pipe,
        PINGS as f64 / best_seg,
    );
    println!("\nnaive serde_json + h3o:  {:>10.0} ev/s", n);
    println!("throng pipeline:         {:>10.0} ev/s", p);
    println!("  + segment people:      {:>10.0} ev/s", s);
    println!("ratio pipeline / naive:  {:.2}", p / n);
    println!(
        "segment people cost:     {:.1} % of the pipeline's rate",
        (1.0 - s / p) * 100.0
    );
    if let Some(path) = std::env::var_os("PIPELINE_FEED") {
        recorded(std::path::Path::new(&path));
    }
    indexing();
}

/// The segment people's cost on a recorded feed, with the Bund's config (its sources, GCJ-02
/// app pings, presence), best of 3 alternating runs.
fn recorded(path: &std::path::Path) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cfg = Config::load(&root.join("fixtures/bund/throng.toml")).expect("the Bund's config");
    cfg.scenario = root.join("fixtures/bund");
    let registry =
        Arc::new(Registry::load_dir(&cfg.scenario, cfg.resolution()).expect("the Bund's registry"));
    let segments = Arc::new(
        SegmentMap::load(&cfg.scenario.join("segments.geojson"), cfg.resolution()).expect("segments"),
    );
    let bytes = std::fs::read(path).expect("PIPELINE_FEED must name a readable NDJSON file");
    let run = |seg: bool| {
        let mut p = Pipeline::with_registry(&cfg, registry.clone());
        if seg {
            p.engine.set_segments(segments.clone());
        }
        let t = Instant::now();
        let (ok, _) = p
            .process_ndjson(&bytes, |w| {
                black_box(throng::window::to_record_batch(&w)?.num_rows());
                Ok(())
            })
            .unwrap();
        (ok, t.elapsed().as_secs_f64())
    };
    let (mut plain, mut seg, mut n) = (f64::MAX, f64::MAX, 0);
    for _ in 0..3 {
        let (ok, t) = run(false);
        plain = plain.min(t);
        n = ok;
        seg = seg.min(run(true).1);
    }
    println!(
        "{} ({n} records): pipeline {:.0} ev/s, + segment people {:.0} ev/s, cost {:.1} %",
        path.display(),
        n as f64 / plain,
        n as f64 / seg,
        (1.0 - plain / seg) * 100.0
    );
}

/// Indexing alone: the cached lookup (`ingest::cells`) against h3o's `to_cell` on the same points,
/// for a crowd (the bench's area, 2 km²) and for points spread over a whole city (60 × 60 km,
/// nearly every point in a square never seen before: the cache's worst case).
fn indexing() {
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut rnd = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        (x >> 11) as f64 / (1u64 << 53) as f64
    };
    let crowd: Vec<(f64, f64)> = (0..PINGS)
        .map(|_| (31.233 + rnd() * 0.0115, 121.476 + rnd() * 0.0175))
        .collect();
    let city: Vec<(f64, f64)> = (0..PINGS)
        .map(|_| (30.95 + rnd() * 0.54, 121.15 + rnd() * 0.63))
        .collect();
    for (name, pts) in [("crowd (2 km²)", &crowd), ("city (3,600 km²)", &city)] {
        let (mut best_h3o, mut best_cached) = (f64::MAX, f64::MAX);
        for _ in 0..3 {
            let t = Instant::now();
            let mut acc = 0u64;
            for &(lat, lng) in pts.iter() {
                acc ^= u64::from(LatLng::new(lat, lng).unwrap().to_cell(Resolution::Eleven));
            }
            black_box(acc);
            best_h3o = best_h3o.min(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let mut acc2 = 0u64;
            for &(lat, lng) in pts.iter() {
                acc2 ^= u64::from(throng::ingest::cells::locate(lat, lng, Resolution::Eleven).unwrap());
            }
            black_box(acc2);
            assert_eq!(acc, acc2, "the cached lookup must give h3o's cells");
            best_cached = best_cached.min(t.elapsed().as_secs_f64());
        }
        println!(
            "indexing, {name}: h3o {:.0} ns/point, cached {:.0} ns/point → {:.1}x",
            best_h3o * 1e9 / PINGS as f64,
            best_cached * 1e9 / PINGS as f64,
            best_h3o / best_cached
        );
    }
}

criterion_group!(benches, bench);

fn main() {
    benches();
    Criterion::default().configure_from_args().final_summary();
}
