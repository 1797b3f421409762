//! Point → H3 cell, always the cell h3o's `LatLng::to_cell` gives, at a fraction of its cost where
//! points cluster — and a crowd is nothing but clustered points.
//!
//! h3o projects every point onto an icosahedron face (trigonometry: `sincos`, `atan2`, `tan`) and
//! rounds on the hex grid; at ~0.5 µs a point that was most of the ingest cost. Here the plane is cut
//! into small squares (about a third of a cell edge). Each square remembers the cells h3o gave for
//! points inside it (one to four), each cell kept as its six edges in a local plane. A point that
//! lies inside one of those hexagons by at least a safety margin gets that cell with a few
//! multiply-adds; every other point — a new square, a point within the margin of an edge, a
//! pentagon, a cell cut by an icosahedron edge, the polar caps, the antimeridian — is answered by
//! h3o itself, and its cell joins the square's list.
//!
//! Why the margin makes this exact: a cell's edges are great-circle arcs (straight lines in H3's
//! gnomonic face projection). In the local plane used here (degrees, longitude scaled by the cosine
//! of the cell's latitude) an arc of length L bows away from its chord by at most about
//! L²·tan|lat| / 8R — under 0.1 mm for a 29 m edge (resolution 11) and 12 mm for a 530 m edge
//! (resolution 8) at 70° of latitude, where the fast path stops. The margin is 5 cm plus 1e-6·L²
//! (m), over 18 times that bow, and 10⁷ times the rounding error of either computation. A point
//! further than the margin inside all six chords is therefore inside the true cell, where h3o's
//! rounding cannot land anywhere else. Tests compare both on millions of points, including points
//! millimetres from edges and vertices, across the globe and resolutions 7 to 15.
//!
//! The cache is per thread (ingest parses on several), bounded, and simply dropped when full.

use std::cell::RefCell;

use h3o::error::InvalidLatLng;
use h3o::{CellIndex, LatLng, Resolution};
use rustc_hash::FxHashMap;

/// Squares a thread remembers before it starts afresh: ~13 km² at resolution 11, ~6 MB.
const MAX_SQUARES: usize = 1 << 17;
/// Cells remembered per square (a square a third of an edge wide touches at most four).
const PER_SQUARE: usize = 4;
/// Beyond this latitude great circles bend too much in the local plane; h3o answers.
const MAX_FAST_LAT: f64 = 70.0;
/// Near the antimeridian longitudes wrap; h3o answers.
const MAX_FAST_LNG: f64 = 179.0;
/// Metres per degree of latitude, rounded down so that margins in degrees err on the safe side.
const M_PER_DEG: f64 = 110_000.0;

/// The H3 cell holding (`lat`, `lng`) in degrees at `res`: exactly `LatLng::new(lat, lng)?.to_cell(res)`.
pub fn locate(lat: f64, lng: f64, res: Resolution) -> Result<CellIndex, InvalidLatLng> {
    let ll = LatLng::new(lat, lng)?;
    if u8::from(res) < 7 || lat.abs() > MAX_FAST_LAT || lng.abs() > MAX_FAST_LNG {
        return Ok(ll.to_cell(res));
    }
    Ok(CACHE.with(|c| c.borrow_mut().locate(ll, lat, lng, res)))
}

thread_local! {
    static CACHE: RefCell<Cache> = RefCell::new(Cache::default());
}

/// One cell as six inward half-planes in its local plane, shrunk by the margin.
struct Hex {
    cell: CellIndex,
    /// False until the cell is met a second time in a square: its boundary (about 1 µs) is only
    /// worth computing where points come back.
    built: bool,
    lat0: f64,
    lng0: f64,
    /// cos(lat0): scales longitude differences to latitude degrees.
    kx: f64,
    /// Per edge (a, b, c): inside by the margin iff a·x + b·y + c ≥ 0.
    edges: [[f64; 3]; 6],
}

impl Hex {
    /// The cell's geometry, or one that holds no point where the fast path must not be used.
    fn new(cell: CellIndex) -> Hex {
        Hex::shape(cell).unwrap_or(Hex {
            built: true,
            ..Hex::pending(cell)
        })
    }

    /// A cell whose geometry is not computed yet: it holds no point.
    fn pending(cell: CellIndex) -> Hex {
        Hex {
            cell,
            built: false,
            lat0: 0.0,
            lng0: 0.0,
            kx: 0.0,
            edges: [[0.0, 0.0, -1.0]; 6],
        }
    }

