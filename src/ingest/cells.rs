//! Point → H3 cell, always the cell h3o's `LatLng::to_cell` gives, at a fraction of its cost where
//! points cluster — and a crowd is nothing but clustered points.
//!
//! h3o projects every point onto an icosahedron face (trigonometry: `sincos`, `atan2`, `tan`) and
//! rounds on the hex grid; at ~0.5 µs a point that was most of the ingest cost. Here the plane is cut
//! into tiles about four cells wide. Within a tile, H3's cell centres form a hexagonal lattice up to
//! an affine map of latitude and longitude (the face's gnomonic projection is smooth; over a tile it
//! is affine to well under a millimetre at resolution 11). A tile fits that map once, from h3o's own
//! cells around its middle, and keeps a small array of lattice slots. A point then costs an affine
//! map, a nearest-lattice-point rounding and one array read: the slot's cell, when the point lies
//! inside the slot's hexagon by more than the slot's margin. Every other point — a new tile or
//! slot, a point within a margin of an edge, a pentagon, a cell cut by an icosahedron edge, the
//! polar caps, the antimeridian — is answered by h3o itself.
//!
//! Why this is exact: a slot is trusted only after its own cell was checked against h3o. The first
//! point deep inside a slot is answered by h3o; that cell's centre must map onto the slot's lattice
//! point, and its six boundary vertices (h3o's, mapped the same way) onto the ideal hexagon's,
//! within a measured distance d. The true cell's edges are great-circle arcs, which bow away from
//! their chords in the local plane by at most about L²·tan|lat| / 8R (under 0.1 mm for a 29 m edge).
//! So the true cell contains the ideal hexagon shrunk by d + that bow, and a point further inside
//! the ideal hexagon than d + 5 cm + 1e-6·L² (m) is inside the true cell, where h3o's rounding cannot
//! land anywhere else. The fit's quality decides only how often the fast path is taken, never its
//! answer. Tests compare both on millions of points, including points millimetres from edges and
//! vertices, across the globe and resolutions 7 to 15.
//!
//! The first version cut the plane into squares a third of an edge wide, each remembering up to four
//! cells as half-planes: right, but ~30,000 squares for 2 km², a hash probe into megabytes per point
//! and a cache miss behind it (17 % of `replay --print`, issue 20). A tile's lattice needs no probe
//! per cell: the Bund's 2 km² is ~70 tiles and ~120 kB.
//!
//! The cache is per thread (ingest parses on several), bounded, and simply dropped when full.

use std::cell::RefCell;

use h3o::error::InvalidLatLng;
use h3o::{CellIndex, LatLng, Resolution};
use rustc_hash::FxHashMap;

/// Tiles a thread remembers before it starts afresh (each ~1 kB once built).
const MAX_TILES: usize = 1 << 15;
/// Tile side, in lattice spacings (centre to neighbouring centre).
const TILE_SPACINGS: f64 = 4.0;
/// Beyond this latitude great circles bend too much in the local plane; h3o answers.
const MAX_FAST_LAT: f64 = 70.0;
/// Near the antimeridian longitudes wrap; h3o answers.
const MAX_FAST_LNG: f64 = 179.0;
/// Metres per degree of latitude, rounded down so that margins in degrees err on the safe side.
const M_PER_DEG: f64 = 110_000.0;
/// A slot is checked against h3o only with a point this far (lattice units) inside its hexagon,
/// so that a fit error can never make a neighbour's cell look like the slot's.
const FILL_DEPTH: f64 = 0.1;
/// A tile whose fit misses a fitted centre by more than this (lattice units) is not used.
const MAX_FIT_ERROR: f64 = 0.02;
/// A checked cell whose centre or vertices are further than this from the ideal ones (lattice
/// units) never gets the fast path.
const MAX_SLOT_ERROR: f64 = 0.05;
const SQRT3: f64 = 1.732_050_807_568_877_2;
/// A tile met this many times is built (a build costs ~100 h3o calls; points spread over a whole
/// city rarely come back to a tile that often, and keep h3o's price).
const BUILD_AFTER: u32 = 16;

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

