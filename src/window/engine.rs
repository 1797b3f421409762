//! The window engine: records in, closed H3 windows out. No I/O; time comes in as arguments.
//!
//! Windows are hopping (size / slide, tumbling when equal), aligned to the epoch, half-open
//! `[start, start + size)`. State is kept per *pane* (one slide long): a window is the union of
//! `size / slide` consecutive panes, so a record is stored once however many windows it falls in.
//!
//! Event time of a record: a ping, a tap and an occupancy reading count at `ts`; an interval count
//! (and a register delta) covers the period *ending* at `ts`, so it counts at `ts − 1 ms`, inside the
//! period it describes — a period ending exactly on a window boundary belongs to the earlier window.
//!
//! Late data: a record is late when the oldest window it belongs to has already closed. It is
//! counted (per source), kept in the late list (for the `late_records` table), and still added to
//! every window it belongs to that is open. Nothing is dropped silently.

use std::collections::BTreeMap;

use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};

use super::registers::{Delta, Registers};
use super::watermark::Watermark;
use crate::config::{RegisterConfig, WindowConfig};
use crate::model::{Body, CellId, DeviceId, EventTime, Kind, PointIdx, Record, SensorIdx, SourceId};

/// One device's latest ping within a pane.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Seen {
    ts: i64,
    cell: CellId,
    source: SourceId,
}

/// Flow counts of one cell within a pane.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct Flows {
    counter_in: u64,
    counter_out: u64,
    gate_entries: u64,
    gate_exits: u64,
}

/// A zone's latest headcount within a pane.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Headcount {
    ts: i64,
    cell: CellId,
    people: u32,
}

/// What one feed point (counter, station exit) reported within a pane.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct PointPane {
    inflow: u64,
    outflow: u64,
    last_ts: i64,
    occupancy: Option<(i64, u32)>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Pane {
    devices: FxHashMap<DeviceId, Seen>,
    flows: FxHashMap<CellId, Flows>,
    zones: FxHashMap<SensorIdx, Headcount>,
    points: FxHashMap<PointIdx, PointPane>,
    /// Idempotency keys of the records in this pane.
    keys: FxHashSet<u64>,
}

/// One feed point's totals over a window: what the segments stage uses for flow and staleness.
#[derive(Debug, Clone, PartialEq)]
pub struct PointWindow {
    /// The counter or station exit.
    pub point: PointIdx,
    /// People into its segment (counter `in`, gate exits: out of the station, into the street).
    pub inflow: u64,
    /// People out of its segment (counter `out`, gate entries: off the street into the station).
    pub outflow: u64,
    /// Its latest occupancy report in the window (zone counters).
    pub occupancy: Option<u32>,
    /// Event time of its newest report in the window.
    pub last_ts: i64,
}

/// One cell's aggregates over a window.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct HexRow {
    /// The cell.
    pub cell: CellId,
    /// Distinct devices whose latest ping in the window lies in this cell.
    pub lbs_devices: u64,
    /// Those devices weighted by their source's scale factor (people they stand for).
    pub lbs_people: f64,
    /// People counted into counter lines' segments.
    pub counter_in: u64,
    /// People counted out.
    pub counter_out: u64,
    /// Latest zone headcounts in the cell, summed over zones (None: no zone sensor reported).
    pub occupancy: Option<u64>,
    /// Metro gate entries.
    pub gate_entries: u64,
    /// Metro gate exits.
    pub gate_exits: u64,
}

impl HexRow {
    /// The fused people estimate. Fusion rule: LBS devices × their source's scale factor, summed over
    /// sources; where a zone counter gives a direct headcount in the cell, the larger of the two (a
    /// headcount is a floor — the zone may be smaller than the cell — and LBS may under-sample).
    /// Counter and gate *flows* are not stock and do not enter `people`; they drive segment flow.
    pub fn people(&self) -> f64 {
        match self.occupancy {
            Some(o) => self.lbs_people.max(o as f64),
            None => self.lbs_people,
        }
    }
}

