//! Road segments from GeoJSON, and how they overlap the H3 cells (for the heatmap's cell view and
//! the dashboard; segment people come from positions, see `matcher`).
//!
//! People stand on walkable ground, not in buildings: a cell's people are shared among the segments
//! that cover it by each one's share of the cell's *walkable* (segment-covered) area, not of the
//! whole hexagon — a 25 m cell over a 20 m street is mostly buildings.

use std::collections::HashMap;
use std::path::Path;

use geo::orient::{Direction, Orient};
use geo::{BooleanOps, GeodesicArea, MultiPolygon, Polygon};
use h3o::geom::{ContainmentMode, TilerBuilder};
use h3o::{CellIndex, Resolution};
use rustc_hash::FxHashMap;
use serde::Serialize;

use super::matcher::Matcher;
use crate::config::thresholds::ThresholdPatch;

/// How far a ping may be matched to a segment when the config does not say (`lbs.max_match_m`).
pub const DEFAULT_MAX_MATCH_M: f64 = 100.0;
use crate::model::CellId;

/// A segment's id (the GeoJSON `id` property).
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(transparent)]
pub struct SegmentId(pub String);

impl SegmentId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for SegmentId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for SegmentId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

/// One walkable road segment.
#[derive(Debug, Clone)]
pub struct Segment {
    /// Its id.
    pub id: SegmentId,
    /// Display name (Chinese and English).
    pub name: String,
    /// street / square / promenade / stairs / station-exit.
    pub kind: String,
    /// Width people can walk in, for flow per metre.
    pub effective_width_m: f64,
    /// Organiser capacity from the file (the API may override it).
    pub capacity: Option<f64>,
    /// Walkable area, m² (geodesic unless the file gives it).
    pub area_m2: f64,
    /// The polygon (lng, lat degrees).
    pub polygon: Polygon<f64>,
    /// Per-segment threshold overrides from the file's `thresholds` property.
    pub thresholds: ThresholdPatch,
}

/// Segments and their cell overlaps.
#[derive(Debug, Clone, Default)]
pub struct SegmentMap {
    segments: Vec<Segment>,
    by_id: HashMap<String, usize>,
    /// For each cell: (segment index, share of the cell's walkable area).
    shares: FxHashMap<CellId, Vec<(usize, f64)>>,
    /// For each segment: (cell, overlap m²).
    overlaps: Vec<Vec<(CellId, f64)>>,
    /// Walkable ground no segment covers (`ground.geojson` beside the segments file).
    ground: Vec<Ground>,
    /// Positions → segments.
    matcher: Matcher,
}

/// Walkable ground that is no segment — a junction between two streets, a crossing's kerb — drawn
/// so that a ping there is matched to it rather than handed to the nearest segment. Its people are
/// counted apart (published as a total), never folded into a segment.
#[derive(Debug, Clone)]
pub struct Ground {
    /// Its id (the GeoJSON `id` property).
    pub id: String,
    /// The part of the drawn polygon no segment covers (lng, lat degrees); one place per piece.
    pub pieces: Vec<Polygon<f64>>,
    /// Its walkable area, m² (geodesic, after the segments are taken out).
    pub area_m2: f64,
}

/// The file of ground no segment covers, looked for beside the segments file.
pub const GROUND_FILE: &str = "ground.geojson";

/// A segments file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {entry}: {problem}")]
pub struct SegmentError {
    /// The file.
    pub file: String,
    /// `feature 3 (id "x")` or `the file`.
    pub entry: String,
    /// What is wrong.
    pub problem: String,
}

fn prop_f64(props: &serde_json::Map<String, serde_json::Value>, key: &str) -> Result<Option<f64>, String> {
    match props.get(key) {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(v) => match v.as_f64() {
            Some(x) if x.is_finite() && x > 0.0 => Ok(Some(x)),
            _ => Err(format!("property `{key}` must be a positive number, got {v}")),
        },
    }
}

/// Geodesic area (m²) of a polygon in lng/lat degrees, on the WGS-84 ellipsoid, whichever way its
/// rings wind. Oriented first: on the ellipsoid a clockwise ring bounds the rest of the Earth, and
/// GeoJSON files in the wild (our own Bund file among them) wind both ways.
pub fn geodesic_area_m2(p: &Polygon<f64>) -> f64 {
    p.orient(Direction::Default).geodesic_area_unsigned()
}

