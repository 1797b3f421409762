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

use std::collections::hash_map::Entry;
use std::collections::BTreeMap;
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};
use serde::{Deserialize, Serialize};

use super::keys::ClosedKeys;
use super::registers::{Delta, Registers};
use super::watermark::Watermark;
use crate::config::{LbsConfig, RegisterConfig, WindowConfig};
use crate::ingest::DeviceProfile;
use crate::model::{
    Body, CellId, DeviceId, EventTime, Kind, PointIdx, Position, Record, SensorIdx, SourceId,
};
use crate::scenario::{Matcher, Place, PlaceCache, SegmentMap, NO_PLACE};

/// A sighting's position packed into 10 bytes, with no `Option` tags: the window state holds one
/// per device per pane and one per device present, so every byte counts (issue 20).
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C, packed(2))]
struct Spot {
    lat_e6: i32,
    lng_e6: i32,
    /// Accuracy in decimetres; `NO_ACCURACY` when the feed gave none.
    accuracy_dm: u16,
}

/// `Spot::lat_e6` of a sighting with no position (a record logged before positions were kept).
const NO_POSITION: i32 = i32::MIN;
const NO_ACCURACY: u16 = u16::MAX;

impl Spot {
    fn pack(p: Option<Position>) -> Spot {
        match p {
            // An accuracy of 6,553.5 m (the clamp of `Position::new`) is kept as 6,553.4 m.
            Some(p) => Spot {
                lat_e6: p.lat_e6,
                lng_e6: p.lng_e6,
                accuracy_dm: p.accuracy_dm.map_or(NO_ACCURACY, |a| a.min(NO_ACCURACY - 1)),
            },
            None => Spot {
                lat_e6: NO_POSITION,
                lng_e6: 0,
                accuracy_dm: NO_ACCURACY,
            },
        }
    }

    fn get(self) -> Option<Position> {
        (self.lat_e6 != NO_POSITION).then_some(Position {
            lat_e6: self.lat_e6,
            lng_e6: self.lng_e6,
            accuracy_dm: (self.accuracy_dm != NO_ACCURACY).then_some(self.accuracy_dm),
        })
    }
}

/// One device's latest ping within a pane: 32 bytes.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(from = "SeenForm", into = "SeenForm")]
struct Seen {
    ts: i64,
    cell: CellId,
    spot: Spot,
    source: SourceId,
    /// Where the matcher's answer for this position is held (`PlaceCache::place_handle`), so the
    /// next window this sighting counts in skips the look-up; `NO_PLACE` until then. Never
    /// checkpointed; it fills what would be padding.
    place: u32,
}

impl Seen {
    fn new(ts: i64, cell: CellId, source: SourceId, pos: Option<Position>) -> Seen {
        Seen {
            ts,
            cell,
            spot: Spot::pack(pos),
            source,
            place: NO_PLACE,
        }
    }

    fn pos(&self) -> Option<Position> {
        self.spot.get()
    }

    /// The ping this sighting was taken from, when the sighting holds all of it (not when its
    /// accuracy was clamped into the packing): the device table then stands for its idempotency key.
    fn record(&self, device: DeviceId) -> Option<Record> {
        (self.spot.accuracy_dm != NO_ACCURACY - 1).then(|| Record {
            ts: EventTime(self.ts),
            source: self.source,
            cell: self.cell,
            point: None,
            body: Body::Ping {
                device,
                pos: self.pos(),
            },
        })
    }
}

/// A record's idempotency key: the whole parsed record (device pseudonym or feed point, time, values).
fn key_of(rec: &Record) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = rustc_hash::FxHasher::default();
    rec.hash(&mut h);
    h.finish()
}

/// `Seen` as checkpoints hold it (the form before packing, so older checkpoints still load).
#[derive(Serialize, Deserialize)]
struct SeenForm {
    ts: i64,
    cell: CellId,
    source: SourceId,
    #[serde(default)]
    pos: Option<Position>,
}

impl From<SeenForm> for Seen {
    fn from(f: SeenForm) -> Seen {
        Seen::new(f.ts, f.cell, f.source, f.pos)
    }
}

impl From<Seen> for SeenForm {
    fn from(s: Seen) -> SeenForm {
        SeenForm {
            ts: s.ts,
            cell: s.cell,
            source: s.source,
            pos: s.pos(),
        }
    }
}

/// A device's latest sighting in the panes already closed, kept so that it stays present in its
/// segment between sparse pings (see `Presence`). One is held per device seen in the last
/// `lbs.max_presence`, the largest table of the window state: 24 bytes, no cell (only a position
/// is matched to segments), gaps in tenths of a second.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(from = "CarryForm", into = "CarryForm")]
struct Carry {
    ts: i64,
    /// Where it was seen (a record logged before positions were kept: its cell's centre).
    spot: Spot,
    source: SourceId,
    /// Smoothed gap between its sightings (0.1 s; 0: one sighting so far).
    interval_ds: u16,
    /// The last gap (0.1 s).
    last_gap_ds: u16,
}

/// Milliseconds to tenths of a second, saturating (presence never lasts 6,553 s).
fn ds(ms: i64) -> u16 {
    ((ms + 50) / 100).clamp(0, u16::MAX as i64) as u16
}

impl Carry {
    /// The sighting as the matcher takes it.
    fn seen(&self) -> Seen {
        Seen {
            ts: self.ts,
            cell: CellId::default(),
            spot: self.spot,
            source: self.source,
            place: NO_PLACE,
        }
    }

    /// Its own ping interval (ms): the smoothed one or the last gap, whichever is longer.
    fn interval_ms(&self) -> i64 {
        self.interval_ds.max(self.last_gap_ds) as i64 * 100
    }
}

/// `Carry` as checkpoints hold it.
#[derive(Serialize, Deserialize)]
struct CarryForm {
    ts: i64,
    pos: Position,
    source: SourceId,
    interval_ms: u32,
    last_gap_ms: u32,
}

impl From<CarryForm> for Carry {
    fn from(f: CarryForm) -> Carry {
        Carry {
            ts: f.ts,
            spot: Spot::pack(Some(f.pos)),
            source: f.source,
            interval_ds: ds(f.interval_ms as i64),
            last_gap_ds: ds(f.last_gap_ms as i64),
        }
    }
}

impl From<Carry> for CarryForm {
    fn from(c: Carry) -> CarryForm {
        CarryForm {
            ts: c.ts,
            // A carried spot always has a position (see `remember`).
            pos: c.spot.get().unwrap_or(Position {
                lat_e6: 0,
                lng_e6: 0,
                accuracy_dm: None,
            }),
            source: c.source,
            interval_ms: c.interval_ds as u32 * 100,
            last_gap_ms: c.last_gap_ds as u32 * 100,
        }
    }
}

/// The presence table's key: the pseudonym in two halves, so that a bucket aligns to 4 bytes
/// (28 with its record, where a `u64` key made it 32). Hashed as the `u64` it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DevKey([u32; 2]);

impl DevKey {
    fn of(d: DeviceId) -> DevKey {
        DevKey([(d.0 >> 32) as u32, d.0 as u32])
    }

    fn get(self) -> DeviceId {
        DeviceId(((self.0[0] as u64) << 32) | self.0[1] as u64)
    }
}

impl std::hash::Hash for DevKey {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.get().hash(h)
    }
}

/// `Carry` as the table holds it: 20 bytes, its time in milliseconds from the table's base.
#[derive(Debug, Clone, Copy)]
struct PackedCarry {
    dt: i32,
    spot: Spot,
    source: SourceId,
    interval_ds: u16,
    last_gap_ds: u16,
}

const _: () = assert!(std::mem::size_of::<(DevKey, PackedCarry)>() == 28);

/// Each device's presence record (see `Carry`), 29 bytes a bucket where `Carry` under a `u64`
/// key took 33: the table is held for every device seen in the last minutes, the window state's
/// largest after the panes (issue 20). Checkpointed as the map of `Carry` it stands for.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(from = "FxHashMap<DeviceId, Carry>", into = "FxHashMap<DeviceId, Carry>")]
struct Carried {
    map: FxHashMap<DevKey, PackedCarry>,
    /// Records' times are milliseconds from this one.
    base: i64,
}

impl From<FxHashMap<DeviceId, Carry>> for Carried {
    fn from(m: FxHashMap<DeviceId, Carry>) -> Carried {
        let mut c = Carried::default();
        for (d, r) in m {
            c.insert(d, r);
        }
        c
    }
}

impl From<Carried> for FxHashMap<DeviceId, Carry> {
    fn from(c: Carried) -> FxHashMap<DeviceId, Carry> {
        c.iter().collect()
    }
}

/// A table's times reach this far either side of its base; a rebase puts the newest this far
/// after it.
const CARRY_REACH_MS: i64 = 1 << 30;

impl PackedCarry {
    fn unpack(&self, base: i64) -> Carry {
        Carry {
            ts: base + self.dt as i64,
            spot: self.spot,
            source: self.source,
            interval_ds: self.interval_ds,
            last_gap_ds: self.last_gap_ds,
        }
    }
}

impl Carried {
    fn unpack(&self, p: &PackedCarry) -> Carry {
        p.unpack(self.base)
    }

    fn get(&self, dev: &DeviceId) -> Option<Carry> {
        self.map.get(&DevKey::of(*dev)).map(|p| self.unpack(p))
    }

    #[cfg(test)]
    fn contains_key(&self, dev: &DeviceId) -> bool {
        self.map.contains_key(&DevKey::of(*dev))
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn capacity(&self) -> usize {
        self.map.capacity()
    }

    fn iter(&self) -> impl Iterator<Item = (DeviceId, Carry)> + '_ {
        self.map.iter().map(|(k, p)| (k.get(), self.unpack(p)))
    }

    fn retain(&mut self, mut keep: impl FnMut(&Carry) -> bool) {
        let base = self.base;
        self.map.retain(|_, p| keep(&p.unpack(base)));
    }

    /// `ts` from the base, rebasing the table when it is beyond reach (every ~12 days of a
    /// run). `None` for a time over 37 days older than the newest record: presence that old has
    /// long been forgotten (`Engine::forget_absent`).
    fn offset(&mut self, ts: i64) -> Option<i32> {
        if self.map.is_empty() {
            self.base = ts;
        }
        if let Ok(d) = i32::try_from(ts - self.base) {
            return Some(d);
        }
        let hi = (self.map.values())
            .map(|p| self.base + p.dt as i64)
            .fold(ts, i64::max);
        let (old, new) = (self.base, hi - CARRY_REACH_MS);
        self.map
            .retain(|_, p| match i32::try_from(old + p.dt as i64 - new) {
                Ok(d) => {
                    p.dt = d;
                    true
                }
                Err(_) => false,
            });
        self.base = new;
        i32::try_from(ts - new).ok()
    }

    fn insert(&mut self, dev: DeviceId, c: Carry) {
        if let Some(dt) = self.offset(c.ts) {
            let p = PackedCarry {
                dt,
                spot: c.spot,
                source: c.source,
                interval_ds: c.interval_ds,
                last_gap_ds: c.last_gap_ds,
            };
            self.map.insert(DevKey::of(dev), p);
        }
    }

    /// Folds a sighting at `pos` into the device's record (newer sightings only).
    fn fold(&mut self, dev: DeviceId, seen: &Seen, pos: Position) {
        let key = DevKey::of(dev);
        if let Some(p) = self.map.get(&key) {
            if seen.ts <= self.base + p.dt as i64 {
                return;
            }
        }
        let Some(dt) = self.offset(seen.ts) else {
            return;
        };
        let base = self.base;
        match self.map.get_mut(&key) {
            Some(c) => {
                // Never 0 once there are two sightings (0 means one so far).
                let gap = ds(seen.ts - (base + c.dt as i64)).max(1);
                c.interval_ds = if c.interval_ds == 0 {
                    gap
                } else {
                    ((c.interval_ds as u32 + gap as u32) / 2) as u16
                };
                c.last_gap_ds = gap;
                c.dt = dt;
                c.spot = Spot::pack(Some(pos));
                c.source = seen.source;
            }
            None => {
                self.map.insert(
                    key,
                    PackedCarry {
                        dt,
                        spot: Spot::pack(Some(pos)),
                        source: seen.source,
                        interval_ds: 0,
                        last_gap_ds: 0,
                    },
                );
            }
        }
    }
}

/// How long a device that has not pinged stays where it was last seen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Presence {
    /// Overdue after this many of its own ping intervals.
    pub overdue_factor: f64,
    /// Never kept longer than this (ms).
    pub max_ms: i64,
}

impl Presence {
    /// The rules of `[lbs]`.
    pub fn from_config(lbs: &LbsConfig) -> Presence {
        Presence {
            overdue_factor: lbs.overdue_factor,
            max_ms: lbs.max_presence.as_millis() as i64,
        }
    }
}

impl Default for Presence {
    fn default() -> Self {
        Presence::from_config(&LbsConfig::default())
    }
}

/// Segment people of one window, from device positions (indexed like the segment map).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SegmentPeople {
    /// People per segment: devices seen or still present, each split over the segments its
    /// position may lie in, weighted by its source's scale factor.
    pub people: Vec<f64>,
    /// The part of `people` carried from before the window (devices present but not pinging).
    pub carried: Vec<f64>,
    /// Devices in the window matched to no segment (beyond `lbs.max_match_m` / 3.41σ of all).
    pub off_network_devices: u64,
    /// The people they stand for.
    pub off_network_people: f64,
    /// People on ground no segment covers (`ground.geojson`), per ground place (matcher places
    /// after the segments): walkable, matched like a segment, counted in no segment.
    #[serde(default)]
    pub ground: Vec<f64>,
    /// Devices (not people) per segment, by source id: what calibration compares with counts.
    pub devices_by_source: Vec<Vec<f64>>,
    /// Per segment: how old, on average, the positions placing its devices are at the window's
    /// end (seconds). A headcount is compared with the crowd as it was then, not at the end: a
    /// sparse panel's phones say where people were minutes ago.
    pub device_age_s: Vec<f64>,
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

