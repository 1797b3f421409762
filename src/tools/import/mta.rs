//! NYC MTA turnstile audits → `gate` cumulative-register records.
//!
//! Each device (C/A + UNIT + SCP) is a gate of the station UNIT; ENTRIES / EXITS are its running
//! totals. Times are New York local. Station locations come from a UNIT → lat/lon table; a UNIT
//! missing from it is reported and its rows skipped, never guessed.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};

use chrono::NaiveDateTime;
use serde::Deserialize;
use serde_json::json;

use super::{tz, Summary};

#[derive(Deserialize)]
struct Unit {
    station: String,
    #[serde(default)]
    line: String,
    latitude: Option<String>,
    longitude: Option<String>,
}

/// A UNIT's station: name, lines, lat, lng (WGS-84).
pub type UnitTable = HashMap<String, (String, String, f64, f64)>;

/// Reads the UNIT → station table (`{"R001": {"station", "line", "latitude", "longitude"}}`).
pub fn units(text: &str) -> Result<UnitTable, String> {
    let raw: HashMap<String, Unit> = serde_json::from_str(text).map_err(|e| format!("UNIT table: {e}"))?;
    let mut out = HashMap::new();
    for (k, u) in raw {
        // Entries without a location (e.g. MetroCard vans) cannot place counts: left out, so
        // their rows are reported as unknown.
        let (Some(lat), Some(lng)) = (u.latitude, u.longitude) else {
            continue;
        };
        let lat = lat
            .trim()
            .parse::<f64>()
            .map_err(|_| format!("UNIT {k}: latitude {lat:?}"))?;
        let lng = lng
            .trim()
            .parse::<f64>()
            .map_err(|_| format!("UNIT {k}: longitude {lng:?}"))?;
        out.insert(k, (u.station, u.line, lat, lng));
    }
    Ok(out)
}

/// Converts one audit file.
pub fn import(
    input: impl Read,
    units: &UnitTable,
    out: &mut dyn Write,
    s: &mut Summary,
) -> Result<(), String> {
    let mut rdr = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .flexible(true)
        .from_reader(input);
    let mut seen: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    for (i, row) in rdr.records().enumerate() {
        let row = row.map_err(|e| format!("row {}: {e}", i + 2))?;
        let f = |k: usize| row.get(k).unwrap_or("").trim();
        if row.len() < 11 {
            s.skip("short row");
            continue;
        }
        let (ca, unit, scp) = (f(0), f(1), f(2));
        let Some((name, lines, lat, lng)) = units.get(unit) else {
            s.skip(format!(
                "UNIT {unit} ({}) has no location in the station table",
                f(3)
            ));
            continue;
        };
        let Ok(t) = NaiveDateTime::parse_from_str(&format!("{} {}", f(6), f(7)), "%m/%d/%Y %H:%M:%S") else {
            s.skip("unreadable DATE/TIME");
            continue;
        };
        let (Ok(entries), Ok(exits)) = (f(9).parse::<u64>(), f(10).parse::<u64>()) else {
            s.skip("unreadable ENTRIES/EXITS");
            continue;
        };
        let station = format!("mta-{unit}");
        seen.entry(station.clone()).or_insert_with(|| {
            json!({"id": station, "name": name, "lines": [lines], "lat": lat, "lng": lng, "period_s": 14_400})
        });
        let rec = json!({"kind": "gate", "ts": tz::new_york_ms(t), "station": station,
                         "gate": format!("{ca}/{scp}"), "entries_total": entries, "exits_total": exits});
        s.emit(out, &rec).map_err(|e| e.to_string())?;
    }
    s.registry.extend(seen.into_values());
    Ok(())
}
