//! The Bund scenario files are consistent: every sensor and exit feeds an existing segment, polygons
//! are valid and do not overlap, and the registries load.

use h3o::Resolution;
use throng::scenario::Registry;
use throng::scenario::SegmentMap;

#[test]
fn bund_scenario_files_are_consistent() {
    let dir = crate::support::root().join("fixtures/bund");
    let map = SegmentMap::load(&dir.join("segments.geojson"), Resolution::Eleven).unwrap();
    assert!(map.segments().len() >= 12);
    let reg = Registry::load_dir(&dir, Resolution::Eleven).unwrap();
    for p in reg.points() {
        let seg = p
            .segment
            .as_deref()
            .unwrap_or_else(|| panic!("{} feeds no segment", p.id));
        assert!(map.index(seg).is_some(), "{} feeds unknown segment {seg}", p.id);
    }
    for (i, s) in map.segments().iter().enumerate() {
        let cells: f64 = map.overlaps(i).iter().map(|(_, a)| a).sum();
        assert!(
            (cells / s.area_m2 - 1.0).abs() < 0.01,
            "{}: cells cover {cells} of {} m²",
            s.id.0,
            s.area_m2
        );
    }
    // Disjoint: walkable shares of a cell add up to 1 only if no ground is counted twice.
    use geo::{Area, BooleanOps};
    for (i, a) in map.segments().iter().enumerate() {
        for b in &map.segments()[i + 1..] {
            let overlap = a.polygon.intersection(&b.polygon).unsigned_area();
            assert!(overlap < 1e-10, "{} overlaps {}", a.id.0, b.id.0);
        }
    }
}
