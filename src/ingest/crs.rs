//! Chinese map datums to WGS-84: GCJ-02 (the state "offset" datum) and Baidu's BD-09.
//!
//! GCJ-02 is a published obfuscation of WGS-84 with no closed-form inverse; we invert it by fixed-point
//! iteration, which converges to well under a centimetre in a few steps. Outside China the providers
//! apply no offset, so neither do we.

use std::f64::consts::PI;

const A: f64 = 6_378_245.0; // Krasovsky 1940 semi-major axis, as GCJ-02 uses
const EE: f64 = 0.006_693_421_622_965_943; // its first eccentricity squared
const X_PI: f64 = PI * 3000.0 / 180.0;

/// Coordinate reference system of an incoming position.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Crs {
    /// GPS, OpenStreetMap: used as is.
    Wgs84,
    /// Chinese map and LBS providers.
    Gcj02,
    /// Baidu.
    Bd09,
}

impl Crs {
    /// Parses the `crs` field.
    pub fn parse(s: &str) -> Option<Crs> {
        match s.to_ascii_lowercase().as_str() {
            "wgs84" | "wgs-84" => Some(Crs::Wgs84),
            "gcj02" | "gcj-02" => Some(Crs::Gcj02),
            "bd09" | "bd-09" => Some(Crs::Bd09),
            _ => None,
        }
    }

    /// Converts `(lat, lng)` in this CRS to WGS-84.
    pub fn to_wgs84(self, lat: f64, lng: f64) -> (f64, f64) {
        match self {
            Crs::Wgs84 => (lat, lng),
            Crs::Gcj02 => gcj02_to_wgs84(lat, lng),
            Crs::Bd09 => {
                let (la, ln) = bd09_to_gcj02(lat, lng);
                gcj02_to_wgs84(la, ln)
            }
        }
    }
}

fn out_of_china(lat: f64, lng: f64) -> bool {
    !(72.004..=137.8347).contains(&lng) || !(0.8293..=55.8271).contains(&lat)
}

fn offset(lat: f64, lng: f64) -> (f64, f64) {
    let (x, y) = (lng - 105.0, lat - 35.0);
    let common = (20.0 * (6.0 * x * PI).sin() + 20.0 * (2.0 * x * PI).sin()) * 2.0 / 3.0;
    let mut dlat = -100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * x.abs().sqrt();
    dlat += common;
    dlat += (20.0 * (y * PI).sin() + 40.0 * (y / 3.0 * PI).sin()) * 2.0 / 3.0;
    dlat += (160.0 * (y / 12.0 * PI).sin() + 320.0 * (y * PI / 30.0).sin()) * 2.0 / 3.0;
    let mut dlng = 300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * x.abs().sqrt();
    dlng += common;
    dlng += (20.0 * (x * PI).sin() + 40.0 * (x / 3.0 * PI).sin()) * 2.0 / 3.0;
    dlng += (150.0 * (x / 12.0 * PI).sin() + 300.0 * (x / 30.0 * PI).sin()) * 2.0 / 3.0;
    let rad = lat / 180.0 * PI;
    let magic = 1.0 - EE * rad.sin() * rad.sin();
    let sqrt_magic = magic.sqrt();
    let dlat = (dlat * 180.0) / ((A * (1.0 - EE)) / (magic * sqrt_magic) * PI);
    let dlng = (dlng * 180.0) / (A / sqrt_magic * rad.cos() * PI);
    (dlat, dlng)
}

/// WGS-84 → GCJ-02 (the forward, exact definition).
pub fn wgs84_to_gcj02(lat: f64, lng: f64) -> (f64, f64) {
    if out_of_china(lat, lng) {
        return (lat, lng);
    }
    let (dlat, dlng) = offset(lat, lng);
    (lat + dlat, lng + dlng)
}

