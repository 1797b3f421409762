//! Shanghai public-transport card taps (SODA 2015) → `gate` taps. Metro rows only; an amount of
//! 0.00 is an entry tap, anything else an exit (the fare is charged on exit). Station names carry
//! a line prefix (`1号线莘庄`), dropped to find the station; the card number is dropped entirely
//! (a tap needs no identity). Station coordinates in the name table are GCJ-02 and are converted.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};

use chrono::NaiveDateTime;
use serde_json::json;

use super::{tz, Summary};
use crate::ingest::crs::Crs;

/// Reads the station table (`{"莘庄": {"LNG", "LAT", "ST_NAME_EN", "LINE_NO", ...}}`) → name →
/// (English name, WGS-84 lat, lng).
pub fn stations(text: &str) -> Result<HashMap<String, (String, f64, f64)>, String> {
    let raw: HashMap<String, HashMap<String, serde_json::Value>> =
        serde_json::from_str(text).map_err(|e| format!("station table: {e}"))?;
    let mut out = HashMap::new();
    for (name, v) in raw {
        let num = |k: &str| {
            v.get(k)
                .and_then(|x| x.as_str().and_then(|s| s.parse::<f64>().ok()).or(x.as_f64()))
        };
        let (Some(lat), Some(lng)) = (num("LAT"), num("LNG")) else {
            continue;
        };
        let en = v
            .get("ST_NAME_EN")
            .and_then(|x| x.as_str())
            .unwrap_or("")
            .to_string();
        let (wlat, wlng) = Crs::Gcj02.to_wgs84(lat, lng);
        out.insert(name, (en, wlat, wlng));
    }
    Ok(out)
}

/// The station name without its line prefix (`11号线昌吉东路` → `昌吉东路`).
pub fn strip_line(s: &str) -> &str {
    match s.find("号线") {
        Some(i) => &s[i + "号线".len()..],
        None => s,
    }
}

/// Characters the card data and the station table write differently for one station.
const VARIANTS: &[(char, char)] = &[('浜', '滨')];

/// A station name as people mean it: no `站` (station) or `路` (road) at the end, variant
/// characters folded (`上海大学站` = `上海大学`, `李子园路` = `李子园`, `淞浜路` = `淞滨路`).
pub fn normalise(name: &str) -> String {
    let mut n: String = name
        .trim()
        .chars()
        .map(|c| VARIANTS.iter().find(|(v, _)| *v == c).map_or(c, |(_, to)| *to))
        .collect();
    for suffix in ["站", "路"] {
        if n.chars().count() > 2 {
            if let Some(stripped) = n.strip_suffix(suffix) {
                n = stripped.to_owned();
            }
        }
    }
    n
}

/// The table's name for `name`: itself, or the one entry whose normalised name is the same
/// (none when two entries would share it: a guess between stations is worse than a skip).
fn resolve<'a>(
    stations: &'a HashMap<String, (String, f64, f64)>,
    name: &str,
) -> Option<(&'a str, &'a (String, f64, f64))> {
    if let Some((k, v)) = stations.get_key_value(name) {
        return Some((k, v));
    }
    let want = normalise(name);
    let mut hits = stations.iter().filter(|(k, _)| normalise(k) == want);
    match (hits.next(), hits.next()) {
        (Some((k, v)), None) => Some((k, v)),
        _ => None,
    }
}

/// Converts one file.
pub fn import(
    input: impl Read,
    stations: &HashMap<String, (String, f64, f64)>,
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
        if f(4) != "地铁" {
            s.skip("not a metro row");
            continue;
        }
        let written = strip_line(f(3));
        let Some((name, (en, lat, lng))) = resolve(stations, written) else {
            s.skip(format!("station {written} not in the station table"));
            continue;
        };
        if name != written {
            s.resolve(format!("{written} → {name}"));
        }
        let Ok(t) = NaiveDateTime::parse_from_str(&format!("{} {}", f(1), f(2)), "%Y-%m-%d %H:%M:%S") else {
            s.skip("unreadable date/time");
            continue;
        };
        let Ok(amount) = f(5).parse::<f64>() else {
            s.skip("unreadable amount");
            continue;
        };
        let id = format!("sh-{name}");
        seen.entry(id.clone()).or_insert_with(
            || json!({"id": id, "name": format!("{name} {en}"), "lat": lat, "lng": lng, "period_s": 60}),
        );
        let dir = if amount == 0.0 { "in" } else { "out" };
        let rec =
            json!({"kind": "gate", "ts": tz::shanghai_ms(t), "station": id, "gate": "card", "dir": dir});
        s.emit(out, &rec).map_err(|e| e.to_string())?;
    }
    s.registry.extend(seen.into_values());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn station_names_match_as_people_write_them_and_ambiguity_is_not_guessed() {
        let table: HashMap<String, (String, f64, f64)> = [
            "李子园",
            "上海大学",
            "外高桥保税区北站",
            "淞滨路",
            "长寿路",
            "长寿",
        ]
        .iter()
        .map(|n| (n.to_string(), (String::new(), 31.0, 121.0)))
        .collect();
        let name = |n: &str| resolve(&table, n).map(|(k, _)| k.to_owned());
        assert_eq!(name("李子园路").as_deref(), Some("李子园"));
        assert_eq!(name("上海大学站").as_deref(), Some("上海大学"));
        assert_eq!(name("外高桥保税区北").as_deref(), Some("外高桥保税区北站"));
        assert_eq!(name("淞浜路").as_deref(), Some("淞滨路"));
        assert_eq!(name("长寿路").as_deref(), Some("长寿路"), "an exact name wins");
        assert_eq!(
            name("长寿站"),
            None,
            "two stations would match: skipped, not guessed"
        );
        assert_eq!(name("人民广场"), None);
    }
}
