//! Agents and their walking schedules.

use std::path::Path;

use std::collections::HashMap;

use geo::{BooleanOps, BoundingRect, Centroid, Contains, MultiPolygon, Point};
use h3o::Resolution;
use serde::Deserialize;

use crate::scenario::Registry;
use crate::scenario::SegmentMap;

/// Small, fast, deterministic PRNG (SplitMix64): simulation needs repeatability, not cryptography.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded generator.
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    pub fn f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// Uniform in [a, b).
    pub fn range(&mut self, a: f64, b: f64) -> f64 {
        a + self.f64() * (b - a)
    }
    /// Standard normal (Box–Muller).
    pub fn normal(&mut self) -> f64 {
        let u = self.f64().max(1e-12);
        let v = self.f64();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
    /// Two independent standard normals from one Box–Muller draw.
    pub fn normal_pair(&mut self) -> (f64, f64) {
        let u = self.f64().max(1e-12);
        let v = self.f64();
        let r = (-2.0 * u.ln()).sqrt();
        let (s, c) = (2.0 * std::f64::consts::PI * v).sin_cos();
        (r * c, r * s)
    }
    /// Exponential with the given mean.
    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.f64()).max(1e-12).ln()
    }
}

#[derive(Debug, Clone, Deserialize)]
struct RouteFile {
    id: String,
    origin: Origin,
    weight: f64,
    segments: Vec<String>,
}

/// Where a route starts.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Origin {
    /// A metro exit: arrivals tap out there, leavers tap in.
    Metro {
        /// Station id.
        station: String,
        /// Exit id.
        exit: String,
    },
    /// A street end.
    Street {
        /// Street name.
        street: String,
    },
}

/// A route resolved against the segment map.
#[derive(Debug, Clone)]
pub struct Route {
    /// Route id.
    pub id: String,
    /// Where it starts.
    pub origin: Origin,
    /// Cumulative weight (for sampling).
    cum_weight: f64,
    /// Its own weight (a share of the arrivals).
    pub weight: f64,
    /// Segment indices, origin first.
    pub segments: Vec<usize>,
}

/// A point as (longitude, latitude), degrees.
type LngLat = (f64, f64);

/// The scenario: segments, registries, routes, and points to stand on.
pub struct Scenario {
    /// Segments.
    pub map: SegmentMap,
    /// Sensors and stations.
    pub registry: Registry,
    /// Routes.
    pub routes: Vec<Route>,
    /// Per segment: random points inside it (lng, lat), to walk to.
    spots: Vec<Vec<(f64, f64)>>,
    /// Where people cross from one segment to the next of a route (lng, lat): the middle of the
    /// two polygons' overlap, or of the gap between them. Walking spot → portal → spot keeps a
    /// walker on the walkable ground instead of cutting through buildings.
    portals: HashMap<(usize, usize), (LngLat, LngLat)>,
}