/// A pane's devices and their latest sightings. Filled in a hash table while the pane is the
/// newest; once a newer pane starts (and pings for this one arrive only late or re-sent) it is
/// sealed into a vector of 28-byte sightings (`SealedSeen`): 28 bytes a sighting with no slack,
/// where the table held ~59 at its loads (41 a bucket, 69 % full). The open panes were most of
/// the window state, and all but the newest are sealed (issue 20). The vector is grouped by the
/// device pseudonym's top bits (a keyed hash, so ~4 a group, found through one offset per
/// group) only when a late or re-sent ping first needs a look-up: a replay in time order never
/// does, and grouping every pane cost 3–5 % of one. A device is held in one of the two, never both.
/// A pane whose times span more than a sealed sighting's 65.5 s (only with a slide that long)
/// stays a table.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(from = "FxHashMap<DeviceId, Seen>", into = "FxHashMap<DeviceId, Seen>")]
struct PaneDevices {
    /// Times from `base`.
    open: FxHashMap<DevKey, OpenSeen>,
    /// Grouped by the top `bits` of the device.
    sealed: Vec<SealedSeen>,
    /// Where each group starts in `sealed` (one more than the groups: the last is its length).
    starts: Vec<u32>,
    bits: u32,
    /// The sealed sightings' cells with their sources (a pane's devices stand in far fewer
    /// cells than they are).
    at: Vec<(CellId, SourceId)>,
    /// The sightings' times are milliseconds from this one: the first held, then the earliest
    /// sealed.
    base: i64,
}

/// Late pings for a sealed pane join its vector once they are this fraction of it.
const STRAGGLER_SHARE: usize = 32;

/// A sealed pane's sighting: `Seen` in 28 bytes, its time in milliseconds from the pane's base
/// (a pane spans at most a slide: panes of a slide over 65.5 s stay tables) and its cell and
/// source one index into the pane's pairs of them.
#[derive(Debug, Clone, Copy)]
#[repr(C, packed(4))]
struct SealedSeen {
    dev: u64,
    at: u32,
    place: u32,
    spot: Spot,
    dt: u16,
}

const _: () = assert!(std::mem::size_of::<SealedSeen>() == 28);

impl SealedSeen {
    fn unpack(&self, base: i64, at: &[(CellId, SourceId)]) -> Seen {
        let (cell, source) = at[self.at as usize];
        Seen {
            ts: base + self.dt as i64,
            cell,
            spot: self.spot,
            source,
            place: self.place,
        }
    }
}

/// A pane table's sighting: `Seen` with its time in milliseconds from the pane's base, 28 bytes
/// aligned to 4 so that a bucket with its key takes 37 bytes, not 41 (the newest pane's table is
/// the window state's largest after the sealed panes and presence).
#[derive(Debug, Clone, Copy)]
#[repr(C, packed(4))]
struct OpenSeen {
    dt: i32,
    cell: CellId,
    spot: Spot,
    source: SourceId,
    place: u32,
}

const _: () = assert!(std::mem::size_of::<(DevKey, OpenSeen)>() == 36);

impl OpenSeen {
    /// `seen` from `base`; a pane spans at most a slide, at most a day (`Config::validate`).
    fn pack(seen: &Seen, base: i64) -> OpenSeen {
        OpenSeen {
            dt: (seen.ts - base).clamp(i32::MIN as i64, i32::MAX as i64) as i32,
            cell: seen.cell,
            spot: seen.spot,
            source: seen.source,
            place: seen.place,
        }
    }

    fn unpack(&self, base: i64) -> Seen {
        Seen {
            ts: base + self.dt as i64,
            cell: self.cell,
            spot: self.spot,
            source: self.source,
            place: self.place,
        }
    }
}

impl From<FxHashMap<DeviceId, Seen>> for PaneDevices {
    fn from(m: FxHashMap<DeviceId, Seen>) -> PaneDevices {
        let base = m.values().map(|s| s.ts).min().unwrap_or(0);
        let mut open = FxHashMap::default();
        open.reserve(m.len());
        open.extend(
            m.into_iter()
                .map(|(d, s)| (DevKey::of(d), OpenSeen::pack(&s, base))),
        );
        PaneDevices {
            open,
            base,
            ..PaneDevices::default()
        }
    }
}

impl From<PaneDevices> for FxHashMap<DeviceId, Seen> {
    fn from(d: PaneDevices) -> FxHashMap<DeviceId, Seen> {
        d.into_sightings().collect()
    }
}

impl PaneDevices {
    #[inline]
    fn group(dev: u64, bits: u32) -> usize {
        if bits == 0 {
            0
        } else {
            (dev >> (64 - bits)) as usize
        }
    }

    /// The device's index in `sealed`, if it is there.
    #[inline(always)]
    fn sealed_at(&mut self, dev: DeviceId) -> Option<usize> {
        if self.sealed.is_empty() {
            return None;
        }
        self.sealed_at_slow(dev)
    }

    #[inline(never)]
    fn sealed_at_slow(&mut self, dev: DeviceId) -> Option<usize> {
        self.group_sealed();
        let g = Self::group(dev.0, self.bits);
        let (a, b) = (self.starts[g] as usize, self.starts[g + 1] as usize);
        self.sealed[a..b]
            .iter()
            .position(|x| { x.dev } == dev.0)
            .map(|i| a + i)
    }

    fn get(&mut self, dev: &DeviceId) -> Option<Seen> {
        match self.sealed_at(*dev) {
            Some(i) => Some(self.sealed[i].unpack(self.base, &self.at)),
            None => self.open.get(&DevKey::of(*dev)).map(|o| o.unpack(self.base)),
        }
    }

    /// Keeps `seen` as the device's sighting when it is at least as new as the one held: the
    /// key of the ping that is not kept whole (the one replaced, or `seen` itself), if any.
    fn keep_latest(&mut self, dev: DeviceId, seen: Seen, key: impl Fn() -> u64) -> Option<u64> {
        if let Some(i) = self.sealed_at(dev) {
            let held = self.sealed[i].unpack(self.base, &self.at);
            if seen.ts < held.ts {
                return Some(key());
            }
            let Ok(dt) = u16::try_from(seen.ts - self.base) else {
                // Beyond what a sealed sighting's time holds (a ping outside the pane's times):
                // held in the table again.
                self.unseal();
                return self.keep_latest(dev, seen, key);
            };
            // Mostly the cell and source it had; otherwise a scan of the pane's pairs
            // (stragglers only).
            let pair = (seen.cell, seen.source);
            let same = (held.cell == seen.cell && held.source == seen.source).then(|| self.sealed[i].at);
            let at = match same.or_else(|| self.at.iter().position(|&c| c == pair).map(|c| c as u32)) {
                Some(c) => c,
                None => {
                    self.at.push(pair);
                    (self.at.len() - 1) as u32
                }
            };
            let x = &mut self.sealed[i];
            (x.dt, x.at, x.spot, x.place) = (dt, at, seen.spot, seen.place);
            return held.record(dev).map(|r| key_of(&r));
        }
        if self.open.is_empty() && self.sealed.is_empty() {
            self.base = seen.ts;
        }
        let base = self.base;
        match self.open.entry(DevKey::of(dev)) {
            Entry::Occupied(mut o) if seen.ts >= o.get().unpack(base).ts => {
                let old = std::mem::replace(o.get_mut(), OpenSeen::pack(&seen, base));
                old.unpack(base).record(dev).map(|r| key_of(&r))
            }
            Entry::Occupied(_) => Some(key()),
            Entry::Vacant(v) => {
                v.insert(OpenSeen::pack(&seen, base));
                None
            }
        }
    }

    fn len(&self) -> usize {
        self.open.len() + self.sealed.len()
    }

    /// Every device with its sighting.
    fn iter(&self) -> impl Iterator<Item = (DeviceId, Seen)> + '_ {
        let (base, at) = (self.base, &self.at);
        (self.open.iter().map(move |(d, s)| (d.get(), s.unpack(base)))).chain(
            self.sealed
                .iter()
                .map(move |x| (DeviceId(x.dev), x.unpack(base, at))),
        )
    }

    /// Every device with its sighting and where its place handle is kept.
    fn iter_places(&mut self) -> impl Iterator<Item = (DeviceId, Seen, &mut u32)> + '_ {
        let (base, at) = (self.base, &self.at);
        (self.open.iter_mut().map(move |(d, s)| {
            let seen = s.unpack(base);
            (d.get(), seen, &mut s.place)
        }))
        .chain(self.sealed.iter_mut().map(move |x| {
            let seen = x.unpack(base, at);
            (DeviceId(x.dev), seen, &mut x.place)
        }))
    }

    fn into_sightings(self) -> impl Iterator<Item = (DeviceId, Seen)> {
        let (base, at) = (self.base, self.at);
        (self.open.into_iter().map(move |(d, s)| (d.get(), s.unpack(base)))).chain(
            self.sealed
                .into_iter()
                .map(move |x| (DeviceId(x.dev), x.unpack(base, &at))),
        )
    }

    /// Everything back into the table.
    fn unseal(&mut self) {
        let sealed = std::mem::take(self);
        *self = PaneDevices::from(sealed.into_sightings().collect::<FxHashMap<_, _>>());
    }

    /// Moves the table into the vector (see the type's doc), after any sealed before.
    fn seal(&mut self) {
        if self.open.is_empty() {
            return;
        }
        let old = self.base;
        let (lo, hi) = (self.open.values())
            .map(|s| s.unpack(old).ts)
            .fold((i64::MAX, i64::MIN), |(lo, hi), ts| (lo.min(ts), hi.max(ts)));
        if self.sealed.is_empty() {
            if u16::try_from(hi - lo).is_err() {
                // Times wider than a sealed sighting holds (a slide over 65.5 s): kept as a table.
                return;
            }
            self.base = lo;
        } else {
            // Late pings for a sealed pane wait in the table beside it until they are a
            // thirty-second of it (a feed's stragglers arrive for every pane: appending each
            // costs a regrouping at the next look-up), then join the vector.
            if self.open.len() * STRAGGLER_SHARE < self.sealed.len() {
                return;
            }
            if lo < self.base || u16::try_from(hi - self.base).is_err() {
                // Before the pane's earliest sealed sighting: all sealed again from a new base.
                self.unseal();
                return self.seal();
            }
        }
        let base = self.base;
        let mut at = std::mem::take(&mut self.at);
        let mut index: FxHashMap<(CellId, SourceId), u32> =
            at.iter().enumerate().map(|(i, &p)| (p, i as u32)).collect();
        // A pane's devices stand in a few thousand cells: most find theirs in this small cache.
        let mut recent = vec![(CellId(u64::MAX), SourceId(0), 0u32); 4096];
        let mut sealed = std::mem::take(&mut self.sealed);
        sealed.reserve_exact(self.open.len());
        for (d, s) in std::mem::take(&mut self.open) {
            let (d, s) = (d.get(), s.unpack(old));
            let h = (s.cell.0 ^ s.source.0 as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 52;
            let slot = &mut recent[h as usize];
            let i = if slot.0 == s.cell && slot.1 == s.source {
                slot.2
            } else {
                let i = *index.entry((s.cell, s.source)).or_insert_with(|| {
                    at.push((s.cell, s.source));
                    (at.len() - 1) as u32
                });
                *slot = (s.cell, s.source, i);
                i
            };
            sealed.push(SealedSeen {
                dev: d.0,
                at: i,
                place: s.place,
                spot: s.spot,
                dt: (s.ts - base) as u16,
            });
        }
        at.shrink_to_fit();
        self.sealed = sealed;
        self.at = at;
        // Grouped again at the next look-up.
        self.starts = Vec::new();
        self.bits = 0;
    }

    /// Groups the sealed sightings by device (see the type's doc) the first time one is looked
    /// up: in a replay in time order no pane ever is, so sealing is one sequential copy.
    fn group_sealed(&mut self) {
        if !self.starts.is_empty() || self.sealed.is_empty() {
            return;
        }
        let n = self.sealed.len();
        // ~4 a group: a look-up scans a few neighbours in one or two cache lines.
        let bits = (n / 4).max(1).ilog2().min(30);
        let mut starts = vec![0u32; (1usize << bits) + 1];
        for x in &self.sealed {
            starts[Self::group(x.dev, bits) + 1] += 1;
        }
        for g in 1..starts.len() {
            starts[g] += starts[g - 1];
        }
        let mut next: Vec<u32> = starts[..starts.len() - 1].to_vec();
        let mut grouped = self.sealed.clone();
        for x in &self.sealed {
            let g = Self::group(x.dev, bits);
            grouped[next[g] as usize] = *x;
            next[g] += 1;
        }
        self.sealed = grouped;
        self.starts = starts;
        self.bits = bits;
    }

    /// Heap bytes, as `Engine::state_bytes` counts them.
    fn bytes(&self) -> usize {
        hash_table_bytes::<DevKey, OpenSeen>(self.open.capacity())
            + self.sealed.capacity() * std::mem::size_of::<SealedSeen>()
            + self.starts.capacity() * 4
            + self.at.capacity() * std::mem::size_of::<(CellId, SourceId)>()
    }
}

