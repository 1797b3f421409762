//! Importers: real public formats → feed records (FEEDS.md), with the registries they need.
//!
//! Each importer reads its format, writes NDJSON records, and reports what it could not map
//! (an MTA UNIT missing from the station table, a Shanghai station missing from the name table)
//! instead of guessing.

pub mod geolife;
pub mod melbourne;
pub mod mta;
pub mod sptcc;
pub mod tz;

use std::io::Write;

/// The formats `throng import --format` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// NYC subway turnstile audits (cumulative registers per device).
    MtaTurnstile,
    /// City of Melbourne pedestrian counting system, hourly counts per sensor.
    MelbourneCounts,
    /// GeoLife GPS trajectories (one file = one device).
    GeolifePlt,
    /// Shanghai public-transport card taps (SODA 2015).
    SptccCard,
}

/// What an import produced and skipped.
#[derive(Debug, Default, Clone)]
pub struct Summary {
    /// Records written.
    pub records: u64,
    /// Input rows skipped, with the reason, counted by reason.
    pub skipped: std::collections::BTreeMap<String, u64>,
    /// Names that matched their registry entry only once normalised (`written → table`), counted.
    pub resolved: std::collections::BTreeMap<String, u64>,
    /// The registry entries (sensors or stations) the records need, as JSON.
    pub registry: Vec<serde_json::Value>,
    pending: Vec<(i64, String)>,
}

impl Summary {
    /// Counts a skipped row.
    pub fn skip(&mut self, why: impl Into<String>) {
        *self.skipped.entry(why.into()).or_default() += 1;
    }

    /// Counts a row whose name matched only once normalised.
    pub fn resolve(&mut self, how: impl Into<String>) {
        *self.resolved.entry(how.into()).or_default() += 1;
    }

    /// Takes one record (kept until `finish`, which writes them in event-time order).
    pub fn emit(&mut self, _out: &mut dyn Write, v: &serde_json::Value) -> std::io::Result<()> {
        let ts = v["ts"].as_i64().unwrap_or(i64::MIN);
        self.pending.push((ts, v.to_string()));
        self.records += 1;
        Ok(())
    }

    /// Writes every record in event-time order (stable: a device's rows keep their order), as
    /// a feed would have sent them; sources list devices one after another.
    pub fn finish(&mut self, out: &mut dyn Write) -> std::io::Result<()> {
        self.pending.sort_by_key(|(ts, _)| *ts);
        for (_, line) in self.pending.drain(..) {
            out.write_all(line.as_bytes())?;
            out.write_all(b"\n")?;
        }
        Ok(())
    }
}
