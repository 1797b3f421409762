//! Frame encoding: subscription (resolution, bbox), roll-up to coarser cells, k-suppression.

use std::collections::BTreeMap;

use h3o::{CellIndex, LatLng, Resolution};
use serde::Deserialize;
use serde_json::json;

use crate::flow::SourceProgress;
use crate::risk::{Alert, SegmentStatus};
use crate::window::{cell_area_m2, HexWindow};

/// What a viewer asked for.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Subscription {
    /// H3 resolution of the cells sent (coarser than the engine's: rolled up to parents).
    pub res: u8,
    /// [min_lng, min_lat, max_lng, max_lat].
    pub bbox: [f64; 4],
}

/// The client's message: `{"subscribe": {"res": R, "bbox": [...]}}`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClientMessage {
    /// New subscription.
    pub subscribe: SubscribeBody,
}

/// Body of a subscribe message; omitted keys keep their value.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscribeBody {
    /// Resolution 0..=15.
    pub res: Option<u8>,
    /// Bounding box.
    pub bbox: Option<[f64; 4]>,
}

impl Subscription {
    /// Applies a client message, validating it; the error says what was wrong.
    pub fn update(&mut self, text: &str, engine_res: u8) -> Result<(), String> {
        let m: ClientMessage = serde_json::from_str(text).map_err(|e| format!("invalid message: {e}"))?;
        if let Some(r) = m.subscribe.res {
            if r > 15 {
                return Err(format!("res {r} is out of range 0..=15"));
            }
            self.res = r.min(engine_res);
        }
        if let Some(b) = m.subscribe.bbox {
            if !(b.iter().all(|x| x.is_finite())
                && b[0] < b[2]
                && b[1] < b[3]
                && b[1] >= -90.0
                && b[3] <= 90.0)
            {
                return Err("bbox must be [min_lng, min_lat, max_lng, max_lat] with min < max".into());
            }
            self.bbox = b;
        }
        Ok(())
    }
}

/// A heatmap frame for one subscription: cells rolled up to `sub.res`, inside the bbox, and with at
/// least `k` people (k ≤ 1 publishes all). A provisional frame also says where each source stands
/// against the window (`sources`), so a quiet street with a carrier still due reads as "not in
/// yet" rather than "empty".
pub fn heatmap(w: &HexWindow, progress: &[SourceProgress], sub: &Subscription, k: u32) -> String {
    use std::fmt::Write;
    let res = Resolution::try_from(sub.res).unwrap_or(Resolution::Eleven);
    let [x0, y0, x1, y1] = sub.bbox;
    // The default view is the whole world: no cell centre needs computing to decide.
    let everywhere = x0 <= -180.0 && y0 <= -90.0 && x1 >= 180.0 && y1 >= 90.0;
    let mut cells: BTreeMap<CellIndex, f64> = BTreeMap::new();
    for r in &w.rows {
        let Some(c) = r.cell.index() else { continue };
        if !everywhere {
            // The bbox selects the engine's fine cells; a coarse parent then holds what is in view.
            let ll = LatLng::from(c);
            if !(ll.lng() >= x0 && ll.lng() <= x1 && ll.lat() >= y0 && ll.lat() <= y1) {
                continue;
            }
        }
        let c = if c.resolution() > res {
            c.parent(res).unwrap_or(c)
        } else {
            c
        };
        *cells.entry(c).or_default() += r.people();
    }
    // Written by hand: this runs once per viewer per frame, and building a JSON value per cell
    // cost twenty times the bytes it produces.
    let mut out = String::with_capacity(96 + cells.len() * 48);
    let _ = write!(
        out,
        "{{\"type\":\"heatmap\",\"window_start\":{},\"window_end\":{},\"final\":{},\"res\":{},\"cells\":[",
        w.start.0, w.end.0, w.is_final, sub.res
    );
    let mut first = true;
    for (c, p) in cells.into_iter().filter(|(_, p)| *p >= k.max(1) as f64) {
        if !first {
            out.push(',');
        }
        first = false;
        let density = p / cell_area_m2(c);
        let _ = write!(out, "[\"{c}\",{},", (p * 10.0).round() / 10.0);
        if density.is_finite() {
            let _ = write!(out, "{density}]");
        } else {
            out.push_str("null]");
        }
    }
    out.push(']');
    if !progress.is_empty() {
        out.push_str(",\"sources\":");
        out.push_str(&serde_json::to_string(progress).unwrap_or_else(|_| "[]".into()));
    }
    out.push('}');
    out
}

/// A segments frame.
pub fn segments(window_end: i64, s: &[SegmentStatus]) -> String {
    let segs: Vec<serde_json::Value> = s
        .iter()
        .map(|x| {
            json!({
                "id": x.id, "name": x.name, "people": (x.people * 10.0).round() / 10.0, "density": x.density,
                "flow": x.flow, "tier": x.tier, "trend": x.trend, "trend_dir": x.trend_dir,
                "next_tier": x.next_tier, "minutes_to_next": x.minutes_to_next, "inflow": x.inflow,
                "outflow": x.outflow, "degraded": x.degraded,
            })
        })
        .collect();
    json!({"type": "segments", "window_end": window_end, "segments": segs}).to_string()
}

