//! The whole process against the naive floor, on a file, in one run (issue 20).
//!
//! The floor is a separate program doing the least any tool must: read the file line by line,
//! `serde_json` each line into a borrowed struct, index the point with h3o at resolution 11.
//! Against it, `throng replay FILE --print > /dev/null` and `throng replay FILE --config …
//! --data-dir …` as a user runs them (start-up, file reading, the merge, parsing, windows, output
//! and, for `--data-dir`, segments and Parquet). Best of 3 alternating runs each; pin it to one
//! core for the issue's figure:
//!
//! ```sh
//! python3 benches/gen_pings.py /tmp/pings.ndjson
//! cargo build --release && taskset -c 1 cargo bench --bench whole_process -- /tmp/pings.ndjson
//! ```
//! (`THRONG=path` picks the binary; the default is the release build in the same target folder.)

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use h3o::{LatLng, Resolution};
use serde::Deserialize;

#[derive(Deserialize)]
struct Ping<'a> {
    #[allow(dead_code)]
    ts: i64,
    #[allow(dead_code)]
    device: &'a str,
    lat: f64,
    lng: f64,
}

fn naive(file: &Path) -> (u64, u64) {
    let mut r =
        std::io::BufReader::with_capacity(1 << 16, std::fs::File::open(file).expect("the file opens"));
    let (mut acc, mut n, mut line) = (0u64, 0u64, Vec::new());
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line).expect("the file reads") == 0 {
            break;
        }
        let Ok(p) = serde_json::from_slice::<Ping>(line.trim_ascii_end()) else {
            continue;
        };
        if let Ok(ll) = LatLng::new(p.lat, p.lng) {
            acc ^= u64::from(ll.to_cell(Resolution::Eleven));
            n += 1;
        }
    }
    (acc, n)
}

fn throng(bin: &Path, args: &[&str]) -> f64 {
    let t = Instant::now();
    // From the repository root: the Bund config names its scenario folder relative to it.
    let status = Command::new(bin)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("throng starts");
    assert!(status.success(), "throng {args:?} failed: {status}");
    t.elapsed().as_secs_f64()
}

fn main() {
    let file = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            eprintln!("usage: cargo bench --bench whole_process -- FILE (python3 benches/gen_pings.py FILE writes one)");
            std::process::exit(2)
        });
    // The release binary in this bench's own target folder (`<target>/release/deps/whole_process-…`).
    let bin = std::env::var_os("THRONG").map(PathBuf::from).unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|e| Some(e.parent()?.parent()?.join("throng")))
            .unwrap_or_else(|| PathBuf::from("target/release/throng"))
    });
    if !bin.is_file() {
        eprintln!(
            "no throng binary at {}: run `cargo build --release` first, or set THRONG=path",
            bin.display()
        );
        std::process::exit(2);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = root.join("fixtures/bund/throng.toml");
    let data = std::env::temp_dir().join(format!("throng-whole-process-{}", std::process::id()));
    let f = file.to_string_lossy().into_owned();
    let (c, d) = (
        config.to_string_lossy().into_owned(),
        data.to_string_lossy().into_owned(),
    );
    let (mut best_naive, mut best_print, mut best_dir, mut records) = (f64::MAX, f64::MAX, f64::MAX, 0);
    for _ in 0..3 {
        let t = Instant::now();
        let (acc, n) = naive(&file);
        best_naive = best_naive.min(t.elapsed().as_secs_f64());
        records = n;
        std::hint::black_box(acc);
        best_print = best_print.min(throng(&bin, &["replay", &f, "--print"]));
        let _ = std::fs::remove_dir_all(&data);
        best_dir = best_dir.min(throng(&bin, &["replay", &f, "--config", &c, "--data-dir", &d]));
    }
    let _ = std::fs::remove_dir_all(&data);
    let rate = |s: f64| records as f64 / s;
    println!("{records} records, best of 3");
    println!(
        "naive floor (read + serde_json + h3o):  {:>10.0} ev/s",
        rate(best_naive)
    );
    println!(
        "throng replay --print:                   {:>10.0} ev/s  {:.2}× the floor",
        rate(best_print),
        best_naive / best_print
    );
    println!(
        "throng replay --config … --data-dir …:   {:>10.0} ev/s  {:.2}× the floor",
        rate(best_dir),
        best_naive / best_dir
    );
}