/// Heap bytes of a hashbrown table of that capacity: buckets = the next power of two ≥ capacity
/// × 8/7, one control byte each.
fn hash_table_bytes<K, V>(capacity: usize) -> usize {
    if capacity == 0 {
        return 0;
    }
    let buckets = (capacity * 8 / 7).next_power_of_two();
    buckets * (std::mem::size_of::<(K, V)>() + 1)
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Pane {
    devices: PaneDevices,
    flows: FxHashMap<CellId, Flows>,
    zones: FxHashMap<SensorIdx, Headcount>,
    points: FxHashMap<PointIdx, PointPane>,
    /// Idempotency keys of the records in this pane that `devices` does not hold whole: every
    /// record but each device's latest ping (whose key is its sighting's, see `Seen::record`).
    /// Holding all of them cost 8 bytes a record and a hash-set insert per ping (issue 20).
    keys: FxHashSet<u64>,
}

impl Pane {
    /// Whether a record identical to `rec` (its key given by `key`) is already held.
    fn holds(&mut self, rec: &Record, key: impl Fn() -> u64) -> bool {
        let in_keys = || !self.keys.is_empty() && self.keys.contains(&key());
        let Body::Ping { device, .. } = &rec.body else {
            return in_keys();
        };
        // Every ping the pane took left its device in `devices`: from a device not there, nothing
        // has come, and the record's key (a hash of all of it) need not be computed.
        let Some(s) = self.devices.get(device) else {
            return false;
        };
        (rec.point.is_none() && s.ts == rec.ts.millis() && s.record(*device).as_ref() == Some(rec))
            || in_keys()
    }

    /// Every record's key, in no order: what the pane leaves behind when it closes.
    fn all_keys(&self) -> Vec<u64> {
        let mut keys: Vec<u64> = Vec::with_capacity(self.keys.len() + self.devices.len());
        keys.extend(self.keys.iter().copied());
        keys.extend((self.devices.iter()).filter_map(|(dev, s)| s.record(dev).map(|r| key_of(&r))));
        keys
    }
}

/// One feed point's totals over a window: what the segments stage uses for flow and staleness.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct HexRow {
    /// The cell.
    pub cell: CellId,
    /// Distinct devices whose latest ping in the window lies in this cell.
    pub lbs_devices: u64,
    /// Those devices weighted by their source's scale factor (people they stand for).
    pub lbs_people: f64,
    /// Of `lbs_devices`, those matched to no segment (off the walkable network).
    pub lbs_off_network: u64,
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HexWindow {
    /// Inclusive start.
    pub start: EventTime,
    /// Exclusive end.
    pub end: EventTime,
    /// One row per cell with any data, ordered by cell.
    pub rows: Vec<HexRow>,
    /// One entry per feed point that reported in the window, ordered by point.
    pub points: Vec<PointWindow>,
    /// Segment people from positions (empty without segments).
    pub segments: SegmentPeople,
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
    /// Each device's latest sighting in closed panes (presence between pings). Named apart from
    /// the wider table earlier versions checkpointed as `carry`, which a restart skips (presence
    /// then refills within a ping interval).
    #[serde(default, rename = "carried")]
    carry: Carried,
    #[serde(default)]
    presence: Presence,
    /// Per segment, the crowd density (p/m²) of the last closed window: the prior that splits an
    /// ambiguous ping between segments.
    #[serde(default)]
    prior: Vec<f64>,
    /// Per registry point, the segment its zone headcount counts (set by the flow, from config).
    #[serde(skip)]
    zone_segments: Vec<Option<usize>>,
    #[serde(default)]
    profiles: Vec<DeviceProfile>,
    /// The segments positions are matched to (set by the flow; not part of a checkpoint).
    #[serde(skip)]
    segments: Option<Arc<SegmentMap>>,
    #[serde(skip)]
    places: PlaceCache,
    /// The `places` generation the sightings' place handles belong to (0: none yet).
    #[serde(skip)]
    handles_gen: u32,
    /// Idempotency keys of closed panes, by pane, kept `resend_ms` of event time after the pane
    /// closed: a feed re-sending a batch whose acknowledgement it lost (or a broker redelivering)
    /// must find its records already counted, not late. Fingerprints of ~4.3 bytes a key (see
    /// `window::keys`); only re-sent and late records ever look here.
    #[serde(default)]
    closed_keys: BTreeMap<i64, ClosedKeys>,
    #[serde(default = "default_resend_ms")]
    resend_ms: i64,
    /// `lbs.prior_scale_m`: see `prior_exponent` (config, not state).
    #[serde(skip, default = "default_prior_scale")]
    prior_scale_m: f64,
    /// `lbs.heading_persistence_m`: see `ahead` (config, not state).
    #[serde(skip, default = "default_heading")]
    heading_m: f64,
    /// The newest pane a record has opened: the others are sealed (`PaneDevices`). Not kept in a
    /// checkpoint: a restored engine seals them at its first close.
    #[serde(skip, default = "newest_unknown")]
    newest_pane: i64,
}

fn newest_unknown() -> i64 {
    i64::MIN
}

fn default_resend_ms() -> i64 {
    600_000
}

fn default_prior_scale() -> f64 {
    LbsConfig::default().prior_scale_m
}

fn default_heading() -> f64 {
    LbsConfig::default().heading_persistence_m
}

/// A segment's prior density never falls below this (p/m²), so an empty segment can fill again.
const PRIOR_FLOOR: f64 = 0.05;
/// Ground no segment covers has this fixed prior (p/m²), never one learnt from its own people: a
/// junction or kerb beside a dense street receives that street's scattered pings, and a learnt
/// prior then pulls in more, window after window (the Bund's streets read 4–6 % low in total with
/// it). Low, ground takes a ping where the geometry points to it clearly — deep inside it, or
/// beyond every segment's error — and leaves an ambiguous one to the crowd on the segments. 0.02
/// was the best of 0.01–0.05 and learnt on the Bund's nights (docs/ACCURACY.md).
const GROUND_PRIOR: f64 = 0.02;

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
            carry: Carried::default(),
            presence: Presence::default(),
            prior_scale_m: default_prior_scale(),
            heading_m: default_heading(),
            prior: Vec::new(),
            zone_segments: Vec::new(),
            profiles: Vec::new(),
            segments: None,
            places: PlaceCache::default(),
            handles_gen: 0,
            closed_keys: BTreeMap::new(),
            resend_ms: w.resend_horizon.as_millis() as i64,
            newest_pane: i64::MIN,
        }
    }

    /// Which segment each registry point's headcount counts: a zone's count floors its segment's
    /// prior, so the pings of a counted crowd are not handed to its neighbours.
    pub fn set_zone_segments(&mut self, by_point: Vec<Option<usize>>) {
        self.zone_segments = by_point;
    }

    /// Sets the segments positions are matched to; a different map restarts the prior.
    pub fn set_segments(&mut self, map: Arc<SegmentMap>) {
        if map.segments().is_empty() {
            self.segments = None;
            return;
        }
        // One prior per place: segments, then ground no segment covers.
        let places = map.matcher().len();
        if self.prior.len() != places || !self.segments.as_ref().is_some_and(|m| Arc::ptr_eq(m, &map)) {
            self.places.clear();
        }
        if self.prior.len() != places {
            let segments = map.segments().len();
            self.prior = (0..places)
                .map(|i| if i < segments { PRIOR_FLOOR } else { GROUND_PRIOR })
                .collect();
        }
        self.segments = Some(map);
    }

    /// Sets how long a re-sent record is recognised after its window closed (the config in force
    /// decides, not the one a checkpoint was taken under).
    pub fn set_resend_horizon(&mut self, w: &WindowConfig) {
        self.resend_ms = w.resend_horizon.as_millis() as i64;
    }

    /// Sets how long a device stays present between pings.
    pub fn set_presence(&mut self, p: Presence) {
        self.presence = p;
    }

    /// Takes the `[lbs]` settings in force now (a checkpoint's are not kept): presence, the
    /// prior's scale and how far a walker keeps its heading.
    pub fn apply_lbs(&mut self, lbs: &LbsConfig) {
        self.set_presence(Presence::from_config(lbs));
        self.prior_scale_m = lbs.prior_scale_m;
        self.heading_m = lbs.heading_persistence_m;
    }

    /// Sets each source's device profile (error, typical ping interval), indexed by source id.
    pub fn set_profiles(&mut self, profiles: Vec<DeviceProfile>) {
        // A ping without an accuracy is matched with its source's default error: answers (and
        // the sightings' place handles) computed under the old profiles must go.
        self.places.clear();
        self.profiles = profiles;
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

    /// People per device in force, by source id.
    pub fn scales(&self) -> &[f64] {
        &self.scales
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
        // Computed only when asked: a ping new to its pane (most of them) never needs it.
        let key_cell = std::cell::OnceCell::new();
        let key = || *key_cell.get_or_init(|| key_of(rec));
        let pane = at.div_euclid(self.slide);
        if self.panes.get_mut(&pane).is_some_and(|p| p.holds(rec, key))
            || self.closed_keys.get(&pane).is_some_and(|k| k.contains(key()))
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
            Body::GateTap { exit, .. } => Some(Flows {
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
                // Sent again, it is the same late record, not another one.
                if self.within_resend_horizon(pane) {
                    self.closed_keys.entry(pane).or_default().insert(key());
                }
                // Too late for any window, but still where the device was: presence keeps it.
                if let (Body::Ping { device, pos }, true) = (&rec.body, self.segments.is_some()) {
                    remember(
                        &mut self.carry,
                        *device,
                        Seen::new(at, rec.cell, rec.source, *pos),
                    );
                }
                return true;
            }
        }
        // A new pane's table grows from empty. Started at the size the last closed pane reached,
        // it saved the rehashes (2 % of a replay) but held tables a size too large while a crowd
        // thinned out: 149 → 163 bytes of state per device on `throng bench` (issue 20).
        // A newer pane starts: the newest so far takes only late or re-sent pings from now on.
        if pane > self.newest_pane {
            if let Some(p) = self.panes.get_mut(&self.newest_pane) {
                p.devices.seal();
            }
            self.newest_pane = pane;
        }
        let p = self.panes.entry(pane).or_default();
        if !matches!(rec.body, Body::Ping { .. }) {
            p.keys.insert(key());
        }
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
            Body::Ping { device, pos } => {
                let seen = Seen::new(at, rec.cell, rec.source, pos);
                // The device table keeps its latest ping; the key of any other goes to `keys`.
                let displaced = p.devices.keep_latest(device, seen, key);
                if let Some(k) = displaced {
                    p.keys.insert(k);
                }
                // A sighting that does not hold its ping whole (or a ping with a feed point)
                // keeps its key in `keys` from the start.
                if seen.record(device).as_ref() != Some(rec) {
                    p.keys.insert(key());
                }
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
                    // Panes a newer one overtook out of order are sealed, and a sealed pane's late
                    // pings join it once they are many (`PaneDevices::seal`).
                    if let Some(newest) = self.panes.keys().next_back().copied() {
                        for p in self.panes.range_mut(..newest).map(|(_, p)| p) {
                            p.devices.seal();
                        }
                    }
                    let w = self.build(s, true);
                    self.learn_prior(&w);
                    out.push(w);
                    self.stats.windows_closed += 1;
                    if let Some(p) = self.panes.remove(&s) {
                        self.closed_keys.insert(s, ClosedKeys::from_keys(p.all_keys()));
                        // Presence only places devices on segments: without them it is not kept.
                        if self.segments.is_some() {
                            for (dev, seen) in p.devices.into_sightings() {
                                remember(&mut self.carry, dev, seen);
                            }
                        }
                    }
                    if self.segments.is_some() {
                        self.forget_absent(s * self.slide + self.size);
                    }
                    // Panes before s were already dropped; s is the only one no later window needs.
                    self.next_close = s + 1;
                }
            }
        }
        self.forget_keys();
        self.sync_register_stats();
        out
    }

    /// First pane whose keys are kept when the newest event time is `newest`.
    fn keys_kept_from(&self, newest: i64) -> i64 {
        (newest - self.resend_ms).div_euclid(self.slide)
    }

    /// Newest event time any source has reported: the horizon is measured from it, not from the
    /// watermark, because the watermark also moves with processing time (a pause, an idle feed)
    /// and whether a re-sent record is a duplicate must depend on the records alone.
    fn newest_event(&self) -> Option<i64> {
        self.watermark
            .sources()
            .iter()
            .map(|c| c.max_event)
            .filter(|&t| t != i64::MIN)
            .max()
    }

    /// Whether a closed pane's keys are still kept (so a record in it is remembered).
    fn within_resend_horizon(&self, pane: i64) -> bool {
        self.newest_event()
            .is_some_and(|t| pane >= self.keys_kept_from(t))
    }

    /// Drops the keys of panes older than the resend horizon (in event time, from the newest).
    fn forget_keys(&mut self) {
        let Some(newest) = self.newest_event() else {
            return;
        };
        let keep_from = self.keys_kept_from(newest);
        while let Some(entry) = self.closed_keys.first_entry() {
            if *entry.key() >= keep_from {
                break;
            }
            entry.remove();
        }
    }

    /// The closed window's densities become the prior for the next.
    fn learn_prior(&mut self, w: &HexWindow) {
        let Some(map) = &self.segments else { return };
        if w.segments.people.len() != map.segments().len() {
            return;
        }
        // A zone headcount is the segment's crowd where it says more than the phones (the same
        // floor the segments stage applies): a dense square whose pings scatter past its edges
        // would otherwise lend its crowd to the steps and crossings beside it, window after window.
        let mut counted: Vec<Option<f64>> = vec![None; w.segments.people.len()];
        for p in &w.points {
            if let (Some(o), Some(Some(j))) = (p.occupancy, self.zone_segments.get(p.point.0 as usize)) {
                if let Some(c) = counted.get_mut(*j) {
                    *c.get_or_insert(0.0) += o as f64;
                }
            }
        }
        let m = map.matcher();
        // Ground keeps a fixed prior: see `GROUND_PRIOR`.
        self.prior = map
            .segments()
            .iter()
            .zip(&w.segments.people)
            .zip(&counted)
            .map(|((seg, p), c)| (p.max(c.unwrap_or(0.0)) / seg.area_m2).max(PRIOR_FLOOR))
            .chain((m.segments()..m.len()).map(|_| GROUND_PRIOR))
            .collect();
    }

    /// Drops devices no window will count again, as of window end `end`: overdue twice over by
    /// their own rhythm (or past `max_presence`), and older than the projection's reach. Holding
    /// every device for the whole `max_presence` kept each one leaving the crowd for ten minutes:
    /// with people coming and going that was most of the window state.
    fn forget_absent(&mut self, end: i64) {
        let p = self.presence;
        let profiles = &self.profiles;
        self.carry.retain(|c| {
            let age = end - c.ts;
            age <= AHEAD_REACH_MS || age <= (2 * presence_limit(c, profiles, p)).min(p.max_ms)
        });
    }

    fn build(&mut self, s: i64, is_final: bool) -> HexWindow {
        let end = s * self.slide + self.size;
        // Provisional snapshots feed the heatmap only: segments are evaluated on closed windows.
        let mut attr = match &self.segments {
            Some(m) if is_final => Some(Attribution::new(m.clone(), &self.prior, self.prior_scale_m, end)),
            _ => None,
        };
        // Place handles stay valid while the cache's generation does (it starts over when full,
        // and a restored or cloned engine has a new cache).
        let gen = self.places.generation();
        if attr.is_some() && self.handles_gen != gen {
            forget_places(&mut self.panes);
            self.handles_gen = gen;
        }
        let places = &mut self.places;
        let profiles = &self.profiles;
        let heading_m = self.heading_m;
        // Each row with its people in `FIXED` units: integers add to the same sum in any order, and
        // the devices' order is the tables' (another after a restart or a resized table), so a float
        // sum of unequal scale factors could change in its last digit (as `Attribution` says).
        let mut cells: FxHashMap<CellId, (HexRow, i64)> = FxHashMap::default();
        let first = self
            .panes
            .range(s..s + self.n)
            .map(|(_, p)| p.devices.len())
            .max()
            .unwrap_or(0);
        // The set of devices already counted is reused from window to window: allocating a fresh
        // one per window (a megabyte at the bench's 50,000 devices) cost page faults each time.
        let mut seen = COUNTED.with(|s| std::mem::take(&mut *s.borrow_mut()));
        seen.clear();
        if seen.capacity() > first * 8 + 1024 {
            seen.shrink_to(first * 2);
        }
        seen.reserve(first * 2);
        let mut zones_seen: FxHashSet<SensorIdx> = FxHashSet::default();
        // Devices are taken a chunk at a time: first each one's look-ups in the set of counted
        // devices and the presence table (independent cache misses the core overlaps), then the
        // work that needs them. One at a time, each miss waited behind the last device's work.
        let mut chunk: Vec<(Seen, &mut u32, Option<Carry>)> = Vec::with_capacity(CHUNK);
        // Newest pane first: a device's first sighting is its latest ping in the window.
        for (_, pane) in self.panes.range_mut(s..s + self.n).rev() {
            let mut devices = pane.devices.iter_places();
            let mut more = true;
            while more {
                chunk.clear();
                let mut taken = 0;
                for (dev, e, slot) in devices.by_ref().take(CHUNK) {
                    taken += 1;
                    if seen.insert(dev) {
                        // A ping from the window's last seconds needs no projection (nor a look-up).
                        let before = (attr.is_some() && end - e.ts > 5_000)
                            .then(|| self.carry.get(&dev))
                            .flatten();
                        chunk.push((e, slot, before));
                    }
                }
                more = taken == CHUNK;
                for (e, slot, before) in chunk.iter_mut() {
                    let (row, people) = cells.entry(e.cell).or_insert_with(|| empty_row(e.cell));
                    let scale = self.scales.get(e.source.0 as usize).copied().unwrap_or(1.0);
                    row.lbs_devices += 1;
                    *people += round_i64(scale * FIXED);
                    if let Some(a) = &mut attr {
                        // With no sighting before (none looked up for a recent ping), the ping as it is.
                        let at = ahead(e, before.as_ref(), end, profiles, heading_m);
                        // Its own position (not projected): the handle from an earlier window serves.
                        let own = at.spot == e.spot;
                        let mut place = if own && places.generation() == gen {
                            e.place
                        } else {
                            NO_PLACE
                        };
                        if !a.add(places, profiles, &at, scale, false, &mut place) {
                            row.lbs_off_network += 1;
                        }
                        if own && places.generation() == gen {
                            **slot = place;
                        }
                    }
                }
            }
            for (sensor, z) in &pane.zones {
                if zones_seen.insert(*sensor) {
                    let (row, _) = cells.entry(z.cell).or_insert_with(|| empty_row(z.cell));
                    *row.occupancy.get_or_insert(0) += z.people as u64;
                }
            }
            for (cell, f) in &pane.flows {
                let (row, _) = cells.entry(*cell).or_insert_with(|| empty_row(*cell));
                row.counter_in += f.counter_in;
                row.counter_out += f.counter_out;
                row.gate_entries += f.gate_entries;
                row.gate_exits += f.gate_exits;
            }
        }
        if let Some(a) = &mut attr {
            // Devices not seen in the window stay where they were until overdue by their own rhythm.
            let p = self.presence;
            for (dev, c) in self.carry.iter() {
                // The record at hand decides first; the set of counted devices is a probe into
                // memory, and a table kept for the projection's reach holds many overdue devices.
                if end - c.ts <= presence_limit(&c, profiles, p) && !seen.contains(&dev) {
                    let scale = self.scales.get(c.source.0 as usize).copied().unwrap_or(1.0);
                    let mut place = NO_PLACE;
                    a.add(places, profiles, &c.seen(), scale, true, &mut place);
                }
            }
        }
        let mut rows: Vec<HexRow> = cells
            .into_values()
            .map(|(mut row, people)| {
                row.lbs_people = people as f64 / FIXED;
                row
            })
            .collect();
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
        COUNTED.with(|s| *s.borrow_mut() = seen);
        if self.handles_gen != 0 && self.places.generation() != self.handles_gen {
            // The cache started over during this window: handles written before then are stale.
            forget_places(&mut self.panes);
            self.handles_gen = self.places.generation();
        }
        HexWindow {
            start: EventTime(s * self.slide),
            end: EventTime(s * self.slide + self.size),
            rows,
            points: points.into_values().map(|(w, _)| w).collect(),
            segments: attr.map(Attribution::finish).unwrap_or_default(),
            is_final,
        }
    }

    /// End of the window a snapshot would show now (None before any record).
    pub fn open_window_end(&self) -> Option<i64> {
        let &last = self.panes.keys().next_back()?;
        let s = (last - self.n + 1).max(self.next_close);
        Some(s * self.slide + self.size)
    }

    /// Length of a slide (ms).
    pub fn slide_ms(&self) -> i64 {
        self.slide
    }

    /// A provisional view of the newest open window: the one ending with the newest pane.
    pub fn snapshot(&mut self) -> Option<HexWindow> {
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

    /// Estimated heap bytes of the window state (the panes' hash tables, their sealed vectors and
    /// the presence table, tables sized by their bucket counts as hashbrown allocates them, and
    /// the register table).
    pub fn state_bytes(&self) -> usize {
        let panes: usize = self
            .panes
            .values()
            .map(|p| {
                p.devices.bytes()
                    + hash_table_bytes::<CellId, Flows>(p.flows.capacity())
                    + hash_table_bytes::<SensorIdx, Headcount>(p.zones.capacity())
                    + hash_table_bytes::<PointIdx, PointPane>(p.points.capacity())
                    + hash_table_bytes::<u64, ()>(p.keys.capacity())
                    + std::mem::size_of::<Pane>()
            })
            .sum();
        let closed: usize = self.closed_keys.values().map(|k| k.bytes()).sum();
        panes
            + closed
            + hash_table_bytes::<DevKey, PackedCarry>(self.carry.capacity())
            + self.registers.state_bytes()
    }

    /// Distinct devices held in the open panes (what "active devices" means for state per device).
    pub fn distinct_devices(&self) -> usize {
        let mut seen: rustc_hash::FxHashSet<DeviceId> = rustc_hash::FxHashSet::default();
        for p in self.panes.values() {
            seen.extend(p.devices.iter().map(|(d, _)| d));
        }
        seen.len()
    }
}

