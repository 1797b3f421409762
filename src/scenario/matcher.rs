//! Positions → segments. A ping is a noisy observation of where a person stands: this module says
//! how much of that person each nearby segment should get.
//!
//! The rule (docs/ACCURACY.md): a ping at `z` with per-axis error σ (its `accuracy_m` taken as the
//! 68 % radius, σ = accuracy / 1.515) came from segment `j` with probability
//! ∝ ρⱼ · Mⱼ(z), where Mⱼ is the mass of a Gaussian N(z, σ²) that falls inside segment j's polygon
//! and ρⱼ the crowd density there (the caller's prior: the last closed window's density). Only
//! segments within 3.41σ of `z` (99.7 % of a 2-D error; at most `max_match_m`) are candidates; a
//! ping with none is *off-network* — counted apart, never folded into a street. Between two
//! segments the caller tempers the prior by the ping's error (ρⱼ^(σ²/(σ²+L²)), L =
//! `lbs.prior_scale_m`, 6 m: a crowd's density does not jump at a drawn edge, so a precise ping's
//! side of the edge decides; see `window::engine::prior_exponent`). Inside a wide square the mass is ~1
//! and the square takes the person whole; at a junction, or for a ping scattered off a narrow
//! street into the building beside it, the split follows the geometry and the crowd.
//!
//! Everything runs in a local plane in metres around the segments' centre (equirectangular: at
//! city scale the distortion is far below GPS error), with an R-tree over the segments' bounding
//! boxes so a city of 10,000 segments costs the same per ping as the Bund's 14.

use rstar::primitives::{GeomWithData, Rectangle};
use rstar::{RTree, AABB};
use rustc_hash::FxHashMap;

use geo::Polygon;

/// Per-axis σ for a 68 % horizontal radius (√(−2 ln 0.32)).
pub const RADIUS68_PER_SIGMA: f64 = 1.515;
/// Candidates are segments within this many σ of the ping: the radius that holds 99.7 % of a
/// 2-D Gaussian, √(−2 ln 0.003). The 1-D rule, 3σ, left 1.1 % of pings (e^−4.5) beyond every
/// segment's reach however near their street, and so off-network.
pub const MATCH_SIGMAS: f64 = 3.41;

type Ring = Vec<[f64; 2]>;

#[derive(Debug, Clone)]
struct Shape {
    exterior: Ring,
    holes: Vec<Ring>,
    area: f64,
}

/// Segment lookup by position.
#[derive(Debug, Clone)]
pub struct Matcher {
    lat0: f64,
    lng0: f64,
    m_lat: f64,
    m_lng: f64,
    shapes: Vec<Shape>,
    /// How many of `shapes` are segments; the rest are ground no segment covers (walkable, matched
    /// like a segment, counted apart).
    segments: usize,
    tree: RTree<GeomWithData<Rectangle<[f64; 2]>, u32>>,
    max_match_m: f64,
    /// The shapes' bounding box in the local plane (min x, min y, max x, max y).
    bounds: [f64; 4],
}

impl Default for Matcher {
    fn default() -> Self {
        Matcher::new(&[], 100.0)
    }
}

impl Matcher {
    /// An index over the segments' polygons (lng, lat; in segment order); matches reach at most
    /// `max_match_m`.
    pub fn new(polygons: &[&Polygon<f64>], max_match_m: f64) -> Matcher {
        Matcher::with_ground(polygons, &[], max_match_m)
    }