impl Scenario {
    /// Loads a scenario folder (segments.geojson, sensors.json, stations.json, routes.json).
    pub fn load(dir: &Path, seed: u64) -> Result<Scenario, String> {
        let res = Resolution::Eleven;
        let map = SegmentMap::load(&dir.join("segments.geojson"), res).map_err(|e| e.to_string())?;
        let registry = Registry::load_dir(dir, res).map_err(|e| e.to_string())?;
        let path = dir.join("routes.json");
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let files: Vec<RouteFile> =
            serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut routes = Vec::new();
        let mut cum = 0.0;
        for (i, r) in files.into_iter().enumerate() {
            let mut segs = Vec::new();
            for s in &r.segments {
                segs.push(map.index(s).ok_or_else(|| {
                    format!(
                        "{}: route {i} ({:?}) names unknown segment {s:?}",
                        path.display(),
                        r.id
                    )
                })?);
            }
            if segs.is_empty() || !(r.weight.is_finite() && r.weight > 0.0) {
                return Err(format!(
                    "{}: route {i} ({:?}) needs segments and a positive weight",
                    path.display(),
                    r.id
                ));
            }
            if let Origin::Metro { station, exit } = &r.origin {
                if registry
                    .station_gate_cell(station, Some(exit))
                    .and_then(|x| x.2)
                    .is_none()
                {
                    return Err(format!(
                        "{}: route {i} starts at unregistered exit {station}/{exit}",
                        path.display()
                    ));
                }
            }
            cum += r.weight;
            routes.push(Route {
                id: r.id,
                origin: r.origin,
                cum_weight: cum,
                weight: r.weight,
                segments: segs,
            });
        }
        for r in &mut routes {
            r.cum_weight /= cum;
            r.weight /= cum;
        }
        let mut rng = Rng::new(seed ^ 0x5107);
        let spots = map
            .segments()
            .iter()
            .map(|s| {
                let Some(b) = s.polygon.bounding_rect() else {
                    return Vec::new();
                };
                let mut pts = Vec::with_capacity(256);
                let mut tries = 0;
                while pts.len() < 256 && tries < 100_000 {
                    tries += 1;
                    let p = Point::new(rng.range(b.min().x, b.max().x), rng.range(b.min().y, b.max().y));
                    if s.polygon.contains(&p) {
                        pts.push((p.x(), p.y()));
                    }
                }
                pts
            })
            .collect();
        let mut portals = HashMap::new();
        for r in &routes {
            for w in r.segments.windows(2) {
                let (a, b) = (w[0], w[1]);
                if a != b && !portals.contains_key(&(a, b)) {
                    let (pa, pb) = portal(&map.segments()[a].polygon, &map.segments()[b].polygon);
                    portals.insert((a, b), (pa, pb));
                    portals.insert((b, a), (pb, pa));
                }
            }
        }
        Ok(Scenario {
            map,
            registry,
            routes,
            spots,
            portals,
        })
    }

    /// Where a walker leaves `a` and enters `b` (the same point where the two overlap).
    fn portal(&self, a: usize, b: usize) -> Option<(LngLat, LngLat)> {
        self.portals.get(&(a, b)).copied()
    }

    fn inside(&self, seg: usize, p: (f64, f64)) -> bool {
        let m = self.map.matcher();
        m.distance(seg, m.local(p.1, p.0)) < 0.5
    }

    /// Whether the straight walk from `a` to `b` stays within `seg`.
    fn leg_inside(&self, seg: usize, a: (f64, f64), b: (f64, f64)) -> bool {
        (1..12).all(|k| {
            let f = k as f64 / 12.0;
            self.inside(seg, (a.0 + (b.0 - a.0) * f, a.1 + (b.1 - a.1) * f))
        })
    }

    /// A random spot of `seg` reachable from `from` in a straight line (most are; round a bend,
    /// a few tries find one).
    fn reachable_spot(&self, seg: usize, from: (f64, f64), rng: &mut Rng) -> (f64, f64) {
        let mut last = self.spot(seg, rng);
        for _ in 0..32 {
            if self.leg_inside(seg, from, last) {
                return last;
            }
            last = self.spot(seg, rng);
        }
        last
    }

    /// A spot of `seg` to walk through when the straight walk from `a` to `b` would leave it.
    fn via(&self, seg: usize, a: (f64, f64), b: (f64, f64), rng: &mut Rng) -> Option<(f64, f64)> {
        if !self.inside(seg, a) || self.leg_inside(seg, a, b) {
            return None;
        }
        (0..64)
            .map(|_| self.spot(seg, rng))
            .find(|v| self.leg_inside(seg, a, *v) && self.leg_inside(seg, *v, b))
    }

    fn spot(&self, seg: usize, rng: &mut Rng) -> (f64, f64) {
        let s = &self.spots[seg];
        if s.is_empty() {
            return (0.0, 0.0);
        }
        s[(rng.next_u64() % s.len() as u64) as usize]
    }

    fn pick_route(&self, rng: &mut Rng) -> usize {
        let u = rng.f64();
        self.routes
            .iter()
            .position(|r| u < r.cum_weight)
            .unwrap_or(self.routes.len() - 1)
    }
}