/// A window's rows, final once the watermark has passed its end.
#[derive(Debug, Clone, PartialEq)]
pub struct HexWindow {
    /// Inclusive start.
    pub start: EventTime,
    /// Exclusive end.
    pub end: EventTime,
    /// One row per cell with any data, ordered by cell.
    pub rows: Vec<HexRow>,
    /// One entry per feed point that reported in the window, ordered by point.
    pub points: Vec<PointWindow>,
    /// False for a provisional snapshot of an open window.
    pub is_final: bool,
}

/// A record that arrived after a window it belongs to had closed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LateRecord {
    /// Its event time.
    pub ts: EventTime,
    /// The watermark when it arrived.
    pub watermark: EventTime,
    /// Its source.
    pub source: SourceId,
    /// Its kind.
    pub kind: Kind,
    /// The cell it counts in.
    pub cell: CellId,
    /// How many closed windows it missed (it went into the open ones).
    pub windows_missed: u32,
}

/// Counters kept by the engine, exported as metrics by the caller.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EngineStats {
    /// Records ingested.
    pub records: u64,
    /// Late records.
    pub late: u64,
    /// Late records that fell in no open window at all.
    pub late_unwindowed: u64,
    /// Register readings that were resets or implausible jumps.
    pub register_resets: u64,
    /// Register readings older than the last one.
    pub register_out_of_order: u64,
    /// Windows closed.
    pub windows_closed: u64,
    /// Records ignored as exact duplicates of one already held.
    pub duplicates: u64,
}

/// The single-owner window engine. Serializable whole: a checkpoint is the engine as JSON (written
/// from a clone, so ingest never waits for the file).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Engine {
    slide: i64,
    size: i64,
    n: i64,
    panes: BTreeMap<i64, Pane>,
    /// Start index (in slides) of the oldest window not yet closed: windows before it are closed.
    next_close: i64,
    watermark: Watermark,
    registers: Registers,
    scales: Vec<f64>,
    late: Vec<LateRecord>,
    stats: EngineStats,
}

impl Engine {
    /// An engine for the given window and register settings; `scales` gives people per device by source.
    pub fn new(w: &WindowConfig, r: &RegisterConfig, scales: Vec<f64>) -> Engine {
        let slide = w.slide.as_millis() as i64;
        let size = w.size.as_millis() as i64;
        Engine {
            slide,
            size,
            n: size / slide,
            panes: BTreeMap::new(),
            next_close: i64::MIN,
            watermark: Watermark::new(
                w.allowed_lateness.as_millis() as i64,
                w.idle_timeout.as_millis() as i64,
            ),
            registers: Registers::new(r.max_rate_per_s),
            scales,
            late: Vec::new(),
            stats: EngineStats::default(),
        }
    }

    /// Whether this engine (e.g. from a checkpoint) has the given window settings.
    pub fn matches(&self, w: &WindowConfig) -> bool {
        self.slide == w.slide.as_millis() as i64 && self.size == w.size.as_millis() as i64
    }

    /// Sets how long each source may be silent and still hold the watermark back (ms, by id).
    pub fn set_max_delays(&mut self, max_delay_ms: Vec<i64>) {
        self.watermark.set_max_delays(max_delay_ms);
    }

    /// Updates the people-per-device factors (new sources appear as feeds arrive).
    pub fn set_scales(&mut self, scales: Vec<f64>) {
        self.scales = scales;
    }

    /// Number of scale factors known (compare with the source table to know when to refresh).
    pub fn scales_known(&self) -> usize {
        self.scales.len()
    }

    /// First window start index (in slides) still open at watermark `wm`.
    fn first_open(&self, wm: i64) -> i64 {
        if wm == i64::MIN {
            return i64::MIN;
        }
        (wm - self.size).div_euclid(self.slide) + 1
    }