    /// An index over the segments' polygons and, after them, the ground no segment covers: a ping
    /// there is matched to that ground rather than to the nearest segment.
    pub fn with_ground(segments: &[&Polygon<f64>], ground: &[&Polygon<f64>], max_match_m: f64) -> Matcher {
        use geo::BoundingRect;
        let polygons: Vec<&Polygon<f64>> = segments.iter().chain(ground).copied().collect();
        let mut b = [f64::MAX, f64::MAX, f64::MIN, f64::MIN];
        for s in &polygons {
            if let Some(r) = s.bounding_rect() {
                b = [
                    b[0].min(r.min().x),
                    b[1].min(r.min().y),
                    b[2].max(r.max().x),
                    b[3].max(r.max().y),
                ];
            }
        }
        let (lng0, lat0) = if polygons.is_empty() {
            (0.0, 0.0)
        } else {
            ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0)
        };
        let phi = lat0.to_radians();
        // Metres per degree on WGS-84 at the centre latitude.
        let m_lat = 111_132.92 - 559.82 * (2.0 * phi).cos() + 1.175 * (4.0 * phi).cos();
        let m_lng = 111_412.84 * phi.cos() - 93.5 * (3.0 * phi).cos();
        let mut m = Matcher {
            lat0,
            lng0,
            m_lat,
            m_lng,
            shapes: Vec::new(),
            segments: segments.len(),
            tree: RTree::new(),
            max_match_m,
            bounds: [0.0; 4],
        };
        let ring = |m: &Matcher, r: &geo::LineString<f64>| -> Ring {
            let mut v: Ring = r.0.iter().map(|c| m.local(c.y, c.x)).collect();
            if v.len() > 1 && v.first() == v.last() {
                v.pop();
            }
            v
        };
        let mut boxes = Vec::with_capacity(polygons.len());
        let mut all = [f64::MAX, f64::MAX, f64::MIN, f64::MIN];
        for (i, s) in polygons.iter().enumerate() {
            let exterior = ring(&m, s.exterior());
            let holes: Vec<Ring> = s.interiors().iter().map(|h| ring(&m, h)).collect();
            let area = ring_area(&exterior).abs() - holes.iter().map(|h| ring_area(h).abs()).sum::<f64>();
            let (mut lo, mut hi) = ([f64::MAX; 2], [f64::MIN; 2]);
            for p in &exterior {
                lo = [lo[0].min(p[0]), lo[1].min(p[1])];
                hi = [hi[0].max(p[0]), hi[1].max(p[1])];
            }
            all = [
                all[0].min(lo[0]),
                all[1].min(lo[1]),
                all[2].max(hi[0]),
                all[3].max(hi[1]),
            ];
            boxes.push(GeomWithData::new(Rectangle::from_corners(lo, hi), i as u32));
            m.shapes.push(Shape {
                exterior,
                holes,
                area,
            });
        }
        m.tree = RTree::bulk_load(boxes);
        if !m.shapes.is_empty() {
            m.bounds = all;
        }
        m
    }

    /// Distance (m) from local `p` to the nearest segment (0 inside one), or `cap` when none is
    /// nearer than `cap`.
    pub fn nearest_distance(&self, p: [f64; 2], cap: f64) -> f64 {
        let env = AABB::from_corners([p[0] - cap, p[1] - cap], [p[0] + cap, p[1] + cap]);
        let mut best = cap;
        for g in self.tree.locate_in_envelope_intersecting(&env) {
            best = best.min(self.distance(g.data as usize, p));
            if best == 0.0 {
                break;
            }
        }
        best
    }

    /// A position in the local plane, metres east and north of the centre.
    #[inline]
    pub fn local(&self, lat: f64, lng: f64) -> [f64; 2] {
        [(lng - self.lng0) * self.m_lng, (lat - self.lat0) * self.m_lat]
    }

    /// The per-axis σ (m) of a ping reporting `accuracy_m` (a 68 % radius), never below 1 m.
    pub fn sigma(accuracy_m: f64) -> f64 {
        (accuracy_m / RADIUS68_PER_SIGMA).max(1.0)
    }

    /// The farthest any ping may be matched (m).
    pub fn max_match_m(&self) -> f64 {
        self.max_match_m
    }

    /// How far a ping with per-axis error `sigma` may be matched.
    pub fn reach(&self, sigma: f64) -> f64 {
        (MATCH_SIGMAS * sigma).min(self.max_match_m)
    }

    /// Candidate segments for a ping at local `p` with per-axis error `sigma`: (segment index, mass
    /// of its Gaussian inside the segment). Empty: off-network.
    pub fn masses(&self, p: [f64; 2], sigma: f64, out: &mut Vec<(u32, f32)>) {
        self.collect(p, sigma, out, false);
    }

    /// `masses`, but a lone candidate's mass is not computed (given as 1): it takes the ping whole
    /// whatever its mass, and its integral was most of the cost of a raster point the cache had
    /// not seen.
    pub fn candidates(&self, p: [f64; 2], sigma: f64, out: &mut Vec<(u32, f32)>) {
        self.collect(p, sigma, out, true);
    }

    fn collect(&self, p: [f64; 2], sigma: f64, out: &mut Vec<(u32, f32)>, lone_whole: bool) {
        out.clear();
        let r = self.reach(sigma);
        let env = AABB::from_corners([p[0] - r, p[1] - r], [p[0] + r, p[1] + r]);
        let within = |i: usize| -> Option<(bool, f64)> {
            let s = &self.shapes[i];
            let inside = self.contains_local(i, p);
            let mut edge = ring_distance(&s.exterior, p);
            for h in &s.holes {
                edge = edge.min(ring_distance(h, p));
            }
            (inside || edge <= r).then_some((inside, edge))
        };
        if lone_whole {
            let mut lone = None;
            let mut n = 0;
            for g in self.tree.locate_in_envelope_intersecting(&env) {
                if within(g.data as usize).is_some() {
                    n += 1;
                    lone = Some(g.data);
                    if n > 1 {
                        break;
                    }
                }
            }
            match (n, lone) {
                (0, _) => return,
                (1, Some(i)) => {
                    out.push((i, 1.0));
                    return;
                }
                _ => {}
            }
        }
        for g in self.tree.locate_in_envelope_intersecting(&env) {
            let i = g.data as usize;
            let s = &self.shapes[i];
            let Some((inside, edge)) = within(i) else {
                continue;
            };
            // Deep inside, the Gaussian lies wholly in the polygon: no integral needed.
            let mut m = if inside && edge >= 4.0 * sigma {
                1.0
            } else {
                ring_mass(&s.exterior, p, sigma).abs()
            };
            if m < 1.0 {
                for h in &s.holes {
                    m -= ring_mass(h, p, sigma).abs();
                }
            }
            // Keep a candidate within reach even when its mass underflows: it is still the street.
            out.push((g.data, m.max(1e-12) as f32));
        }
        out.sort_unstable_by_key(|c| c.0);
    }

    /// Distance (m) from local `p` to segment `i` (0 inside).
    pub fn distance(&self, i: usize, p: [f64; 2]) -> f64 {
        let s = &self.shapes[i];
        if self.contains_local(i, p) {
            return 0.0;
        }
        let mut d = ring_distance(&s.exterior, p);
        for h in &s.holes {
            d = d.min(ring_distance(h, p));
        }
        d
    }

    fn contains_local(&self, i: usize, p: [f64; 2]) -> bool {
        let s = &self.shapes[i];
        ring_contains(&s.exterior, p) && !s.holes.iter().any(|h| ring_contains(h, p))
    }

    /// The segment a position is *in* (no error model): the smallest polygon containing it; None
    /// off the network or on ground no segment covers. What the simulator's truth uses.
    pub fn segment_at(&self, lat: f64, lng: f64) -> Option<usize> {
        self.place_at(lat, lng).filter(|&i| i < self.segments)
    }

    /// The place (segment, or ground after them) a position is in: the smallest containing it.
    pub fn place_at(&self, lat: f64, lng: f64) -> Option<usize> {
        let p = self.local(lat, lng);
        let env = AABB::from_point(p);
        let mut inside: Option<(f64, usize)> = None;
        for g in self.tree.locate_in_envelope_intersecting(&env) {
            let i = g.data as usize;
            if self.contains_local(i, p) {
                let a = self.shapes[i].area;
                if inside.is_none_or(|(b, _)| a < b) {
                    inside = Some((a, i));
                }
            }
        }
        inside.map(|(_, i)| i)
    }

    /// Number of places indexed: segments, then ground.
    pub fn len(&self) -> usize {
        self.shapes.len()
    }

    /// Number of segments (places `0..segments()`; ground follows).
    pub fn segments(&self) -> usize {
        self.segments
    }

    /// A place's area in the local plane, m².
    pub fn area(&self, i: usize) -> f64 {
        self.shapes[i].area
    }

    /// True without segments.
    pub fn is_empty(&self) -> bool {
        self.shapes.is_empty()
    }
}

