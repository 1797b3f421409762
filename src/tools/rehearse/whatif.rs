//! The what-if file of `throng rehearse`: what an organiser changes before the night (crowd size,
//! arrival curve, closed exits or segments, capacities), read from TOML and checked against the
//! scenario so a typo is named, not silently rehearsed as the baseline.

use std::path::Path;

use chrono::{NaiveTime, TimeZone};
use serde::Deserialize;

use crate::tools::sim::{Changes, Closed, Closure, Scenario};

/// A what-if as written.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct WhatIf {
    /// A title for the report ("Close metro exit 7 at 23:30").
    #[serde(default)]
    pub name: Option<String>,
    /// Crowd size and arrival curve.
    #[serde(default)]
    pub crowd: Crowd,
    /// Exits or segments closed from a time on.
    #[serde(default)]
    pub close: Vec<Close>,
    /// Segment capacities set by the organiser for the night.
    #[serde(default)]
    pub capacity: Vec<Capacity>,
}

/// `[crowd]`.
#[derive(Debug, Clone, Default, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Crowd {
    /// People as a multiple of `--devices` (1: the same crowd).
    pub people_factor: Option<f64>,
    /// Exponent of the arrival curve (0.7 by default): 1 spreads arrivals evenly over the evening,
    /// smaller values make a later, steeper rush before midnight.
    pub arrival_shape: Option<f64>,
}

/// `[[close]]`: one of `exit` ("station/exit", as in stations.json) or `segment`, from `at`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Close {
    /// A metro exit, "station/exit" (e.g. "east-nanjing-road/exit-7").
    pub exit: Option<String>,
    /// A segment id.
    pub segment: Option<String>,
    /// Local time of the night in the scenario's zone, "HH:MM" (default: from the start).
    pub at: Option<String>,
}

/// `[[capacity]]`.
#[derive(Debug, Clone, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Capacity {
    /// Segment id.
    pub segment: String,
    /// People the organiser allows on it.
    pub capacity: f64,
}

/// The night's place in time: when it starts and how long it runs, in the event's zone.
#[derive(Debug, Clone, Copy)]
pub struct Night {
    /// Event time of its first second (epoch ms).
    pub start_ms: i64,
    /// Its length, seconds.
    pub duration_s: f64,
    /// The event's zone.
    pub tz: chrono_tz::Tz,
}

impl Night {
    /// Local "HH:MM" of epoch ms `ms`.
    pub fn clock(&self, ms: i64) -> String {
        self.tz
            .timestamp_millis_opt(ms)
            .single()
            .map(|t| t.format("%H:%M").to_string())
            .unwrap_or_default()
    }

    /// Scenario seconds of local time `hhmm` on this night: the one instant of that clock time
    /// within the night (a night is shorter than a day, so there is at most one).
    fn second_of(&self, hhmm: &str) -> Result<f64, String> {
        let t = NaiveTime::parse_from_str(hhmm, "%H:%M")
            .map_err(|_| format!("at = {hhmm:?}: expected a local time \"HH:MM\""))?;
        let start = self
            .tz
            .timestamp_millis_opt(self.start_ms)
            .single()
            .ok_or("the night's start is not a valid time")?;
        for day in 0..2 {
            let date = start.date_naive() + chrono::Days::new(day);
            if let Some(local) = self.tz.from_local_datetime(&date.and_time(t)).earliest() {
                let s = (local.timestamp_millis() - self.start_ms) as f64 / 1000.0;
                if (0.0..=self.duration_s).contains(&s) {
                    return Ok(s);
                }
            }
        }
        Err(format!(
            "at = {hhmm:?} is not during the night, which runs {}–{} ({}; change --duration or --midnight)",
            self.clock(self.start_ms),
            self.clock(self.start_ms + (self.duration_s * 1000.0) as i64),
            self.tz
        ))
    }
}

impl WhatIf {
    /// Reads and checks a what-if file.
    pub fn load(path: &Path) -> Result<WhatIf, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The title shown in the report.
    pub fn title(&self) -> String {
        self.name.clone().unwrap_or_else(|| "what-if".into())
    }

    /// The crowd's size for a baseline of `people`.
    pub fn people(&self, people: usize) -> Result<usize, String> {
        match self.crowd.people_factor {
            None => Ok(people),
            Some(f) if f.is_finite() && f > 0.0 && f <= 10.0 => {
                Ok(((people as f64) * f).round().max(1.0) as usize)
            }
            Some(f) => Err(format!(
                "crowd.people_factor = {f}: expected a number above 0, at most 10"
            )),
        }
    }