    /// Takes one record seen at processing time `now` (ms).
    /// Returns false for a duplicate: a record identical to one already in an open pane (a re-send
    /// after a lost acknowledgement), which is counted in `stats.duplicates` and otherwise ignored.
    pub fn ingest(&mut self, rec: &Record, now: i64) -> bool {
        let ts = rec.ts.millis();
        // Interval reports describe the period ending at ts.
        let at = match rec.body {
            Body::CounterInterval { .. }
            | Body::GateInterval { .. }
            | Body::CounterCumulative { .. }
            | Body::GateCumulative { .. } => ts - 1,
            _ => ts,
        };
        // Idempotency key: the whole parsed record (device pseudonym or feed point, time, values).
        let key = {
            use std::hash::{Hash, Hasher};
            let mut h = rustc_hash::FxHasher::default();
            rec.hash(&mut h);
            h.finish()
        };
        if self
            .panes
            .get(&at.div_euclid(self.slide))
            .is_some_and(|p| p.keys.contains(&key))
        {
            self.stats.duplicates += 1;
            return false;
        }
        self.watermark.observe(rec.source, ts, now);
        self.stats.records += 1;
        let flows = match rec.body {
            Body::Ping { .. } | Body::Occupancy { .. } => None,
            Body::CounterInterval { inn, out, .. } => Some(Flows {
                counter_in: inn as u64,
                counter_out: out as u64,
                ..Default::default()
            }),
            Body::GateInterval { entries, exits, .. } => Some(Flows {
                gate_entries: entries as u64,
                gate_exits: exits as u64,
                ..Default::default()
            }),
            Body::GateTap { exit } => Some(Flows {
                gate_entries: (!exit) as u64,
                gate_exits: exit as u64,
                ..Default::default()
            }),
            Body::CounterCumulative {
                register,
                in_total,
                out_total,
            } => match self.registers.observe(register, ts, in_total, out_total) {
                Delta::Counted(a, b) => Some(Flows {
                    counter_in: a,
                    counter_out: b,
                    ..Default::default()
                }),
                // A baseline, reset or out-of-order reading counts nobody, but shows its sensor alive.
                _ => None,
            },
            Body::GateCumulative {
                register,
                entries_total,
                exits_total,
            } => match self.registers.observe(register, ts, entries_total, exits_total) {
                Delta::Counted(a, b) => Some(Flows {
                    gate_entries: a,
                    gate_exits: b,
                    ..Default::default()
                }),
                // A baseline, reset or out-of-order reading counts nobody, but shows its sensor alive.
                _ => None,
            },
        };
        self.sync_register_stats();
        let pane = at.div_euclid(self.slide);
        let oldest_window = pane - self.n + 1;
        let next_close = self.next_close;
        if oldest_window < next_close {
            let missed = (next_close - oldest_window).min(self.n) as u32;
            self.stats.late += 1;
            if let Some(c) = self.watermark.sources_mut().get_mut(rec.source.0 as usize) {
                c.late += 1;
            }
            self.late.push(LateRecord {
                ts: rec.ts,
                watermark: EventTime(self.watermark.get().unwrap_or(i64::MIN)),
                source: rec.source,
                kind: rec.body.kind(),
                cell: rec.cell,
                windows_missed: missed,
            });
            if pane < next_close {
                self.stats.late_unwindowed += 1;
                return true;
            }
        }
        let p = self.panes.entry(pane).or_default();
        p.keys.insert(key);
        if let Some(point) = rec.point {
            let pp = p.points.entry(point).or_default();
            pp.last_ts = pp.last_ts.max(ts);
            if let Some(f) = &flows {
                pp.inflow += f.counter_in + f.gate_exits;
                pp.outflow += f.counter_out + f.gate_entries;
            }
            if let Body::Occupancy { people, .. } = rec.body {
                if pp.occupancy.is_none_or(|(t, _)| at >= t) {
                    pp.occupancy = Some((at, people));
                }
            }
        }
        match rec.body {
            Body::Ping { device } => {
                let seen = Seen {
                    ts: at,
                    cell: rec.cell,
                    source: rec.source,
                };
                p.devices
                    .entry(device)
                    .and_modify(|s| {
                        if at >= s.ts {
                            *s = seen
                        }
                    })
                    .or_insert(seen);
            }
            Body::Occupancy { sensor, people } => {
                let h = Headcount {
                    ts: at,
                    cell: rec.cell,
                    people,
                };
                p.zones
                    .entry(sensor)
                    .and_modify(|z| {
                        if at >= z.ts {
                            *z = h
                        }
                    })
                    .or_insert(h);
            }
            _ => {
                if let Some(f) = flows {
                    let e = p.flows.entry(rec.cell).or_default();
                    e.counter_in += f.counter_in;
                    e.counter_out += f.counter_out;
                    e.gate_entries += f.gate_entries;
                    e.gate_exits += f.gate_exits;
                }
            }
        }
        true
    }