fn ring_area(r: &[[f64; 2]]) -> f64 {
    let n = r.len();
    (0..n)
        .map(|i| {
            let (a, b) = (r[i], r[(i + 1) % n]);
            a[0] * b[1] - b[0] * a[1]
        })
        .sum::<f64>()
        / 2.0
}

fn ring_contains(r: &[[f64; 2]], p: [f64; 2]) -> bool {
    let n = r.len();
    let mut inside = false;
    let mut j = n.wrapping_sub(1);
    for i in 0..n {
        let (a, b) = (r[i], r[j]);
        if (a[1] > p[1]) != (b[1] > p[1]) && p[0] < (b[0] - a[0]) * (p[1] - a[1]) / (b[1] - a[1]) + a[0] {
            inside = !inside;
        }
        j = i;
    }
    inside
}

fn ring_distance(r: &[[f64; 2]], p: [f64; 2]) -> f64 {
    let n = r.len();
    let mut best = f64::MAX;
    for i in 0..n {
        let (a, b) = (r[i], r[(i + 1) % n]);
        let d = [b[0] - a[0], b[1] - a[1]];
        let len2 = d[0] * d[0] + d[1] * d[1];
        let t = if len2 > 0.0 {
            (((p[0] - a[0]) * d[0] + (p[1] - a[1]) * d[1]) / len2).clamp(0.0, 1.0)
        } else {
            0.0
        };
        let q = [a[0] + t * d[0] - p[0], a[1] + t * d[1] - p[1]];
        // Squared, with one root at the end: libm's `hypot` per edge was a tenth of a new raster
        // point's cost.
        best = best.min(q[0] * q[0] + q[1] * q[1]);
    }
    best.sqrt()
}

/// Gauss–Legendre nodes and weights on [−1, 1], 12 points.
const GL: [(f64, f64); 12] = [
    (-0.981_560_634_246_719_3, 0.047_175_336_386_511_83),
    (-0.904_117_256_370_474_9, 0.106_939_325_995_318_4),
    (-0.769_902_674_194_304_7, 0.160_078_328_543_346_2),
    (-0.587_317_954_286_617_4, 0.203_167_426_723_065_9),
    (-0.367_831_498_998_180_2, 0.233_492_536_538_354_8),
    (-0.125_233_408_511_468_9, 0.249_147_045_813_402_8),
    (0.125_233_408_511_468_9, 0.249_147_045_813_402_8),
    (0.367_831_498_998_180_2, 0.233_492_536_538_354_8),
    (0.587_317_954_286_617_4, 0.203_167_426_723_065_9),
    (0.769_902_674_194_304_7, 0.160_078_328_543_346_2),
    (0.904_117_256_370_474_9, 0.106_939_325_995_318_4),
    (0.981_560_634_246_719_3, 0.047_175_336_386_511_83),
];

/// Signed mass of N(p, σ²I) inside a ring: the sum over edges of the mass of the triangle (p, a, b),
/// each an integral over the angle it subtends of the radial CDF 1 − exp(−r²/2σ²) out to the edge.
fn ring_mass(r: &[[f64; 2]], p: [f64; 2], sigma: f64) -> f64 {
    let n = r.len();
    let k = 1.0 / (2.0 * sigma * sigma);
    let mut total = 0.0;
    for i in 0..n {
        let a = [r[i][0] - p[0], r[i][1] - p[1]];
        let b = [r[(i + 1) % n][0] - p[0], r[(i + 1) % n][1] - p[1]];
        let cross = a[0] * b[1] - a[1] * b[0];
        let d = [b[0] - a[0], b[1] - a[1]];
        let len2 = d[0] * d[0] + d[1] * d[1];
        if len2 <= 0.0 {
            continue;
        }
        let h = cross.abs() / len2.sqrt();
        if h < 1e-9 {
            continue;
        }
        // The foot of the perpendicular from p, and the angles of a, b relative to it.
        let t = -(a[0] * d[0] + a[1] * d[1]) / len2;
        let foot = [a[0] + t * d[0], a[1] + t * d[1]];
        let phi = foot[1].atan2(foot[0]);
        let wrap =
            |x: f64| (x + std::f64::consts::PI).rem_euclid(2.0 * std::f64::consts::PI) - std::f64::consts::PI;
        let ua = wrap(a[1].atan2(a[0]) - phi);
        let ub = wrap(b[1].atan2(b[0]) - phi);
        // An edge farther than 5σ sees the whole Gaussian inside its triangle: F = 1 along it,
        // and its integral is the angle it subtends (the common case, deep inside a segment).
        if h > 5.0 * sigma {
            total += ub - ua;
            continue;
        }
        // F(h / cos u) over [ua, ub]; split at the foot (u = 0), where the integrand turns.
        let f = |u: f64| {
            let c = u.cos().max(1e-12);
            let rr = h / c;
            1.0 - (-rr * rr * k).exp()
        };
        let integrate = |lo: f64, hi: f64| {
            let (m, half) = ((lo + hi) / 2.0, (hi - lo) / 2.0);
            GL.iter().map(|(x, w)| w * f(m + half * x)).sum::<f64>() * half
        };
        let v = if ua < 0.0 && ub > 0.0 || ua > 0.0 && ub < 0.0 {
            integrate(ua, 0.0) + integrate(0.0, ub)
        } else {
            integrate(ua, ub)
        };
        total += v;
    }
    total / (2.0 * std::f64::consts::PI)
}