/// GCJ-02 → WGS-84 by fixed-point iteration on the forward transform, until the forward transform
/// of the answer is within 1e-10° (~0.01 mm) of the input.
pub fn gcj02_to_wgs84(lat: f64, lng: f64) -> (f64, f64) {
    if out_of_china(lat, lng) {
        return (lat, lng);
    }
    // The iteration starts from the interpolated offsets (within ~1e-8° of the answer) rather
    // than from the input (~5e-3° away): two exact forward transforms instead of four or five,
    // each ten sines — GCJ-02 feeds spent a quarter of a replay's time here.
    thread_local! {
        static GRID: std::cell::RefCell<GcjGrid> = std::cell::RefCell::new(GcjGrid::default());
    }
    let start = GRID.with(|g| {
        let mut g = g.borrow_mut();
        let (mut wlat, mut wlng) = (lat, lng);
        for _ in 0..3 {
            let (dlat, dlng) = g.offset(wlat, wlng);
            (wlat, wlng) = (lat - dlat, lng - dlng);
        }
        (wlat, wlng)
    });
    invert_from(lat, lng, start)
}

/// A bound on how fast GCJ-02's offset changes with position, degrees per degree (the largest row
/// sum of its Jacobian) over China, a quarter above the analytic bound of 0.00795 (the longitude
/// offset's `20 sin 6πx` terms scaled by 1 / cos of 55.8°N; `offset_changes_no_faster_than_its_bound`
/// samples it) — except within `ROOT_KINK` of 105°E, where the offset's √|lng − 105| is steep.
const LIPSCHITZ: f64 = 0.01;
const ROOT_KINK: f64 = 0.01;

/// The WGS-84 point whose GCJ-02 image is within 1e-10° of `(lat, lng)`, by fixed-point iteration
/// from `start` (at most ten steps).
fn invert_from(lat: f64, lng: f64, start: (f64, f64)) -> (f64, f64) {
    let (mut wlat, mut wlng) = start;
    let smooth = (lng - 105.0).abs() > ROOT_KINK;
    for _ in 0..10 {
        let (glat, glng) = wgs84_to_gcj02(wlat, wlng);
        let (elat, elng) = (glat - lat, glng - lng);
        wlat -= elat;
        wlng -= elng;
        if elat.abs() < 1e-10 && elng.abs() < 1e-10 {
            break;
        }
        // A step of e leaves the image within LIPSCHITZ × e of the target (the step is the error,
        // and the offset moves at most that much under it), so when that is within tolerance the
        // check costs no second forward transform — ten sines: from the grid's start (~1e-8° off)
        // nearly every point is done in one.
        if smooth && LIPSCHITZ * elat.abs().max(elng.abs()) < 1e-10 {
            break;
        }
    }
    (wlat, wlng)
}

/// GCJ-02 offsets (GCJ − WGS, degrees) at the nodes of a 0.001° grid, bilinearly interpolated:
/// within 1e-8° (~1 mm) of the formula, at a hash look-up instead of ten sines. Keeps at most
/// `GRID_CAP` grid cells (about 650 km²) and then starts afresh.
#[derive(Debug, Default)]
pub struct GcjGrid {
    cells: rustc_hash::FxHashMap<(i64, i64), Corners>,
    /// The cell asked last: the inverse asks three times about points a few metres apart.
    last: Option<((i64, i64), Corners)>,
}

/// A grid cell's offsets at its four corners.
type Corners = [(f64, f64); 4];

const GRID_CAP: usize = 1 << 16;

impl GcjGrid {
    const STEP: f64 = 0.001;

    fn node(i: i64, j: i64) -> (f64, f64) {
        let (lat, lng) = (i as f64 * Self::STEP, j as f64 * Self::STEP);
        let (glat, glng) = wgs84_to_gcj02(lat, lng);
        (glat - lat, glng - lng)
    }

