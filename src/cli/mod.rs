//! The command line: `throng serve`, `throng replay`.

pub mod accuracy;
pub mod bench;
pub mod demo;
pub mod import;
pub mod query;
pub mod rehearse;
pub mod replay;
pub mod send;
pub mod serve;
pub mod signals;
pub mod simulate;
pub mod wal;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::{Args, Parser, Subcommand};

use crate::config::Config;
use crate::error::ConfigError;

/// throng — crowd-flow stream processor for large public events.
#[derive(Debug, Parser)]
#[command(
    name = "throng",
    version = VERSION,
    about,
    long_about = "throng turns phone-location pings, people-counter \
reports and metro gate reports into live H3 crowd heatmaps over event-time windows.\n\n\
Run `throng demo` for the live Bund demo, `throng serve` for the server alone,
`throng simulate` for synthetic feeds with ground truth, `throng replay FILE --print` to run feeds offline."
)]
pub struct Cli {
    /// How log lines on standard error look: `human` (one readable line per event) or `json` (one
    /// JSON object per line for a log shipper: `timestamp`, `level`, `target`, `message` and the
    /// event's own fields at the top level).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Human, env = "THRONG_LOG_FORMAT")]
    pub log_format: LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The version `throng --version` prints: the package version and the git commit it was built from.
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("THRONG_GIT_COMMIT"),
    ")"
);

/// The shape of log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Readable text, coloured on a terminal.
    Human,
    /// One JSON object per line.
    Json,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server: ingest over HTTP, event-time windows, health and metrics.
    Serve(ServeArgs),
    /// The live Bund demo: the server with the New Year's Eve simulation feeding it.
    Demo(demo::DemoArgs),
    /// Convert real public formats (MTA turnstiles, Melbourne counts, GeoLife, Shanghai cards) to feeds.
    Import(import::ImportArgs),
    /// Replay recorded NDJSON feeds in event-time order through the engine, offline.
    Replay(ReplayArgs),
    /// Write simulated Bund feeds (NDJSON) with their ground truth.
    Simulate(simulate::SimulateArgs),
    /// Run SQL over history (offline on a data dir, or through a server).
    Query(query::QueryArgs),
    /// Score the engine against the simulator's truth: per-segment error, total error, tiers.
    Accuracy(accuracy::AccuracyArgs),
    /// Rehearse a night before it happens: the plan and a what-if (closed exits, a bigger crowd,
    /// new capacities) through the simulator and the engine; writes report.html and summary.json.
    Rehearse(rehearse::RehearseArgs),
    /// The load harness: simulated traffic into a server with live viewers; throughput and latency.
    Bench(bench::BenchArgs),
    /// Read the write-ahead log of a data dir (`throng wal dump`: as NDJSON).
    Wal(wal::WalArgs),
}

/// Options shared by commands that read a configuration.
#[derive(Debug, Args, Clone)]
pub struct ConfigArgs {
    /// Configuration file (TOML, see README); every key has a default.
    #[arg(long, short = 'c', env = "THRONG_CONFIG")]
    pub config: Option<PathBuf>,
    /// Scenario folder (overrides the config's `scenario`).
    #[arg(long)]
    pub scenario: Option<PathBuf>,
}

impl ConfigArgs {
    /// Loads the config (or the defaults) and applies overrides.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut cfg = match &self.config {
            Some(p) => Config::load_for(p, self.scenario.as_deref())?,
            None => Config::default(),
        };
        if let Some(s) = &self.scenario {
            if !s.is_dir() {
                return Err(ConfigError::Invalid {
                    key: "--scenario".into(),
                    reason: format!(
                        "folder {} does not exist (it should hold segments.geojson, sensors.json, stations.json)",
                        s.display()
                    ),
                });
            }
            cfg.scenario = s.clone();
        }
        Ok(cfg)
    }
}

/// Where a server keeps its files and listens (`serve` and `demo`).
#[derive(Debug, Args, Clone)]
pub struct ServerPlace {
    /// Where the server keeps what it must keep.
    #[arg(long, default_value = "./data")]
    pub data_dir: PathBuf,
    /// HTTP address (API, dashboard, WebSockets).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// PostgreSQL-wire address for SQL clients (psql, Grafana, DBeaver): user `analyst`, password
    /// an analyst token.
    #[arg(long, default_value = "127.0.0.1:5433")]
    pub pg_listen: SocketAddr,
}

/// `throng serve`.
#[derive(Debug, Args, Clone)]
pub struct ServeArgs {
    /// Configuration.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Files and addresses.
    #[command(flatten)]
    pub place: ServerPlace,
}

/// `throng replay`.
#[derive(Debug, Args, Clone)]
pub struct ReplayArgs {
    /// NDJSON feed files (`-` for standard input), merged in event-time order.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Configuration.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Print closed windows as NDJSON `hex_windows` rows on standard output.
    #[arg(long, conflicts_with_all = ["target", "data_dir"])]
    pub print: bool,
    /// Write closed windows (and segment evaluations, alerts, late records) into this data dir's
    /// history, for `throng query --data-dir DIR` or a server started on it.
    #[arg(long, conflicts_with = "target")]
    pub data_dir: Option<PathBuf>,
    /// Send the records to a server instead (`http://HOST:PORT`), in event-time order, or
    /// produce them to Kafka (`kafka://HOST:PORT/TOPIC`), one message per record keyed by region
    /// (see --key-res), as fast as the broker takes them.
    #[arg(long)]
    pub target: Option<String>,
    /// With a kafka:// target: the H3 resolution of the region key (the record's cell's parent;
    /// 6 ≈ 36 km², a district). Partitions are chosen by murmur2 of the key, as Java clients do.
    #[arg(long, default_value_t = 6)]
    pub key_res: u8,
    /// Feed token for --target.
    #[arg(long, env = "THRONG_TOKEN")]
    pub token: Option<String>,
    /// With --target: play event time X times faster than it was recorded.
    #[arg(long, conflicts_with = "max")]
    pub speed: Option<f64>,
    /// With --target: send as fast as the server takes them (the default).
    #[arg(long)]
    pub max: bool,
    /// Keep late records (they missed a closed window) as NDJSON `late_records` rows in this file.
    #[arg(long)]
    pub late: Option<PathBuf>,
}

/// The config for a scenario run: `config` if given, else the scenario's own `throng.toml` if it
/// has one, else the defaults; `scenario` in force either way.
pub fn scenario_config(scenario: &Path, config: Option<&Path>) -> Result<Config, ConfigError> {
    let own = scenario.join("throng.toml");
    let mut cfg = match config {
        Some(p) => Config::load_for(p, Some(scenario))?,
        None if own.exists() => Config::load_for(&own, Some(scenario))?,
        None => Config::default(),
    };
    cfg.scenario = scenario.to_owned();
    Ok(cfg)
}

/// Checks a path exists, for friendlier errors.
pub fn must_exist(p: &Path, what: &str) -> anyhow::Result<()> {
    if p != Path::new("-") && !p.exists() {
        anyhow::bail!("{what} {} does not exist", p.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_command_line_is_well_formed() {
        use clap::CommandFactory;
        super::Cli::command().debug_assert();
    }
}