/// Matches by raster point and error class, so a night of pings costs one lookup each once the
/// places the crowd stands have been seen. Cleared when it grows past its cap. Cloning gives an
/// empty cache (a checkpoint copy needs none).
#[derive(Debug)]
pub struct PlaceCache {
    /// Raster point → its answer: a slice of `arena` (offset, length), or, for a point with one
    /// candidate, that segment and its mass inline (`ONE` set in the first field), so the common
    /// answer costs no second cache miss in the arena.
    index: FxHashMap<u64, (u32, u32)>,
    arena: Vec<(u32, f32)>,
    scratch: Vec<(u32, f32)>,
    /// The last σ asked, with its class, class σ and raster step.
    class: Option<(f64, f64, f64, f64)>,
    /// Changes whenever handles given out stop being valid (the cache started over, or this is
    /// another cache): unique across every cache of the process.
    generation: u32,
    far: Far,
    /// Per σ class, a dense grid of the handles given out so far (see `Near`).
    near: Vec<Near>,
}

/// Lower bounds on the distance to the network over a coarse grid around the segments, filled
/// as pings arrive: a ping whose raster point is farther from every segment than its reach is
/// off-network without a look-up in the cache's index, whose cache miss is the cost of a match
/// (a city's feed is mostly phones nowhere near the event's streets).
#[derive(Debug, Default)]
struct Far {
    /// The matcher the grid was made for (origin, reach, segment count).
    made_for: (u64, u64, u64, usize),
    origin: [f64; 2],
    cell: f64,
    cols: usize,
    rows: usize,
    /// The highest bound kept: beyond every reach of this matcher.
    most: u8,
    /// False when no finite grid fits this matcher (a reach of 1e300 m, say): then it is never
    /// used and every ping goes to the index as before.
    usable: bool,
    /// Per grid cell, ⌊a lower bound (m) of the distance from any point in it to the nearest
    /// segment⌋, at most `most`; `FAR_UNKNOWN` until a ping first falls there.
    lower: Vec<u8>,
}

const FAR_UNKNOWN: u8 = u8::MAX;
/// The grid's finest cell (m) and its most cells (a city's 3,600 km² get ~30 m cells).
const FAR_MIN_CELL: f64 = 8.0;
const FAR_MAX_CELLS: f64 = 4_194_304.0;

impl Far {
    fn identity(m: &Matcher) -> (u64, u64, u64, usize) {
        (
            m.lat0.to_bits(),
            m.lng0.to_bits(),
            m.max_match_m.to_bits(),
            m.shapes.len(),
        )
    }

    fn make(m: &Matcher) -> Far {
        let most = m.max_match_m.ceil().clamp(0.0, 253.0) as u8 + 1;
        let cell0 = FAR_MIN_CELL;
        // The grid reaches past every segment's box by the farthest match and one cell: a point
        // outside it is farther than any reach from every segment.
        let e = m.max_match_m + cell0.max(1.0);
        let (w, h) = (
            m.bounds[2] - m.bounds[0] + 2.0 * e,
            m.bounds[3] - m.bounds[1] + 2.0 * e,
        );
        let cell = cell0.max((w * h / FAR_MAX_CELLS).sqrt());
        let (cols, rows) = ((w / cell).ceil(), (h / cell).ceil());
        let usable = e.is_finite()
            && m.bounds.iter().all(|b| b.is_finite())
            && (1.0..=2.0 * FAR_MAX_CELLS).contains(&cols)
            && (1.0..=2.0 * FAR_MAX_CELLS).contains(&rows)
            && cols * rows <= 2.0 * FAR_MAX_CELLS;
        let (cols, rows) = if usable {
            (cols as usize, rows as usize)
        } else {
            (0, 0)
        };
        Far {
            made_for: Far::identity(m),
            origin: [m.bounds[0] - e, m.bounds[1] - e],
            cell,
            cols,
            rows,
            most,
            usable,
            lower: vec![FAR_UNKNOWN; cols * rows],
        }
    }

    /// Whether a ping at local `p` (its raster point's centre) whose reach is `r` certainly has
    /// no segment within reach, which is exactly when `Matcher::masses` would find none.
    #[inline]
    fn beyond(&mut self, m: &Matcher, p: [f64; 2], r: f64) -> bool {
        if m.shapes.is_empty() {
            return true;
        }
        // A default grid (cell 0) is not made yet; one made for another matcher is made again.
        if self.cell == 0.0 || self.made_for != Far::identity(m) {
            *self = Far::make(m);
        }
        if !self.usable {
            return false;
        }
        let (fx, fy) = (
            (p[0] - self.origin[0]) / self.cell,
            (p[1] - self.origin[1]) / self.cell,
        );
        if !(fx >= 0.0 && fy >= 0.0 && fx < self.cols as f64 && fy < self.rows as f64) {
            // Outside the grid (or not a number, which no segment is near either).
            return true;
        }
        let i = fy as usize * self.cols + fx as usize;
        let mut v = self.lower[i];
        if v == FAR_UNKNOWN {
            let centre = [
                self.origin[0] + (fx.floor() + 0.5) * self.cell,
                self.origin[1] + (fy.floor() + 0.5) * self.cell,
            ];
            // Distance is 1-Lipschitz: no point of the cell is nearer than the centre's distance
            // less half the diagonal (and a centimetre for rounding).
            let half = self.cell * std::f64::consts::FRAC_1_SQRT_2;
            let d = m.nearest_distance(centre, self.most as f64 + half + 0.02);
            v = (d - half - 0.01).floor().clamp(0.0, self.most as f64) as u8;
            self.lower[i] = v;
        }
        v as f64 > r
    }
}

/// The handle of an empty answer (off-network): valid in every generation.
const EMPTY_PLACE: u32 = 0;