/// One lattice slot: its cell once checked, and how far inside the ideal hexagon (lattice units) a
/// point must lie to be given it.
#[derive(Clone, Copy)]
struct Slot {
    cell: Option<CellIndex>,
    margin: f64,
}

/// Not checked yet.
const EMPTY: Slot = Slot {
    cell: None,
    margin: f64::INFINITY,
};
/// Checked and refused: its points always go to h3o.
const REFUSED: Slot = Slot {
    cell: None,
    margin: f64::MAX,
};

/// Where a point falls in a tile's lattice.
enum Found {
    /// Inside a checked slot's cell.
    Cell(CellIndex),
    /// Deep inside an unchecked slot: h3o's answer should be checked and kept there.
    Unchecked(usize),
    /// h3o must answer (near an edge, a refused slot, outside the tile's slots).
    Ask,
}

/// A tile: its affine map from the local plane to the lattice, and its slots.
struct Tile {
    lat0: f64,
    lng0: f64,
    /// cos(lat0): scales longitude differences to latitude degrees.
    kx: f64,
    /// i = m[0]·x + m[1]·y + m[2], j = m[3]·x + m[4]·y + m[5]: a point's lattice coordinates, in
    /// which cell centres sit at whole (i, j), at i·(1, 0) + j·(−½, √3/2) in a plane where they are
    /// one spacing apart (H3's IJ axes, 120° apart).
    m: [f64; 6],
    /// 5 cm plus the arcs' bow, in lattice units (the map's largest stretch, so never less).
    base_margin: f64,
    i0: i32,
    j0: i32,
    w: i32,
    h: i32,
    /// Where its slots start in `Cache::slots`: w × h of them, row-major over (j − j0, i − i0)
    /// (one array for every tile: a point's slot is one load away from its tile).
    base: usize,
}

impl Tile {
    /// A tile with no slots: every point in it goes to h3o.
    fn unusable() -> Tile {
        Tile {
            lat0: 0.0,
            lng0: 0.0,
            kx: 0.0,
            m: [0.0; 6],
            base_margin: f64::INFINITY,
            i0: 0,
            j0: 0,
            w: 0,
            h: 0,
            base: 0,
        }
    }

    /// The tile around (`lat`, `lng`) (its middle) spanning `side` degrees of latitude and longitude.
    fn build(lat: f64, lng: f64, side: f64, res: Resolution) -> Tile {
        Tile::fit(lat, lng, side, res).unwrap_or_else(Tile::unusable)
    }