/// One polygon feature of a GeoJSON FeatureCollection, with its `id` and properties.
struct PolygonFeature {
    /// `feature 3 (id "x")`, for errors.
    entry: String,
    id: String,
    props: serde_json::Map<String, serde_json::Value>,
    polygon: Polygon<f64>,
}

impl PolygonFeature {
    fn error(&self, file: &str, problem: String) -> SegmentError {
        SegmentError {
            file: file.to_owned(),
            entry: self.entry.clone(),
            problem,
        }
    }
}

/// The features of a FeatureCollection of polygons that each carry a string `id`; errors name the
/// file and the feature.
fn polygon_features(text: &str, file: &str) -> Result<Vec<PolygonFeature>, SegmentError> {
    let whole = |problem: String| SegmentError {
        file: file.to_owned(),
        entry: "the file".into(),
        problem,
    };
    let gj: geojson::GeoJson = text.parse().map_err(|e| whole(format!("not GeoJSON: {e}")))?;
    let geojson::GeoJson::FeatureCollection(fc) = gj else {
        return Err(whole("expected a FeatureCollection".into()));
    };
    let mut out = Vec::with_capacity(fc.features.len());
    for (i, f) in fc.features.into_iter().enumerate() {
        let props = f.properties.clone().unwrap_or_default();
        let id = props.get("id").and_then(|v| v.as_str()).map(str::to_owned);
        let entry = match &id {
            Some(id) => format!("feature {i} (id {id:?})"),
            None => format!("feature {i}"),
        };
        let err = |problem: String| SegmentError {
            file: file.to_owned(),
            entry: entry.clone(),
            problem,
        };
        let id = id.ok_or_else(|| err("property `id` (a string) is missing".into()))?;
        let geometry = f.geometry.ok_or_else(|| err("has no geometry".into()))?;
        // geojson's conversion indexes [0] and [1] of each position: a short one panics it.
        if let geojson::GeometryValue::Polygon { coordinates: rings } = &geometry.value {
            for (r, ring) in rings.iter().enumerate() {
                if let Some(p) = ring.iter().position(|pos| pos.len() < 2) {
                    return Err(err(format!(
                        "position {p} of ring {r} has {} number(s); a position is [lng, lat]",
                        ring[p].len()
                    )));
                }
            }
        }
        let polygon: Polygon<f64> = Polygon::try_from(&geometry.value)
            .map_err(|_| err("geometry must be a Polygon (lng, lat in WGS-84)".into()))?;
        out.push(PolygonFeature {
            entry,
            id,
            props,
            polygon,
        });
    }
    Ok(out)
}

/// Largest segment accepted (m²): the whole Bund waterfront is about 0.3 km².
pub const MAX_SEGMENT_AREA_M2: f64 = 4_000_000.0;
/// Widest segment accepted, in degrees of latitude or longitude.
pub const MAX_SEGMENT_SPAN_DEG: f64 = 0.5;