/// The handles of one σ class's raster points near the segments, in a dense grid: a crowd's
/// walkers are projected to new raster points every window, and a hash index costs two dependent
/// cache misses per look-up (control bytes, then the entry) where a grid costs one. Only a cache
/// of the index: a cell holds 0 until its point is first answered, then its handle + 1. Cells are
/// laid out in 32 × 32 tiles of one page each, and the grid is allocated zeroed, so only the
/// tiles a crowd reaches become resident. A grid that would exceed `NEAR_MAX_CELLS` is not made
/// (a city's map at a fine σ): its class uses the index alone.
#[derive(Debug, Default)]
struct Near {
    /// The matcher it was made for (see `Far::identity`).
    made_for: (u64, u64, u64, usize),
    /// Raster index of the grid's first column and row.
    ix0: i64,
    iy0: i64,
    cols: i64,
    rows: i64,
    tiles_x: usize,
    /// Empty: no grid for this class.
    cells: Vec<u32>,
}

/// Most cells of one class's grid, and of all grids together (4 bytes each, resident only where
/// pings land): the Bund's finest usual class (σ 5.7 m, 1.4 m steps) needs 1.1 M.
const NEAR_MAX_CELLS: f64 = 4_194_304.0;
const NEAR_ALL_CELLS: usize = 8_388_608;
const TILE: i64 = 32;

impl Near {
    /// The grid over every raster point of step `step` that a ping within reach can land on.
    fn make(m: &Matcher, step: f64, room: usize) -> Near {
        let e = m.max_match_m + step;
        let (ix0, iy0) = (
            ((m.bounds[0] - e) / step).floor(),
            ((m.bounds[1] - e) / step).floor(),
        );
        let (cols, rows) = (
            ((m.bounds[2] + e) / step).ceil() - ix0 + 1.0,
            ((m.bounds[3] + e) / step).ceil() - iy0 + 1.0,
        );
        let fits = [ix0, iy0, cols, rows].iter().all(|v| v.is_finite())
            && cols >= 1.0
            && rows >= 1.0
            && cols * rows <= NEAR_MAX_CELLS.min(room as f64)
            && !m.shapes.is_empty();
        if !fits {
            return Near {
                made_for: Far::identity(m),
                ..Near::default()
            };
        }
        let (cols, rows) = (cols as i64, rows as i64);
        let (tiles_x, tiles_y) = ((cols + TILE - 1) / TILE, (rows + TILE - 1) / TILE);
        Near {
            made_for: Far::identity(m),
            ix0: ix0 as i64,
            iy0: iy0 as i64,
            cols,
            rows,
            tiles_x: tiles_x as usize,
            cells: vec![0; (tiles_x * tiles_y * TILE * TILE) as usize],
        }
    }

    /// The cell of raster point (`ix`, `iy`), if the grid has it.
    #[inline]
    fn slot(&self, ix: i64, iy: i64) -> Option<usize> {
        let (x, y) = (ix - self.ix0, iy - self.iy0);
        if self.cells.is_empty() || x < 0 || y < 0 || x >= self.cols || y >= self.rows {
            return None;
        }
        let tile = (y / TILE) as usize * self.tiles_x + (x / TILE) as usize;
        Some(tile * (TILE * TILE) as usize + ((y % TILE) * TILE + x % TILE) as usize)
    }
}

/// A place handle that points nowhere (see `PlaceCache::place_handle`).
pub const NO_PLACE: u32 = u32::MAX;

fn next_generation() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

impl Default for PlaceCache {
    fn default() -> Self {
        PlaceCache {
            index: FxHashMap::default(),
            arena: Vec::new(),
            scratch: Vec::new(),
            class: None,
            generation: next_generation(),
            far: Far::default(),
            near: Vec::new(),
        }
    }
}

impl Clone for PlaceCache {
    fn clone(&self) -> Self {
        PlaceCache::default()
    }
}

/// A slice of the arena as one u32: its offset (24 bits) and length (8 bits, at least 2).
fn handle(off: u32, len: u8) -> u32 {
    if off >= 0x00ff_ffff {
        NO_PLACE
    } else {
        off | (len as u32) << 24
    }
}

/// An index entry's first field when the answer is one segment, held inline.
const ONE: u32 = 1 << 31;

/// The handle of an answer that is one segment: length 1 and the segment in place of an offset.
/// A single candidate takes the whole of a ping whatever its mass, so the handle needs no mass.
fn one_handle(seg: u32) -> u32 {
    if seg >= 0x00ff_ffff {
        NO_PLACE
    } else {
        seg | 1 << 24
    }
}

/// A ping's raster point, as the cache finds it.
struct Raster {
    /// σ class (index of the σ ladder).
    k: usize,
    /// The class's σ and raster step (m).
    s: f64,
    step: f64,
    /// The point's centre in the matcher's local plane.
    centre: [f64; 2],
    ix: i64,
    iy: i64,
    /// Its key in the index; none when beyond every segment's reach.
    key: Option<u64>,
}

/// What a raster point's ping may be matched to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Place<'a> {
    /// No segment within reach: off-network.
    Off,
    /// One segment, which takes all of it.
    One(u32),
    /// Several, with their masses (sorted by segment).
    Many(&'a [(u32, f32)]),
}

/// Most raster points kept before the cache starts over.
const CACHE_CAP: usize = 1 << 21;

impl PlaceCache {
    /// Candidate segments with their masses for a ping at `lat, lng` with per-axis error `sigma`
    /// (see `Matcher::candidates`: a lone one's mass is given as 1), computed at the centre of its
    /// raster point (a quarter σ across).
    pub fn masses(&mut self, m: &Matcher, lat: f64, lng: f64, sigma: f64) -> &[(u32, f32)] {
        let r = self.raster(m, lat, lng, sigma);
        let Some(key) = r.key else { return &[] };
        let (a, b) = self.answer(m, &r, key);
        if a & ONE != 0 {
            self.scratch.clear();
            self.scratch.push((a & !ONE, f32::from_bits(b)));
            return &self.scratch;
        }
        &self.arena[a as usize..a as usize + b as usize]
    }