/// Simulation settings.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// People simulated.
    pub people: usize,
    /// Scenario length, seconds (the night runs from start to start + duration).
    pub duration_s: f64,
    /// Event time of scenario second 0, epoch ms.
    pub start_ms: i64,
    /// Scenario seconds per event-time second.
    pub speed: f64,
    /// Seed.
    pub seed: u64,
    /// Who carries which phone panel, and how its pings err.
    pub panel: Panel,
    /// What a rehearsal changes in the crowd (default: nothing).
    pub changes: Changes,
}

/// The default exponent of the arrival curve: arrivals at `midnight × u^0.7` (u uniform), most
/// in the hour before midnight.
pub const ARRIVAL_SHAPE: f64 = 0.7;

/// What a rehearsal's what-if changes in the crowd (`throng rehearse --what-if`).
#[derive(Debug, Clone, Default)]
pub struct Changes {
    /// Exponent of the arrival curve (None: `ARRIVAL_SHAPE`): 1 spreads arrivals evenly over the
    /// evening, smaller values push them later into a steeper rush before midnight.
    pub arrival_shape: Option<f64>,
    /// Exits and segments closed from a scenario second on.
    pub closures: Vec<Closure>,
}

/// Something closed from `from_s` (scenario seconds) on.
#[derive(Debug, Clone, PartialEq)]
pub struct Closure {
    /// From when.
    pub from_s: f64,
    /// What.
    pub what: Closed,
}

/// What a closure closes.
#[derive(Debug, Clone, PartialEq)]
pub enum Closed {
    /// A metro exit (station id, exit id): nobody taps out or in there.
    Exit {
        /// Station id.
        station: String,
        /// Exit id.
        exit: String,
    },
    /// A segment (its index): no route through it is walked.
    Segment(usize),
}

impl Changes {
    /// Whether route `r` may be walked at scenario second `t`.
    fn open(&self, scenario: &Scenario, r: usize, t: f64) -> bool {
        let route = &scenario.routes[r];
        self.closures
            .iter()
            .filter(|c| t >= c.from_s)
            .all(|c| match &c.what {
                Closed::Exit { station, exit } => !matches!(&route.origin,
                Origin::Metro { station: s, exit: e } if s == station && e == exit),
                Closed::Segment(i) => !route.segments.contains(i),
            })
    }

    /// An open route in place of `r` at `t`, chosen by weight among those that share what `keep`
    /// says of `r` (its origin's station or street, or its destination), else among every open
    /// route when `fallback`; None when there is none.
    fn reroute(
        &self,
        scenario: &Scenario,
        r: usize,
        t: f64,
        keep: impl Fn(&Route, &Route) -> bool,
        fallback: bool,
        rng: &mut Rng,
    ) -> Option<usize> {
        let open: Vec<usize> = (0..scenario.routes.len())
            .filter(|&i| self.open(scenario, i, t))
            .collect();
        let near: Vec<usize> = open
            .iter()
            .copied()
            .filter(|&i| keep(&scenario.routes[r], &scenario.routes[i]))
            .collect();
        let pool = if near.is_empty() && fallback { open } else { near };
        let total: f64 = pool.iter().map(|&i| scenario.routes[i].weight).sum();
        let mut u = rng.f64() * total;
        for &i in &pool {
            u -= scenario.routes[i].weight;
            if u <= 0.0 {
                return Some(i);
            }
        }
        pool.last().copied()
    }
}

/// Whether two routes start at the same station (any exit) or the same street end.
fn same_origin(a: &Route, b: &Route) -> bool {
    match (&a.origin, &b.origin) {
        (Origin::Metro { station: x, .. }, Origin::Metro { station: y, .. }) => x == y,
        (Origin::Street { street: x }, Origin::Street { street: y }) => x == y,
        _ => false,
    }
}