impl SegmentMap {
    /// Loads a GeoJSON FeatureCollection of polygons and maps them onto cells at `res`.
    pub fn load(path: &Path, res: Resolution) -> Result<SegmentMap, SegmentError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| SegmentError {
            file: file.clone(),
            entry: "the file".into(),
            problem: format!("cannot read: {e}"),
        })?;
        let mut map = SegmentMap::parse(&text, &file, res)?;
        let ground = path.with_file_name(GROUND_FILE);
        if ground.exists() {
            let gfile = ground.display().to_string();
            let text = std::fs::read_to_string(&ground).map_err(|e| SegmentError {
                file: gfile.clone(),
                entry: "the file".into(),
                problem: format!("cannot read: {e}"),
            })?;
            map.add_ground(&text, &gfile)?;
        }
        Ok(map)
    }

    /// Adds walkable ground no segment covers from a GeoJSON FeatureCollection of polygons (each
    /// with an `id`); the segments are taken out of each, so it may be drawn over their ends.
    pub fn add_ground(&mut self, text: &str, file: &str) -> Result<(), SegmentError> {
        let taken = MultiPolygon::new(self.segments.iter().map(|s| s.polygon.clone()).collect());
        let mut ground = Vec::new();
        for f in polygon_features(text, file)? {
            let err = |problem: String| f.error(file, problem);
            let (id, props, polygon) = (f.id.clone(), &f.props, f.polygon.clone());
            if ground.iter().any(|g: &Ground| g.id == id) || self.by_id.contains_key(&id) {
                return Err(err(format!(
                    "id {id:?} is already a segment's or another ground's"
                )));
            }
            // The same checks as a segment's (coordinates, span, area), with a neutral kind.
            let mut checked = props.clone();
            checked.insert("kind".into(), "street".into());
            checked.insert("effective_width_m".into(), 1.into());
            Segment::new(id.clone(), &checked, polygon.clone()).map_err(err)?;
            let pieces: Vec<Polygon<f64>> = MultiPolygon::new(vec![polygon])
                .difference(&taken)
                .0
                .into_iter()
                .filter(|p| geodesic_area_m2(p) >= 1.0)
                .collect();
            if pieces.is_empty() {
                return Err(err(
                    "lies wholly under segments: ground is walkable area no segment covers".into(),
                ));
            }
            let mine = MultiPolygon::new(pieces.clone());
            for g in &ground {
                let shared: f64 = MultiPolygon::new(g.pieces.clone())
                    .intersection(&mine)
                    .0
                    .iter()
                    .map(geodesic_area_m2)
                    .sum();
                if shared >= 1.0 {
                    return Err(err(format!(
                        "overlaps ground {:?} by {shared:.0} m²: ground features must not overlap",
                        g.id
                    )));
                }
            }
            let area_m2 = pieces.iter().map(geodesic_area_m2).sum();
            ground.push(Ground { id, pieces, area_m2 });
        }
        self.ground = ground;
        self.rebuild_matcher(self.matcher.max_match_m());
        Ok(())
    }

    /// Ground no segment covers, in file order.
    pub fn ground(&self) -> &[Ground] {
        &self.ground
    }

    /// Per ground place (matcher places after the segments): its ground's index.
    pub fn ground_places(&self) -> impl Iterator<Item = usize> + '_ {
        self.ground
            .iter()
            .enumerate()
            .flat_map(|(i, g)| std::iter::repeat_n(i, g.pieces.len()))
    }

    fn rebuild_matcher(&mut self, max_match_m: f64) {
        let polygons: Vec<&Polygon<f64>> = self.segments.iter().map(|s| &s.polygon).collect();
        let ground: Vec<&Polygon<f64>> = self.ground.iter().flat_map(|g| &g.pieces).collect();
        self.matcher = Matcher::with_ground(&polygons, &ground, max_match_m);
    }

    /// [`load`](SegmentMap::load) from the file's text; errors name `file`.
    pub fn parse(text: &str, file: &str, res: Resolution) -> Result<SegmentMap, SegmentError> {
        let mut segments = Vec::new();
        for f in polygon_features(text, file)? {
            let err = |problem: String| f.error(file, problem);
            let (id, props, polygon) = (f.id.clone(), &f.props, f.polygon.clone());
            let seg = Segment::new(id, props, polygon).map_err(err)?;
            segments.push(seg);
        }
        SegmentMap::build(segments, res).map_err(|(i, problem)| SegmentError {
            file: file.to_owned(),
            entry: format!("feature {i}"),
            problem,
        })
    }

    /// Maps segments onto cells; fails on duplicate ids or polygons h3o cannot tile.
    pub fn build(segments: Vec<Segment>, res: Resolution) -> Result<SegmentMap, (usize, String)> {
        let mut by_id = HashMap::new();
        let mut overlaps = Vec::with_capacity(segments.len());
        let mut walkable: FxHashMap<CellId, f64> = FxHashMap::default();
        for (i, s) in segments.iter().enumerate() {
            if by_id.insert(s.id.0.clone(), i).is_some() {
                return Err((i, format!("duplicate segment id {:?}", s.id.0)));
            }
            let mut tiler = TilerBuilder::new(res)
                .containment_mode(ContainmentMode::Covers)
                .build();
            tiler
                .add(s.polygon.clone())
                .map_err(|e| (i, format!("invalid polygon: {e}")))?;
            let seg_mp = MultiPolygon::new(vec![s.polygon.clone()]);
            let mut cells = Vec::new();
            for cell in tiler.into_coverage() {
                let m2 = overlap_m2(cell, &seg_mp);
                if m2 > 0.0 {
                    let id = CellId::from(cell);
                    *walkable.entry(id).or_default() += m2;
                    cells.push((id, m2));
                }
            }
            overlaps.push(cells);
        }
        let mut shares: FxHashMap<CellId, Vec<(usize, f64)>> = FxHashMap::default();
        for (i, cells) in overlaps.iter().enumerate() {
            for (cell, m2) in cells {
                let w = walkable.get(cell).copied().unwrap_or(*m2);
                shares.entry(*cell).or_default().push((i, m2 / w));
            }
        }
        let polygons: Vec<&Polygon<f64>> = segments.iter().map(|s| &s.polygon).collect();
        let matcher = Matcher::new(&polygons, DEFAULT_MAX_MATCH_M);
        Ok(SegmentMap {
            segments,
            by_id,
            shares,
            overlaps,
            ground: Vec::new(),
            matcher,
        })
    }

    /// Where positions lie among the segments.
    pub fn matcher(&self) -> &Matcher {
        &self.matcher
    }

    /// Sets how far (m) a ping outside every segment may still be matched to one.
    pub fn set_max_match(&mut self, max_match_m: f64) {
        self.rebuild_matcher(max_match_m);
    }

    /// All segments, in file order.
    pub fn segments(&self) -> &[Segment] {
        &self.segments
    }

    /// A segment's index by id.
    pub fn index(&self, id: &str) -> Option<usize> {
        self.by_id.get(id).copied()
    }

    /// The segments sharing a cell's people, with each one's share (summing to 1).
    pub fn shares(&self, cell: CellId) -> &[(usize, f64)] {
        self.shares.get(&cell).map(Vec::as_slice).unwrap_or(&[])
    }

    /// A segment's cells with the overlap area of each, m².
    pub fn overlaps(&self, segment: usize) -> &[(CellId, f64)] {
        &self.overlaps[segment]
    }

    /// Longitude/latitude bounds of every segment: [min_lng, min_lat, max_lng, max_lat].
    pub fn bbox(&self) -> Option<[f64; 4]> {
        use geo::BoundingRect;
        let mut b: Option<[f64; 4]> = None;
        for s in &self.segments {
            if let Some(r) = s.polygon.bounding_rect() {
                let x = b.get_or_insert([f64::MAX, f64::MAX, f64::MIN, f64::MIN]);
                x[0] = x[0].min(r.min().x);
                x[1] = x[1].min(r.min().y);
                x[2] = x[2].max(r.max().x);
                x[3] = x[3].max(r.max().y);
            }
        }
        b
    }
}