    fn shape(cell: CellIndex) -> Option<Hex> {
        if cell.is_pentagon() {
            return None;
        }
        let boundary = cell.boundary();
        // More than six vertices: the cell is cut by an icosahedron edge.
        if boundary.len() != 6 {
            return None;
        }
        let centre = LatLng::from(cell);
        let (lat0, lng0) = (centre.lat(), centre.lng());
        let kx = lat0.to_radians().cos();
        let res = cell.resolution();
        let edge_m = res.edge_length_m();
        let margin = (0.05 + 1e-6 * edge_m * edge_m) / M_PER_DEG;
        let mut v = [(0.0, 0.0); 6];
        for (slot, p) in v.iter_mut().zip(boundary.iter()) {
            let dx = p.lng() - lng0;
            if dx.abs() > 1.0 {
                return None; // wraps the antimeridian
            }
            *slot = (dx * kx, p.lat() - lat0);
        }
        let mut edges = [[0.0; 3]; 6];
        for i in 0..6 {
            let (a, b) = (v[i], v[(i + 1) % 6]);
            let (dx, dy) = (b.0 - a.0, b.1 - a.1);
            let len = (dx * dx + dy * dy).sqrt();
            if len <= 0.0 {
                return None;
            }
            let (mut nx, mut ny) = (-dy / len, dx / len);
            let mut c = -(nx * a.0 + ny * a.1);
            // Orient the normal towards the centre (the origin), whatever the vertex order.
            if c < 0.0 {
                (nx, ny, c) = (-nx, -ny, -c);
            }
            edges[i] = [nx, ny, c - margin];
        }
        // Convex and comfortably wider than the margin, or not used at all.
        for e in &edges {
            if e[2] <= 0.0 || v.iter().any(|p| e[0] * p.0 + e[1] * p.1 + e[2] < -2.0 * margin) {
                return None;
            }
        }
        Some(Hex {
            cell,
            built: true,
            lat0,
            lng0,
            kx,
            edges,
        })
    }

    /// True when the point lies inside the cell by at least the margin.
    #[inline]
    fn holds(&self, lat: f64, lng: f64) -> bool {
        let x = (lng - self.lng0) * self.kx;
        let y = lat - self.lat0;
        self.edges.iter().all(|e| e[0] * x + e[1] * y + e[2] >= 0.0)
    }
}

/// Cells seen in one square, as indices into `Cache::hexes`.
#[derive(Default, Clone, Copy)]
struct Square {
    hexes: [u32; PER_SQUARE],
    len: u8,
}

/// A thread's memory of squares and cells, for one resolution at a time.
#[derive(Default)]
struct Cache {
    res: Option<Resolution>,
    /// Square side, degrees.
    side: f64,
    squares: FxHashMap<u64, Square>,
    hexes: Vec<Hex>,
    by_cell: FxHashMap<CellIndex, u32>,
    /// Points answered from the cache, and by h3o, since the last reset.
    hits: u64,
    misses: u64,
    /// Points left to send straight to h3o: set when the cache filled up without helping (points
    /// spread over a whole region rarely share a square), so sparse feeds pay only h3o's price.
    bypass: u32,
}

impl Cache {
    fn reset(&mut self, res: Resolution) {
        if self.res == Some(res) && self.hits < self.misses {
            self.bypass = (4 * MAX_SQUARES) as u32;
        }
        (self.hits, self.misses) = (0, 0);
        self.res = Some(res);
        self.side = res.edge_length_m() / 3.0 / M_PER_DEG;
        self.squares.clear();
        self.hexes.clear();
        self.by_cell.clear();
    }

    fn locate(&mut self, ll: LatLng, lat: f64, lng: f64, res: Resolution) -> CellIndex {
        if self.bypass > 0 && self.res == Some(res) {
            self.bypass -= 1;
            return ll.to_cell(res);
        }
        if self.res != Some(res) || self.squares.len() >= MAX_SQUARES {
            self.reset(res);
        }
        let row = (lat / self.side).floor() as i32;
        let col = (lng / self.side).floor() as i32;
        let key = (u64::from(row as u32) << 32) | u64::from(col as u32);
        let square = self.squares.entry(key).or_default();
        for &i in &square.hexes[..usize::from(square.len)] {
            let h = &self.hexes[i as usize];
            if h.holds(lat, lng) {
                self.hits += 1;
                return h.cell;
            }
        }
        self.misses += 1;
        let cell = ll.to_cell(res);
        let known = square.hexes[..usize::from(square.len)]
            .iter()
            .copied()
            .find(|&i| self.hexes[i as usize].cell == cell);
        match known {
            // Met again in this square: now its shape is worth computing.
            Some(i) if !self.hexes[i as usize].built => self.hexes[i as usize] = Hex::new(cell),
            Some(_) => {}
            None if usize::from(square.len) < PER_SQUARE => {
                let i = match self.by_cell.get(&cell) {
                    Some(&i) => i,
                    None => {
                        let i = self.hexes.len() as u32;
                        self.hexes.push(Hex::pending(cell));
                        self.by_cell.insert(cell, i);
                        i
                    }
                };
                square.hexes[usize::from(square.len)] = i;
                square.len += 1;
            }
            None => {}
        }
        cell
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift: reproducible points without a dependency.
    struct Rng(u64);
    impl Rng {
        fn f64(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 11) as f64 / (1u64 << 53) as f64
        }
    }