    /// `masses` as a `Place`, with a handle that gives the same place back through `at` for as
    /// long as the cache's `generation` stays the same (`NO_PLACE` when it cannot have one): a
    /// caller that asks again for the same point keeps the handle and skips the look-up, whose
    /// cache miss is most of this function's time.
    pub fn place_handle(&mut self, m: &Matcher, lat: f64, lng: f64, sigma: f64) -> (u32, Place<'_>) {
        let r = self.raster(m, lat, lng, sigma);
        let Some(key) = r.key else {
            return (EMPTY_PLACE, Place::Off);
        };
        let slot = self.near_slot(m, &r);
        if let Some(i) = slot {
            let v = self.near[r.k].cells[i];
            if v != 0 {
                return (v - 1, self.at(v - 1));
            }
        }
        let gen = self.generation;
        let v = self.answer(m, &r, key);
        // The cache may have started over in `answer` (grids and all): the slot is gone then.
        let slot = slot.filter(|_| self.generation == gen);
        let h = match v {
            (a, _) if a & ONE != 0 => one_handle(a & !ONE),
            (_, 0) => EMPTY_PLACE,
            // Length 1 in a handle means one segment inline: an arena slice of one (a segment
            // number with the top bit set, never seen) gets no handle.
            (off, len) if len >= 2 => handle(off, len as u8),
            _ => NO_PLACE,
        };
        if let (Some(i), true) = (slot, h != NO_PLACE) {
            self.near[r.k].cells[i] = h + 1;
        }
        let place = match v {
            (a, _) if a & ONE != 0 => Place::One(a & !ONE),
            (_, 0) => Place::Off,
            (off, len) => Place::Many(&self.arena[off as usize..off as usize + len as usize]),
        };
        (h, place)
    }

    /// A ping's raster point: its σ class, centre (local metres) and key in the index (none when
    /// the point is beyond every segment's reach).
    #[inline]
    fn raster(&mut self, m: &Matcher, lat: f64, lng: f64, sigma: f64) -> Raster {
        // σ ladder: 2^(k/2) m, so a class is within ±19 % of the σ asked. Pings of one source
        // mostly share their σ: the class of the last one is kept.
        let (k, s, step) = match self.class {
            Some((sg, k, s, step)) if sg == sigma => (k, s, step),
            _ => {
                let k = (2.0 * sigma.max(1.0).log2()).round().clamp(0.0, 40.0);
                let s = 2f64.powf(k / 2.0);
                let step = (s / 4.0).max(0.5);
                self.class = Some((sigma, k, s, step));
                (k, s, step)
            }
        };
        let p = m.local(lat, lng);
        let (ix, iy) = ((p[0] / step).floor(), (p[1] / step).floor());
        let centre = [(ix + 0.5) * step, (iy + 0.5) * step];
        let key = (!self.far.beyond(m, centre, m.reach(s))).then_some(
            (k as u64) << 56 | ((ix as i64 as u64) & 0x0fff_ffff) << 28 | ((iy as i64 as u64) & 0x0fff_ffff),
        );
        Raster {
            k: k as usize,
            s,
            step,
            centre,
            ix: ix as i64,
            iy: iy as i64,
            key,
        }
    }

    /// The cell of the class's dense grid that holds this raster point's handle, the grid made
    /// the first time its class is asked.
    #[inline]
    fn near_slot(&mut self, m: &Matcher, r: &Raster) -> Option<usize> {
        if self.near.len() <= r.k {
            self.near.resize_with(r.k + 1, Near::default);
        }
        if self.near[r.k].made_for != Far::identity(m) {
            let used: usize = (self.near.iter().enumerate())
                .filter(|(k, _)| *k != r.k)
                .map(|(_, n)| n.cells.len())
                .sum();
            self.near[r.k] = Near::make(m, r.step, NEAR_ALL_CELLS.saturating_sub(used));
        }
        self.near[r.k].slot(r.ix, r.iy)
    }

    /// The index entry of a raster point, the matcher's answer computed and kept the first time.
    #[inline]
    fn answer(&mut self, m: &Matcher, r: &Raster, key: u64) -> (u32, u32) {
        if let Some(&v) = self.index.get(&key) {
            return v;
        }
        if self.index.len() >= CACHE_CAP {
            self.clear();
        }
        m.candidates(r.centre, r.s, &mut self.scratch);
        self.scratch.truncate(u8::MAX as usize);
        let v = match self.scratch[..] {
            [(seg, mass)] if seg & ONE == 0 => (seg | ONE, mass.to_bits()),
            _ => {
                let off = self.arena.len() as u32;
                self.arena.extend_from_slice(&self.scratch);
                (off, self.scratch.len() as u32)
            }
        };
        self.index.insert(key, v);
        v
    }

