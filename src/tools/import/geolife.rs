//! GeoLife PLT trajectories (WGS-84, times in GMT) → `lbs` pings, one device per file.

use std::io::{BufRead, BufReader, Read, Write};

use chrono::NaiveDateTime;
use serde_json::json;

use super::Summary;

/// Converts one file; `device` names the trajectory's owner (the file name by default).
pub fn import(input: impl Read, device: &str, out: &mut dyn Write, s: &mut Summary) -> Result<(), String> {
    for (i, line) in BufReader::new(input).lines().enumerate() {
        let line = line.map_err(|e| e.to_string())?;
        if i < 6 || line.trim().is_empty() {
            continue; // six header lines
        }
        let f: Vec<&str> = line.split(',').map(str::trim).collect();
        if f.len() < 7 {
            s.skip("short line");
            continue;
        }
        let (Ok(lat), Ok(lng)) = (f[0].parse::<f64>(), f[1].parse::<f64>()) else {
            s.skip("unreadable lat/lng");
            continue;
        };
        let Ok(t) = NaiveDateTime::parse_from_str(&format!("{} {}", f[5], f[6]), "%Y-%m-%d %H:%M:%S") else {
            s.skip("unreadable date/time");
            continue;
        };
        let rec = json!({"kind": "lbs", "ts": t.and_utc().timestamp_millis(), "device": device,
                         "lat": lat, "lng": lng, "source": "geolife"});
        s.emit(out, &rec).map_err(|e| e.to_string())?;
    }
    Ok(())
}