    fn fit(lat: f64, lng: f64, side: f64, res: Resolution) -> Option<Tile> {
        let anchor = LatLng::new(lat, lng).ok()?.to_cell(res);
        if anchor.is_pentagon() {
            return None;
        }
        let kx = lat.to_radians().cos();
        let local = |p: LatLng| ((p.lng() - lng) * kx, p.lat() - lat);
        let a = anchor.to_local_ij(anchor).ok()?.coord;
        // Least squares over the disk of radius 2: (x, y, 1) → X and → Y.
        let disk: Vec<CellIndex> = anchor.grid_disk(2);
        let mut pts = Vec::with_capacity(disk.len());
        for c in disk {
            if c.is_pentagon() {
                return None;
            }
            let ij = c.to_local_ij(anchor).ok()?.coord;
            let (di, dj) = (f64::from(ij.i - a.i), f64::from(ij.j - a.j));
            pts.push((local(LatLng::from(c)), (di - dj / 2.0, dj * SQRT3 / 2.0)));
        }
        let mx = solve3(&pts, |t| t.0)?;
        let my = solve3(&pts, |t| t.1)?;
        let m = [mx[0], mx[1], mx[2], my[0], my[1], my[2]];
        let at = |p: (f64, f64)| (m[0] * p.0 + m[1] * p.1 + m[2], m[3] * p.0 + m[4] * p.1 + m[5]);
        for &(p, want) in &pts {
            let got = at(p);
            if (got.0 - want.0).hypot(got.1 - want.1) > MAX_FIT_ERROR {
                return None;
            }
        }
        // Slots covering the tile's corners, one ring beyond.
        let half = side / 2.0;
        let (mut ilo, mut ihi, mut jlo, mut jhi) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for (dy, dx) in [(-half, -half), (-half, half), (half, -half), (half, half)] {
            let (x, y) = at((dx * kx, dy));
            let j = y * 2.0 / SQRT3;
            let i = x + j / 2.0;
            (ilo, ihi, jlo, jhi) = (ilo.min(i), ihi.max(i), jlo.min(j), jhi.max(j));
        }
        let (i0, j0) = (ilo.floor() as i32 - 1, jlo.floor() as i32 - 1);
        let (w, h) = (ihi.ceil() as i32 + 2 - i0, jhi.ceil() as i32 + 2 - j0);
        if !(1..=64).contains(&w) || !(1..=64).contains(&h) {
            return None;
        }
        let edge_m = res.edge_length_m();
        let stretch = m[0].hypot(m[1]).hypot(m[3].hypot(m[4]));
        // Fold the plane's (X, Y) → (i, j) into the map: j = 2Y/√3, i = X + j/2.
        let j: [f64; 3] = [m[3], m[4], m[5]].map(|v| v * 2.0 / SQRT3);
        let m = [
            m[0] + j[0] / 2.0,
            m[1] + j[1] / 2.0,
            m[2] + j[2] / 2.0,
            j[0],
            j[1],
            j[2],
        ];
        Some(Tile {
            lat0: lat,
            lng0: lng,
            kx,
            m,
            base_margin: (0.05 + 1e-6 * edge_m * edge_m) / M_PER_DEG * stretch,
            i0,
            j0,
            w,
            h,
            base: 0,
        })
    }

    /// Lattice coordinates (i, j) of a point.
    #[inline]
    fn lattice(&self, lat: f64, lng: f64) -> (f64, f64) {
        let x = (lng - self.lng0) * self.kx;
        let y = lat - self.lat0;
        let m = &self.m;
        (m[0] * x + m[1] * y + m[2], m[3] * x + m[4] * y + m[5])
    }

    /// The nearest lattice point to (i, j), and how far inside its hexagon (lattice units) the
    /// point lies.
    #[inline]
    fn nearest(p: (f64, f64)) -> (i32, i32, f64) {
        // Cube rounding (x = i − j, z = j, y = −x − z), with selects rather than branches: the
        // coordinate that rounded furthest is recomputed from the other two.
        let (x, z) = (p.0 - p.1, p.1);
        let y = -x - z;
        let round = |v: f64| f64::from(floor(v + 0.5));
        let (rx, ry, rz) = (round(x), round(y), round(z));
        let (dx, dy, dz) = ((rx - x).abs(), (ry - y).abs(), (rz - z).abs());
        let fix_x = dx > dy && dx > dz;
        let fix_z = !fix_x && dy <= dz;
        let rx = if fix_x { -ry - rz } else { rx };
        let rz = if fix_z { -rx - ry } else { rz };
        let (i, j) = (rx + rz, rz);
        // Neighbours lie at ±(1, 0), ±(−½, √3/2), ±(½, √3/2) in the plane; the bisector with each
        // is ½ away. In lattice terms, with (du, dv) the offset from the centre:
        let (du, dv) = (p.0 - i, p.1 - j);
        let a = (du - dv / 2.0).abs();
        let b = (dv - du / 2.0).abs();
        let c = ((du + dv) / 2.0).abs();
        (i as i32, j as i32, 0.5 - a.max(b).max(c))
    }

    #[inline]
    fn find(&self, slots: &[Slot], lat: f64, lng: f64) -> Found {
        let (i, j, depth) = Tile::nearest(self.lattice(lat, lng));
        let (si, sj) = (i - self.i0, j - self.j0);
        if si < 0 || sj < 0 || si >= self.w || sj >= self.h {
            return Found::Ask;
        }
        let at = self.base + (sj * self.w + si) as usize;
        let Some(&s) = slots.get(at) else {
            return Found::Ask;
        };
        match s.cell {
            Some(cell) if depth > s.margin => Found::Cell(cell),
            None if s.margin == f64::INFINITY && depth > FILL_DEPTH => Found::Unchecked(at),
            _ => Found::Ask,
        }
    }