    /// The place a handle of the current generation stands for.
    pub fn at(&self, handle: u32) -> Place<'_> {
        let (off, len) = ((handle & 0x00ff_ffff) as usize, (handle >> 24) as usize);
        match len {
            0 => Place::Off,
            1 => Place::One(off as u32),
            _ => self.arena.get(off..off + len).map_or(Place::Off, Place::Many),
        }
    }

    /// Changes whenever earlier handles become invalid.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// Forgets everything (the segments changed, or the cache is full); handles given out so far
    /// are no longer valid.
    pub fn clear(&mut self) {
        self.index.clear();
        self.arena.clear();
        self.far = Far::default();
        self.near.clear();
        self.generation = next_generation();
    }

    /// Raster points held.
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn square(x0: f64, y0: f64, w: f64, h: f64) -> Ring {
        vec![[x0, y0], [x0 + w, y0], [x0 + w, y0 + h], [x0, y0 + h]]
    }

    fn phi(x: f64) -> f64 {
        // Standard normal CDF via erf's series-free approximation (Abramowitz–Stegun 7.1.26).
        let t = 1.0 / (1.0 + 0.327_591_1 * x.abs() / 2f64.sqrt());
        let y = 1.0
            - (((((1.061_405_429 * t - 1.453_152_027) * t) + 1.421_413_741) * t - 0.284_496_736) * t
                + 0.254_829_592)
                * t
                * (-(x * x) / 2.0).exp();
        if x >= 0.0 {
            0.5 * (1.0 + y)
        } else {
            0.5 * (1.0 - y)
        }
    }

    #[test]
    fn the_mass_of_a_rectangle_is_the_product_of_two_normal_intervals() {
        let r = square(-3.0, -5.0, 10.0, 8.0);
        for (p, s) in [
            ([0.0, 0.0], 2.0),
            ([6.0, 2.5], 3.0),
            ([-9.0, 0.0], 4.0),
            ([0.0, 0.0], 40.0),
        ] {
            let want = (phi((7.0 - p[0]) / s) - phi((-3.0 - p[0]) / s))
                * (phi((3.0 - p[1]) / s) - phi((-5.0 - p[1]) / s));
            let got = ring_mass(&r, p, s).abs();
            assert!((got - want).abs() < 2e-3, "{p:?} σ {s}: {got} vs {want}");
        }
        // Orientation only flips the sign.
        let mut rev = r.clone();
        rev.reverse();
        assert!((ring_mass(&rev, [1.0, 1.0], 3.0) + ring_mass(&r, [1.0, 1.0], 3.0)).abs() < 1e-9);
    }

    #[test]
    fn a_ping_is_matched_out_to_the_radius_holding_99_7_percent_of_a_two_dimensional_error() {
        // 1 − e^(−k²/2) is the share of a 2-D Gaussian within k σ: 3σ, the 1-D rule, holds 98.9 %.
        assert!(1.0 - (-MATCH_SIGMAS * MATCH_SIGMAS / 2.0).exp() >= 0.997);
        let poly = geo::Polygon::new(
            geo::LineString::from(vec![
                (121.49, 31.24),
                (121.4901, 31.24),
                (121.4901, 31.2401),
                (121.49, 31.2401),
            ]),
            vec![],
        );
        let m = Matcher::new(&[&poly], 100.0);
        let (east, mid) = (m.bounds[2], (m.bounds[1] + m.bounds[3]) / 2.0);
        let mut out = Vec::new();
        // σ 10 m: a person on the street's edge whose fix lands 33 m out is still the street's…
        m.masses([east + 33.0, mid], 10.0, &mut out);
        assert_eq!(out.len(), 1, "3.3σ out");
        // …one 35 m out is beyond 99.7 % of such errors: off-network.
        m.masses([east + 35.0, mid], 10.0, &mut out);
        assert!(out.is_empty(), "3.5σ out: {out:?}");
    }

    #[test]
    fn containment_and_distance() {
        let r = square(0.0, 0.0, 10.0, 4.0);
        assert!(ring_contains(&r, [5.0, 2.0]));
        assert!(!ring_contains(&r, [5.0, 6.0]));
        assert!((ring_distance(&r, [5.0, 7.0]) - 3.0).abs() < 1e-9);
        assert!((ring_distance(&r, [13.0, 8.0]) - 5.0).abs() < 1e-9);
        assert!((ring_area(&r).abs() - 40.0).abs() < 1e-9);
    }
}

#[cfg(test)]
mod bund {
    use geo::Contains;

    fn the_bund() -> crate::scenario::SegmentMap {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/bund/segments.geojson");
        crate::scenario::SegmentMap::load(&dir, h3o::Resolution::Eleven).unwrap()
    }