fn overlap_m2(cell: CellIndex, seg: &MultiPolygon<f64>) -> f64 {
    let hex = MultiPolygon::from(cell);
    // Planar clipping in degrees is exact enough at street scale; the area is then geodesic.
    let inter = hex.intersection(seg);
    inter.0.iter().map(geodesic_area_m2).sum()
}

impl Segment {
    /// Builds a segment from its GeoJSON properties and polygon.
    pub fn new(
        id: String,
        props: &serde_json::Map<String, serde_json::Value>,
        polygon: Polygon<f64>,
    ) -> Result<Segment, String> {
        if id.trim().is_empty() {
            return Err("property `id` is empty".into());
        }
        if polygon.exterior().0.len() < 4 {
            return Err("polygon needs at least 3 distinct corners".into());
        }
        for c in polygon.exterior().0.iter() {
            if !(c.x.is_finite()
                && c.y.is_finite()
                && (-180.0..=180.0).contains(&c.x)
                && (-90.0..=90.0).contains(&c.y))
            {
                return Err(format!("coordinate ({}, {}) is not a WGS-84 lng, lat", c.x, c.y));
            }
        }
        let str_prop = |k: &str| props.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        let name = str_prop("name").unwrap_or_else(|| id.clone());
        let kind = str_prop("kind").unwrap_or_else(|| "street".into());
        const KINDS: [&str; 5] = ["street", "square", "promenade", "stairs", "station-exit"];
        if !KINDS.contains(&kind.as_str()) {
            return Err(format!(
                "property `kind` {kind:?} is not one of {}",
                KINDS.join(", ")
            ));
        }
        let width = prop_f64(props, "effective_width_m")?
            .ok_or("property `effective_width_m` (metres) is missing")?;
        let capacity = prop_f64(props, "capacity")?;
        // Checked before anything is tiled: a polygon spanning a continent is billions of cells
        // (the fuzzer found one that took 21 s and gigabytes), and is a mistake in any case.
        let (lng, lat) = polygon.exterior().0.iter().fold(
            ((f64::MAX, f64::MIN), (f64::MAX, f64::MIN)),
            |((x0, x1), (y0, y1)), c| ((x0.min(c.x), x1.max(c.x)), (y0.min(c.y), y1.max(c.y))),
        );
        let span = (lng.1 - lng.0).max(lat.1 - lat.0);
        if span > MAX_SEGMENT_SPAN_DEG {
            return Err(format!(
                "polygon spans {span:.3}° (over {MAX_SEGMENT_SPAN_DEG}°, about 50 km): a segment is one street, square or exit; check the coordinates are lng, lat"
            ));
        }
        let geodesic = geodesic_area_m2(&polygon);
        if geodesic < 1.0 {
            return Err("polygon has no area".into());
        }
        if geodesic > MAX_SEGMENT_AREA_M2 {
            return Err(format!(
                "polygon covers {:.2} km² (over {} km²): a segment is one street, square or exit; split it",
                geodesic / 1e6,
                MAX_SEGMENT_AREA_M2 / 1e6
            ));
        }
        let area_m2 = prop_f64(props, "area_m2")?.unwrap_or(geodesic);
        let thresholds = match props.get("thresholds") {
            None | Some(serde_json::Value::Null) => ThresholdPatch::default(),
            Some(v) => {
                serde_json::from_value(v.clone()).map_err(|e| format!("property `thresholds`: {e}"))?
            }
        };
        Ok(Segment {
            id: SegmentId(id),
            name,
            kind,
            effective_width_m: width,
            capacity,
            area_m2,
            polygon,
            thresholds,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use geo::polygon;

    /// Area of the ellipsoidal quadrangle [lat1, lat2] × Δλ on WGS-84 (closed form), m².
    fn band_area(lat1: f64, lat2: f64, dlng_deg: f64) -> f64 {
        let a: f64 = 6_378_137.0;
        let f = 1.0 / 298.257_223_563;
        let b = a * (1.0 - f);
        let e = (1.0 - (b * b) / (a * a)).sqrt();
        let q = |phi: f64| {
            let s = phi.to_radians().sin();
            s / (1.0 - e * e * s * s) + (1.0 / (2.0 * e)) * ((1.0 + e * s) / (1.0 - e * s)).ln()
        };
        b * b / 2.0 * (q(lat2) - q(lat1)) * dlng_deg.to_radians()
    }

    #[test]
    fn geodesic_area_of_a_small_quadrangle_matches_the_closed_form() {
        let p = polygon![(x: 121.48, y: 31.24), (x: 121.481, y: 31.24), (x: 121.481, y: 31.241), (x: 121.48, y: 31.241)];
        let want = band_area(31.24, 31.241, 0.001);
        let got = geodesic_area_m2(&p);
        assert!((got / want - 1.0).abs() < 0.005, "{got} vs {want}");
    }

    #[test]
    fn a_clockwise_ring_has_the_area_it_encloses_not_the_rest_of_the_earth() {
        let ccw = polygon![(x: 121.48, y: 31.24), (x: 121.481, y: 31.24), (x: 121.481, y: 31.241), (x: 121.48, y: 31.241)];
        let cw = polygon![(x: 121.48, y: 31.24), (x: 121.48, y: 31.241), (x: 121.481, y: 31.241), (x: 121.481, y: 31.24)];
        let (a, b) = (geodesic_area_m2(&ccw), geodesic_area_m2(&cw));
        assert!((a / b - 1.0).abs() < 1e-9 && a < 20_000.0, "{a} vs {b}");
    }

    #[test]
    fn geodesic_area_of_an_h3_cell_matches_h3() {
        let cell = h3o::LatLng::new(31.24, 121.48).unwrap().to_cell(Resolution::Nine);
        let poly = MultiPolygon::from(cell).0.remove(0);
        let got = geodesic_area_m2(&poly);
        assert!(
            (got / cell.area_m2() - 1.0).abs() < 0.005,
            "{got} vs {}",
            cell.area_m2()
        );
    }

    fn seg(id: &str, p: Polygon<f64>) -> Segment {
        let mut props = serde_json::Map::new();
        props.insert("effective_width_m".into(), 20.into());
        Segment::new(id.into(), &props, p).unwrap()
    }

    #[test]
    fn cell_overlaps_sum_to_the_segment_area() {
        let street = polygon![(x: 121.4755, y: 31.2389), (x: 121.4857, y: 31.2408), (x: 121.4857, y: 31.2410), (x: 121.4755, y: 31.2391)];
        let m = SegmentMap::build(vec![seg("s", street)], Resolution::Eleven).unwrap();
        let total: f64 = m.overlaps(0).iter().map(|(_, a)| a).sum();
        let area = m.segments()[0].area_m2;
        assert!((total / area - 1.0).abs() < 0.01, "{total} vs {area}");
        assert!(m.overlaps(0).len() > 10);
    }

    #[test]
    fn a_cell_is_shared_by_walkable_area_not_hexagon_area() {
        // Two thin strips in one cell: 1/3 and 2/3 of the walkable area, whatever the rest holds.
        let c = h3o::LatLng::new(31.24, 121.48).unwrap().to_cell(Resolution::Nine);
        let ll = h3o::LatLng::from(c);
        let (x, y) = (ll.lng(), ll.lat());
        let a = polygon![(x: x - 0.0005, y: y), (x: x + 0.0005, y: y), (x: x + 0.0005, y: y + 0.0001), (x: x - 0.0005, y: y + 0.0001)];
        let b = polygon![(x: x - 0.0005, y: y - 0.0003), (x: x + 0.0005, y: y - 0.0003), (x: x + 0.0005, y: y - 0.0001), (x: x - 0.0005, y: y - 0.0001)];
        let m = SegmentMap::build(vec![seg("a", a), seg("b", b)], Resolution::Nine).unwrap();
        let shares = m.shares(CellId::from(c));
        let sa = shares.iter().find(|s| s.0 == 0).unwrap().1;
        let sb = shares.iter().find(|s| s.0 == 1).unwrap().1;
        assert!((sa + sb - 1.0).abs() < 1e-9);
        assert!((sa - 1.0 / 3.0).abs() < 0.01, "{sa}");
    }

    #[test]
    fn bad_features_name_the_feature_and_problem() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.geojson");
        std::fs::write(&p, r#"{"type":"FeatureCollection","features":[
          {"type":"Feature","properties":{"id":"a","effective_width_m":5},"geometry":{"type":"Point","coordinates":[121.4,31.2]}}]}"#).unwrap();
        let e = SegmentMap::load(&p, Resolution::Eleven).unwrap_err().to_string();
        assert!(
            e.contains("feature 0") && e.contains("\"a\"") && e.contains("Polygon"),
            "{e}"
        );
        std::fs::write(&p, r#"{"type":"FeatureCollection","features":[
          {"type":"Feature","properties":{"id":"a"},"geometry":{"type":"Polygon","coordinates":[[[121.4,31.2],[121.41,31.2],[121.41,31.21],[121.4,31.2]]]}}]}"#).unwrap();
        let e = SegmentMap::load(&p, Resolution::Eleven).unwrap_err().to_string();
        assert!(e.contains("effective_width_m"), "{e}");
    }

