//! From agents to feed records (NDJSON) and to the truth.

use std::io::Write;

use serde::Serialize;

use super::agents::{Origin, Rng, World};
use crate::ingest::crs::GcjGrid;

/// Seconds between counter, zone and gate reports (scenario time).
const REPORT_S: usize = 10;
/// How late a late ping is delivered (scenario seconds).
const LATE_BY_S: usize = 120;

/// True people on one segment in one window.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TruthRow {
    /// Window start, epoch ms.
    pub window_start: i64,
    /// Window end, epoch ms.
    pub window_end: i64,
    /// Segment id.
    pub segment_id: String,
    /// People whose position at the end of the window (or when they left, if earlier) lies in the
    /// segment (the smallest polygon containing it; people between segments count nowhere).
    pub people: u64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Flow {
    inn: u32,
    out: u32,
}

/// One counter, zone or gate exit, and what it reports each period.
struct Reporter {
    line: ReporterKind,
    /// Per report period: people in/out of the sensor's segment (gates: exits/entries).
    flows: Vec<Flow>,
}

enum ReporterKind {
    Interval {
        sensor: String,
    },
    Cumulative {
        sensor: String,
        in_total: u64,
        out_total: u64,
        reset_at: usize,
    },
    Zone {
        sensor: String,
        segment: usize,
    },
    GateInterval {
        station: String,
        exit: String,
    },
}

/// Emits a world's records in scenario-time order.
pub struct Emitter<'w> {
    world: &'w World,
    calendar: Vec<Vec<u32>>,
    late: Vec<Vec<String>>,
    taps: Vec<Vec<(f64, String)>>,
    /// Per agent: the scenario second its phone falls silent (a drifting panel), else infinity.
    silent_at: Vec<f64>,
    reporters: Vec<Reporter>,
    zone_occupancy: Vec<Vec<i64>>,
    second: usize,
    rng: Rng,
    gcj: GcjGrid,
    /// Records written so far.
    pub records: u64,
}