    /// The interpolated offset at a WGS-84 point.
    pub fn offset(&mut self, lat: f64, lng: f64) -> (f64, f64) {
        let (fi, fj) = (lat / Self::STEP, lng / Self::STEP);
        let (i, j) = (fi.floor() as i64, fj.floor() as i64);
        let (u, v) = (fi - i as f64, fj - j as f64);
        let [a, b, c, d] = match self.last {
            Some((at, corners)) if at == (i, j) => corners,
            _ => {
                if self.cells.len() >= GRID_CAP {
                    self.cells.clear();
                }
                let corners = *self.cells.entry((i, j)).or_insert_with(|| {
                    [
                        Self::node(i, j),
                        Self::node(i + 1, j),
                        Self::node(i, j + 1),
                        Self::node(i + 1, j + 1),
                    ]
                });
                self.last = Some(((i, j), corners));
                corners
            }
        };
        let mix = |p: f64, q: f64, r: f64, s: f64| {
            (p * (1.0 - u) + q * u) * (1.0 - v) + (r * (1.0 - u) + s * u) * v
        };
        (mix(a.0, b.0, c.0, d.0), mix(a.1, b.1, c.1, d.1))
    }

    /// WGS-84 → GCJ-02 through the interpolated offsets (the simulator's hot path).
    pub fn convert(&mut self, lat: f64, lng: f64) -> (f64, f64) {
        let (dlat, dlng) = self.offset(lat, lng);
        (lat + dlat, lng + dlng)
    }
}

/// BD-09 → GCJ-02 (Baidu's published inverse).
pub fn bd09_to_gcj02(lat: f64, lng: f64) -> (f64, f64) {
    let x = lng - 0.0065;
    let y = lat - 0.006;
    let z = (x * x + y * y).sqrt() - 0.00002 * (y * X_PI).sin();
    let theta = y.atan2(x) - 0.000003 * (x * X_PI).cos();
    (z * theta.sin(), z * theta.cos())
}

#[cfg(test)]
mod tests {
    use super::*;

    // (wgs lat, wgs lng, gcj lat, gcj lng): the reference pairs published with the eviltransform
    // libraries, cross-checked across their Python, Go and PHP ports.
    const PAIRS: [(f64, f64, f64, f64); 3] = [
        (31.1774276, 121.5272106, 31.17530398364597, 121.531541859215), // Shanghai
        (22.543847, 113.912316, 22.540796131694766, 113.9171764808363), // Shenzhen
        (39.911954, 116.377817, 39.91334545536069, 116.38404722455657), // Beijing
    ];

    #[test]
    fn wgs_to_gcj_matches_reference_pairs() {
        for (wlat, wlng, glat, glng) in PAIRS {
            let (la, ln) = wgs84_to_gcj02(wlat, wlng);
            assert!((la - glat).abs() < 1e-9 && (ln - glng).abs() < 1e-9, "{la},{ln}");
        }
    }