    fn same(lat: f64, lng: f64, res: Resolution) {
        let want = LatLng::new(lat, lng).unwrap().to_cell(res);
        assert_eq!(locate(lat, lng, res).unwrap(), want, "({lat}, {lng}) at {res:?}");
    }

    #[test]
    fn crowded_points_get_h3os_cell() {
        let mut r = Rng(0x9e37_79b9_7f4a_7c15);
        for _ in 0..1_000_000 {
            let lat = 31.233 + r.f64() * 0.0115;
            let lng = 121.476 + r.f64() * 0.0175;
            same(lat, lng, Resolution::Eleven);
        }
    }

    #[test]
    fn points_beside_edges_and_vertices_get_h3os_cell() {
        // Around every vertex and along every edge of a patch of cells, at 1 mm to 1 m off the line
        // on both sides: the places a shortcut would go wrong.
        let mut r = Rng(7);
        for res in [
            Resolution::Seven,
            Resolution::Nine,
            Resolution::Eleven,
            Resolution::Fifteen,
        ] {
            let base = LatLng::new(31.2365, 121.4845).unwrap().to_cell(res);
            let patch: Vec<CellIndex> = base.grid_disk(3);
            // Warm the squares with interior points first, so the fast path is taken afterwards.
            for c in &patch {
                let p = LatLng::from(*c);
                same(p.lat(), p.lng(), res);
            }
            for c in &patch {
                let b = c.boundary();
                let n = b.len();
                for i in 0..n {
                    let (a, z) = (b[i], b[(i + 1) % n]);
                    for k in 0..=20 {
                        let t = f64::from(k) / 20.0;
                        let lat = a.lat() + (z.lat() - a.lat()) * t;
                        let lng = a.lng() + (z.lng() - a.lng()) * t;
                        for off_m in [1e-3, 1e-2, 0.049, 0.051, 0.2, 1.0] {
                            let d = off_m / 111_000.0;
                            let ang = r.f64() * std::f64::consts::TAU;
                            same(lat + d * ang.sin(), lng + d * ang.cos(), res);
                            same(lat - d * ang.sin(), lng - d * ang.cos(), res);
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn clusters_across_the_globe_and_resolutions_get_h3os_cell() {
        // Clusters of points (so squares are revisited and the fast path runs) around random
        // centres everywhere, including near icosahedron edges, pentagons, poles and the antimeridian.
        let mut r = Rng(42);
        for res in 7..=15u8 {
            let res = Resolution::try_from(res).unwrap();
            let spread = res.edge_length_m() * 4.0 / 111_000.0;
            for _ in 0..300 {
                let clat = r.f64() * 180.0 - 90.0;
                let clng = r.f64() * 360.0 - 180.0;
                for _ in 0..60 {
                    let lat = (clat + (r.f64() - 0.5) * spread).clamp(-90.0, 90.0);
                    let lng = (clng + (r.f64() - 0.5) * spread).clamp(-180.0, 180.0);
                    same(lat, lng, res);
                }
            }
        }
        // Every pentagon's neighbourhood at resolution 9.
        for p in CellIndex::base_cells()
            .filter(|c| c.is_pentagon())
            .map(|c| c.center_child(Resolution::Nine).unwrap())
        {
            let c = LatLng::from(p);
            for _ in 0..200 {
                let d = 0.02 * (r.f64() - 0.5);
                let e = 0.02 * (r.f64() - 0.5);
                same(
                    (c.lat() + d).clamp(-90.0, 90.0),
                    (c.lng() + e).clamp(-180.0, 180.0),
                    Resolution::Nine,
                );
            }
        }
    }

    #[test]
    fn the_fast_path_is_taken_for_a_crowd() {
        // A measurable claim: after warming, nearly every crowded point is answered without h3o.
        let res = Resolution::Eleven;
        let mut r = Rng(99);
        let pts: Vec<(f64, f64)> = (0..200_000)
            .map(|_| (31.233 + r.f64() * 0.005, 121.476 + r.f64() * 0.005))
            .collect();
        for &(lat, lng) in &pts {
            locate(lat, lng, res).unwrap();
        }
        let fast = CACHE.with(|c| {
            let c = c.borrow();
            pts.iter()
                .filter(|&&(lat, lng)| {
                    let row = (lat / c.side).floor() as i32;
                    let col = (lng / c.side).floor() as i32;
                    let key = (u64::from(row as u32) << 32) | u64::from(col as u32);
                    c.squares.get(&key).is_some_and(|s| {
                        s.hexes[..usize::from(s.len)]
                            .iter()
                            .any(|&i| c.hexes[i as usize].holds(lat, lng))
                    })
                })
                .count()
        });
        assert!(fast as f64 > 0.97 * pts.len() as f64, "{fast} of {}", pts.len());
    }

    #[test]
    fn invalid_points_are_refused_like_h3o() {
        assert!(locate(f64::NAN, 0.0, Resolution::Eleven).is_err());
        assert!(locate(0.0, f64::INFINITY, Resolution::Eleven).is_err());
    }
}