/// Drops every sighting's place handle (they belong to a cache generation that has passed).
fn forget_places(panes: &mut BTreeMap<i64, Pane>) {
    for pane in panes.values_mut() {
        for (_, _, place) in pane.devices.iter_places() {
            *place = NO_PLACE;
        }
    }
}

thread_local! {
    /// `Engine::build`'s set of devices already counted, kept between windows.
    static COUNTED: std::cell::RefCell<FxHashSet<DeviceId>> = std::cell::RefCell::new(FxHashSet::default());
}

/// How long after its last sighting a device still counts where it was (ms): overdue after
/// `overdue_factor` of its own ping intervals (its source's usual one until it has two
/// sightings), never past `max_presence`.
fn presence_limit(c: &Carry, profiles: &[DeviceProfile], p: Presence) -> i64 {
    let interval = match c.interval_ms() {
        0 => profiles
            .get(c.source.0 as usize)
            .map_or(60_000, |p| p.ping_interval_ms),
        i => i,
    };
    ((interval as f64 * p.overdue_factor) as i64).min(p.max_ms)
}

/// Devices `Engine::build` looks up together before working on them.
const CHUNK: usize = 32;

/// The oldest sighting `ahead` projects from (ms).
const AHEAD_REACH_MS: i64 = 180_000;

/// Longest a position is carried forward along its device's walk (ms), and the fastest walk.
const AHEAD_MAX_MS: i64 = 60_000;
const WALK_MAX_M_S: f64 = 2.5;

/// The device's position projected to the window's end along its walk: a segment's people are
/// those there at the end of the window, and a walker's latest ping can be a minute old. Uses
/// the sighting before (from closed panes) when it is recent and the implied speed is a walk,
/// and carries it at most one of the device's ping intervals; otherwise the ping as it is.
///
/// A walk of s metres at that heading is carried D·(1 − e^(−s/D)), D = `heading_m`
/// (`lbs.heading_persistence_m`): the expected way forward of a walker who keeps its heading for
/// ~D metres before turning or stopping. Carried in a straight line, walkers crossing the Chen Yi
/// square towards the steps were carried past them along the square's diagonal, and those on the
/// steps far beyond their top: with 1 m error the steps read 40 % low (docs/ACCURACY.md).
fn ahead(e: &Seen, before: Option<&Carry>, end: i64, profiles: &[DeviceProfile], heading_m: f64) -> Seen {
    let (Some(p), Some(b)) = (e.pos(), before) else {
        return *e;
    };
    if heading_m <= 0.0 {
        return *e;
    }
    let Some(q) = b.spot.get() else {
        return *e;
    };
    let dt = e.ts - b.ts;
    if !(5_000..=AHEAD_REACH_MS).contains(&dt) {
        return *e;
    }
    // Carried no further than the device's own rhythm (its source's usual interval or its own,
    // whichever is shorter): past it the device should have spoken again, and one that has not
    // has most likely stopped (into the metro, a building) where its walk ended. Carried the full
    // minute, the crowd tapping into the station at the night's end was walked past the gates:
    // with perfect data exit 7's last window read 41 % low.
    let usual = profiles
        .get(e.source.0 as usize)
        .map_or(AHEAD_MAX_MS, |p| p.ping_interval_ms);
    let own = match b.interval_ms() {
        0 => dt,
        i => i,
    };
    // Never below zero, whatever a config's interval says (`clamp` would panic).
    let cap = AHEAD_MAX_MS.min(usual).min(own).max(0);
    let lag = (end - 1 - e.ts).clamp(0, cap) as f64;
    let (dlat, dlng) = ((p.lat_e6 - q.lat_e6) as f64, (p.lng_e6 - q.lng_e6) as f64);
    if !is_walk(p.lat_e6, dlat, dlng, dt) {
        return *e;
    }
    let mut f = lag / dt as f64;
    let walked = walk_m(p.lat_e6, dlat, dlng) * f;
    if walked > 0.0 {
        f *= heading_m * (1.0 - (-walked / heading_m).exp()) / walked;
    }
    let mut out = *e;
    // The projected position stands for where the walker is at that later time.
    out.ts = e.ts + lag as i64;
    out.spot = Spot::pack(Some(Position {
        lat_e6: p.lat_e6 + round_i64(dlat * f).clamp(i32::MIN as i64, i32::MAX as i64) as i32,
        lng_e6: p.lng_e6 + round_i64(dlng * f).clamp(i32::MIN as i64, i32::MAX as i64) as i32,
        accuracy_dm: p.accuracy_dm,
    }));
    out.place = NO_PLACE;
    out
}

/// Metres of a move of (`dlat`, `dlng`) micro-degrees at latitude `lat_e6` (near enough for the
/// projection's length; `is_walk` has the exact path for the speed check).
fn walk_m(lat_e6: i32, dlat: f64, dlng: f64) -> f64 {
    let lat = (lat_e6 as f64 * 1e-6).to_radians();
    let c = if lat.abs() < 1.35 {
        cos_near(lat)
    } else {
        lat.cos()
    };
    ((dlat * 0.111_32).powi(2) + (dlng * 0.111_32 * c).powi(2)).sqrt()
}