/// One simulated LBS provider.
#[derive(Debug, Clone, PartialEq)]
pub struct Provider {
    /// Its `source` name.
    pub name: String,
    /// Prefix of its device ids.
    pub device_prefix: String,
    /// Share of all people in this panel (panels are disjoint).
    pub share: f64,
    /// Seconds between a device's pings: uniform in this range.
    pub interval_s: (f64, f64),
    /// Per-axis GPS/signalling error σ, metres (the pings say `accuracy_m` = 1.515 σ, the 68 % radius).
    pub sigma_m: f64,
    /// Share of pings with a gross error instead (multipath, a stale fix), σ `outlier_m`; their
    /// `accuracy_m` does not say so.
    pub outliers: f64,
    /// σ of the gross errors, metres.
    pub outlier_m: f64,
    /// Delivers GCJ-02 coordinates (Chinese apps).
    pub gcj02: bool,
    /// Share of its pings delivered two minutes late.
    pub late_share: f64,
    /// How much the people one of its devices stands for rises over the night, as phones fall
    /// silent (batteries, roaming): 0.3 = people per device 30 % higher at the end than at the start.
    pub drift: f64,
}

/// The phone panels of a simulated night.
#[derive(Debug, Clone, PartialEq)]
pub struct Panel {
    /// Providers, in order (at most 254).
    pub providers: Vec<Provider>,
}

impl Panel {
    /// The Bund night: carrier-a (signalling, 50 % of people, a ping every 20–90 s, σ 15 m, 0.2 %
    /// of pings two minutes late) and carrier-b (app GPS in GCJ-02, 30 %, every 5–30 s, σ 5 m).
    pub fn bund() -> Panel {
        Panel {
            providers: vec![
                Provider {
                    name: "carrier-a".into(),
                    device_prefix: "cm-".into(),
                    share: 0.5,
                    interval_s: (20.0, 90.0),
                    sigma_m: 15.0,
                    outliers: 0.0,
                    outlier_m: 0.0,
                    gcj02: false,
                    late_share: 0.002,
                    drift: 0.0,
                },
                Provider {
                    name: "carrier-b".into(),
                    device_prefix: "app-".into(),
                    share: 0.3,
                    interval_s: (5.0, 30.0),
                    sigma_m: 5.0,
                    outliers: 0.0,
                    outlier_m: 0.0,
                    gcj02: true,
                    late_share: 0.0,
                    drift: 0.0,
                },
            ],
        }
    }

    /// A thinner, sparser panel: carrier-a 35 % pinging every 1–5 minutes (σ 25 m), carrier-b 15 %
    /// every 10–60 s (σ 8 m); half the crowd carries no feed.
    pub fn sparse() -> Panel {
        let mut p = Panel::bund();
        p.providers[0].share = 0.35;
        p.providers[0].interval_s = (60.0, 300.0);
        p.providers[0].sigma_m = 25.0;
        p.providers[1].share = 0.15;
        p.providers[1].interval_s = (10.0, 60.0);
        p.providers[1].sigma_m = 8.0;
        p
    }

    /// Every person carries one phone that pings every 2–4 s with 1 m error: what the engine reads
    /// when the data is as good as it gets, so what error is left is the method's alone.
    pub fn oracle() -> Panel {
        let mut p = Panel::bund();
        p.providers.truncate(1);
        p.providers[0].share = 1.0;
        p.providers[0].interval_s = (2.0, 4.0);
        p.providers[0].sigma_m = 1.0;
        p.providers[0].late_share = 0.0;
        p
    }

    /// The same panel with every provider's people per device rising by `drift` over the night.
    pub fn with_drift(mut self, drift: f64) -> Panel {
        for p in &mut self.providers {
            p.drift = drift;
        }
        self
    }

    /// The same panel covering `share` of people, its providers in the same proportions.
    pub fn covering(mut self, share: f64) -> Panel {
        let now = self.coverage();
        if now > 0.0 {
            for p in &mut self.providers {
                p.share *= share / now;
            }
        }
        self
    }