impl<'w> Emitter<'w> {
    /// Prepares the ping calendar and every sensor's counts.
    pub fn new(world: &'w World) -> Emitter<'w> {
        let secs = world.cfg.duration_s.ceil() as usize + 1;
        let periods = secs / REPORT_S + 2;
        let mut rng = Rng::new(world.cfg.seed ^ 0xe417);
        let mut calendar = vec![Vec::new(); secs];
        let silent_at = silent_times(world);
        for (i, a) in world.agents.iter().enumerate() {
            if a.provider == 0 {
                continue;
            }
            let every = interval(&world.cfg.panel, a.provider, &mut rng);
            let first = a.arrive() + rng.range(0.0, every);
            if first < a.leave() {
                calendar[(first as usize).min(secs - 1)].push(i as u32);
            }
        }
        let map = &world.scenario.map;
        let reg = &world.scenario.registry;
        let mut reporters = Vec::new();
        let mut zone_segments = Vec::new();
        for s in reg.sensors() {
            let Some(seg) = s.segment.as_deref().and_then(|x| map.index(x)) else {
                continue;
            };
            let kind = if s.kind == crate::scenario::registry::SensorKind::Zone {
                zone_segments.push(seg);
                ReporterKind::Zone {
                    sensor: s.id.clone(),
                    segment: seg,
                }
            } else if s.id == "bund-cam-07" {
                ReporterKind::Cumulative {
                    sensor: s.id.clone(),
                    in_total: 103_422,
                    out_total: 99_813,
                    reset_at: periods * 2 / 5,
                }
            } else {
                ReporterKind::Interval { sensor: s.id.clone() }
            };
            reporters.push((
                seg,
                Reporter {
                    line: kind,
                    flows: vec![Flow::default(); periods],
                },
            ));
        }
        let mut zone_occupancy = vec![vec![0i64; periods + 1]; map.segments().len()];
        let mut taps = vec![Vec::new(); secs];
        // Numbered, as a gate controller numbers its taps: two exits in one millisecond at a busy
        // exit are two people, not a re-send.
        let mut tap_seq = 0u64;
        let mut gates: Vec<((String, String), Reporter)> = Vec::new();
        for a in &world.agents {
            for (t, from, to) in a.transitions() {
                // Tapping out at the start of the way out; tapping in at the end of the way back.
                let r = if to.is_none() { a.back } else { a.route };
                let route = &world.scenario.routes[r as usize];
                if t >= world.cfg.duration_s || (t <= 0.0 && from.is_none()) {
                    continue;
                }
                let p = (t as usize / REPORT_S).min(periods - 1);
                for (seg, r) in reporters.iter_mut() {
                    if to == Some(*seg) {
                        r.flows[p].inn += 1;
                    }
                    if from == Some(*seg) {
                        r.flows[p].out += 1;
                    }
                }
                let Origin::Metro { station, exit } = &route.origin else {
                    continue;
                };
                if from.is_some() && to.is_some() || (to.is_none() && !a.by_metro) {
                    continue;
                }
                let out_of_station = from.is_none();
                if station == "peoples-square" {
                    let dir = if out_of_station { "out" } else { "in" };
                    tap_seq += 1;
                    let line =
                        format!(r#""station":"{station}","gate":"{exit}","dir":"{dir}","seq":{tap_seq}}}"#);
                    taps[(t as usize).min(secs - 1)].push((t, line));
                } else {
                    let key = (station.clone(), exit.clone());
                    let idx = match gates.iter().position(|g| g.0 == key) {
                        Some(i) => i,
                        None => {
                            let line = ReporterKind::GateInterval {
                                station: station.clone(),
                                exit: exit.clone(),
                            };
                            gates.push((
                                key,
                                Reporter {
                                    line,
                                    flows: vec![Flow::default(); periods],
                                },
                            ));
                            gates.len() - 1
                        }
                    };
                    let f = &mut gates[idx].1.flows[p];
                    if out_of_station {
                        f.inn += 1; // exits from the station, into the street
                    } else {
                        f.out += 1;
                    }
                }
            }
        }
        // A zone camera counts the people standing in its polygon at the report's second: the
        // truth's own rule (position in the segment), not the segments the walkers' paths name.
        if !zone_segments.is_empty() {
            // Only walkers whose path's box meets a zone's box can stand in it, and only a
            // position inside that box needs the polygon test: a night of 20,000 walkers and
            // hundreds of reports costs a fraction of a second, not the demo's start-up.
            use geo::BoundingRect;
            let boxes: Vec<geo::Rect<f64>> = zone_segments
                .iter()
                .filter_map(|&j| map.segments()[j].polygon.bounding_rect())
                .collect();
            let meets = |r: &geo::Rect<f64>, lng: f64, lat: f64| {
                lng >= r.min().x && lng <= r.max().x && lat >= r.min().y && lat <= r.max().y
            };
            let candidates: Vec<&super::agents::Agent> = world
                .agents
                .iter()
                .filter(|a| {
                    let (mut lo, mut hi) = ((f64::MAX, f64::MAX), (f64::MIN, f64::MIN));
                    for w in &a.path {
                        lo = (lo.0.min(w.lng), lo.1.min(w.lat));
                        hi = (hi.0.max(w.lng), hi.1.max(w.lat));
                    }
                    boxes.iter().any(|b| {
                        lo.0 <= b.max().x && hi.0 >= b.min().x && lo.1 <= b.max().y && hi.1 >= b.min().y
                    })
                })
                .collect();
            for (k, row) in (0..=periods).map(|k| (k, (k * REPORT_S) as f64)) {
                for a in &candidates {
                    if a.arrive() > row || a.leave() < row {
                        continue;
                    }
                    let (lng, lat) = a.position(row);
                    if !boxes.iter().any(|b| meets(b, lng, lat)) {
                        continue;
                    }
                    if let Some(seg) = map.matcher().segment_at(lat, lng) {
                        if zone_segments.contains(&seg) {
                            zone_occupancy[seg][k] += 1;
                        }
                    }
                }
            }
        }
        let mut all: Vec<Reporter> = reporters.into_iter().map(|(_, r)| r).collect();
        all.extend(gates.into_iter().map(|(_, r)| r));
        Emitter {
            world,
            calendar,
            late: vec![Vec::new(); secs + LATE_BY_S + 1],
            taps,
            silent_at,
            reporters: all,
            zone_occupancy,
            second: 0,
            rng,
            gcj: GcjGrid::default(),
            records: 0,
        }
    }

    /// True once every scenario second has been emitted.
    pub fn done(&self) -> bool {
        self.second >= self.calendar.len() && self.second >= self.late.len()
    }

    /// Emits every record of scenario seconds before `t` into `out`.
    pub fn emit_until(&mut self, t: f64, out: &mut Vec<u8>) {
        let cfg = &self.world.cfg;
        let end = (t.max(0.0).ceil() as usize).min(self.calendar.len().max(self.late.len()));
        while self.second < end {
            let s = self.second;
            if s < self.calendar.len() {
                let due = std::mem::take(&mut self.calendar[s]);
                for i in due {
                    self.ping(i as usize, s, out);
                }
                for (t, body) in std::mem::take(&mut self.taps[s]) {
                    let _ = writeln!(out, r#"{{"kind":"gate","ts":{},{body}"#, cfg.ts(t));
                    self.records += 1;
                }
                if s.is_multiple_of(REPORT_S) && s > 0 {
                    self.reports(s, out);
                }
            }
            if s < self.late.len() {
                for line in std::mem::take(&mut self.late[s]) {
                    out.extend_from_slice(line.as_bytes());
                    self.records += 1;
                }
            }
            self.second += 1;
        }
    }

    fn ping(&mut self, i: usize, s: usize, out: &mut Vec<u8>) {
        let a = &self.world.agents[i];
        let cfg = &self.world.cfg;
        let t = s as f64 + self.rng.f64();
        if t > a.leave() || t >= cfg.duration_s || t >= self.silent_at[i] {
            return;
        }
        let (lng, lat) = a.position(t);
        let Some(p) = cfg.panel.providers.get(a.provider as usize - 1) else {
            return;
        };
        let sigma = if p.outliers > 0.0 && self.rng.f64() < p.outliers {
            p.outlier_m
        } else {
            p.sigma_m
        };
        let (n1, n2) = self.rng.normal_pair();
        let lat = lat + n1 * sigma / 110_540.0;
        let lng = lng + n2 * sigma / 95_220.0;
        let ts = cfg.ts(t);
        let late = p.late_share > 0.0 && self.rng.f64() < p.late_share;
        let mut held = Vec::new();
        let buf: &mut Vec<u8> = if late { &mut held } else { out };
        // Chinese apps deliver GCJ-02.
        let (lat, lng) = if p.gcj02 {
            self.gcj.convert(lat, lng)
        } else {
            (lat, lng)
        };
        buf.extend_from_slice(b"{\"kind\":\"lbs\",\"ts\":");
        push_u64(buf, ts as u64);
        buf.extend_from_slice(b",\"device\":\"");
        buf.extend_from_slice(p.device_prefix.as_bytes());
        push_hex(buf, device(cfg.seed, i, a.provider as u64), 14);
        buf.extend_from_slice(b"\",\"lat\":");
        push_fixed6(buf, lat);
        buf.extend_from_slice(b",\"lng\":");
        push_fixed6(buf, lng);
        if p.gcj02 {
            buf.extend_from_slice(b",\"crs\":\"gcj02\"");
        }
        buf.extend_from_slice(b",\"accuracy_m\":");
        push_u64(
            buf,
            (p.sigma_m * crate::scenario::matcher::RADIUS68_PER_SIGMA).round() as u64,
        );
        buf.extend_from_slice(b",\"source\":\"");
        buf.extend_from_slice(p.name.as_bytes());
        buf.extend_from_slice(b"\"}\n");
        if late {
            self.late[s + LATE_BY_S].push(String::from_utf8(held).unwrap_or_default());
        } else {
            self.records += 1;
        }
        let next = t + interval(&cfg.panel, a.provider, &mut self.rng);
        if next < a.leave() && (next as usize) < self.calendar.len() {
            self.calendar[next as usize].push(i as u32);
        }
    }

    fn reports(&mut self, s: usize, out: &mut Vec<u8>) {
        let cfg = &self.world.cfg;
        let p = s / REPORT_S - 1;
        let ts = cfg.ts(s as f64);
        let period = REPORT_S as f64 / cfg.speed;
        for r in &mut self.reporters {
            let f = r.flows.get(p).copied().unwrap_or_default();
            match &mut r.line {
                ReporterKind::Interval { sensor } => {
                    let _ = writeln!(
                        out,
                        r#"{{"kind":"counter","ts":{ts},"sensor":"{sensor}","in":{},"out":{},"period_s":{period}}}"#,
                        f.inn, f.out
                    );
                }
                ReporterKind::Cumulative {
                    sensor,
                    in_total,
                    out_total,
                    reset_at,
                } => {
                    if p == *reset_at {
                        // The register is power-cycled once in the night.
                        *in_total = 0;
                        *out_total = 0;
                    }
                    *in_total += f.inn as u64;
                    *out_total += f.out as u64;
                    let _ = writeln!(
                        out,
                        r#"{{"kind":"counter","ts":{ts},"sensor":"{sensor}","in_total":{in_total},"out_total":{out_total}}}"#
                    );
                }
                ReporterKind::Zone { sensor, segment } => {
                    let occ = self.zone_occupancy[*segment]
                        .get(p + 1)
                        .copied()
                        .unwrap_or(0)
                        .max(0);
                    let _ = writeln!(
                        out,
                        r#"{{"kind":"counter","ts":{ts},"sensor":"{sensor}","occupancy":{occ}}}"#
                    );
                }
                ReporterKind::GateInterval { station, exit } => {
                    let _ = writeln!(
                        out,
                        r#"{{"kind":"gate","ts":{ts},"station":"{station}","gate":"{exit}","entries":{},"exits":{},"period_s":{period}}}"#,
                        f.out, f.inn
                    );
                }
            }
            self.records += 1;
        }
    }

    /// The starts of the event-time windows (aligned to the epoch) the night touches.
    fn window_starts(&self, size_ms: i64, slide_ms: i64) -> impl Iterator<Item = i64> {
        let cfg = &self.world.cfg;
        let first = cfg.ts(0.0).div_euclid(slide_ms) * slide_ms - size_ms + slide_ms;
        let last = cfg.ts(cfg.duration_s);
        (0..)
            .map(move |k| first + k * slide_ms)
            .take_while(move |ws| *ws < last)
    }

    /// Each person present in window [ws, ws + size): their place at its end (the matcher's: a
    /// segment, ground after the segments, or none).
    fn places_at_end(&self, ws: i64, size_ms: i64) -> impl Iterator<Item = Option<usize>> + '_ {
        let cfg = &self.world.cfg;
        let m = self.world.scenario.map.matcher();
        let to_s = |ms: i64| (ms - cfg.start_ms) as f64 * cfg.speed / 1000.0;
        let (s0, s1) = (to_s(ws), to_s(ws + size_ms));
        self.world.agents.iter().filter_map(move |a| {
            let (arr, lv) = (a.arrive(), a.leave());
            if lv < s0 || arr >= s1 || arr >= cfg.duration_s {
                return None;
            }
            let (lng, lat) = a.position((s1 - 1e-3).min(lv).min(cfg.duration_s - 1e-3));
            Some(m.place_at(lat, lng))
        })
    }

    /// True people on the scenario's ground (walkable, no segment) per window: (window end, people
    /// per ground feature, in `ground.geojson`'s order).
    pub fn truth_on_ground(&self, size_ms: i64, slide_ms: i64) -> Vec<(i64, Vec<u64>)> {
        let map = &self.world.scenario.map;
        let segments = map.segments().len();
        // Matcher places after the segments are ground pieces; a feature may have several.
        let owner: Vec<usize> = map.ground_places().collect();
        self.window_starts(size_ms, slide_ms)
            .map(|ws| {
                let mut people = vec![0u64; map.ground().len()];
                for p in self.places_at_end(ws, size_ms).flatten() {
                    if let Some(&g) = p.checked_sub(segments).and_then(|i| owner.get(i)) {
                        people[g] += 1;
                    }
                }
                (ws + size_ms, people)
            })
            .collect()
    }

    /// True people per segment per window (event-time windows aligned to the epoch). Crossing
    /// ground no segment covers, people are on no segment.
    pub fn truth(&self, size_ms: i64, slide_ms: i64) -> Vec<TruthRow> {
        let map = &self.world.scenario.map;
        let n = map.segments().len();
        let mut rows = Vec::new();
        for ws in self.window_starts(size_ms, slide_ms) {
            let mut counts = vec![0u64; n];
            for seg in self.places_at_end(ws, size_ms).flatten().filter(|&p| p < n) {
                counts[seg] += 1;
            }
            for (i, seg) in map.segments().iter().enumerate() {
                rows.push(TruthRow {
                    window_start: ws,
                    window_end: ws + size_ms,
                    segment_id: seg.id.0.clone(),
                    people: counts[i],
                });
            }
        }
        rows
    }
}

/// Writes `x` with six decimals (about 0.1 m) without going through float formatting, which is the
/// simulator's hot path at a million records a second.
fn push_fixed6(out: &mut Vec<u8>, x: f64) {
    let micro = (x * 1e6).round() as i64;
    if micro < 0 {
        out.push(b'-');
    }
    let m = micro.unsigned_abs();
    push_u64(out, m / 1_000_000);
    out.push(b'.');
    let frac = m % 1_000_000;
    let mut digits = [b'0'; 6];
    let mut f = frac;
    for d in digits.iter_mut().rev() {
        *d = b'0' + (f % 10) as u8;
        f /= 10;
    }
    out.extend_from_slice(&digits);
}

fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&buf[i..]);
}