/// Whether a move of (`dlat`, `dlng`) micro-degrees at latitude `lat_e6` in `dt_ms` is a walk (at
/// most `WALK_MAX_M_S`), in metres per micro-degree near enough for a speed check.
fn is_walk(lat_e6: i32, dlat: f64, dlng: f64, dt_ms: i64) -> bool {
    let m_lat = 0.111_32;
    // libm's `cos` and `hypot` were a tenth of the segment cost here. A polynomial cosine (within
    // 1e-6) and a plain square root settle every move whose speed is not within 1e-5 of the limit
    // as the exact check would; the few that are, and the poles, take the exact path.
    let lat = (lat_e6 as f64 * 1e-6).to_radians();
    let dt_s = dt_ms as f64 / 1000.0;
    if lat.abs() < 1.35 {
        let m_lng = 0.111_32 * cos_near(lat);
        let v = ((dlat * m_lat).powi(2) + (dlng * m_lng).powi(2)).sqrt() / dt_s;
        if (v - WALK_MAX_M_S).abs() > WALK_MAX_M_S * 1e-5 {
            return v <= WALK_MAX_M_S;
        }
    }
    let m_lng = 0.111_32 * lat.cos();
    (dlat * m_lat).hypot(dlng * m_lng) / dt_s <= WALK_MAX_M_S
}

/// `x.round() as i64`, without the libm call `round` is on a baseline x86-64 (a few percent of
/// the segment cost, twice per device and candidate): truncate, then step by the fraction left,
/// which is exact below 2⁵².
#[inline]
fn round_i64(x: f64) -> i64 {
    if x.abs() >= 4_503_599_627_370_496.0 {
        return x.round() as i64;
    }
    let t = x as i64;
    let f = x - t as f64;
    if f >= 0.5 {
        t + 1
    } else if f <= -0.5 {
        t - 1
    } else {
        t
    }
}

/// cos(x) for |x| ≤ π/2 within 1e-6 (Taylor to x¹⁰; the first term left out is x¹²/12! ≤ 5e-7).
#[inline]
fn cos_near(x: f64) -> f64 {
    let y = x * x;
    1.0 - y / 2.0 * (1.0 - y / 12.0 * (1.0 - y / 30.0 * (1.0 - y / 56.0 * (1.0 - y / 90.0))))
}

/// Folds a sighting into a device's presence record (newer sightings only).
fn remember(carry: &mut Carried, dev: DeviceId, seen: Seen) {
    let pos = match seen.pos() {
        Some(p) => p,
        None => match seen.cell.index() {
            Some(c) => {
                let ll = h3o::LatLng::from(c);
                Position::new(ll.lat(), ll.lng(), None)
            }
            None => return,
        },
    };
    carry.fold(dev, &seen, pos);
}

/// A cell's row before anything is added, with its people (in `FIXED` units) beside it.
fn empty_row(cell: CellId) -> (HexRow, i64) {
    (
        HexRow {
            cell,
            ..Default::default()
        },
        0,
    )
}

/// Splits devices over segments by position: each one's weight goes to the segments its ping may
/// lie in, in proportion to prior density × the ping's likelihood there (`scenario::matcher`),
/// the density tempered by the ping's error between segments (`prior_exponent`).
struct Attribution {
    map: Arc<SegmentMap>,
    prior: Vec<f64>,
    /// ln of `prior`, so a tempered prior (`prior_exponent`) costs one `exp`.
    ln_prior: Vec<f64>,
    /// `lbs.prior_scale_m`.
    prior_scale_m: f64,
    out: SegmentPeople,
    /// People and carried people per segment in units of `FIXED` (integers add in any order to
    /// the same sum; floats do not, and device maps iterate in another order after a restart, so
    /// a float sum would let a crash change the answer in its last digit).
    people: Vec<i64>,
    carried: Vec<i64>,
    /// Devices per segment by source (same fixed point; grown as sources appear).
    devices: Vec<Vec<i64>>,
    /// Per segment: Σ device share × position age (ms), and Σ device share (fixed point).
    age: Vec<(i128, i128)>,
    /// The window's end, which positions' ages are measured against.
    end: i64,
    off_network: i64,
}

/// Fixed-point unit of attributed people: a billionth of a person.
const FIXED: f64 = 1e9;

/// The power a segment's prior density is raised to for a ping with per-axis error `sigma`:
/// σ² / (σ² + L²), from ~0 (the geometry alone decides) to ~1 (the density prior in full). L
/// (`lbs.prior_scale_m`, 6 m) is the distance over which a crowd's density can change. The prior
/// is each segment's mean density, constant up to its edges; a real crowd's is not: at a
/// bottleneck the queue on the square presses on the steps' edge as densely as the steps hold. So
/// a ping whose error is small against L is decided by the side of the edge it fell on, and one
/// whose error is large by the crowds of the segments it may have come from. 4 m was the best of
/// 2–8 m on the Bund's nights (docs/ACCURACY.md, "A prior tempered by the ping's error") while
/// walkers were projected in straight lines, whose loss on the steps it partly offset; with the
/// projection shortened (`ahead`) 6 m is ("The projection keeps a heading only so far"); 0 gives
/// the density prior in full at every error.
fn prior_exponent(sigma: f64, scale_m: f64) -> f64 {
    let s2 = sigma * sigma;
    s2 / (s2 + scale_m * scale_m)
}

impl Attribution {
    fn new(map: Arc<SegmentMap>, prior: &[f64], prior_scale_m: f64, end: i64) -> Attribution {
        // Every place is attributed alike; `finish` splits the ground off the segments.
        let n = map.matcher().len();
        let prior = (0..n)
            .map(|i| {
                let floor = if i < map.segments().len() {
                    PRIOR_FLOOR
                } else {
                    GROUND_PRIOR
                };
                prior.get(i).copied().unwrap_or(floor)
            })
            .collect::<Vec<f64>>();
        Attribution {
            map,
            ln_prior: prior.iter().map(|p| p.ln()).collect(),
            prior,
            prior_scale_m,
            out: SegmentPeople::default(),
            people: vec![0; n],
            carried: vec![0; n],
            devices: Vec::new(),
            age: vec![(0, 0); n],
            end,
            off_network: 0,
        }
    }

    /// The window's segment people.
    fn finish(self) -> SegmentPeople {
        let n = self.map.segments().len();
        let back = |v: &[i64]| v.iter().map(|&x| x as f64 / FIXED).collect::<Vec<f64>>();
        SegmentPeople {
            people: back(&self.people[..n]),
            carried: back(&self.carried[..n]),
            ground: back(&self.people[n..]),
            off_network_people: self.off_network as f64 / FIXED,
            devices_by_source: self.devices.iter().map(|d| back(&d[..n])).collect(),
            device_age_s: self.age[..n]
                .iter()
                .map(|&(a, w)| if w > 0 { a as f64 / w as f64 / 1000.0 } else { 0.0 })
                .collect(),
            ..self.out
        }
    }

