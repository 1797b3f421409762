//! Sensor and station registries, loaded from the scenario folder and validated at load.
//!
//! Counter and gate reports name a sensor or station; only registered ones are accepted, and their
//! counts land in the H3 cell of the registered location.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use h3o::{LatLng, Resolution};
use serde::Deserialize;

use crate::error::RegistryError;
use crate::model::{CellId, PointIdx, SensorIdx};

/// What a counter measures.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum SensorKind {
    /// Counts people crossing a line (`in` = into its segment).
    #[default]
    Line,
    /// Counts people inside a zone (occupancy).
    Zone,
}

/// One camera people-counter, as registered.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sensor {
    /// Id used by the feed (`sensor` field).
    pub id: String,
    /// Human-readable name.
    #[serde(default)]
    pub name: String,
    /// Location, WGS-84.
    pub lat: f64,
    /// Location, WGS-84.
    pub lng: f64,
    /// Road segment it measures.
    #[serde(default)]
    pub segment: Option<String>,
    /// Line or zone.
    #[serde(default)]
    pub kind: SensorKind,
    /// What `in` means (documentation for operators).
    #[serde(default)]
    pub direction: Option<String>,
    /// Nominal reporting period; staleness is judged against it.
    #[serde(default)]
    pub period_s: Option<f64>,
    /// Effective width of the counting line, metres.
    #[serde(default)]
    pub width_m: Option<f64>,
}

/// A metro station exit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StationExit {
    /// Gate or exit id used by the feed (`gate` field).
    pub id: String,
    /// Human-readable name.
    #[serde(default)]
    pub name: String,
    /// Location, WGS-84.
    pub lat: f64,
    /// Location, WGS-84.
    pub lng: f64,
    /// The road segment this exit feeds.
    #[serde(default)]
    pub segment: Option<String>,
}

/// One metro station, as registered.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Station {
    /// Id used by the feed (`station` field).
    pub id: String,
    /// Name (Chinese and English).
    #[serde(default)]
    pub name: String,
    /// Metro lines serving it.
    #[serde(default)]
    pub lines: Vec<String>,
    /// Location, WGS-84.
    pub lat: f64,
    /// Location, WGS-84.
    pub lng: f64,
    /// Exits with their own locations; gates not listed count at the station's location.
    #[serde(default)]
    pub exits: Vec<StationExit>,
    /// Nominal reporting period.
    #[serde(default)]
    pub period_s: Option<f64>,
}

/// A place where people are counted directly: a counter or a station exit.
#[derive(Debug, Clone, PartialEq)]
pub struct FeedPoint {
    /// `counter:<sensor>` or `gate:<station>/<exit>`.
    pub id: String,
    /// The road segment it feeds or measures.
    pub segment: Option<String>,
    /// Nominal reporting period (staleness is judged against it).
    pub period_s: Option<f64>,
    /// Counter or gate.
    pub gate: bool,
    /// A zone counter (reports occupancy of its segment).
    pub zone: bool,
    /// Effective width of the counting line, metres.
    pub width_m: Option<f64>,
}

/// Registered sensors and stations, with their cells precomputed.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    sensors: Vec<Sensor>,
    sensor_cells: Vec<CellId>,
    sensor_index: HashMap<String, SensorIdx>,
    stations: Vec<Station>,
    station_cells: Vec<CellId>,
    station_index: HashMap<String, usize>,
    exit_cells: HashMap<(usize, String), (CellId, PointIdx)>,
    points: Vec<FeedPoint>,
    sensor_points: Vec<PointIdx>,
}

/// A registry file's entries from its text; errors name `path` and the entry.
fn parse_entries<T: for<'de> Deserialize<'de>>(text: &str, path: &Path) -> Result<Vec<T>, RegistryError> {
    let mut de = serde_json::Deserializer::from_str(text);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path_str = e.path().to_string();
        let entry = path_str
            .strip_prefix('[')
            .and_then(|s| s.split(']').next())
            .map(|i| format!("entry {i}"))
            .unwrap_or_else(|| "the file".into());
        let field = path_str.split('.').skip(1).collect::<Vec<_>>().join(".");
        let problem = if field.is_empty() {
            e.inner().to_string()
        } else {
            format!("field `{field}`: {}", e.inner())
        };
        RegistryError {
            file: path.to_owned(),
            entry,
            problem,
        }
    })
}

fn cell_at(lat: f64, lng: f64, res: Resolution) -> Result<CellId, String> {
    if !lat.is_finite() || !(-90.0..=90.0).contains(&lat) {
        return Err(format!("lat {lat} is outside -90..90"));
    }
    if !lng.is_finite() || !(-180.0..=180.0).contains(&lng) {
        return Err(format!("lng {lng} is outside -180..180"));
    }
    LatLng::new(lat, lng)
        .map(|ll| CellId::from(ll.to_cell(res)))
        .map_err(|e| e.to_string())
}