    fn sync_register_stats(&mut self) {
        self.stats.register_resets = self.registers.resets;
        self.stats.register_out_of_order = self.registers.out_of_order;
    }

    /// Recomputes the watermark at processing time `now` and returns the windows it closed.
    pub fn advance(&mut self, now: i64) -> Vec<HexWindow> {
        let wm = self.watermark.advance(now);
        self.close_until(wm)
    }

    /// End of input: closes every window that holds data.
    pub fn flush(&mut self) -> Vec<HexWindow> {
        let Some(&last) = self.panes.keys().next_back() else {
            return Vec::new();
        };
        let wm = last * self.slide + self.size;
        self.watermark.force(wm);
        self.close_until(self.watermark.get().unwrap_or(i64::MIN))
    }

    fn close_until(&mut self, wm: i64) -> Vec<HexWindow> {
        let mut out = Vec::new();
        let first_open = self.first_open(wm);
        while self.next_close < first_open {
            let s = self.next_close;
            match self.panes.keys().next().copied() {
                None => {
                    self.next_close = first_open;
                    break;
                }
                Some(fp) if fp >= s + self.n => {
                    // Nothing in window s: jump to the first window that holds the first pane.
                    self.next_close = (fp - self.n + 1).min(first_open);
                }
                Some(_) => {
                    out.push(self.build(s, true));
                    self.stats.windows_closed += 1;
                    self.panes.remove(&s);
                    // Panes before s were already dropped; s is the only one no later window needs.
                    self.next_close = s + 1;
                }
            }
        }
        self.sync_register_stats();
        out
    }

    fn build(&self, s: i64, is_final: bool) -> HexWindow {
        let mut cells: FxHashMap<CellId, HexRow> = FxHashMap::default();
        let first = self
            .panes
            .range(s..s + self.n)
            .map(|(_, p)| p.devices.len())
            .max()
            .unwrap_or(0);
        let mut seen: FxHashSet<DeviceId> =
            FxHashSet::with_capacity_and_hasher(first * 2, Default::default());
        let mut zones_seen: FxHashSet<SensorIdx> = FxHashSet::default();
        // Newest pane first: a device's first sighting is its latest ping in the window.
        for (_, pane) in self.panes.range(s..s + self.n).rev() {
            for (dev, e) in &pane.devices {
                if seen.insert(*dev) {
                    let row = cells.entry(e.cell).or_insert_with(|| HexRow {
                        cell: e.cell,
                        ..Default::default()
                    });
                    row.lbs_devices += 1;
                    row.lbs_people += self.scales.get(e.source.0 as usize).copied().unwrap_or(1.0);
                }
            }
            for (sensor, z) in &pane.zones {
                if zones_seen.insert(*sensor) {
                    let row = cells.entry(z.cell).or_insert_with(|| HexRow {
                        cell: z.cell,
                        ..Default::default()
                    });
                    *row.occupancy.get_or_insert(0) += z.people as u64;
                }
            }
            for (cell, f) in &pane.flows {
                let row = cells.entry(*cell).or_insert_with(|| HexRow {
                    cell: *cell,
                    ..Default::default()
                });
                row.counter_in += f.counter_in;
                row.counter_out += f.counter_out;
                row.gate_entries += f.gate_entries;
                row.gate_exits += f.gate_exits;
            }
        }
        let mut rows: Vec<HexRow> = cells.into_values().collect();
        rows.sort_unstable_by_key(|r| r.cell);
        let mut points: BTreeMap<PointIdx, (PointWindow, i64)> = BTreeMap::new();
        for (_, pane) in self.panes.range(s..s + self.n) {
            for (idx, pp) in &pane.points {
                let (w, occ_ts) = points.entry(*idx).or_insert_with(|| {
                    (
                        PointWindow {
                            point: *idx,
                            inflow: 0,
                            outflow: 0,
                            occupancy: None,
                            last_ts: i64::MIN,
                        },
                        i64::MIN,
                    )
                });
                w.inflow += pp.inflow;
                w.outflow += pp.outflow;
                w.last_ts = w.last_ts.max(pp.last_ts);
                if let Some((t, o)) = pp.occupancy {
                    if t >= *occ_ts {
                        *occ_ts = t;
                        w.occupancy = Some(o);
                    }
                }
            }
        }
        HexWindow {
            start: EventTime(s * self.slide),
            end: EventTime(s * self.slide + self.size),
            rows,
            points: points.into_values().map(|(w, _)| w).collect(),
            is_final,
        }
    }