    /// Adds one device standing for `scale` people; false when it is off the network.
    #[inline]
    fn add(
        &mut self,
        places: &mut PlaceCache,
        profiles: &[DeviceProfile],
        e: &Seen,
        scale: f64,
        carried: bool,
        place: &mut u32,
    ) -> bool {
        let (lat, lng, acc) = match e.pos() {
            Some(p) => (p.lat(), p.lng(), p.accuracy_m()),
            None => match e.cell.index() {
                // A record logged before positions were kept: its cell's centre.
                Some(c) => {
                    let ll = h3o::LatLng::from(c);
                    (ll.lat(), ll.lng(), None)
                }
                None => return false,
            },
        };
        let acc = acc.unwrap_or_else(|| profiles.get(e.source.0 as usize).map_or(30.0, |p| p.accuracy_m));
        let found = if *place != NO_PLACE {
            places.at(*place)
        } else {
            let (h, found) = places.place_handle(self.map.matcher(), lat, lng, Matcher::sigma(acc));
            *place = h;
            found
        };
        let one;
        let c: &[(u32, f32)] = match found {
            Place::Off => {
                if !carried {
                    self.out.off_network_devices += 1;
                    self.off_network += round_i64(scale * FIXED);
                }
                return false;
            }
            // A lone candidate's share is its prior-weighted mass over itself, whatever the mass:
            // a mass of 1 gives the same shares bit for bit, and the cache need not keep it.
            Place::One(j) => {
                one = [(j, 1.0)];
                &one
            }
            Place::Many(c) => c,
        };
        // Ground is where people pass, not where they stay: a device not heard from since it was
        // there is placed on the segments within its reach (when there are any).
        let segments = self.people.len().min(self.map.segments().len()) as u32;
        let pass = carried && c.iter().any(|&(j, _)| j < segments) && c.iter().any(|&(j, _)| j >= segments);
        let weight = |j: u32, m: f32| {
            if pass && j >= segments {
                0.0
            } else {
                self.prior[j as usize] * m as f64
            }
        };
        let total: f64 = c.iter().map(|&(j, m)| weight(j, m)).sum();
        if total <= 0.0 {
            return false;
        }
        // Between ground and the network the crowd decides as it always did (ground's prior is a
        // fixed low one, not a density); among the segments, by their densities tempered with the
        // ping's error (`prior_exponent`).
        let rivals = c.iter().filter(|&&(j, _)| j < segments).count() > 1;
        let power = prior_exponent(Matcher::sigma(acc), self.prior_scale_m);
        let tempered = |j: u32, m: f32| (power * self.ln_prior[j as usize]).exp() * m as f64;
        // With two or more segments among the candidates: the segments' share together, and the
        // sum of their tempered weights it is split by.
        let split = rivals.then(|| {
            let on = c.iter().filter(|&&(j, _)| j < segments);
            let on_segments: f64 = on.clone().map(|&(j, m)| weight(j, m)).sum();
            (on_segments / total, on.map(|&(j, m)| tempered(j, m)).sum::<f64>())
        });
        let share_of = |j: u32, m: f32| -> f64 {
            match split {
                Some((together, t_total)) if j < segments && t_total > 0.0 => {
                    together * tempered(j, m) / t_total
                }
                _ => weight(j, m) / total,
            }
        };
        let src = e.source.0 as usize;
        if self.devices.len() <= src {
            self.devices.resize_with(src + 1, || vec![0; self.people.len()]);
        }
        for &(j, m) in c {
            let share = share_of(j, m);
            if share == 0.0 {
                continue;
            }
            let w = round_i64(scale * share * FIXED);
            self.people[j as usize] += w;
            let d = round_i64(share * FIXED);
            self.devices[src][j as usize] += d;
            let age = &mut self.age[j as usize];
            age.0 += d as i128 * (self.end - e.ts).max(0) as i128;
            age.1 += d as i128;
            if carried {
                self.carried[j as usize] += w;
            }
        }
        true
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
            resend_horizon: Duration::from_secs(120),
        }
    }

    #[test]
    fn rounding_without_libm_is_rounding() {
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut cases = vec![
            0.0,
            -0.0,
            0.5,
            -0.5,
            1.5,
            -1.5,
            2.5,
            0.499_999_999_999_999_94,
            -2.5e-320,
        ];
        cases.extend([
            f64::NAN,
            f64::INFINITY,
            -f64::INFINITY,
            4.503_599_627_370_497e15,
            1e300,
            -1e19,
        ]);
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = f64::from_bits(x);
            // Random bit patterns, and halves and near-halves at every scale.
            cases.push(v);
            let k = (x % 60) as i32;
            cases.push(
                ((x >> 20) % 1000) as f64 / 2.0 * 2f64.powi(k - 10) * if x & 1 == 0 { 1.0 } else { -1.0 },
            );
        }
        for v in cases {
            assert_eq!(round_i64(v), v.round() as i64, "{v:e}");
        }
    }

    #[test]
    fn the_quick_walk_check_decides_every_move_as_the_exact_one() {
        let exact = |lat_e6: i32, dlat: f64, dlng: f64, dt: i64| {
            let m_lng = 0.111_32 * (lat_e6 as f64 * 1e-6).to_radians().cos();
            (dlat * 0.111_32).hypot(dlng * m_lng) / (dt as f64 / 1000.0) <= WALK_MAX_M_S
        };
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut rnd = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64 / (1u64 << 53) as f64
        };
        for x in [
            -std::f64::consts::FRAC_PI_2,
            -1.2,
            -0.6,
            0.0,
            0.3,
            0.54,
            1.0,
            std::f64::consts::FRAC_PI_2,
        ] {
            assert!((cos_near(x) - f64::cos(x)).abs() < 1e-6, "cos_near({x})");
        }
        let (mut walks, mut near) = (0, 0);
        for i in 0..200_000 {
            let lat_e6 = ((rnd() * 2.0 - 1.0) * 89.9e6) as i32;
            let dt = 5_000 + (rnd() * 175_000.0) as i64;
            let theta = rnd() * std::f64::consts::TAU;
            // Every fourth move within a hair of the limit, the rest anywhere up to 4× it.
            let speed = if i % 4 == 0 {
                near += 1;
                WALK_MAX_M_S * (1.0 + (rnd() - 0.5) * 4e-5)
            } else {
                rnd() * 4.0 * WALK_MAX_M_S
            };
            let m = speed * dt as f64 / 1000.0;
            let m_lng = 0.111_32 * (lat_e6 as f64 * 1e-6).to_radians().cos();
            let (dlat, dlng) = (
                (m * theta.sin() / 0.111_32).round(),
                (m * theta.cos() / m_lng).round(),
            );
            let quick = is_walk(lat_e6, dlat, dlng, dt);
            assert_eq!(
                quick,
                exact(lat_e6, dlat, dlng, dt),
                "lat {lat_e6} move {dlat},{dlng} in {dt} ms"
            );
            walks += quick as u32;
        }
        assert!(
            walks > 50_000 && near == 50_000,
            "the cases cover both answers: {walks} walks"
        );
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
                pos: None,
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
    fn numbered_taps_in_one_millisecond_are_two_people_and_a_resend_of_one_is_not() {
        let mut e = engine(60, 60);
        let tap = |seq| Record {
            ts: EventTime(T0 + 1_000),
            source: SourceId(1),
            cell: CellId(5),
            point: None,
            body: Body::GateTap { exit: true, seq },
        };
        assert!(e.ingest(&tap(Some(1)), 0));
        assert!(e.ingest(&tap(Some(2)), 0), "another person, same millisecond");
        assert!(!e.ingest(&tap(Some(2)), 0), "the same tap sent again");
        assert!(e.ingest(&tap(None), 0));
        assert!(!e.ingest(&tap(None), 0), "unnumbered, identical: one record");
        let ws = e.flush();
        assert_eq!(row(&ws[0], 5).unwrap().gate_exits, 3);
    }

    #[test]
    fn gate_taps_and_registers_with_a_reset() {
        let mut e = engine(60, 60);
        let tap = |ts, exit| Record {
            ts: EventTime(T0 + ts),
            source: SourceId(1),
            cell: CellId(5),
            point: None,
            body: Body::GateTap { exit, seq: None },
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
        assert_eq!(e.stats().register_resets, 2, "both directions re-based");
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
    fn every_ping_resent_is_a_duplicate_though_a_pane_keeps_keys_only_for_pings_it_does_not_hold() {
        let mut e = engine(10, 10);
        let at = |ts: i64, lat: i32, acc: Option<u16>| Record {
            ts: EventTime(T0 + ts),
            source: SourceId(1),
            cell: CellId(9),
            point: None,
            body: Body::Ping {
                device: DeviceId(42),
                pos: Some(Position {
                    lat_e6: 31_240_000 + lat,
                    lng_e6: 121_490_000,
                    accuracy_dm: acc,
                }),
            },
        };
        // Out of order, and two whose accuracies the sighting's packing cannot tell apart.
        let pings = [
            at(2_000, 1, Some(50)),
            at(3_000, 2, Some(50)),
            at(1_000, 3, None),
            at(4_000, 4, Some(u16::MAX)),
            at(4_000, 4, Some(u16::MAX - 1)),
            at(5_000, 5, Some(50)),
        ];
        for p in &pings {
            assert!(e.ingest(p, 0), "{p:?} is new");
        }
        // The latest ping is held whole by the device table: five keys, not six.
        let pane = &e.panes[&((T0 + 1_000).div_euclid(10_000))];
        assert_eq!((pane.devices.len(), pane.keys.len()), (1, 5));
        for p in &pings {
            assert!(!e.ingest(p, 0), "{p:?} re-sent in an open pane");
        }
        assert_eq!(e.stats().duplicates, 6);
        // Closed, the pane leaves every key behind.
        let mut later = at(30_000, 0, None);
        later.body = Body::Ping {
            device: DeviceId(43),
            pos: None,
        };
        assert!(e.ingest(&later, 0));
        assert_eq!(e.advance(0).len(), 1);
        for p in &pings {
            assert!(!e.ingest(p, 0), "{p:?} re-sent after its window closed");
        }
        assert_eq!((e.stats().duplicates, e.stats().late), (12, 0));
    }

    #[test]
    fn a_sealed_pane_still_finds_every_device_takes_late_pings_and_counts_each_once() {
        // Device pseudonyms are keyed hashes: spread over the top bits as they are.
        let dev = |i: u64| i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let mut e = engine(20, 10);
        for i in 0..3_000 {
            assert!(e.ingest(&ping(T0 + 1_000 + (i as i64 % 5_000), dev(i), 7, 0), 0));
        }
        // A newer pane starts: the first is sealed.
        assert!(e.ingest(&ping(T0 + 12_000, dev(5_000), 8, 0), 0));
        let first = e.panes.get_mut(&T0.div_euclid(10_000)).expect("the first pane");
        assert!(first.devices.open.is_empty() && first.devices.sealed.len() == 3_000);
        assert!((0..3_000).all(|i| first.devices.get(&DeviceId(dev(i))).is_some()));
        assert!(first.devices.get(&DeviceId(dev(4_000))).is_none());
        // Re-sent, every one is a duplicate.
        for i in 0..3_000 {
            assert!(!e.ingest(&ping(T0 + 1_000 + (i as i64 % 5_000), dev(i), 7, 0), 0));
        }
        assert_eq!(e.stats().duplicates, 3_000);
        // Late for the sealed pane: a newer ping of a device there replaces its sighting (the
        // older one still known when re-sent), and a device new to the pane joins it.
        assert!(e.ingest(&ping(T0 + 9_000, dev(1), 9, 0), 0));
        assert!(!e.ingest(&ping(T0 + 1_001, dev(1), 7, 0), 0));
        assert!(e.ingest(&ping(T0 + 9_500, dev(4_000), 9, 0), 0));
        let first = e.panes.get_mut(&T0.div_euclid(10_000)).expect("the first pane");
        assert_eq!(
            first.devices.get(&DeviceId(dev(1))).map(|s| s.cell),
            Some(CellId(9))
        );
        assert_eq!(first.devices.len(), 3_001);
        // The stragglers wait in the table beside the sealed vector (one of 3,000 is too few to
        // seal again).
        assert_eq!((first.devices.open.len(), first.devices.sealed.len()), (1, 3_000));
        // Through a checkpoint, and closed: each device counted once, at its latest sighting.
        let mut e: Engine = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert!(e.ingest(&ping(T0 + 45_000, dev(6_000), 8, 0), 0));
        let w = e.advance(0);
        let held = w
            .iter()
            .find(|w| w.start.millis() == T0)
            .expect("the window of both panes");
        assert_eq!(row(held, 7).map(|r| r.lbs_devices), Some(2_999));
        assert_eq!(row(held, 9).map(|r| r.lbs_devices), Some(2));
        assert_eq!(row(held, 8).map(|r| r.lbs_devices), Some(1));
    }

    #[test]
    fn stragglers_join_the_sealed_vector_and_one_before_its_base_reseals_it_from_there() {
        let seen = |ts: i64, cell: u64| Seen::new(ts, CellId(cell), SourceId(0), None);
        let mut d = PaneDevices::default();
        for i in 0..64 {
            d.keep_latest(DeviceId(i * 0x9E37_79B9), seen(T0 + 100 + i as i64, 7), || 0);
        }
        d.seal();
        assert_eq!((d.open.len(), d.sealed.len(), d.base), (0, 64, T0 + 100));
        // Two late newcomers wait beside the vector, then join it where they are.
        d.keep_latest(DeviceId(1), seen(T0 + 5_000, 8), || 0);
        d.keep_latest(DeviceId(2), seen(T0 + 6_000, 7), || 0);
        d.seal();
        assert_eq!((d.open.len(), d.sealed.len(), d.base), (0, 66, T0 + 100));
        assert_eq!(
            d.get(&DeviceId(1)).map(|s| (s.ts, s.cell)),
            Some((T0 + 5_000, CellId(8)))
        );
        assert_eq!(
            d.get(&DeviceId(2)).map(|s| (s.ts, s.cell)),
            Some((T0 + 6_000, CellId(7)))
        );
        assert_eq!(d.at.len(), 2, "a pair is held once");
        // A newcomer from before the earliest sealed sighting: all sealed again from it.
        d.keep_latest(DeviceId(3), seen(T0, 9), || 0);
        d.keep_latest(DeviceId(4), seen(T0 + 1, 9), || 0);
        d.seal();
        assert_eq!(d.open.len(), 2, "two of 66 wait");
        d.keep_latest(DeviceId(5), seen(T0 + 2, 9), || 0);
        d.seal();
        assert_eq!((d.open.len(), d.sealed.len(), d.base), (0, 69, T0));
        for i in 0..64 {
            let got = d.get(&DeviceId(i * 0x9E37_79B9)).map(|s| (s.ts, s.cell));
            assert_eq!(got, Some((T0 + 100 + i as i64, CellId(7))));
        }
        assert_eq!(d.get(&DeviceId(3)).map(|s| s.ts), Some(T0));
    }

    #[test]
    fn a_pane_sealed_and_fed_stragglers_in_any_order_holds_what_a_plain_table_would() {
        // A plain table with the same rule (a device keeps its latest sighting) is the model.
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for round in 0..20 {
            let mut d = PaneDevices::default();
            let mut model: FxHashMap<DeviceId, Seen> = FxHashMap::default();
            let devices = 50 + round * 40;
            for step in 0..4_000 {
                let dev = DeviceId((next() % devices).wrapping_mul(0x9E37_79B9_7F4A_7C15));
                let ts = T0 + (next() % 10_000) as i64;
                let seen = Seen::new(ts, CellId(next() % 30), SourceId((next() % 3) as u16), None);
                let kept = d.keep_latest(dev, seen, || 1).is_none();
                let fresh = !model.contains_key(&dev);
                let m = model.entry(dev).or_insert(seen);
                if seen.ts >= m.ts {
                    *m = seen;
                }
                assert_eq!(kept, fresh, "only a device new to the pane displaces nothing");
                // Sealed now and then, as newer panes start and windows close.
                if next() % 500 == 0 || step == 1_000 {
                    d.seal();
                }
            }
            assert_eq!(d.len(), model.len());
            for (dev, m) in &model {
                let got = d.get(dev).expect("every device is found");
                assert_eq!((got.ts, got.cell, got.source), (m.ts, m.cell, m.source));
            }
            let mut all: Vec<(u64, i64)> = d.iter().map(|(dev, s)| (dev.0, s.ts)).collect();
            all.sort_unstable();
            let mut want: Vec<(u64, i64)> = model.iter().map(|(dev, s)| (dev.0, s.ts)).collect();
            want.sort_unstable();
            assert_eq!(all, want, "each device once, at its latest sighting");
        }
    }

    #[test]
    fn a_pane_spanning_more_than_65_seconds_is_held_in_its_table_not_packed() {
        let seen = |ts: i64| Seen::new(ts, CellId(7), SourceId(0), None);
        let mut d = PaneDevices::default();
        d.keep_latest(DeviceId(1), seen(T0), || 0);
        d.keep_latest(DeviceId(2), seen(T0 + 70_000), || 0);
        d.seal();
        assert_eq!((d.open.len(), d.sealed.len()), (2, 0));
        let mut d = PaneDevices::default();
        d.keep_latest(DeviceId(1), seen(T0), || 0);
        d.seal();
        assert_eq!(d.sealed.len(), 1);
        // A later ping of the sealed device beyond what the packing holds: back in the table.
        assert_eq!(
            d.keep_latest(DeviceId(1), seen(T0 + 70_000), || 0),
            Some(key_of(&ping(T0, 1, 7, 0)))
        );
        assert_eq!((d.open.len(), d.sealed.len()), (1, 0));
        assert_eq!(d.get(&DeviceId(1)).map(|s| s.ts), Some(T0 + 70_000));
    }

    #[test]
    fn a_record_resent_after_its_window_closed_is_a_duplicate_within_the_horizon_and_late_after() {
        let mut e = engine(10, 10);
        let early = counter(T0 + 5_000, 7, 5, 1);
        assert!(e.ingest(&early, 0));
        // The watermark passes the window's end: it closes with the count.
        assert!(e.ingest(&counter(T0 + 20_000, 7, 1, 0), 0));
        let closed = e.advance(0);
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].rows[0].counter_in, 5);
        assert!(!e.ingest(&early, 0), "re-sent after close: already counted");
        assert_eq!((e.stats().duplicates, e.stats().late), (1, 0));
        // A late record sent twice is one late record.
        let late = counter(T0 + 6_000, 7, 2, 0);
        assert!(e.ingest(&late, 0));
        assert!(!e.ingest(&late, 0));
        assert_eq!((e.stats().duplicates, e.stats().late), (2, 1));
        // Through a checkpoint the keys survive.
        let mut e: Engine = serde_json::from_str(&serde_json::to_string(&e).unwrap()).unwrap();
        assert!(!e.ingest(&early, 0));
        // Past the horizon (2 min of event time behind the newest) it is late again.
        assert!(e.ingest(&counter(T0 + 200_000, 7, 1, 0), 0));
        e.advance(0);
        assert!(e.ingest(&early, 0));
        assert_eq!(e.stats().late, 2);
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
    fn a_cells_people_do_not_depend_on_the_order_its_devices_are_held_in() {
        // Scale factors a float sum rounds differently in different orders (calibration gives
        // such numbers). The same pings into two engines with other histories (an earlier crowd
        // of another size, the reverse order, a checkpoint's round trip) make the same windows;
        // and the sum is exact to a billionth, which a float sum is not (the part that fails
        // with one).
        let scales = vec![1.0, 1.0, 1.1, 1.3, 1.7, 0.1];
        let new = |earlier: u64| {
            let mut e = Engine::new(&cfg(60, 10), &RegisterConfig::default(), scales.clone());
            let t = T0 - 300_000;
            for d in 0..earlier {
                e.ingest(&ping(t, 1 << 40 | d, 9, 2), 0);
            }
            e.ingest(&ping(T0 - 100_000, 1 << 41, 9, 2), 0);
            let closed = e.advance(0);
            assert!(!closed.is_empty());
            e
        };
        let pings: Vec<Record> = (0..3_000u64)
            .map(|i| {
                let dev = i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 7;
                ping(T0 + (i % 60) as i64 * 1_000, dev, 7 + i % 2, 2 + (i % 4) as u16)
            })
            .collect();
        let mut a = new(10);
        for p in &pings {
            a.ingest(p, 0);
        }
        let mut b = new(40_000);
        for p in pings.iter().rev() {
            b.ingest(p, 0);
        }
        let mut b: Engine = serde_json::from_str(&serde_json::to_string(&b).unwrap()).unwrap();
        let at = |w: Vec<HexWindow>| -> Vec<HexWindow> {
            w.into_iter().filter(|w| w.start.0 >= T0 - 60_000).collect()
        };
        let (wa, wb) = (at(a.flush()), at(b.flush()));
        assert!(wa.len() >= 6);
        assert!(wa.iter().flat_map(|w| &w.rows).any(|r| r.lbs_devices > 700));
        assert_eq!(wa, wb);
        // The sum is exact to a billionth, whatever the order: ten devices of 0.1 people each are
        // one person (a float sum gives 0.9999999999999999).
        let mut e = Engine::new(&cfg(60, 10), &RegisterConfig::default(), scales.clone());
        for d in 0..10 {
            e.ingest(&ping(T0, 100 + d, 5, 5), 0);
        }
        let w = e.flush();
        assert_eq!(w[0].rows[0].lbs_devices, 10);
        assert_eq!(w[0].rows[0].lbs_people, 1.0);
    }

    mod positions {
        use super::*;
        use crate::scenario::segments::Segment;
        use geo::polygon;

        /// The centre of a res-9 cell (170 m across), so both streets below lie in it.
        fn centre() -> (f64, f64) {
            let c = h3o::LatLng::new(31.24, 121.48)
                .unwrap()
                .to_cell(h3o::Resolution::Nine);
            let ll = h3o::LatLng::from(c);
            (ll.lat(), ll.lng())
        }
        const M_LAT: f64 = 110_850.0;
        const M_LNG: f64 = 95_300.0;

        /// An east–west street `width` m wide and 100 m long whose centre line is `north` m north.
        fn street(id: &str, north: f64, width: f64) -> Segment {
            let (lat, lng) = centre();
            let (y0, y1) = (
                lat + (north - width / 2.0) / M_LAT,
                lat + (north + width / 2.0) / M_LAT,
            );
            let (x0, x1) = (lng - 50.0 / M_LNG, lng + 50.0 / M_LNG);
            let mut props = serde_json::Map::new();
            props.insert("effective_width_m".into(), width.into());
            Segment::new(
                id.into(),
                &props,
                polygon![(x: x0, y: y0), (x: x1, y: y0), (x: x1, y: y1), (x: x0, y: y1)],
            )
            .unwrap()
        }

        /// An engine over `segments`, cells at resolution 9 (a 170 m hexagon holds both streets).
        fn engine_over(segments: Vec<Segment>, size: u64, slide: u64) -> (Engine, Arc<SegmentMap>) {
            let map = Arc::new(SegmentMap::build(segments, h3o::Resolution::Nine).unwrap());
            let mut e = engine(size, slide);
            e.set_segments(map.clone());
            e.set_profiles(vec![
                DeviceProfile {
                    accuracy_m: 10.0,
                    ping_interval_ms: 180_000,
                };
                4
            ]);
            (e, map)
        }

        fn at(ts: i64, dev: u64, north: f64, east: f64, acc: f64) -> Record {
            let (lat0, lng0) = centre();
            let (lat, lng) = (lat0 + north / M_LAT, lng0 + east / M_LNG);
            let cell = h3o::LatLng::new(lat, lng).unwrap().to_cell(h3o::Resolution::Nine);
            Record {
                ts: EventTime(ts),
                source: SourceId(0),
                cell: CellId::from(cell),
                point: None,
                body: Body::Ping {
                    device: DeviceId(dev),
                    pos: Some(Position::new(lat, lng, Some(acc))),
                },
            }
        }

        /// Something done to an engine after each closed window (the count so far); `Some` carries on
        /// with another engine.
        type Poke = dyn FnMut(&mut Engine, usize) -> Option<Engine>;

        #[test]
        fn place_handles_give_what_a_fresh_look_up_gives_through_cache_restarts_and_clones() {
            let streets = || vec![street("north", 20.0, 8.0), street("south", -20.0, 8.0)];
            // Devices that stand still (their handles serve window after window) and devices that
            // wander between and beside the streets, pinging every 7-23 s.
            let feed: Vec<Record> = (0..3_000)
                .map(|k| {
                    let d = k % 60;
                    let t = T0 + (k / 60) * 7_000 + d * 311 % 16_000;
                    let (n, e) = if d < 20 {
                        (20.0, d as f64 * 4.0 - 40.0)
                    } else {
                        (((k * 37) % 90) as f64 - 45.0, ((k * 53) % 80) as f64 - 40.0)
                    };
                    at(t, d as u64, n, e, 5.0 + (d % 3) as f64 * 10.0)
                })
                .collect();
            let run = |mut poke: Box<Poke>| {
                let (mut e, _) = engine_over(streets(), 60, 10);
                let mut out = Vec::new();
                for r in &feed {
                    e.ingest(r, r.ts.millis());
                    for w in e.advance(r.ts.millis()) {
                        out.push(w.segments.people.clone());
                        if let Some(clone) = poke(&mut e, out.len()) {
                            e = clone;
                        }
                    }
                }
                out.extend(e.flush().into_iter().map(|w| w.segments.people));
                out
            };
            let plain = run(Box::new(|_, _| None));
            assert!(plain.len() > 30, "{} windows", plain.len());
            // The cache starting over (as when it fills) every third window.
            let restarts = run(Box::new(|e, n| {
                if n % 3 == 0 {
                    e.places.clear();
                }
                None
            }));
            assert_eq!(plain, restarts);
            // Carrying on from a clone (a new, empty cache) every fifth window.
            let clones = run(Box::new(|e, n| (n % 5 == 0).then(|| e.clone())));
            assert_eq!(plain, clones);
            // And the handles were used: sightings hold them between windows.
            let (mut e, _) = engine_over(streets(), 60, 10);
            for r in &feed[..600] {
                e.ingest(r, r.ts.millis());
                e.advance(r.ts.millis());
            }
            let held = e
                .panes
                .values()
                .flat_map(|p| p.devices.iter().map(|(_, s)| s))
                .filter(|s| s.place != NO_PLACE)
                .count();
            assert!(held > 0, "no sighting kept its place");
        }

        /// Two streets 40 m apart (north and south), and with `ground` the plaza between them drawn
        /// over their edges (the streets are taken out).
        fn streets_and_plaza(ground: bool) -> Arc<SegmentMap> {
            let mut map = SegmentMap::build(
                vec![street("north", 20.0, 8.0), street("south", -20.0, 8.0)],
                h3o::Resolution::Nine,
            )
            .unwrap();
            if ground {
                let (lat, lng) = centre();
                let (y0, y1) = (lat - 18.0 / M_LAT, lat + 18.0 / M_LAT);
                let (x0, x1) = (lng - 50.0 / M_LNG, lng + 50.0 / M_LNG);
                let text = format!(
                    r#"{{"type":"FeatureCollection","features":[{{"type":"Feature","properties":{{"id":"plaza"}},"geometry":{{"type":"Polygon","coordinates":[[[{x0},{y0}],[{x1},{y0}],[{x1},{y1}],[{x0},{y1}],[{x0},{y0}]]]}}}}]}}"#
                );
                map.add_ground(&text, "ground.geojson").unwrap();
            }
            Arc::new(map)
        }

        #[test]
        fn pings_on_ground_between_two_streets_are_counted_on_the_ground_not_handed_to_the_nearer_street() {
            let run = |ground: bool| {
                let mut e = engine(60, 60);
                e.set_segments(streets_and_plaza(ground));
                // 30 people on the north street, 20 on the plaza 6 m from its kerb (σ 3.3 m: the
                // street is within reach, and without ground it is their only candidate).
                for d in 0..30 {
                    e.ingest(&at(T0 + 1_000, d, 20.0, d as f64 * 3.0 - 45.0, 1.0), 0);
                }
                for d in 30..50 {
                    e.ingest(&at(T0 + 1_000, d, 10.0, d as f64 * 3.0 - 105.0, 5.0), 0);
                }
                e.flush().remove(0).segments
            };
            let without = run(false);
            assert!((without.people[0] - 50.0).abs() < 0.01, "{:?}", without.people);
            assert!(without.ground.is_empty());
            let with = run(true);
            // Each plaza ping keeps ~5 % on the street: its Gaussian's tail times the street's prior.
            assert!((30.0..32.0).contains(&with.people[0]), "{:?}", with.people);
            assert!(with.people[1] < 0.01, "{:?}", with.people);
            assert_eq!(with.ground.len(), 1);
            assert!((18.0..20.0).contains(&with.ground[0]), "{:?}", with.ground);
            assert_eq!(with.off_network_devices, 0);
            let all = with.people.iter().sum::<f64>() + with.ground.iter().sum::<f64>();
            assert!((all - 50.0).abs() < 1e-6, "every person is somewhere: {all}");
        }

        #[test]
        fn a_silent_device_last_seen_on_ground_is_carried_on_the_street_within_its_reach() {
            let (mut e, _) = engine_over(vec![], 60, 60);
            e.set_segments(streets_and_plaza(true));
            // Window 1: device 1 on the plaza 6 m from the north kerb, device 2 in its middle (16 m
            // from either street: beyond its reach). Both then fall silent (3-minute pingers).
            e.ingest(&at(T0 + 50_000, 1, 10.0, 0.0, 5.0), 0);
            e.ingest(&at(T0 + 50_000, 2, 0.0, 0.0, 5.0), 0);
            e.ingest(&at(T0 + 70_000, 3, 20.0, 30.0, 1.0), 0);
            let mut out = e.advance(T0 + 130_000);
            out.extend(e.flush());
            let w1 = &out[0].segments;
            assert!((w1.ground[0] - 2.0).abs() < 0.1 && w1.people[0] < 0.1, "{w1:?}");
            let w2 = &out[1].segments;
            // Ground is where people pass: the carried device nearer the street is placed on it,
            // the one no street reaches stays on the ground.
            assert!((w2.people[0] - 2.0).abs() < 1e-6, "{w2:?}");
            assert!((w2.ground[0] - 1.0).abs() < 1e-6, "{w2:?}");
            assert!((w2.carried[0] - 1.0).abs() < 1e-6, "{w2:?}");
        }

        #[test]
        fn two_segments_sharing_one_cell_each_get_their_own_count() {
            let (mut e, _) = engine_over(
                vec![street("north", 20.0, 8.0), street("south", -20.0, 8.0)],
                60,
                60,
            );
            for d in 0..30 {
                e.ingest(&at(T0 + 1_000, d, 20.0, d as f64 * 3.0 - 45.0, 3.0), 0);
            }
            for d in 30..40 {
                e.ingest(&at(T0 + 1_000, d, -20.0, d as f64 * 3.0 - 100.0, 3.0), 0);
            }
            let w = &e.flush()[0];
            assert_eq!(w.rows.len(), 1, "one cell holds both streets");
            let p = &w.segments.people;
            assert!((p[0] - 30.0).abs() < 0.01 && (p[1] - 10.0).abs() < 0.01, "{p:?}");
        }

        #[test]
        fn a_zone_headcount_floors_its_segments_prior_so_ambiguous_pings_stay_with_the_crowd() {
            let run = |zone: bool| {
                let (mut e, _) = engine_over(
                    vec![street("north", 20.0, 8.0), street("south", -20.0, 8.0)],
                    60,
                    60,
                );
                e.set_zone_segments(vec![Some(0)]);
                // First window: 10 phones on each street, and the north street's zone counts 100.
                for d in 0..10 {
                    e.ingest(&at(T0 + 1_000, d, 20.0, d as f64 * 8.0 - 40.0, 3.0), 0);
                    e.ingest(&at(T0 + 1_000, 100 + d, -20.0, d as f64 * 8.0 - 40.0, 3.0), 0);
                }
                if zone {
                    let mut r = at(T0 + 2_000, 0, 20.0, 0.0, 3.0);
                    r.point = Some(PointIdx(0));
                    r.body = Body::Occupancy {
                        sensor: SensorIdx(0),
                        people: 100,
                    };
                    e.ingest(&r, 0);
                }
                // Next window: one phone exactly between the streets, its error covering both.
                e.ingest(&at(T0 + 61_000, 500, 0.0, 0.0, 30.0), 0);
                let w = e.flush();
                let last = w.last().unwrap();
                // The first window's phones are carried into this one; the new phone is the rest.
                let s = &last.segments;
                let fresh = |i: usize| s.people[i] - s.carried[i];
                fresh(0) / (fresh(0) + fresh(1)).max(1e-9)
            };
            let plain = run(false);
            let floored = run(true);
            assert!(
                (plain - 0.5).abs() < 0.1,
                "equal phones, about an even split: {plain}"
            );
            assert!(
                floored > 0.7 && floored - plain > 0.15,
                "the counted crowd keeps more of the ambiguous ping: {floored} against {plain}"
            );
        }

        #[test]
        fn a_precise_ping_beside_a_dense_segment_stays_on_its_side_and_a_vague_one_follows_the_crowd() {
            // Share of the dense segment in a ping 1.5 m outside it, with accuracy `acc`, under
            // `lbs.prior_scale_m` = `scale`.
            let run_at = |acc: f64, scale: f64| {
                let (mut e, _) = engine_over(
                    vec![street("steps", 4.0, 8.0), street("square", -10.0, 20.0)],
                    60,
                    60,
                );
                e.apply_lbs(&LbsConfig {
                    prior_scale_m: scale,
                    ..LbsConfig::default()
                });
                // First window: the steps hold 0.2 p/m², the square 0.02 (its prior floored at 0.05).
                for d in 0..160 {
                    e.ingest(&at(T0 + 1_000, d, 4.0, d as f64 * 0.6 - 48.0, 1.0), 0);
                }
                for d in 0..40 {
                    e.ingest(&at(T0 + 1_000, 1_000 + d, -10.0, d as f64 * 2.4 - 48.0, 1.0), 0);
                }
                e.ingest(&at(T0 + 61_000, 5_000, -1.5, 0.0, acc), 0);
                let w = e.flush();
                let s = &w.last().unwrap().segments;
                let fresh = |i: usize| s.people[i] - s.carried[i];
                fresh(0) / (fresh(0) + fresh(1))
            };
            let run = |acc: f64| run_at(acc, LbsConfig::default().prior_scale_m);
            // σ 1.3 m: the untempered prior (4 : 1) gives the steps 33 % of a ping that fell
            // on the square; the crowd's density does not jump at a drawn edge, so the side decides.
            let precise = run(2.0);
            assert!(
                precise < 0.2,
                "a 2 m fix on the square stays on the square: {precise}"
            );
            // σ 20 m: the steps hold 30 % of its error's mass beside the square; the crowd decides.
            let vague = run(30.0);
            assert!(vague > 0.55, "a 30 m fix goes with the crowd: {vague}");
            // `lbs.prior_scale_m = 0`: the densities in full at every error, as before stop 47.
            let untempered = run_at(2.0, 0.0);
            assert!(
                (0.3..0.4).contains(&untempered),
                "with the scale at 0 the 2 m fix follows the 4 : 1 densities: {untempered}"
            );
        }

        #[test]
        fn pings_scattered_into_a_building_beside_a_10_m_street_are_matched_to_the_street() {
            let (mut e, _) = engine_over(vec![street("street", 0.0, 10.0)], 60, 60);
            // 12 m north of the centre line: 7 m into the building, well within 3.41σ of a 15 m fix.
            for d in 0..20 {
                e.ingest(&at(T0 + 1_000, d, 12.0, d as f64 * 4.0 - 40.0, 15.0), 0);
            }
            let w = &e.flush()[0];
            assert!((w.segments.people[0] - 20.0).abs() < 1e-6, "{:?}", w.segments);
            assert_eq!(w.segments.off_network_devices, 0);
        }

        #[test]
        fn off_network_pings_are_counted_not_lost() {
            let (mut e, _) = engine_over(vec![street("street", 0.0, 10.0)], 60, 60);
            e.ingest(&at(T0 + 1_000, 1, 0.0, 0.0, 5.0), 0);
            // 150 m away with a 5 m fix: no segment within 3.41σ.
            for d in 2..9 {
                e.ingest(&at(T0 + 2_000, d, 150.0, 0.0, 5.0), 0);
            }
            let w = &e.flush()[0];
            assert!((w.segments.people[0] - 1.0).abs() < 1e-6);
            assert_eq!(w.segments.off_network_devices, 7);
            assert_eq!(w.segments.off_network_people, 7.0);
            let off: u64 = w.rows.iter().map(|r| r.lbs_off_network).sum();
            assert_eq!(off, 7, "and per cell, for hex_windows");
            let devices: u64 = w.rows.iter().map(|r| r.lbs_devices).sum();
            assert_eq!(devices, 8, "the heatmap still counts them");
        }

        #[test]
        fn a_presence_record_is_28_bytes_with_its_key_a_sighting_32_and_an_older_checkpoints_table_is_skipped(
        ) {
            assert_eq!(std::mem::size_of::<(DevKey, PackedCarry)>(), 28);
            assert_eq!(std::mem::size_of::<Seen>(), 32);
            let e = engine(60, 10);
            let mut v = serde_json::to_value(&e).unwrap();
            // The wider table earlier versions wrote: skipped, not a refusal to start.
            v["carry"] = serde_json::json!({"7": {"seen": {"ts": 1, "cell": 0, "source": 0}, "interval_ms": 0, "last_gap_ms": 0}});
            let back: Engine = serde_json::from_value(v).unwrap();
            assert!(back.carry.is_empty());
        }

        #[test]
        fn packed_sightings_read_back_as_they_were_written_and_older_checkpoints_still_load() {
            for pos in [
                None,
                Some(Position::new(31.24, 121.49, None)),
                Some(Position::new(-31.24, -121.49, Some(12.3))),
            ] {
                let s = Seen::new(5, CellId(7), SourceId(2), pos);
                let back: Seen = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
                assert_eq!(
                    (back.ts, back.cell, back.source, back.pos()),
                    (5, CellId(7), SourceId(2), pos)
                );
            }
            // A presence record as checkpoints held it before packing.
            let old = r#"{"ts":5,"pos":{"lat_e6":1,"lng_e6":-2,"accuracy_dm":null},"source":1,"interval_ms":180000,"last_gap_ms":170049}"#;
            let c: Carry = serde_json::from_str(old).unwrap();
            assert_eq!(c.interval_ms(), 180_000);
            assert_eq!((c.interval_ds, c.last_gap_ds), (1_800, 1_700));
            let want = Position {
                lat_e6: 1,
                lng_e6: -2,
                accuracy_dm: None,
            };
            assert_eq!(c.spot.get(), Some(want));
            let again: Carry = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
            assert_eq!(
                (again.ts, again.spot.get(), again.interval_ds),
                (5, Some(want), 1_800)
            );
        }

        #[test]
        fn a_device_that_left_is_forgotten_once_overdue_twice_over_not_after_max_presence() {
            let (mut e, _) = engine_over(vec![street("north", 20.0, 8.0)], 60, 10);
            // A 20 s pinger: overdue after 40 s, forgotten after 180 s (the projection's reach),
            // not after `max_presence` (10 min).
            e.set_profiles(vec![
                DeviceProfile {
                    accuracy_m: 10.0,
                    ping_interval_ms: 20_000,
                };
                4
            ]);
            e.ingest(&at(T0 + 1_000, 1, 20.0, 0.0, 3.0), T0 + 1_000);
            let mut held = Vec::new();
            for k in 0..90 {
                let t = T0 + k * 10_000 + 500;
                e.ingest(&at(t, 2, 20.0, 5.0, 3.0), t);
                // After each close: is the leaver still held, as of that window's end?
                if let Some(w) = e.advance(t).last() {
                    held.push((w.end.0 - (T0 + 1_000), e.carry.contains_key(&DeviceId(1))));
                }
            }
            let kept = held
                .iter()
                .filter(|(_, h)| *h)
                .map(|(age, _)| *age)
                .max()
                .unwrap();
            // Held from its pane's close, gone in the first window ending past 180 s.
            let gone = held
                .iter()
                .filter(|(age, h)| !*h && *age > kept)
                .map(|(age, _)| *age)
                .min()
                .unwrap_or(-1);
            assert!(
                (120_000..=180_000).contains(&kept) && gone > 180_000 && gone <= 200_000,
                "held until {kept} ms, gone at {gone} ms: {held:?}"
            );
            assert!(held.iter().all(|(age, h)| !h || *age <= 180_000), "{held:?}");
            assert!(e.carry.contains_key(&DeviceId(2)), "the witness stays");
        }

        #[test]
        fn presence_records_keep_their_times_across_a_rebase_and_a_checkpoint() {
            let day = 86_400_000i64;
            let pos = Position::new(31.24, 121.49, Some(5.0));
            let seen = |ts: i64| Seen::new(ts, CellId::default(), SourceId(1), Some(pos));
            let mut c = Carried::default();
            c.fold(DeviceId(u64::MAX - 3), &seen(T0), pos);
            c.fold(DeviceId(u64::MAX - 3), &seen(T0 + 30_000), pos);
            c.fold(DeviceId(2), &seen(T0 + 60_000), pos);
            // 30 days on: beyond an i32 of milliseconds from the first, so the table is rebased.
            c.fold(DeviceId(3), &seen(T0 + 30 * day), pos);
            assert_ne!(c.base, T0, "rebased");
            let first = c.get(&DeviceId(u64::MAX - 3)).unwrap();
            assert_eq!(
                (first.ts, first.interval_ms(), first.source),
                (T0 + 30_000, 30_000, SourceId(1))
            );
            assert_eq!(c.get(&DeviceId(2)).map(|c| c.ts), Some(T0 + 60_000));
            assert_eq!(c.get(&DeviceId(3)).map(|c| c.ts), Some(T0 + 30 * day));
            // An older sighting changes nothing.
            c.fold(DeviceId(3), &seen(T0 + 29 * day), pos);
            assert_eq!(c.get(&DeviceId(3)).map(|c| c.ts), Some(T0 + 30 * day));
            let back: Carried = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
            let mut a: Vec<_> = c.iter().map(|(d, r)| (d.0, r.ts, r.interval_ms())).collect();
            let mut b: Vec<_> = back.iter().map(|(d, r)| (d.0, r.ts, r.interval_ms())).collect();
            a.sort();
            b.sort();
            assert_eq!(a, b);
            assert_eq!(a.len(), 3);
            // 40 days on, what is over 37 days older than the newest is dropped, not wrapped.
            c.fold(DeviceId(4), &seen(T0 + 70 * day), pos);
            let held: Vec<_> = c.iter().map(|(d, r)| (d.0, r.ts)).collect();
            assert_eq!(held, vec![(4, T0 + 70 * day)]);
        }

        #[test]
        fn a_walk_is_carried_only_as_far_as_a_walker_keeps_its_heading() {
            let profiles = vec![DeviceProfile {
                accuracy_m: 10.0,
                ping_interval_ms: 60_000,
            }];
            let m_per_ue6 = 0.111_32 * 31.24f64.to_radians().cos();
            let east = |m: f64| Position {
                lat_e6: 31_240_000,
                lng_e6: 121_490_000 + (m / m_per_ue6).round() as i32,
                accuracy_dm: Some(30),
            };
            // East at 1.2 m/s: 36 m between sightings 30 s apart, the latest 30 s before the end.
            let before = Carry {
                ts: 0,
                spot: Spot::pack(Some(east(0.0))),
                source: SourceId(0),
                interval_ds: 300,
                last_gap_ds: 300,
            };
            let latest = Seen::new(30_000, CellId::default(), SourceId(0), Some(east(36.0)));
            let carried = |heading_m: f64| {
                let out = ahead(&latest, Some(&before), 60_001, &profiles, heading_m);
                let p = out.pos().unwrap();
                (p.lng_e6 - east(36.0).lng_e6) as f64 * m_per_ue6
            };
            assert!((carried(1e9) - 36.0).abs() < 0.2, "straight on: {}", carried(1e9));
            // 10 · (1 − e^(−3.6)) = 9.73 m.
            assert!((carried(10.0) - 9.73).abs() < 0.2, "{}", carried(10.0));
            assert_eq!(carried(0.0), 0.0, "0 turns the projection off");
        }

        #[test]
        fn a_walker_that_fell_silent_is_not_carried_past_where_its_walk_ended() {
            let run = |ping_interval_ms: i64| {
                let (mut e, _) = engine_over(vec![street("south", -20.0, 8.0)], 60, 10);
                e.set_profiles(vec![
                    DeviceProfile {
                        accuracy_m: 10.0,
                        ping_interval_ms,
                    };
                    4
                ]);
                // East along the street at 1.2 m/s, a ping every 3 s, the last 10 m short of
                // its end (a station entrance, say); then nothing.
                for k in 0..10 {
                    let east = 40.0 - 1.2 * (27 - 3 * k) as f64;
                    e.ingest(&at(T0 + 3_000 * k + 500, 1, -20.0, east, 3.0), 0);
                }
                let ws = e.flush();
                // The window 20–80 s: its last ping 52 s before the end, its sighting before at 18 s.
                let w = ws.iter().find(|w| w.start.0 == T0 + 20_000).unwrap();
                (w.segments.people[0], w.segments.off_network_devices)
            };
            assert_eq!(run(3_000), (1.0, 0), "carried 3 s at most: still on the street");
            // The source's usual interval a minute, but its own 9 s (between the sightings the
            // engine kept): carried 9 s, not 52, so 0.8 m past the street's end, within its reach.
            assert_eq!(run(60_000), (1.0, 0), "carried its own interval at most");
        }

        #[test]
        fn presence_carries_a_3_minute_pinger_across_windows_and_drops_it_when_overdue() {
            let (mut e, _) = engine_over(
                vec![street("north", 20.0, 8.0), street("south", -20.0, 8.0)],
                60,
                60,
            );
            // The pinger: on the north street at 0, 3 and 6 minutes, then gone. A witness on the
            // south street pings every 10 s for 15 minutes, so every window has data.
            for k in 0..3 {
                e.ingest(&at(T0 + k * 180_000 + 1_000, 1, 20.0, 0.0, 3.0), 0);
            }
            for k in 0..90 {
                e.ingest(&at(T0 + k * 10_000 + 500, 2, -20.0, 0.0, 3.0), 0);
            }
            let ws = e.flush();
            let north = |minute: i64| {
                let w = ws.iter().find(|w| w.start.0 == T0 + minute * 60_000).unwrap();
                (w.segments.people[0], w.segments.carried[0])
            };
            assert_eq!(north(0), (1.0, 0.0), "seen");
            assert_eq!(
                north(1),
                (1.0, 1.0),
                "carried through the gap before its second ping"
            );
            assert_eq!(north(4), (1.0, 1.0));
            // Last ping at 6:01; interval 3 min × overdue factor 2 = 6 min: present until 12:01.
            assert_eq!(
                north(11),
                (1.0, 1.0),
                "window ending 12:00, 5:59 after its last ping"
            );
            assert_eq!(north(12), (0.0, 0.0), "window ending 13:00: overdue, dropped");
        }
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