    /// Checks h3o's `cell` against slot `at`'s ideal hexagon and keeps it there with its margin; a
    /// cell that does not fit (a pentagon, cut by a face edge, off the lattice) refuses the slot.
    fn check(&self, slots: &mut [Slot], at: usize, cell: CellIndex) {
        let (si, sj) = (
            ((at - self.base) as i32) % self.w,
            ((at - self.base) as i32) / self.w,
        );
        let (i, j) = (f64::from(si + self.i0), f64::from(sj + self.j0));
        let plane = |(i, j): (f64, f64)| (i - j / 2.0, j * (SQRT3 / 2.0));
        let c = plane((i, j));
        let lat_lng = |p: LatLng| plane(self.lattice(p.lat(), p.lng()));
        let slot = 'fit: {
            let refused = REFUSED;
            if cell.is_pentagon() {
                break 'fit refused;
            }
            let centre = lat_lng(LatLng::from(cell));
            if (centre.0 - c.0).hypot(centre.1 - c.1) > MAX_SLOT_ERROR {
                break 'fit refused;
            }
            let boundary = cell.boundary();
            if boundary.len() != 6 {
                break 'fit refused;
            }
            // The ideal hexagon's vertices: 1/√3 from the centre, at 30° + k·60°. Each of h3o's
            // must lie near a different one (so its edges lie near the ideal edges, in order).
            let mut worst: f64 = 0.0;
            let mut matched = 0u8;
            for v in boundary.iter() {
                if (v.lng() - self.lng0).abs() > 1.0 {
                    break 'fit refused; // wraps the antimeridian
                }
                let p = lat_lng(*v);
                let (dx, dy) = (p.0 - c.0, p.1 - c.1);
                let k = ((dy.atan2(dx) - std::f64::consts::FRAC_PI_6) / std::f64::consts::FRAC_PI_3).round();
                matched |= 1 << (k.rem_euclid(6.0) as u8);
                let ang = std::f64::consts::FRAC_PI_6 + k * std::f64::consts::FRAC_PI_3;
                let r = 1.0 / SQRT3;
                worst = worst.max((dx - r * ang.cos()).hypot(dy - r * ang.sin()));
            }
            if worst > MAX_SLOT_ERROR || matched != 0b11_1111 {
                break 'fit refused;
            }
            Slot {
                cell: Some(cell),
                margin: self.base_margin + worst,
            }
        };
        slots[at] = slot;
    }
}

/// ⌊x⌋ for |x| < 2³¹ without libm's `floor` (a call on the baseline x86-64 target, and ~2 % of
/// `replay --print` with four a point).
#[inline]
fn floor(x: f64) -> i32 {
    let t = x as i32;
    t - i32::from(x < f64::from(t))
}

/// A tile's key from its row and column.
#[inline]
fn tile_key(row: i32, col: i32) -> u64 {
    (u64::from(row as u32) << 32) | u64::from(col as u32)
}

/// A point in a plane.
type Point = (f64, f64);

/// Least squares for v ≈ a·x + b·y + c over `pts`; `None` when degenerate.
fn solve3(pts: &[(Point, Point)], pick: impl Fn((f64, f64)) -> f64) -> Option<[f64; 3]> {
    // Normal equations, then Cramer's rule (3×3, well conditioned for a disk of cells).
    let mut n = [[0.0f64; 3]; 3];
    let mut r = [0.0f64; 3];
    for &((x, y), want) in pts {
        let row = [x, y, 1.0];
        let v = pick(want);
        for a in 0..3 {
            for b in 0..3 {
                n[a][b] += row[a] * row[b];
            }
            r[a] += row[a] * v;
        }
    }
    let det = |m: &[[f64; 3]; 3]| {
        m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1]) - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
    };
    let d = det(&n);
    if !d.is_normal() {
        return None;
    }
    let mut out = [0.0; 3];
    for (k, o) in out.iter_mut().enumerate() {
        let mut m = n;
        for a in 0..3 {
            m[a][k] = r[a];
        }
        *o = det(&m) / d;
    }
    out.iter().all(|v| v.is_finite()).then_some(out)
}