/// Lower-case hex of the low `digits` nibbles of `v`.
fn push_hex(out: &mut Vec<u8>, v: u64, digits: usize) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for k in (0..digits).rev() {
        out.push(HEX[((v >> (4 * k)) & 0xf) as usize]);
    }
}

/// When each agent's phone falls silent. With drift d, the share of a panel's phones still
/// speaking at second t is 1 / (1 + d·t / duration), so the people each speaking phone stands for
/// rise linearly by d over the night, whoever is there: a phone falls silent at the second its
/// own uniform draw u says, T·(1/u − 1)/d.
fn silent_times(world: &World) -> Vec<f64> {
    let cfg = &world.cfg;
    world
        .agents
        .iter()
        .enumerate()
        .map(|(i, a)| {
            let drift = cfg
                .panel
                .providers
                .get((a.provider as usize).wrapping_sub(1))
                .map_or(0.0, |p| p.drift);
            if drift <= 0.0 {
                return f64::INFINITY;
            }
            let u = Rng::new(cfg.seed ^ 0x5117_e4ce ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)).f64();
            cfg.duration_s * (1.0 / u.max(1e-12) - 1.0) / drift
        })
        .collect()
}

fn interval(panel: &super::agents::Panel, provider: u8, rng: &mut Rng) -> f64 {
    let (a, b) = panel
        .providers
        .get((provider as usize).wrapping_sub(1))
        .map_or((60.0, 60.0), |p| p.interval_s);
    rng.range(a, b)
}

