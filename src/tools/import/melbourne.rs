//! City of Melbourne pedestrian counts (hourly, per sensor, with the sensor's location joined in)
//! → `counter` interval records. Counts may carry thousands separators ("4,955"). Times are
//! Melbourne local; `ts` is the end of the hour.

use std::collections::BTreeMap;
use std::io::{Read, Write};

use chrono::NaiveDate;
use serde_json::json;

use super::{tz, Summary};

/// Converts one file.
pub fn import(input: impl Read, out: &mut dyn Write, s: &mut Summary) -> Result<(), String> {
    let mut rdr = csv::ReaderBuilder::new().trim(csv::Trim::All).from_reader(input);
    let headers = rdr.headers().map_err(|e| e.to_string())?.clone();
    let col = |name: &str| {
        headers
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| format!("column `{name}` missing"))
    };
    let (c_date, c_time, c_sensor, c_count) = (
        col("date_time")?,
        col("time")?,
        col("sensor_id")?,
        col("hourly_counts")?,
    );
    let (c_name, c_lat, c_lng) = (col("sensor_description")?, col("latitude")?, col("longitude")?);
    let mut sensors: BTreeMap<u64, serde_json::Value> = BTreeMap::new();
    for (i, row) in rdr.records().enumerate() {
        let row = row.map_err(|e| format!("row {}: {e}", i + 2))?;
        let f = |k: usize| row.get(k).unwrap_or("").trim();
        let Ok(date) = NaiveDate::parse_from_str(f(c_date), "%m/%d/%Y") else {
            s.skip("unreadable date_time");
            continue;
        };
        let (Ok(hour), Ok(sensor)) = (f(c_time).parse::<u32>(), f(c_sensor).parse::<u64>()) else {
            s.skip("unreadable time or sensor_id");
            continue;
        };
        let Ok(count) = f(c_count).replace(',', "").parse::<u64>() else {
            s.skip("unreadable hourly_counts");
            continue;
        };
        let (Ok(lat), Ok(lng)) = (f(c_lat).parse::<f64>(), f(c_lng).parse::<f64>()) else {
            s.skip("sensor without a location");
            continue;
        };
        let Some(start) = date.and_hms_opt(hour.min(23), 0, 0) else {
            s.skip("hour out of range");
            continue;
        };
        let id = format!("mel-{sensor}");
        sensors.entry(sensor).or_insert_with(|| {
            json!({"id": id, "name": f(c_name), "lat": lat, "lng": lng, "kind": "line", "period_s": 3600,
                   "direction": "both directions counted as in"})
        });
        let ts = tz::melbourne_ms(start) + 3_600_000;
        let rec = json!({"kind": "counter", "ts": ts, "sensor": id, "in": count, "out": 0, "period_s": 3600});
        s.emit(out, &rec).map_err(|e| e.to_string())?;
    }
    s.registry.extend(sensors.into_values());
    Ok(())
}