/// A tile key's value with this bit set counts the times a tile not built yet was met; without,
/// it is the built tile's index.
const MET: u32 = 1 << 31;

/// A thread's memory of tiles, for one resolution at a time.
#[derive(Default)]
struct Cache {
    res: Option<Resolution>,
    /// Tile side, degrees, and its inverse.
    side: f64,
    per_side: f64,
    /// Tile key → `MET | times met`, or the built tile's index.
    keys: FxHashMap<u64, u32>,
    tiles: Vec<Tile>,
    slots: Vec<Slot>,
    /// The last tile used, by key: crowds send runs of nearby points.
    last: Option<(u64, u32)>,
    /// Points answered from the cache, and by h3o, since the last reset.
    hits: u64,
    misses: u64,
    /// Points left to send straight to h3o: set when the cache filled up without helping (points
    /// spread over a whole region rarely share a tile), so sparse feeds pay only h3o's price.
    bypass: u32,
}

impl Cache {
    fn reset(&mut self, res: Resolution) {
        if self.res == Some(res) && self.hits < self.misses {
            self.bypass = (4 * MAX_TILES) as u32;
        }
        (self.hits, self.misses) = (0, 0);
        self.res = Some(res);
        self.side = TILE_SPACINGS * SQRT3 * res.edge_length_m() / 111_000.0;
        self.per_side = 1.0 / self.side;
        self.keys.clear();
        self.tiles.clear();
        self.slots.clear();
        self.last = None;
    }