    /// A provisional view of the newest open window: the one ending with the newest pane.
    pub fn snapshot(&self) -> Option<HexWindow> {
        let &last = self.panes.keys().next_back()?;
        let s = (last - self.n + 1).max(self.next_close);
        Some(self.build(s, false))
    }

    /// Whether late records are waiting to be taken.
    pub fn has_late(&self) -> bool {
        !self.late.is_empty()
    }

    /// Takes the late records kept since the last call.
    pub fn take_late(&mut self) -> Vec<LateRecord> {
        std::mem::take(&mut self.late)
    }

    /// The current watermark.
    pub fn watermark(&self) -> &Watermark {
        &self.watermark
    }

    /// Counters for metrics.
    pub fn stats(&self) -> &EngineStats {
        &self.stats
    }

    /// Devices held in open panes (one entry per device per pane it pinged in).
    pub fn device_entries(&self) -> usize {
        self.panes.values().map(|p| p.devices.len()).sum()
    }

    /// Open panes.
    pub fn open_panes(&self) -> usize {
        self.panes.len()
    }

    /// Estimated heap bytes of the window state (the panes' hash tables, sized by their bucket
    /// counts as hashbrown allocates them, and the register table).
    pub fn state_bytes(&self) -> usize {
        fn table<K, V>(capacity: usize) -> usize {
            if capacity == 0 {
                return 0;
            }
            // hashbrown: buckets = next power of two ≥ capacity × 8/7, one control byte each.
            let buckets = (capacity * 8 / 7).next_power_of_two();
            buckets * (std::mem::size_of::<(K, V)>() + 1)
        }
        let panes: usize = self
            .panes
            .values()
            .map(|p| {
                table::<DeviceId, Seen>(p.devices.capacity())
                    + table::<CellId, Flows>(p.flows.capacity())
                    + table::<SensorIdx, Headcount>(p.zones.capacity())
                    + table::<PointIdx, PointPane>(p.points.capacity())
                    + table::<u64, ()>(p.keys.capacity())
                    + std::mem::size_of::<Pane>()
            })
            .sum();
        panes + self.registers.state_bytes()
    }