    /// What the simulator changes, checked against the scenario.
    pub fn changes(&self, scenario: &Scenario, night: &Night) -> Result<Changes, String> {
        if let Some(a) = self.crowd.arrival_shape {
            if !(a.is_finite() && (0.1..=5.0).contains(&a)) {
                return Err(format!(
                    "crowd.arrival_shape = {a}: expected 0.1 to 5 (0.7 is the default)"
                ));
            }
        }
        let mut closures = Vec::new();
        for (i, c) in self.close.iter().enumerate() {
            let at = |c: &Close| c.at.as_deref().map_or(Ok(0.0), |a| night.second_of(a));
            let from_s = at(c).map_err(|e| format!("close[{i}]: {e}"))?;
            let what = match (&c.exit, &c.segment) {
                (Some(x), None) => {
                    let (station, exit) = x.split_once('/').ok_or_else(|| {
                        format!("close[{i}]: exit = {x:?}: expected \"station/exit\", e.g. \"east-nanjing-road/exit-7\"")
                    })?;
                    let known = scenario.routes.iter().any(|r| {
                        matches!(&r.origin, crate::tools::sim::agents::Origin::Metro { station: s, exit: e }
                            if s == station && e == exit)
                    });
                    if !known {
                        let exits: Vec<String> = scenario
                            .routes
                            .iter()
                            .filter_map(|r| match &r.origin {
                                crate::tools::sim::agents::Origin::Metro { station, exit } => {
                                    Some(format!("{station}/{exit}"))
                                }
                                _ => None,
                            })
                            .collect();
                        return Err(format!(
                            "close[{i}]: exit = {x:?}: no route of the scenario starts there (exits: {})",
                            exits.join(", ")
                        ));
                    }
                    Closed::Exit {
                        station: station.into(),
                        exit: exit.into(),
                    }
                }
                (None, Some(s)) => Closed::Segment(scenario.map.index(s).ok_or_else(|| {
                    format!("close[{i}]: segment = {s:?} is not a segment of the scenario")
                })?),
                _ => return Err(format!("close[{i}]: give one of `exit` or `segment`")),
            };
            closures.push(Closure { from_s, what });
        }
        Ok(Changes {
            arrival_shape: self.crowd.arrival_shape,
            closures,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario() -> Scenario {
        Scenario::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/bund"), 1).unwrap()
    }

    fn night() -> Night {
        // 23:00 to 00:30 Shanghai time.
        Night {
            start_ms: 1_767_193_200_000,
            duration_s: 5400.0,
            tz: chrono_tz::Asia::Shanghai,
        }
    }

    #[test]
    fn closing_an_exit_at_a_local_time_becomes_a_scenario_second() {
        let w: WhatIf = toml::from_str(
            "name = \"exit 7\"\n[[close]]\nexit = \"east-nanjing-road/exit-7\"\nat = \"23:30\"\n[[close]]\nsegment = \"chenyi-steps\"\nat = \"00:15\"\n",
        )
        .unwrap();
        let c = w.changes(&scenario(), &night()).unwrap();
        assert_eq!(c.closures[0].from_s, 1800.0);
        assert_eq!(c.closures[1].from_s, 4500.0, "after midnight is the next day");
        assert!(matches!(&c.closures[0].what, Closed::Exit { exit, .. } if exit == "exit-7"));
    }

    #[test]
    fn the_readme_what_if_example_is_valid() {
        let readme = include_str!("../../../README.md");
        let blocks: Vec<&str> = readme
            .split("```toml\n# what-if\n")
            .skip(1)
            .filter_map(|b| b.split("```").next())
            .collect();
        assert_eq!(blocks.len(), 1);
        let w: WhatIf = toml::from_str(blocks[0]).unwrap();
        w.changes(&scenario(), &night()).unwrap();
        assert_eq!(w.people(1000).unwrap(), 1200);
        assert_eq!(w.capacity[0].segment, "bund-promenade");
    }

    #[test]
    fn mistakes_are_named() {
        let bad = |t: &str| {
            let w: WhatIf = toml::from_str(t).unwrap();
            w.changes(&scenario(), &night()).unwrap_err()
        };
        assert!(bad("[[close]]\nexit = \"east-nanjing-road/exit-99\"\n").contains("exit-3"));
        assert!(bad("[[close]]\nsegment = \"nowhere\"\n").contains("nowhere"));
        assert!(bad("[[close]]\nsegment = \"chenyi-steps\"\nat = \"21:00\"\n").contains("23:00–00:30"));
        assert!(bad("[[close]]\nsegment = \"chenyi-steps\"\nat = \"half past\"\n").contains("HH:MM"));
        assert!(toml::from_str::<WhatIf>("[crowd]\npeople = 3\n").is_err());
        let w: WhatIf = toml::from_str("[crowd]\npeople_factor = 0\n").unwrap();
        assert!(w.people(100).unwrap_err().contains("people_factor"));
    }
}