    /// The share of people any panel covers (at the start of the night).
    pub fn coverage(&self) -> f64 {
        self.providers.iter().map(|p| p.share).sum()
    }

    /// The same panel with every provider's error σ set to `sigma_m` and a share `outliers` of
    /// gross errors (σ 100 m).
    pub fn with_error(mut self, sigma_m: f64, outliers: f64) -> Panel {
        for p in &mut self.providers {
            p.sigma_m = sigma_m;
            p.outliers = outliers;
            p.outlier_m = 100.0;
        }
        self
    }
}

impl SimConfig {
    /// Event time (epoch ms) of scenario second `t`.
    pub fn ts(&self, t: f64) -> i64 {
        self.start_ms + (t * 1000.0 / self.speed) as i64
    }
    /// Midnight in scenario seconds: two thirds into the night.
    pub fn midnight(&self) -> f64 {
        self.duration_s * 2.0 / 3.0
    }
}

/// One point of an agent's path.
#[derive(Debug, Clone, Copy)]
pub struct Waypoint {
    /// Scenario seconds.
    pub t: f32,
    /// Longitude.
    pub lng: f64,
    /// Latitude.
    pub lat: f64,
    /// Segment it lies in.
    pub seg: u16,
}

/// One simulated person.
#[derive(Debug, Clone)]
pub struct Agent {
    /// Route index.
    pub route: u16,
    /// 0 no feed, else 1 + the index of its provider in the panel.
    pub provider: u8,
    /// Leaves by metro (taps in) when true, else on foot.
    pub by_metro: bool,
    /// Route index of the way back (the way out unless a closure sent it another way).
    pub back: u16,
    /// Path, in time order; the agent exists from the first to the last.
    pub path: Vec<Waypoint>,
}

impl Agent {
    /// Arrival time (scenario seconds).
    pub fn arrive(&self) -> f64 {
        self.path[0].t as f64
    }
    /// Leaving time.
    pub fn leave(&self) -> f64 {
        self.path[self.path.len() - 1].t as f64
    }
    fn leg(&self, t: f64) -> usize {
        let i = self.path.partition_point(|w| (w.t as f64) <= t);
        i.saturating_sub(1).min(self.path.len() - 1)
    }
    /// Position at scenario second `t` (lng, lat).
    pub fn position(&self, t: f64) -> (f64, f64) {
        let i = self.leg(t);
        let a = self.path[i];
        let Some(b) = self.path.get(i + 1) else {
            return (a.lng, a.lat);
        };
        let span = (b.t - a.t) as f64;
        let f = if span > 0.0 {
            ((t - a.t as f64) / span).clamp(0.0, 1.0)
        } else {
            1.0
        };
        (a.lng + (b.lng - a.lng) * f, a.lat + (b.lat - a.lat) * f)
    }
    /// The segment the agent's route puts it in at `t`: it enters the next segment at the portal
    /// between the two (the waypoint labelled with the new segment).
    pub fn segment(&self, t: f64) -> usize {
        self.path[self.leg(t)].seg as usize
    }
    /// Segment changes: (scenario time, from, to); `from` None on arrival, `to` None on leaving.
    pub fn transitions(&self) -> Vec<(f64, Option<usize>, Option<usize>)> {
        let mut out = vec![(self.arrive(), None, Some(self.path[0].seg as usize))];
        for w in self.path.windows(2) {
            if w[0].seg != w[1].seg {
                out.push((w[1].t as f64, Some(w[0].seg as usize), Some(w[1].seg as usize)));
            }
        }
        out.push((
            self.leave(),
            Some(self.path[self.path.len() - 1].seg as usize),
            None,
        ));
        out
    }
}

/// Metres per degree at the Bund.
const M_LAT: f64 = 110_540.0;
const M_LNG: f64 = 95_220.0;

fn dist_m(a: (f64, f64), b: (f64, f64)) -> f64 {
    ((a.0 - b.0) * M_LNG).hypot((a.1 - b.1) * M_LAT)
}