/// An alert frame.
pub fn alert(a: &Alert) -> String {
    let mut v = serde_json::to_value(a).unwrap_or_default();
    v["type"] = "alert".into();
    v.to_string()
}

/// `{"type":"ack", ...}`: an alert was acknowledged.
pub fn ack(a: &crate::live::Ack) -> String {
    let mut v = serde_json::to_value(a).unwrap_or_default();
    v["type"] = "ack".into();
    v.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CellId, EventTime};
    use crate::window::HexRow;

    fn window() -> (HexWindow, CellIndex) {
        let base = LatLng::new(31.2405, 121.4832)
            .unwrap()
            .to_cell(Resolution::Eleven);
        let kids: Vec<CellIndex> = base
            .parent(Resolution::Nine)
            .unwrap()
            .children(Resolution::Eleven)
            .take(3)
            .collect();
        let rows = kids
            .iter()
            .enumerate()
            .map(|(i, c)| HexRow {
                cell: CellId::from(*c),
                lbs_devices: 1,
                lbs_people: [4.0, 5.0, 30.0][i],
                ..Default::default()
            })
            .collect();
        (
            HexWindow {
                start: EventTime(0),
                end: EventTime(60_000),
                rows,
                points: vec![],
                segments: Default::default(),
                is_final: true,
            },
            base.parent(Resolution::Nine).unwrap(),
        )
    }

    fn cells(frame: &str) -> Vec<serde_json::Value> {
        let v: serde_json::Value = serde_json::from_str(frame).unwrap();
        v["cells"].as_array().unwrap().clone()
    }

    #[test]
    fn the_hand_written_frame_is_json_with_every_cell_its_people_and_density() {
        let (w, _) = window();
        let sub = Subscription {
            res: 11,
            bbox: [-180.0, -90.0, 180.0, 90.0],
        };
        let v: serde_json::Value = serde_json::from_str(&heatmap(&w, &[], &sub, 0)).unwrap();
        assert_eq!(v["type"], "heatmap");
        assert_eq!(v["window_start"], w.start.0);
        assert_eq!(v["final"], w.is_final);
        let got = v["cells"].as_array().unwrap();
        assert_eq!(got.len(), w.rows.len());
        for r in &w.rows {
            let c = r.cell.index().unwrap();
            let cell = got.iter().find(|x| x[0] == c.to_string()).expect("every cell");
            assert_eq!(cell[1].as_f64().unwrap(), (r.people() * 10.0).round() / 10.0);
            let d = cell[2].as_f64().unwrap();
            assert!((d - r.people() / c.area_m2()).abs() < 1e-12, "{cell}");
        }
    }

    #[test]
    fn cells_under_k_are_left_out() {
        let (w, _) = window();
        let sub = Subscription {
            res: 11,
            bbox: [121.0, 31.0, 122.0, 32.0],
        };
        assert_eq!(cells(&heatmap(&w, &[], &sub, 10)).len(), 1);
        assert_eq!(cells(&heatmap(&w, &[], &sub, 0)).len(), 3);
    }

    #[test]
    fn coarser_resolutions_roll_cells_up_to_parents() {
        let (w, parent) = window();
        let sub = Subscription {
            res: 9,
            bbox: [121.0, 31.0, 122.0, 32.0],
        };
        let c = cells(&heatmap(&w, &[], &sub, 10));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0][0], parent.to_string());
        assert_eq!(c[0][1], 39.0, "4 + 5 + 30: small children count once rolled up");
    }

    #[test]
    fn the_bbox_filters_cells() {
        let (w, _) = window();
        let sub = Subscription {
            res: 11,
            bbox: [100.0, 10.0, 101.0, 11.0],
        };
        assert!(cells(&heatmap(&w, &[], &sub, 0)).is_empty());
    }

    #[test]
    fn bad_subscriptions_are_refused_with_a_reason() {
        let mut s = Subscription {
            res: 11,
            bbox: [0.0, 0.0, 1.0, 1.0],
        };
        assert!(s
            .update(r#"{"subscribe":{"res":16}}"#, 11)
            .unwrap_err()
            .contains("res 16"));
        assert!(s
            .update(r#"{"subscribe":{"bbox":[1,1,0,0]}}"#, 11)
            .unwrap_err()
            .contains("bbox"));
        assert!(s.update("hello", 11).unwrap_err().contains("invalid message"));
        s.update(r#"{"subscribe":{"res":8}}"#, 11).unwrap();
        assert_eq!(s.res, 8);
        s.update(r#"{"subscribe":{"res":13}}"#, 11).unwrap();
        assert_eq!(s.res, 11, "never finer than the engine");
    }
}