    /// Distinct devices held in the open panes (what "active devices" means for state per device).
    pub fn distinct_devices(&self) -> usize {
        let mut seen: rustc_hash::FxHashSet<DeviceId> = rustc_hash::FxHashSet::default();
        for p in self.panes.values() {
            seen.extend(p.devices.keys().copied());
        }
        seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RegisterKey;
    use std::time::Duration;

    const T0: i64 = 1_767_196_800_000; // a multiple of 10 s and of 60 s

    fn cfg(size: u64, slide: u64) -> WindowConfig {
        WindowConfig {
            size: Duration::from_secs(size),
            slide: Duration::from_secs(slide),
            allowed_lateness: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
        }
    }

    fn engine(size: u64, slide: u64) -> Engine {
        Engine::new(
            &cfg(size, slide),
            &RegisterConfig::default(),
            vec![1.0, 1.0, 2.0, 4.0],
        )
    }

    fn ping(ts: i64, dev: u64, cell: u64, source: u16) -> Record {
        Record {
            ts: EventTime(ts),
            source: SourceId(source),
            cell: CellId(cell),
            point: None,
            body: Body::Ping {
                device: DeviceId(dev),
            },
        }
    }

    fn counter(ts: i64, cell: u64, inn: u32, out: u32) -> Record {
        Record {
            ts: EventTime(ts),
            source: SourceId(0),
            cell: CellId(cell),
            point: Some(PointIdx(3)),
            body: Body::CounterInterval {
                inn,
                out,
                period_ms: Some(10_000),
            },
        }
    }

    fn row(w: &HexWindow, cell: u64) -> Option<&HexRow> {
        w.rows.iter().find(|r| r.cell == CellId(cell))
    }

    #[test]
    fn a_record_falls_in_every_hopping_window_that_covers_it() {
        let mut e = engine(60, 10);
        e.ingest(&ping(T0 + 25_000, 1, 7, 2), 0);
        let ws = e.flush();
        let starts: Vec<i64> = ws.iter().map(|w| w.start.0 - T0).collect();
        assert_eq!(starts, vec![-30_000, -20_000, -10_000, 0, 10_000, 20_000]);
        assert!(ws.iter().all(|w| w.end.0 - w.start.0 == 60_000 && w.is_final));
    }

    #[test]
    fn tumbling_when_size_equals_slide() {
        let mut e = engine(60, 60);
        e.ingest(&ping(T0 + 59_999, 1, 7, 2), 0);
        e.ingest(&ping(T0 + 60_000, 2, 7, 2), 0);
        let ws = e.flush();
        assert_eq!(ws.len(), 2);
        assert_eq!((ws[0].start.0, ws[1].start.0), (T0, T0 + 60_000));
        assert_eq!(row(&ws[0], 7).unwrap().lbs_devices, 1);
    }

    #[test]
    fn a_device_counts_once_in_the_cell_of_its_latest_ping() {
        let mut e = engine(60, 60);
        e.ingest(&ping(T0 + 1_000, 1, 7, 2), 0);
        e.ingest(&ping(T0 + 40_000, 1, 9, 2), 0);
        e.ingest(&ping(T0 + 20_000, 1, 8, 2), 0); // out of order: not the latest
        e.ingest(&ping(T0 + 5_000, 2, 7, 2), 0);
        let ws = e.flush();
        assert_eq!(ws.len(), 1);
        assert_eq!(row(&ws[0], 7).unwrap().lbs_devices, 1);
        assert!(row(&ws[0], 8).is_none());
        assert_eq!(row(&ws[0], 9).unwrap().lbs_devices, 1);
    }

    #[test]
    fn latest_ping_wins_across_panes_of_a_hopping_window() {
        let mut e = engine(60, 10);
        e.ingest(&ping(T0 + 5_000, 1, 7, 2), 0);
        e.ingest(&ping(T0 + 35_000, 1, 9, 2), 0);
        let ws = e.flush();
        let w0 = ws.iter().find(|w| w.start.0 == T0).unwrap();
        assert!(row(w0, 7).is_none());
        assert_eq!(row(w0, 9).unwrap().lbs_devices, 1);
        // The window [T0-50s, T0+10s) only saw the first ping.
        let early = ws.iter().find(|w| w.start.0 == T0 - 50_000).unwrap();
        assert_eq!(row(early, 7).unwrap().lbs_devices, 1);
    }

    #[test]
    fn people_is_devices_times_scale_or_a_larger_headcount() {
        let mut e = engine(60, 60);
        e.ingest(&ping(T0 + 1_000, 1, 7, 2), 0); // scale 2
        e.ingest(&ping(T0 + 1_000, 2, 7, 3), 0); // scale 4
        e.ingest(
            &Record {
                ts: EventTime(T0 + 2_000),
                source: SourceId(0),
                cell: CellId(8),
                point: None,
                body: Body::Occupancy {
                    sensor: SensorIdx(0),
                    people: 30,
                },
            },
            0,
        );
        e.ingest(
            &Record {
                ts: EventTime(T0 + 9_000),
                source: SourceId(0),
                cell: CellId(8),
                point: None,
                body: Body::Occupancy {
                    sensor: SensorIdx(0),
                    people: 20,
                },
            },
            0,
        );
        e.ingest(&ping(T0 + 1_000, 3, 8, 2), 0);
        let w = &e.flush()[0];
        assert_eq!(row(w, 7).unwrap().people(), 6.0);
        let r8 = row(w, 8).unwrap();
        assert_eq!(r8.occupancy, Some(20), "latest headcount of the zone");
        assert_eq!(r8.people(), 20.0);
    }

    #[test]
    fn interval_counts_belong_to_the_period_they_close() {
        let mut e = engine(60, 60);
        // ts = T0 + 60 s closes the period [T0+50s, T0+60s): window [T0, T0+60s).
        e.ingest(&counter(T0 + 60_000, 7, 37, 12), 0);
        let ws = e.flush();
        assert_eq!(ws.len(), 1);
        assert_eq!(ws[0].start.0, T0);
        assert_eq!((ws[0].rows[0].counter_in, ws[0].rows[0].counter_out), (37, 12));
    }

    #[test]
    fn gate_taps_and_registers_with_a_reset() {
        let mut e = engine(60, 60);
        let tap = |ts, exit| Record {
            ts: EventTime(T0 + ts),
            source: SourceId(1),
            cell: CellId(5),
            point: None,
            body: Body::GateTap { exit },
        };
        e.ingest(&tap(1_000, true), 0);
        e.ingest(&tap(2_000, true), 0);
        e.ingest(&tap(3_000, false), 0);
        let reg = |ts, a, b| Record {
            ts: EventTime(T0 + ts),
            source: SourceId(1),
            cell: CellId(6),
            point: Some(PointIdx(9)),
            body: Body::GateCumulative {
                register: RegisterKey(1),
                entries_total: a,
                exits_total: b,
            },
        };
        e.ingest(&reg(0, 88_213, 90_150), 0);
        e.ingest(&reg(10_000, 88_220, 90_190), 0);
        e.ingest(&reg(20_000, 3, 1), 0); // reset
        e.ingest(&reg(30_000, 13, 5), 0);
        let ws = e.flush();
        // The first reading (a base, at T0 − 1 ms) only shows the gate alive in the window before.
        assert!(ws[0].rows.is_empty() && ws[0].points[0].last_ts == T0);
        let w = &ws[1];
        let r5 = row(w, 5).unwrap();
        assert_eq!((r5.gate_entries, r5.gate_exits), (1, 2));
        let r6 = row(w, 6).unwrap();
        assert_eq!((r6.gate_entries, r6.gate_exits), (7 + 10, 40 + 4));
        let p = &w.points[0];
        assert_eq!(
            (p.inflow, p.outflow, p.last_ts),
            (44, 17, T0 + 30_000),
            "exits flow into the street"
        );
        assert_eq!(e.stats().register_resets, 1);
    }

    #[test]
    fn windows_close_when_the_watermark_passes_their_end() {
        let mut e = engine(60, 60);
        e.ingest(&ping(T0 + 1_000, 1, 7, 2), 0);
        e.ingest(&ping(T0 + 64_000, 2, 7, 2), 0);
        assert!(
            e.advance(0).is_empty(),
            "watermark 59 s: window [0, 60) still open"
        );
        e.ingest(&ping(T0 + 65_000, 3, 7, 2), 0);
        let ws = e.advance(0);
        assert_eq!(ws.len(), 1, "watermark 60 s closes [0, 60)");
        assert_eq!(ws[0].rows[0].lbs_devices, 1);
    }

    #[test]
    fn late_rows_are_counted_kept_and_still_fill_open_windows() {
        let mut e = engine(60, 10);
        e.ingest(&ping(T0 + 200_000, 1, 7, 2), 0);
        assert!(
            e.advance(0).is_empty(),
            "watermark T0+195 s: windows from T0+140 s are open"
        );
        // 40 s behind: its oldest windows closed, its newest still open.
        e.ingest(&ping(T0 + 160_000, 2, 8, 2), 0);
        // 10 minutes behind: every window it belongs to is closed.
        e.ingest(&ping(T0 - 400_000, 3, 9, 2), 0);
        let late = e.take_late();
        assert_eq!(late.len(), 2);
        assert_eq!(e.stats().late, 2);
        assert_eq!(e.stats().late_unwindowed, 1);
        assert_eq!(e.watermark().sources()[2].late, 2, "counted per source");
        assert_eq!(late[1].windows_missed, 6);
        let ws = e.flush();
        assert!(
            ws.iter().any(|w| row(w, 8).is_some()),
            "partly late ping fills its open windows"
        );
        assert!(ws.iter().all(|w| row(w, 9).is_none()));
    }

    #[test]
    fn an_idle_source_does_not_freeze_the_picture() {
        let mut e = engine(60, 60);
        // Source 2 stops at T0+10 s; source 3 goes on.
        e.ingest(&ping(T0 + 10_000, 1, 7, 2), 1_000);
        e.ingest(&ping(T0 + 70_000, 2, 7, 3), 1_000);
        assert!(
            e.advance(2_000).is_empty(),
            "source 2 still active: watermark T0+5 s"
        );
        e.ingest(&ping(T0 + 90_000, 3, 7, 3), 40_000);
        let ws = e.advance(40_000);
        assert_eq!(ws.len(), 1, "source 2 idle for 39 s: watermark follows source 3");
    }

    #[test]
    fn with_all_sources_idle_the_watermark_follows_the_clock() {
        let mut e = engine(60, 60);
        e.ingest(&ping(T0 + 10_000, 1, 7, 2), T0 + 10_000);
        assert!(e.advance(T0 + 10_000).is_empty());
        let ws = e.advance(T0 + 100_000);
        assert_eq!(ws.len(), 1);
    }

    #[test]
    fn snapshot_shows_the_open_window_provisionally() {
        let mut e = engine(60, 10);
        e.ingest(&ping(T0 + 1_000, 1, 7, 2), 0);
        e.ingest(&ping(T0 + 25_000, 2, 7, 2), 0);
        let s = e.snapshot().unwrap();
        assert!(!s.is_final);
        assert_eq!(s.end.0, T0 + 30_000);
        assert_eq!(s.rows[0].lbs_devices, 2);
    }

    #[test]
    fn an_identical_record_resent_is_counted_once() {
        let mut e = engine(60, 60);
        let c = counter(T0 + 10_000, 7, 5, 1);
        assert!(e.ingest(&c, 0));
        assert!(!e.ingest(&c, 0), "a re-send after a lost ack");
        assert!(
            e.ingest(&counter(T0 + 10_000, 7, 6, 1), 0),
            "a different report at the same time is not a duplicate"
        );
        let w = &e.flush()[0];
        assert_eq!(w.rows[0].counter_in, 11);
        assert_eq!(e.stats().duplicates, 1);
    }

    #[test]
    fn an_engine_survives_a_round_trip_through_its_checkpoint_form() {
        let mut e = engine(60, 10);
        for i in 0..50 {
            e.ingest(&ping(T0 + i * 3_000, i as u64 % 7, 7 + i as u64 % 3, 2), 0);
        }
        e.advance(0);
        let json = serde_json::to_string(&e).unwrap();
        let mut back: Engine = serde_json::from_str(&json).unwrap();
        assert!(
            !back.ingest(&ping(T0 + 147_000, 0, 8, 2), 0),
            "idempotency keys survive"
        );
        assert_eq!(back.flush(), e.flush());
    }

    #[test]
    fn end_of_input_flushes_all() {
        let mut e = engine(60, 10);
        for i in 0..100 {
            e.ingest(&ping(T0 + i * 7_000, i as u64, 7, 2), 0);
        }
        e.advance(0);
        e.flush();
        assert_eq!(e.open_panes(), 0);
        assert!(e.snapshot().is_none());
    }
}