/// Walks from `here` to a random spot of `seg` at `speed` (∞: a jump within the segment, the time
/// already advanced), appending waypoints; returns the new position. Between two segments the walk
/// goes through their portal; inside a bent segment it goes round the bend, never through a building.
fn step(
    path: &mut Vec<Waypoint>,
    t: &mut f64,
    here: (f64, f64),
    seg: usize,
    speed: f64,
    scenario: &Scenario,
    rng: &mut Rng,
) -> (f64, f64) {
    let mut here = here;
    let from = path.last().map_or(seg, |w| w.seg as usize);
    let mut go = |path: &mut Vec<Waypoint>, to: (f64, f64), label: usize, here: &mut (f64, f64)| {
        *t += dist_m(*here, to) / speed;
        path.push(Waypoint {
            t: *t as f32,
            lng: to.0,
            lat: to.1,
            seg: label as u16,
        });
        *here = to;
    };
    if from != seg && speed.is_finite() {
        if let Some((exit, entry)) = scenario.portal(from, seg) {
            if let Some(v) = scenario.via(from, here, exit, rng) {
                go(path, v, from, &mut here);
            }
            if exit != entry {
                // Across ground no segment covers (a junction the scenario does not model).
                go(path, exit, from, &mut here);
            }
            go(path, entry, seg, &mut here);
        }
    }
    let next = if speed.is_finite() {
        scenario.reachable_spot(seg, here, rng)
    } else {
        scenario.spot(seg, rng)
    };
    if speed.is_finite() {
        if let Some(v) = scenario.via(seg, here, next, rng) {
            go(path, v, seg, &mut here);
        }
    }
    go(path, next, seg, &mut here);
    next
}

/// One walker's path: out along route `r` from `arrive` (unless already at its destination),
/// milling about there until `leave_at`, then back along the route `back` picks at that moment.
/// Returns the path, the way back, and when the walk back began.
#[allow(clippy::too_many_arguments)]
fn walk(
    scenario: &Scenario,
    r: usize,
    already: bool,
    arrive: f64,
    leave_at: f64,
    speed: f64,
    back: impl FnOnce(f64) -> usize,
    rng: &mut Rng,
) -> (Vec<Waypoint>, usize, f64) {
    let route = &scenario.routes[r];
    let mut path = Vec::with_capacity(route.segments.len() * 2 + 8);
    let mut t = arrive;
    let mut here = scenario.spot(route.segments[0], rng);
    let start_seg = if already {
        *route.segments.last().unwrap_or(&0)
    } else {
        route.segments[0]
    };
    if already {
        here = scenario.spot(start_seg, rng);
    }
    path.push(Waypoint {
        t: t as f32,
        lng: here.0,
        lat: here.1,
        seg: start_seg as u16,
    });
    let forward: &[usize] = if already { &[] } else { &route.segments[1..] };
    for &seg in forward {
        here = step(&mut path, &mut t, here, seg, speed, scenario, rng);
    }
    let dest = *route.segments.last().unwrap_or(&0);
    while t + 60.0 < leave_at {
        t += rng.range(60.0, 240.0).min(leave_at - t);
        here = step(&mut path, &mut t, here, dest, f64::INFINITY, scenario, rng);
    }
    let began = t;
    let back = back(t);
    for &seg in scenario.routes[back].segments.iter().rev().skip(1) {
        here = step(&mut path, &mut t, here, seg, speed, scenario, rng);
    }
    (path, back, began)
}

/// All agents of one run.
pub struct World {
    /// The scenario.
    pub scenario: Scenario,
    /// Settings.
    pub cfg: SimConfig,
    /// The people.
    pub agents: Vec<Agent>,
}

impl World {
    /// Loads the scenario folder (seeded with `cfg.seed`) and builds every agent's schedule.
    pub fn load(dir: &Path, cfg: SimConfig) -> Result<World, String> {
        Ok(World::new(Scenario::load(dir, cfg.seed)?, cfg))
    }