impl Registry {
    /// Loads `sensors.json` and `stations.json` from a scenario folder (either may be absent).
    pub fn load_dir(dir: &Path, res: Resolution) -> Result<Registry, RegistryError> {
        let sensors = dir.join("sensors.json");
        let stations = dir.join("stations.json");
        Registry::load(
            sensors.exists().then_some(sensors.as_path()),
            stations.exists().then_some(stations.as_path()),
            res,
        )
    }

    /// Loads the given registry files.
    pub fn load(
        sensors: Option<&Path>,
        stations: Option<&Path>,
        res: Resolution,
    ) -> Result<Registry, RegistryError> {
        let read = |path: Option<&Path>| -> Result<Option<String>, RegistryError> {
            path.map(|p| {
                std::fs::read_to_string(p).map_err(|e| RegistryError {
                    file: p.to_owned(),
                    entry: "the file".into(),
                    problem: format!("cannot read: {e}"),
                })
            })
            .transpose()
        };
        let (a, b) = (read(sensors)?, read(stations)?);
        Registry::build(sensors.zip(a.as_deref()), stations.zip(b.as_deref()), res)
    }

    /// [`load`](Registry::load) from the files' texts (`sensors.json`, `stations.json`).
    pub fn parse(
        sensors: Option<&str>,
        stations: Option<&str>,
        res: Resolution,
    ) -> Result<Registry, RegistryError> {
        Registry::build(
            sensors.map(|t| (Path::new("sensors.json"), t)),
            stations.map(|t| (Path::new("stations.json"), t)),
            res,
        )
    }

    fn build(
        sensors: Option<(&Path, &str)>,
        stations: Option<(&Path, &str)>,
        res: Resolution,
    ) -> Result<Registry, RegistryError> {
        let mut reg = Registry::default();
        if let Some((path, text)) = sensors {
            for (i, s) in parse_entries::<Sensor>(text, path)?.into_iter().enumerate() {
                reg.add_sensor(s, res)
                    .map_err(|problem| entry_err(path, i, problem))?;
            }
        }
        if let Some((path, text)) = stations {
            for (i, s) in parse_entries::<Station>(text, path)?.into_iter().enumerate() {
                reg.add_station(s, res)
                    .map_err(|problem| entry_err(path, i, problem))?;
            }
        }
        Ok(reg)
    }

    /// Adds a sensor, checking it.
    pub fn add_sensor(&mut self, s: Sensor, res: Resolution) -> Result<(), String> {
        let tag = format!("(id {:?})", s.id);
        if s.id.trim().is_empty() {
            return Err("`id` is empty".into());
        }
        if self.sensor_index.contains_key(&s.id) {
            return Err(format!("{tag} duplicate id: each sensor id must be unique"));
        }
        if let Some(p) = s.period_s {
            if !(p.is_finite() && p > 0.0) {
                return Err(format!("{tag} `period_s` must be positive, got {p}"));
            }
        }
        let cell = cell_at(s.lat, s.lng, res).map_err(|e| format!("{tag} {e}"))?;
        self.sensor_index
            .insert(s.id.clone(), SensorIdx(self.sensors.len() as u32));
        self.sensor_points.push(PointIdx(self.points.len() as u32));
        self.points.push(FeedPoint {
            id: format!("counter:{}", s.id),
            segment: s.segment.clone(),
            period_s: s.period_s,
            gate: false,
            zone: s.kind == SensorKind::Zone,
            width_m: s.width_m,
        });
        self.sensor_cells.push(cell);
        self.sensors.push(s);
        Ok(())
    }

    /// Adds a station, checking it and its exits.
    pub fn add_station(&mut self, s: Station, res: Resolution) -> Result<(), String> {
        let tag = format!("(id {:?})", s.id);
        if s.id.trim().is_empty() {
            return Err("`id` is empty".into());
        }
        if self.station_index.contains_key(&s.id) {
            return Err(format!("{tag} duplicate id: each station id must be unique"));
        }
        let idx = self.stations.len();
        let cell = cell_at(s.lat, s.lng, res).map_err(|e| format!("{tag} {e}"))?;
        for (j, x) in s.exits.iter().enumerate() {
            let c = cell_at(x.lat, x.lng, res).map_err(|e| format!("{tag} exits[{j}] {e}"))?;
            if s.exits[..j].iter().any(|e| e.id == x.id) {
                return Err(format!("{tag} exits[{j}] duplicate exit id {:?}", x.id));
            }
            let point = PointIdx(self.points.len() as u32);
            self.points.push(FeedPoint {
                id: format!("gate:{}/{}", s.id, x.id),
                segment: x.segment.clone(),
                period_s: s.period_s,
                gate: true,
                zone: false,
                width_m: None,
            });
            self.exit_cells.insert((idx, x.id.clone()), (c, point));
        }
        self.station_index.insert(s.id.clone(), idx);
        self.station_cells.push(cell);
        self.stations.push(s);
        Ok(())
    }

