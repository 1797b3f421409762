//! Agents and their walking schedules.

use std::path::Path;

use geo::{BoundingRect, Contains, Point};
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
    /// Segment indices, origin first.
    pub segments: Vec<usize>,
}

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
                segments: segs,
            });
        }
        for r in &mut routes {
            r.cum_weight /= cum;
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
        Ok(Scenario {
            map,
            registry,
            routes,
            spots,
        })
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
    /// 0 no feed, 1 carrier-a (signalling), 2 carrier-b (app GPS).
    pub provider: u8,
    /// Leaves by metro (taps in) when true, else on foot.
    pub by_metro: bool,
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
    /// The segment the agent counts in at `t`: a leg between two segments changes at its midpoint.
    pub fn segment(&self, t: f64) -> usize {
        let i = self.leg(t);
        let a = self.path[i];
        match self.path.get(i + 1) {
            Some(b) if t >= (a.t as f64 + b.t as f64) / 2.0 => b.seg as usize,
            _ => a.seg as usize,
        }
    }
    /// Segment changes: (scenario time, from, to); `from` None on arrival, `to` None on leaving.
    pub fn transitions(&self) -> Vec<(f64, Option<usize>, Option<usize>)> {
        let mut out = vec![(self.arrive(), None, Some(self.path[0].seg as usize))];
        for w in self.path.windows(2) {
            if w[0].seg != w[1].seg {
                out.push((
                    (w[0].t as f64 + w[1].t as f64) / 2.0,
                    Some(w[0].seg as usize),
                    Some(w[1].seg as usize),
                ));
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

/// Walks from `here` to a random spot of `seg` at `speed` (∞: the time is already advanced),
/// appending the waypoint; returns the new position.
fn step(
    path: &mut Vec<Waypoint>,
    t: &mut f64,
    here: (f64, f64),
    seg: usize,
    speed: f64,
    scenario: &Scenario,
    rng: &mut Rng,
) -> (f64, f64) {
    let next = scenario.spot(seg, rng);
    *t += dist_m(here, next) / speed;
    path.push(Waypoint {
        t: *t as f32,
        lng: next.0,
        lat: next.1,
        seg: seg as u16,
    });
    next
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
        for _ in 0..cfg.people {
            let r = scenario.pick_route(&mut rng);
            let route = &scenario.routes[r];
            let provider = match rng.f64() {
                u if u < 0.5 => 1,
                u if u < 0.8 => 2,
                _ => 0,
            };
            let speed = rng.range(0.8, 1.5);
            // 30 % already there at the start; the rest arrive, most in the hour before midnight.
            let already = rng.f64() < 0.3;
            let arrive = if already {
                0.0
            } else {
                (midnight * rng.f64().powf(0.7)).min(cfg.duration_s - 1.0)
            };
            let leave_at = (midnight + rng.exp(cfg.duration_s / 8.0)).max(arrive + 120.0);
            let mut path = Vec::with_capacity(route.segments.len() * 2 + 8);
            let mut t = arrive;
            let mut here = scenario.spot(route.segments[0], &mut rng);
            let start_seg = if already {
                *route.segments.last().unwrap_or(&0)
            } else {
                route.segments[0]
            };
            if already {
                here = scenario.spot(start_seg, &mut rng);
            }
            path.push(Waypoint {
                t: t as f32,
                lng: here.0,
                lat: here.1,
                seg: start_seg as u16,
            });
            // Walk the route out (unless already there), mill about at the destination until it is
            // time to go, then walk back.
            let forward: &[usize] = if already { &[] } else { &route.segments[1..] };
            for &seg in forward {
                here = step(&mut path, &mut t, here, seg, speed, &scenario, &mut rng);
            }
            let dest = *route.segments.last().unwrap_or(&0);
            while t + 60.0 < leave_at {
                t += rng.range(60.0, 240.0).min(leave_at - t);
                here = step(&mut path, &mut t, here, dest, f64::INFINITY, &scenario, &mut rng);
            }
            for &seg in route.segments.iter().rev().skip(1) {
                here = step(&mut path, &mut t, here, seg, speed, &scenario, &mut rng);
            }
            // Leave the night's window open-ended: those still walking at the end stay until then.
            for w in &mut path {
                w.t = w.t.min(cfg.duration_s as f32);
            }
            let by_metro = matches!(route.origin, Origin::Metro { .. });
            agents.push(Agent {
                route: r as u16,
                provider,
                by_metro,
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