    fn locate(&mut self, ll: LatLng, lat: f64, lng: f64, res: Resolution) -> CellIndex {
        if self.bypass > 0 && self.res == Some(res) {
            self.bypass -= 1;
            return ll.to_cell(res);
        }
        if self.res != Some(res) || self.keys.len() >= MAX_TILES {
            self.reset(res);
        }
        let (row, col) = (floor(lat * self.per_side), floor(lng * self.per_side));
        let key = tile_key(row, col);
        let idx = match self.last {
            Some((k, i)) if k == key => i,
            _ => {
                let v = self.keys.entry(key).or_insert(MET);
                if *v & MET != 0 {
                    if *v - MET + 1 < BUILD_AFTER {
                        *v += 1;
                        self.misses += 1;
                        return ll.to_cell(res);
                    }
                    // Met often enough: now the tile is worth building.
                    let mid = (
                        (f64::from(row) + 0.5) * self.side,
                        (f64::from(col) + 0.5) * self.side,
                    );
                    let mut tile = Tile::build(mid.0, mid.1, self.side, res);
                    tile.base = self.slots.len();
                    self.slots.resize(tile.base + (tile.w * tile.h) as usize, EMPTY);
                    self.tiles.push(tile);
                    *v = (self.tiles.len() - 1) as u32;
                }
                let idx = *v;
                self.last = Some((key, idx));
                idx
            }
        };
        let tile = &self.tiles[idx as usize];
        match tile.find(&self.slots, lat, lng) {
            Found::Cell(cell) => {
                self.hits += 1;
                cell
            }
            Found::Unchecked(at) => {
                self.misses += 1;
                let cell = ll.to_cell(res);
                tile.check(&mut self.slots, at, cell);
                cell
            }
            Found::Ask => {
                self.misses += 1;
                ll.to_cell(res)
            }
        }
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
            // Warm the tiles with interior points first, so the fast path is taken afterwards.
            let spread = res.edge_length_m() * 0.5 / 111_000.0;
            for c in &patch {
                let p = LatLng::from(*c);
                for _ in 0..40 {
                    same(
                        p.lat() + (r.f64() - 0.5) * spread,
                        p.lng() + (r.f64() - 0.5) * spread,
                        res,
                    );
                }
            }
            let hits_before = CACHE.with(|c| c.borrow().hits);
            for c in &patch {
                let b = c.boundary();
                let n = b.len();
                for i in 0..n {
                    let (a, z) = (b[i], b[(i + 1) % n]);
                    for k in 0..=20 {
                        let t = f64::from(k) / 20.0;
                        let lat = a.lat() + (z.lat() - a.lat()) * t;
                        let lng = a.lng() + (z.lng() - a.lng()) * t;
                        let edge = res.edge_length_m();
                        for off_m in [1e-3, 1e-2, 0.049, 0.051, 0.2, 1.0, 0.01 * edge, 0.1 * edge] {
                            let d = off_m / 111_000.0;
                            let ang = r.f64() * std::f64::consts::TAU;
                            same(lat + d * ang.sin(), lng + d * ang.cos(), res);
                            same(lat - d * ang.sin(), lng - d * ang.cos(), res);
                        }
                    }
                }
            }
            // The points beyond the margin took the fast path: the test exercises it.
            let hits = CACHE.with(|c| c.borrow().hits) - hits_before;
            assert!(hits > 2_000, "{hits} fast answers at {res:?}");
        }
    }

    #[test]
    fn clusters_across_the_globe_and_resolutions_get_h3os_cell() {
        // Clusters of points (so tiles are revisited and the fast path runs) around random
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
            // The clusters took the fast path too, not only h3o.
            let hits = CACHE.with(|c| c.borrow().hits);
            assert!(hits > 1_000, "{hits} fast answers at {res:?}");
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
    fn the_lattice_rounding_finds_the_nearest_centre_and_its_depth() {
        // Against brute force in the plane: the nearest of the lattice points around, and the
        // distance to the hexagon's edge as half the gap to the second nearest's bisector.
        let plane = |i: f64, j: f64| (i - j / 2.0, j * (SQRT3 / 2.0));
        let mut r = Rng(11);
        for _ in 0..200_000 {
            let p = ((r.f64() - 0.5) * 40.0, (r.f64() - 0.5) * 40.0);
            let (i, j, depth) = Tile::nearest(p);
            let q = plane(p.0, p.1);
            let mut d: Vec<(f64, i32, i32)> = Vec::new();
            for di in -3..=3 {
                for dj in -3..=3 {
                    let (ci, cj) = (p.0.round() as i32 + di, p.1.round() as i32 + dj);
                    let c = plane(f64::from(ci), f64::from(cj));
                    d.push(((q.0 - c.0).hypot(q.1 - c.1), ci, cj));
                }
            }
            d.sort_by(|a, b| a.0.total_cmp(&b.0));
            assert_eq!((i, j), (d[0].1, d[0].2), "{p:?}");
            // Distance to the bisector with the runner-up (one spacing away, or further).
            let (c0, c1) = (
                plane(f64::from(d[0].1), f64::from(d[0].2)),
                plane(f64::from(d[1].1), f64::from(d[1].2)),
            );
            let gap = (c1.0 - c0.0).hypot(c1.1 - c0.1);
            let want = (d[1].0 * d[1].0 - d[0].0 * d[0].0) / (2.0 * gap);
            assert!((depth - want).abs() < 1e-9, "{p:?}: {depth} against {want}");
        }
    }

    #[test]
    fn floor_without_libm_is_floor() {
        let mut r = Rng(5);
        for _ in 0..100_000 {
            let x = (r.f64() - 0.5) * 2e6;
            for v in [
                x,
                x.trunc(),
                -x.trunc(),
                x.trunc() + 1e-9,
                x.trunc() - 1e-9,
                -0.0,
                0.0,
            ] {
                assert_eq!(f64::from(floor(v)), v.floor(), "{v}");
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
                    let key = tile_key(floor(lat * c.per_side), floor(lng * c.per_side));
                    c.keys.get(&key).is_some_and(|&v| {
                        v & MET == 0 && matches!(c.tiles[v as usize].find(&c.slots, lat, lng), Found::Cell(_))
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