    /// Looks a sensor up by id: its index, entry, cell and feed point.
    pub fn sensor(&self, id: &str) -> Option<(SensorIdx, &Sensor, CellId, PointIdx)> {
        let idx = *self.sensor_index.get(id)?;
        let i = idx.0 as usize;
        Some((idx, &self.sensors[i], self.sensor_cells[i], self.sensor_points[i]))
    }

    /// Looks a station up by id: its index, the cell a gate of it counts in, and the feed point when
    /// the gate is a registered exit.
    pub fn station_gate_cell(
        &self,
        station: &str,
        gate: Option<&str>,
    ) -> Option<(usize, CellId, Option<PointIdx>)> {
        let idx = *self.station_index.get(station)?;
        match gate.and_then(|g| self.exit_cells.get(&(idx, g.to_owned()))) {
            Some(&(cell, point)) => Some((idx, cell, Some(point))),
            None => Some((idx, self.station_cells[idx], None)),
        }
    }

    /// Every feed point, indexed by `PointIdx`.
    pub fn points(&self) -> &[FeedPoint] {
        &self.points
    }

    /// All registered sensors.
    pub fn sensors(&self) -> &[Sensor] {
        &self.sensors
    }

    /// All registered stations.
    pub fn stations(&self) -> &[Station] {
        &self.stations
    }
}

fn entry_err(path: &Path, i: usize, problem: String) -> RegistryError {
    RegistryError {
        file: PathBuf::from(path),
        entry: format!("entry {i}"),
        problem,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn loads_sensors_and_stations() {
        let s = file(r#"[{"id":"cam-1","lat":31.24,"lng":121.48,"segment":"enr"}]"#);
        let t = file(
            r#"[{"id":"enr","name":"East Nanjing Road","lines":["2","10"],"lat":31.238,"lng":121.477,
                "exits":[{"id":"exit-3","lat":31.2385,"lng":121.479,"segment":"enr-west"}]}]"#,
        );
        let r = Registry::load(Some(s.path()), Some(t.path()), Resolution::Eleven).unwrap();
        assert!(r.sensor("cam-1").is_some());
        let (_, station_cell, none) = r.station_gate_cell("enr", Some("G12")).unwrap();
        let (_, exit_cell, point) = r.station_gate_cell("enr", Some("exit-3")).unwrap();
        assert!(none.is_none());
        let p = &r.points()[point.unwrap().0 as usize];
        assert_eq!(
            (p.id.as_str(), p.segment.as_deref()),
            ("gate:enr/exit-3", Some("enr-west"))
        );
        assert_ne!(station_cell, exit_cell, "an exit counts at its own location");
    }

    #[test]
    fn bad_latitude_names_file_entry_and_problem() {
        let s = file(r#"[{"id":"ok","lat":31,"lng":121},{"id":"cam-9","lat":95,"lng":121}]"#);
        let e = Registry::load(Some(s.path()), None, Resolution::Eleven)
            .unwrap_err()
            .to_string();
        assert!(e.contains(&s.path().display().to_string()), "{e}");
        assert!(
            e.contains("entry 1") && e.contains("cam-9") && e.contains("lat 95"),
            "{e}"
        );
    }

    #[test]
    fn wrong_type_names_the_field() {
        let s = file(r#"[{"id":"ok","lat":31,"lng":121},{"id":"x","lat":"north","lng":121}]"#);
        let e = Registry::load(Some(s.path()), None, Resolution::Eleven)
            .unwrap_err()
            .to_string();
        assert!(e.contains("entry 1") && e.contains("field `lat`"), "{e}");
    }

    #[test]
    fn duplicate_and_unknown_keys_are_refused() {
        let s = file(r#"[{"id":"a","lat":31,"lng":121},{"id":"a","lat":31,"lng":121}]"#);
        let e = Registry::load(Some(s.path()), None, Resolution::Eleven)
            .unwrap_err()
            .to_string();
        assert!(e.contains("duplicate"), "{e}");
        let s = file(r#"[{"id":"a","lat":31,"lng":121,"segmnet":"x"}]"#);
        let e = Registry::load(Some(s.path()), None, Resolution::Eleven)
            .unwrap_err()
            .to_string();
        assert!(e.contains("segmnet"), "{e}");
    }
}