    #[test]
    fn the_bunds_ground_covers_no_segment_and_no_other_ground() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/bund/segments.geojson");
        let map = SegmentMap::load(&dir, Resolution::Eleven).unwrap();
        assert!(map.ground().len() >= 5, "the Bund's ground.geojson is loaded");
        let m = map.matcher();
        assert_eq!(m.segments(), map.segments().len());
        assert_eq!(m.len(), map.segments().len() + map.ground_places().count());
        // Every point of a fine grid over the scenario lies in at most one place, and a ping's
        // Gaussian mass over all places is at most its whole (places do not overlap).
        let b = map.bbox().unwrap();
        let (mut inside, mut ground, mut worst) = (0, 0, 0.0f64);
        let mut masses = Vec::new();
        for i in 0..400 {
            for j in 0..400 {
                let lng = b[0] + (b[2] - b[0]) * (i as f64 + 0.5) / 400.0;
                let lat = b[1] + (b[3] - b[1]) * (j as f64 + 0.5) / 400.0;
                let p = m.local(lat, lng);
                let n = (0..m.len()).filter(|&k| m.distance(k, p) == 0.0).count();
                assert!(n <= 1, "({lng}, {lat}) lies in {n} places");
                let on_ground = m.place_at(lat, lng).is_some_and(|k| k >= m.segments());
                assert_eq!(m.segment_at(lat, lng).is_some() as usize + on_ground as usize, n);
                inside += n;
                ground += on_ground as usize;
                for sigma in [1.0, 4.0, 20.0] {
                    m.masses(p, sigma, &mut masses);
                    let total: f64 = masses.iter().map(|&(_, x)| x as f64).sum();
                    worst = worst.max(total);
                }
            }
        }
        assert!(worst < 1.0 + 1e-3, "a ping's masses sum to {worst}");
        assert!(
            ground > 100 && inside > ground,
            "{ground} of {inside} points on ground"
        );
    }

    #[test]
    fn ground_that_overlaps_other_ground_or_lies_under_segments_is_refused_by_name() {
        let mut map = SegmentMap::build(vec![seg("a", polygon![(x: 121.40, y: 31.20), (x: 121.401, y: 31.20), (x: 121.401, y: 31.201), (x: 121.40, y: 31.201)])], Resolution::Eleven).unwrap();
        let feature = |id: &str, w: f64, e: f64| {
            format!(
                r#"{{"type":"Feature","properties":{{"id":"{id}"}},"geometry":{{"type":"Polygon","coordinates":[[[{w},31.20],[{e},31.20],[{e},31.201],[{w},31.201],[{w},31.20]]]}}}}"#
            )
        };
        let fc = |f: Vec<String>| format!(r#"{{"type":"FeatureCollection","features":[{}]}}"#, f.join(","));
        let e = map
            .add_ground(&fc(vec![feature("under", 121.4002, 121.4008)]), "g.geojson")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("g.geojson") && e.contains("\"under\"") && e.contains("wholly under segments"),
            "{e}"
        );
        let e = map
            .add_ground(
                &fc(vec![
                    feature("g1", 121.4005, 121.403),
                    feature("g2", 121.402, 121.404),
                ]),
                "g.geojson",
            )
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("\"g2\"") && e.contains("overlaps ground \"g1\""),
            "{e}"
        );
        let e = map
            .add_ground(&fc(vec![feature("a", 121.4005, 121.403)]), "g.geojson")
            .unwrap_err()
            .to_string();
        assert!(e.contains("already a segment"), "{e}");
        // Drawn over the segment's end, the ground keeps only what the segment does not cover.
        map.add_ground(&fc(vec![feature("g1", 121.4005, 121.403)]), "g.geojson")
            .unwrap();
        let g = &map.ground()[0];
        let want = geodesic_area_m2(
            &polygon![(x: 121.401, y: 31.20), (x: 121.403, y: 31.20), (x: 121.403, y: 31.201), (x: 121.401, y: 31.201)],
        );
        assert!((g.area_m2 - want).abs() < 1.0, "{} vs {want}", g.area_m2);
        let m = map.matcher();
        assert_eq!((m.segments(), m.len()), (1, 2));
        assert_eq!(m.segment_at(31.2005, 121.4007), Some(0));
        assert_eq!(m.segment_at(31.2005, 121.402), None);
        assert_eq!(m.place_at(31.2005, 121.402), Some(1));
    }
}