    #[test]
    fn gcj_to_wgs_recovers_reference_pairs() {
        for (wlat, wlng, glat, glng) in PAIRS {
            let (la, ln) = Crs::Gcj02.to_wgs84(glat, glng);
            // 1e-7 degrees is about a centimetre.
            assert!((la - wlat).abs() < 1e-7 && (ln - wlng).abs() < 1e-7, "{la},{ln}");
        }
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
    fn the_inverse_from_the_grid_meets_the_same_tolerance_as_from_the_input() {
        // From scratch (the input as the start), as the inverse was before the grid.
        let plain = |lat: f64, lng: f64| invert_from(lat, lng, (lat, lng));
        let mut rnd = uniform(0x2545_f491_4f6c_dd1d);
        for k in 0..20_000 {
            // A crowd on the Bund, then all of China (grid nodes, cell edges and all).
            let (lat, lng) = if k < 10_000 {
                (31.23 + rnd() * 0.02, 121.47 + rnd() * 0.03)
            } else {
                (18.0 + rnd() * 35.0, 74.0 + rnd() * 60.0)
            };
            let (glat, glng) = wgs84_to_gcj02(lat, lng);
            let (wlat, wlng) = gcj02_to_wgs84(glat, glng);
            let (flat, flng) = wgs84_to_gcj02(wlat, wlng);
            assert!(
                (flat - glat).abs() < 1e-10 && (flng - glng).abs() < 1e-10,
                "{lat},{lng}"
            );
            let (plat, plng) = plain(glat, glng);
            assert!(
                (wlat - plat).abs() < 1e-9 && (wlng - plng).abs() < 1e-9,
                "{lat},{lng}"
            );
        }
    }

    #[test]
    fn the_grid_answers_alike_from_its_last_cell_and_from_its_map() {
        let mut g = GcjGrid::default();
        for k in 0..2_000 {
            // Runs of points in one cell, then a jump to another, and back.
            let (lat, lng) = (
                31.2305 + (k / 7 % 3) as f64 * 0.001,
                121.4705 + (k % 7) as f64 * 1e-5,
            );
            let fresh = GcjGrid::default().offset(lat, lng);
            assert_eq!(g.offset(lat, lng), fresh, "{lat},{lng}");
        }
        assert_eq!(g.cells.len(), 3);
    }

    #[test]
    fn offset_changes_no_faster_than_its_bound() {
        let mut rnd = uniform(0x9e37_79b9_7f4a_7c15);
        let mut worst: f64 = 0.0;
        for _ in 0..200_000 {
            let (lat, lng) = (0.83 + rnd() * 55.0, 72.0 + rnd() * 65.8);
            if (lng - 105.0).abs() <= ROOT_KINK + 1e-5 {
                continue;
            }
            let h = 1e-6;
            let (a, b) = offset(lat, lng);
            let (a1, b1) = offset(lat + h, lng);
            let (a2, b2) = offset(lat, lng + h);
            worst = worst
                .max(((a1 - a).abs() + (a2 - a).abs()) / h)
                .max(((b1 - b).abs() + (b2 - b).abs()) / h);
        }
        // The analytic bound is 0.00795; sampled, the steepest point comes within a few percent.
        assert!(worst < 0.00795 && worst > 0.006, "{worst}");
        const { assert!(LIPSCHITZ >= 1.25 * 0.00795) };
    }

    #[test]
    fn bd09_matches_the_published_baidu_formula() {
        // coordtransform's documented example: bd09togcj02(116.404, 39.915). (Some libraries, e.g.
        // eviltransform, use a variant with π in place of π·3000/180, which differs by ~10 m.)
        let (la, ln) = bd09_to_gcj02(39.915, 116.404);
        assert!((la - 39.90865673957631).abs() < 1e-12 && (ln - 116.39762729119315).abs() < 1e-12);
        let (wla, wln) = Crs::Bd09.to_wgs84(39.915, 116.404);
        let (gla, gln) = wgs84_to_gcj02(wla, wln);
        assert!(
            (gla - la).abs() < 1e-9 && (gln - ln).abs() < 1e-9,
            "BD-09 → WGS-84 goes through GCJ-02"
        );
    }

    #[test]
    fn wgs_to_gcj_matches_coordtransform_example() {
        let (la, ln) = wgs84_to_gcj02(39.915, 116.404);
        assert!((la - 39.91640428150164).abs() < 1e-9 && (ln - 116.41024449916938).abs() < 1e-9);
    }

    #[test]
    fn offset_on_the_bund_is_hundreds_of_metres() {
        let (la, ln) = wgs84_to_gcj02(31.2405, 121.4832);
        let metres = ((la - 31.2405) * 111_000.0).hypot((ln - 121.4832) * 95_000.0);
        assert!((300.0..800.0).contains(&metres), "{metres}");
    }

    #[test]
    fn outside_china_is_untouched() {
        assert_eq!(Crs::Gcj02.to_wgs84(40.75, -73.99), (40.75, -73.99));
    }

    #[test]
    fn crs_names_parse() {
        assert_eq!(Crs::parse("GCJ02"), Some(Crs::Gcj02));
        assert_eq!(Crs::parse("bd09"), Some(Crs::Bd09));
        assert_eq!(Crs::parse("wgs84"), Some(Crs::Wgs84));
        assert_eq!(Crs::parse("utm"), None);
    }
}