    /// Uniform numbers in [0, 1) from a seed (xorshift: the same points every run).
    fn uniform(seed: u64) -> impl FnMut() -> f64 {
        let mut x = seed;
        move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    #[test]
    fn containment_agrees_with_geo_on_the_bund() {
        let map = the_bund();
        let m = map.matcher();
        let mut rnd = uniform(7);
        let b = map.bbox().unwrap();
        let mut bad = 0;
        for _ in 0..20000 {
            let (lng, lat) = (b[0] + rnd() * (b[2] - b[0]), b[1] + rnd() * (b[3] - b[1]));
            for (i, s) in map.segments().iter().enumerate() {
                let g = s.polygon.contains(&geo::Point::new(lng, lat));
                let d = m.distance(i, m.local(lat, lng));
                if g != (d == 0.0) {
                    bad += 1;
                }
            }
        }
        assert_eq!(bad, 0);
    }

    /// The off-network shortcut (`Far`) must give the answer the matcher gives at the same raster
    /// point, and must answer pings far from every street without touching the cache's index.
    #[test]
    fn the_far_grid_answers_off_network_pings_exactly_as_the_matcher_and_without_a_look_up() {
        let map = the_bund();
        let m = map.matcher();
        let mut rnd = uniform(11);
        let b = map.bbox().unwrap();
        // Half a kilometre beyond the segments' box on every side.
        let (dlat, dlng) = (0.005, 0.005);
        let mut cache = super::PlaceCache::default();
        let (mut empty, mut matched) = (0, 0);
        let mut want = Vec::new();
        for n in 0..40_000 {
            let lat = b[1] - dlat + rnd() * (b[3] - b[1] + 2.0 * dlat);
            let lng = b[0] - dlng + rnd() * (b[2] - b[0] + 2.0 * dlng);
            let sigma: f64 = [1.0, 3.3, 9.9, 19.8, 60.0][n % 5];
            // The class and raster point `place_handle` computes at.
            let k = (2.0 * sigma.max(1.0).log2()).round().clamp(0.0, 40.0);
            let s = 2f64.powf(k / 2.0);
            let step = (s / 4.0).max(0.5);
            let p = m.local(lat, lng);
            let centre = [
                ((p[0] / step).floor() + 0.5) * step,
                ((p[1] / step).floor() + 0.5) * step,
            ];
            m.candidates(centre, s, &mut want);
            let got = cache.masses(m, lat, lng, sigma);
            assert_eq!(got, &want[..], "ping {lat},{lng} σ {sigma}");
            if want.is_empty() {
                empty += 1;
            } else {
                matched += 1;
            }
        }
        assert!(
            empty > 10_000 && matched > 1_000,
            "{empty} off-network, {matched} matched"
        );
        // A kilometre from every segment: answered, and nothing entered into the index.
        let mut fresh = super::PlaceCache::default();
        for i in 0..100 {
            let (h, c) = fresh.place_handle(m, b[1] - 0.01 - i as f64 * 1e-4, b[0] - 0.01, 10.0);
            assert_eq!(c, super::Place::Off);
            assert_eq!(fresh.at(h), super::Place::Off);
        }
        assert_eq!(fresh.len(), 0);
    }

    /// A place (and the handle kept for it) is the matcher's answer: off-network when it has no
    /// candidate, one segment inline when it has one, the candidates with their masses otherwise;
    /// asked again, from the index or through the handle, the same.
    #[test]
    fn candidates_are_the_masses_but_a_lone_one_is_not_integrated() {
        let map = the_bund();
        let m = map.matcher();
        let b = map.bbox().unwrap();
        let mut rnd = uniform(0x5eed_cafe);
        let (mut lone, mut several) = (0, 0);
        let (mut want, mut got) = (Vec::new(), Vec::new());
        for n in 0..20_000 {
            let lat = b[1] - 0.001 + rnd() * (b[3] - b[1] + 0.002);
            let lng = b[0] - 0.001 + rnd() * (b[2] - b[0] + 0.002);
            let sigma = [1.0, 5.0, 15.0, 30.0][n % 4];
            let p = m.local(lat, lng);
            m.masses(p, sigma, &mut want);
            m.candidates(p, sigma, &mut got);
            if want.len() == 1 {
                lone += 1;
                assert_eq!(got, [(want[0].0, 1.0)], "{lat},{lng} σ {sigma}");
            } else {
                several += (want.len() > 1) as usize;
                assert_eq!(got, want, "{lat},{lng} σ {sigma}");
            }
        }
        assert!(lone > 1_000 && several > 1_000, "{lone} lone, {several} several");
    }

    #[test]
    fn places_and_their_handles_are_the_matchers_answers() {
        use super::Place;
        let map = the_bund();
        let m = map.matcher();
        let mut rnd = uniform(5);
        let b = map.bbox().unwrap();
        let mut cache = super::PlaceCache::default();
        let (mut off, mut one, mut many) = (0, 0, 0);
        let mut want = Vec::new();
        for n in 0..20_000 {
            let lat = b[1] - 0.001 + rnd() * (b[3] - b[1] + 0.002);
            let lng = b[0] - 0.001 + rnd() * (b[2] - b[0] + 0.002);
            let sigma: f64 = [2.0, 7.5, 15.0, 30.0][n % 4];
            want.clear();
            want.extend_from_slice(cache.masses(m, lat, lng, sigma));
            let owned = |p: Place| match p {
                Place::Off => (0, Vec::new()),
                Place::One(j) => (1, vec![(j, 0.0)]),
                Place::Many(c) => (2, c.to_vec()),
            };
            for _ in 0..2 {
                let (h, place) = cache.place_handle(m, lat, lng, sigma);
                let place = owned(place);
                match (&place, &want[..]) {
                    ((0, _), []) => off += 1,
                    ((1, c), [(k, _)]) if c[0].0 == *k => one += 1,
                    ((2, c), w) if c == w && w.len() > 1 => many += 1,
                    (p, w) => panic!("{p:?} for the matcher's {w:?}"),
                }
                assert_ne!(h, super::NO_PLACE);
                assert_eq!(owned(cache.at(h)), place);
            }
        }
        assert!(
            off > 1_000 && one > 1_000 && many > 1_000,
            "{off} off, {one} one, {many} many"
        );
        // Asked again with the index gone, the dense grids still answer: nothing is recomputed.
        // (σ 2 m is left out: its 0.5 m grid over the Bund would pass the cap, so that class
        // has none and stays with the index, as the loop above checked.)
        let mut rnd = uniform(6);
        let asked: Vec<(f64, f64, f64, u32)> = (0..3_000)
            .map(|n| {
                let lat = b[1] - 0.001 + rnd() * (b[3] - b[1] + 0.002);
                let lng = b[0] - 0.001 + rnd() * (b[2] - b[0] + 0.002);
                let sigma: f64 = [7.5, 15.0, 30.0][n % 3];
                (lat, lng, sigma, cache.place_handle(m, lat, lng, sigma).0)
            })
            .collect();
        cache.index.clear();
        for (lat, lng, sigma, h) in asked {
            assert_eq!(cache.place_handle(m, lat, lng, sigma).0, h);
        }
        assert_eq!(
            cache.len(),
            0,
            "answered from the grids, not recomputed into the index"
        );
    }

    /// A matcher whose reach no finite grid can cover still answers, through the index.
    #[test]
    fn with_no_grid_that_fits_every_ping_still_gets_the_matchers_answer() {
        let map = the_bund();
        let polygons: Vec<&geo::Polygon<f64>> = map.segments().iter().map(|s| &s.polygon).collect();
        let m = super::Matcher::new(&polygons, 1e300);
        // A corner of the first segment: on the network.
        let corner = map.segments()[0].polygon.exterior().0[0];
        let (lat, lng) = (corner.y, corner.x);
        let mut cache = super::PlaceCache::default();
        let mut want = Vec::new();
        let p = m.local(lat, lng);
        // σ 16 m: class σ 16, raster step 4 m.
        let centre = [
            ((p[0] / 4.0).floor() + 0.5) * 4.0,
            ((p[1] / 4.0).floor() + 0.5) * 4.0,
        ];
        m.candidates(centre, 16.0, &mut want);
        assert!(!want.is_empty());
        assert_eq!(cache.masses(&m, lat, lng, 16.0), &want[..]);
        assert_eq!(cache.len(), 1);
    }
}