/// A provider's pseudonym for an agent: stable for a seed, unlinkable across providers.
fn device(seed: u64, agent: usize, provider: u64) -> u64 {
    let mut r = Rng::new(seed ^ (agent as u64).wrapping_mul(0x2545_f491_4f6c_dd1d) ^ (provider << 60));
    r.next_u64() & 0xff_ffff_ffff_ffff
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::sim::{Scenario, SimConfig};

    fn world(seed: u64) -> World {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/bund");
        let sc = Scenario::load(&dir, seed).unwrap();
        World::new(
            sc,
            SimConfig {
                people: 300,
                duration_s: 600.0,
                start_ms: 1_767_193_200_000,
                speed: 1.0,
                seed,
                panel: crate::tools::sim::Panel::bund(),
                changes: Default::default(),
            },
        )
    }

    fn all(seed: u64) -> Vec<u8> {
        let w = world(seed);
        let mut e = Emitter::new(&w);
        let mut out = Vec::new();
        e.emit_until(1e9, &mut out);
        out
    }

    #[test]
    fn gcj_grid_matches_the_exact_transform() {
        use crate::ingest::crs::wgs84_to_gcj02;
        let mut g = GcjGrid::default();
        for k in 0..100 {
            let (lat, lng) = (31.233 + k as f64 * 1.17e-4, 121.474 + k as f64 * 2.03e-4);
            let (a, b) = g.convert(lat, lng);
            let (x, y) = wgs84_to_gcj02(lat, lng);
            assert!((a - x).abs() < 1e-8 && (b - y).abs() < 1e-8, "{a},{b} vs {x},{y}");
        }
    }

    #[test]
    fn fixed_six_decimals() {
        let mut v = Vec::new();
        push_fixed6(&mut v, 121.4832049);
        v.push(b' ');
        push_fixed6(&mut v, -0.0000004);
        v.push(b' ');
        push_fixed6(&mut v, -31.5);
        assert_eq!(String::from_utf8(v).unwrap(), "121.483205 0.000000 -31.500000");
    }

    #[test]
    fn the_simulator_is_deterministic_by_seed() {
        let (a, b, c) = (all(7), all(7), all(8));
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert!(a.len() > 10_000);
    }

    #[test]
    fn it_emits_every_kind_and_shape() {
        let text = String::from_utf8(all(7)).unwrap();
        for needle in [
            "\"source\":\"carrier-a\"",
            "\"crs\":\"gcj02\"",
            "\"in_total\"",
            "\"occupancy\"",
            "\"in\":",
            "\"dir\":\"out\"",
            "\"entries\":",
        ] {
            assert!(text.contains(needle), "missing {needle}");
        }
        // Every line is a record the parser accepts.
        let cfg = crate::config::Config {
            scenario: std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/bund"),
            ..Default::default()
        };
        let p = crate::pipeline::Pipeline::from_config(&cfg).unwrap();
        for (i, line) in text.lines().enumerate() {
            if let Err(e) = p.parser.parse_line(line.as_bytes(), None) {
                panic!("line {}: {e}: {line}", i + 1);
            }
        }
    }
}