    /// Builds every agent's schedule.
    pub fn new(scenario: Scenario, cfg: SimConfig) -> World {
        let mut rng = Rng::new(cfg.seed);
        let midnight = cfg.midnight();
        let mut agents = Vec::with_capacity(cfg.people);
        let shape = cfg.changes.arrival_shape.unwrap_or(ARRIVAL_SHAPE);
        for n in 0..cfg.people {
            let mut r = scenario.pick_route(&mut rng);
            let provider = {
                let u = rng.f64();
                let mut acc = 0.0;
                let mut pick = 0u8;
                for (k, p) in cfg.panel.providers.iter().enumerate().take(254) {
                    acc += p.share;
                    if u < acc {
                        pick = k as u8 + 1;
                        break;
                    }
                }
                pick
            };
            let speed = rng.range(0.8, 1.5);
            // 30 % already there at the start; the rest arrive, most in the hour before midnight.
            let already = rng.f64() < 0.3;
            let arrive = if already {
                0.0
            } else {
                (midnight * rng.f64().powf(shape)).min(cfg.duration_s - 1.0)
            };
            let leave_at = (midnight + rng.exp(cfg.duration_s / 8.0)).max(arrive + 120.0);
            let (mut path, mut back, t_back) =
                walk(&scenario, r, already, arrive, leave_at, speed, |_| r, &mut rng);
            // A what-if re-walks only the people its closures touch, from streams of their own:
            // everybody else walks exactly the baseline's night.
            if !cfg.changes.closures.is_empty() {
                let ch = &cfg.changes;
                let stream = cfg.seed ^ 0xC105_ED00 ^ (n as u64).wrapping_mul(0x9E37_79B9);
                let (mut pick, mut legs) = (Rng::new(stream), Rng::new(stream ^ 0x5EED));
                let mut out = r;
                if !already && !ch.open(&scenario, r, arrive) {
                    out = ch
                        .reroute(&scenario, r, arrive, same_origin, true, &mut pick)
                        .unwrap_or(r);
                }
                if out != r || !ch.open(&scenario, r, t_back) {
                    // The way back: the way out, unless it is closed by then; else another open
                    // route to the same place, from the same station or street if one is open.
                    let choose = |t: f64| {
                        if ch.open(&scenario, out, t) {
                            return out;
                        }
                        let same_dest = |a: &Route, b: &Route| a.segments.last() == b.segments.last();
                        let both = |a: &Route, b: &Route| same_dest(a, b) && same_origin(a, b);
                        ch.reroute(&scenario, out, t, both, false, &mut pick)
                            .or_else(|| ch.reroute(&scenario, out, t, same_dest, false, &mut pick))
                            .unwrap_or(out)
                    };
                    (path, back, _) = walk(
                        &scenario, out, already, arrive, leave_at, speed, choose, &mut legs,
                    );
                    r = out;
                }
            }
            // Leave the night's window open-ended: those still walking at the end stay until then.
            for w in &mut path {
                w.t = w.t.min(cfg.duration_s as f32);
            }
            let by_metro = matches!(scenario.routes[back].origin, Origin::Metro { .. });
            agents.push(Agent {
                route: r as u16,
                provider,
                by_metro,
                back: back as u16,
                path,
            });
        }
        World {
            scenario,
            cfg,
            agents,
        }
    }
}

/// Where a walker crosses from polygon `a` to `b` (lng, lat): the centroid of their overlap, or,
/// when they do not touch, the nearest points of the two boundaries (leaving `a`, entering `b`).
fn portal(a: &geo::Polygon<f64>, b: &geo::Polygon<f64>) -> (LngLat, LngLat) {
    use geo::{Closest, ClosestPoint};
    let inter = MultiPolygon::new(vec![a.clone()]).intersection(&MultiPolygon::new(vec![b.clone()]));
    if let Some(c) = inter.centroid() {
        if inter.0.iter().any(|p| p.exterior().0.len() > 3) {
            return ((c.x(), c.y()), (c.x(), c.y()));
        }
    }
    // Nearest boundary points, in metres' proportion (degrees of lng are shorter).
    let scale = |p: geo::Coord<f64>| geo::Coord {
        x: p.x * M_LNG,
        y: p.y * M_LAT,
    };
    let unscale = |p: Point<f64>| (p.x() / M_LNG, p.y() / M_LAT);
    let ring =
        |p: &geo::Polygon<f64>| geo::LineString::new(p.exterior().0.iter().map(|c| scale(*c)).collect());
    let (ra, rb) = (ring(a), ring(b));
    let mut best = (f64::MAX, (0.0, 0.0), (0.0, 0.0));
    for (from, to, flip) in [(&ra, &rb, false), (&rb, &ra, true)] {
        for c in from.0.iter() {
            let p = Point::from(*c);
            if let Closest::SinglePoint(q) | Closest::Intersection(q) = to.closest_point(&p) {
                let d = (p.x() - q.x()).hypot(p.y() - q.y());
                if d < best.0 {
                    best = if flip {
                        (d, unscale(q), unscale(p))
                    } else {
                        (d, unscale(p), unscale(q))
                    };
                }
            }
        }
    }
    (best.1, best.2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world(seed: u64) -> World {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/bund");
        World::new(
            Scenario::load(&dir, seed).unwrap(),
            SimConfig {
                people: 2000,
                duration_s: 1200.0,
                start_ms: 1_767_193_200_000,
                speed: 1.0,
                seed,
                panel: Panel::bund(),
                changes: Default::default(),
            },
        )
    }

    #[test]
    fn a_panel_covering_everyone_keeps_its_providers_in_proportion() {
        let all = Panel::bund().covering(1.0);
        assert!((all.coverage() - 1.0).abs() < 1e-12);
        assert!(
            (all.providers[0].share - 0.625).abs() < 1e-12,
            "{:?}",
            all.providers[0]
        );
        let sampled = Panel::oracle().covering(0.8);
        assert!((sampled.coverage() - 0.8).abs() < 1e-12);
        assert_eq!(
            sampled.providers[0].interval_s,
            (2.0, 4.0),
            "the oracle's rhythm kept"
        );
    }

    #[test]
    fn walkers_stay_on_the_walkable_network() {
        let w = world(3);
        let m = w.scenario.map.matcher();
        let (mut total, mut off) = (0u32, 0u32);
        let mut worst: std::collections::HashMap<(usize, usize), (u32, f64)> = Default::default();
        for a in &w.agents {
            let mut t = a.arrive();
            while t < a.leave() {
                let (lng, lat) = a.position(t);
                let p = m.local(lat, lng);
                let d = (0..m.len()).map(|i| m.distance(i, p)).fold(f64::MAX, f64::min);
                total += 1;
                let i = a.leg(t);
                let next = a.path.get(i + 1).map_or(usize::MAX, |b| b.seg as usize);
                // The scenario's ground (junctions, kerbs, a landing) covers where a walker passes
                // between two segments that do not touch: every position is on a segment or on it
                // (but for a few glides across a bend of the promenade; without the ground, 5 %).
                if d > 0.5 {
                    off += 1;
                    let key = (a.path[i].seg as usize, next);
                    let e = worst.entry(key).or_default();
                    e.0 += 1;
                    e.1 = e.1.max(d);
                }
                t += 7.0;
            }
        }
        let mut v: Vec<_> = worst.into_iter().collect();
        v.sort_by_key(|x| std::cmp::Reverse(x.1 .0));
        for ((a, b), (n, d)) in v.iter().take(12) {
            let name = |i: usize| {
                w.scenario
                    .map
                    .segments()
                    .get(i)
                    .map_or("-".to_string(), |s| s.id.0.clone())
            };
            eprintln!("{} → {}: {n} samples off, up to {d:.1} m", name(*a), name(*b));
        }
        assert!(
            (off as f64) < 1e-3 * total as f64,
            "{off} of {total} positions are off every segment and the ground between them"
        );
    }
}
