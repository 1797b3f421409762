//! `throng.toml`: every key has a default; an invalid file fails at start naming the key path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::ConfigError;

pub mod thresholds;

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Folder with `segments.geojson`, `sensors.json`, `stations.json`.
    pub scenario: PathBuf,
    /// The event's time zone (IANA name, e.g. `Asia/Shanghai`): what the dashboard, the terminal
    /// table and reports show times in. The API and SQL keep epoch ms and UTC.
    pub time_zone: String,
    /// Event-time windowing.
    pub window: WindowConfig,
    /// H3 indexing.
    pub h3: H3Config,
    /// Pseudonymisation and publication limits.
    pub privacy: PrivacyConfig,
    /// Phone-location feeds.
    pub lbs: LbsConfig,
    /// Record acceptance rules common to every transport.
    pub ingest: IngestConfig,
    /// Cumulative register differencing.
    pub registers: RegisterConfig,
    /// Role tokens (enforced by the access-control layer).
    pub auth: AuthConfig,
    /// Segment risk tiers.
    pub risk: RiskConfig,
    /// Write-ahead log and checkpoints.
    pub durability: DurabilityConfig,
    /// MQTT subscriptions feeding the pipeline.
    pub mqtt: Vec<MqttConfig>,
    /// Kafka consumer-group subscriptions feeding the pipeline.
    pub kafka: Vec<KafkaConfig>,
    /// Cluster mode: `[[kafka]]` partitions kept and checkpointed one by one in a shared folder.
    pub cluster: Option<ClusterConfig>,
    /// Per-client limits.
    pub limits: LimitsConfig,
    /// Parquet history of closed windows.
    pub history: HistoryConfig,
    /// SQL over history.
    pub sql: SqlConfig,
    /// Optional TLS for HTTP and the PostgreSQL wire.
    pub tls: TlsConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            scenario: PathBuf::from("fixtures/bund"),
            time_zone: "UTC".into(),
            window: WindowConfig::default(),
            h3: H3Config::default(),
            privacy: PrivacyConfig::default(),
            lbs: LbsConfig::default(),
            ingest: IngestConfig::default(),
            registers: RegisterConfig::default(),
            auth: AuthConfig::default(),
            risk: RiskConfig::default(),
            durability: DurabilityConfig::default(),
            mqtt: Vec::new(),
            kafka: Vec::new(),
            cluster: None,
            limits: LimitsConfig::default(),
            history: HistoryConfig::default(),
            sql: SqlConfig::default(),
            tls: TlsConfig::default(),
        }
    }
}

/// Event-time windowing for the H3 engine.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WindowConfig {
    /// Window length.
    #[serde(with = "humantime_serde")]
    pub size: Duration,
    /// A new window starts every `slide` (equal to `size`: tumbling windows).
    #[serde(with = "humantime_serde")]
    pub slide: Duration,
    /// How far behind a source's newest event time the watermark trails.
    #[serde(with = "humantime_serde")]
    pub allowed_lateness: Duration,
    /// A source silent this long stops holding the watermark back.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// How long (in event time, after its window closed) a re-sent record is still recognised as
    /// one already counted rather than taken as late.
    #[serde(with = "humantime_serde")]
    pub resend_horizon: Duration,
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig {
            size: Duration::from_secs(60),
            slide: Duration::from_secs(10),
            allowed_lateness: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(30),
            resend_horizon: Duration::from_secs(600),
        }
    }
}

/// H3 indexing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct H3Config {
    /// Resolution of the heatmap cells (11: about 2,150 m² a cell).
    pub resolution: u8,
}

impl Default for H3Config {
    fn default() -> Self {
        H3Config { resolution: 11 }
    }
}

/// Pseudonymisation and the smallest count ever published.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacyConfig {
    /// Smallest count ever published; 0 or 1 publish all.
    pub k: u32,
    /// Key of the device pseudonym hash.
    pub hash_key: String,
    /// How often the pseudonym key rotates, by event time ("0s": never). See `ingest::pseudonym`.
    #[serde(with = "humantime_serde")]
    pub rotate: Duration,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        PrivacyConfig {
            k: 10,
            hash_key: "change-me".into(),
            rotate: Duration::from_secs(86_400),
        }
    }
}

/// Phone-location feeds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LbsConfig {
    /// Pings less accurate than this are rejected.
    pub max_accuracy_m: f64,
    /// People per device for sources not listed in `sources`: how many people one device of the
    /// panel stands for. Since presence is modelled (below), it no longer folds in the chance of a
    /// device being seen in a window.
    pub default_scale: f64,
    /// Error assumed for pings without `accuracy_m` (a 68 % radius, metres), unless the source says.
    pub default_accuracy_m: f64,
    /// A ping outside every segment is matched to one within 3.41σ of it (99.7 % of its error), but never farther than this
    /// (metres); beyond, it is off-network (counted apart).
    pub max_match_m: f64,
    /// A device's typical ping interval before its own has been observed, unless the source says.
    #[serde(with = "humantime_serde")]
    pub ping_interval: Duration,
    /// A device stays in its last segment until this many of its ping intervals pass without a ping.
    pub overdue_factor: f64,
    /// ... and never longer than this.
    #[serde(with = "humantime_serde")]
    pub max_presence: Duration,
    /// The distance (metres) over which a crowd's density can change: between two segments a
    /// ping's split follows their crowds' densities as far as its error is large against it, and
    /// the side of the edge it fell on as far as its error is small (0: the densities in full).
    pub prior_scale_m: f64,
    /// How far (metres) a walker is taken to keep its heading: a position projected to the
    /// window's end along a walk of s metres goes D·(1 − e^(−s/D)), so a short walk is carried
    /// whole and a long one no further than D, since people turn at corners and stop where they
    /// were going (0: no projection).
    pub heading_persistence_m: f64,
    /// Per-provider settings, by the `source` field of the pings.
    pub sources: BTreeMap<String, LbsSourceConfig>,
}

impl Default for LbsConfig {
    fn default() -> Self {
        LbsConfig {
            max_accuracy_m: 100.0,
            default_scale: 1.0,
            default_accuracy_m: 30.0,
            max_match_m: 100.0,
            ping_interval: Duration::from_secs(60),
            overdue_factor: 2.0,
            max_presence: Duration::from_secs(600),
            prior_scale_m: 6.0,
            heading_persistence_m: 10.0,
            sources: BTreeMap::new(),
        }
    }
}

/// One LBS provider.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LbsSourceConfig {
    /// People each device stands for (1 / the share of people this panel covers).
    pub scale: f64,
    /// Error of its pings that carry no `accuracy_m` (metres, 68 % radius).
    #[serde(default)]
    pub accuracy_m: Option<f64>,
    /// Its devices' typical ping interval, until a device's own is observed.
    #[serde(default, with = "humantime_serde")]
    pub ping_interval: Option<Duration>,
    /// How long this provider may stay silent and still hold the watermark back (a carrier that
    /// delivers in batches every minute): instead of `window.idle_timeout`, when longer.
    #[serde(default, with = "humantime_serde")]
    pub max_delay: Option<Duration>,
}

/// Acceptance rules common to every transport.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Records this far past the server clock are rejected.
    #[serde(with = "humantime_serde")]
    pub max_future: Duration,
    /// Longest accepted NDJSON line.
    pub max_line_bytes: usize,
    /// Batches waiting for the engine; when full, feeds are told to retry (HTTP 503) or paused.
    pub queue_batches: usize,
    /// Largest HTTP request body, and the most a gzip body may expand to (HTTP 413 past it).
    pub max_body_bytes: usize,
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            max_future: Duration::from_secs(300),
            max_line_bytes: 64 * 1024,
            queue_batches: 256,
            max_body_bytes: 16 * 1024 * 1024,
        }
    }
}

/// Cumulative register differencing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegisterConfig {
    /// A delta faster than this (people per second per register) is a reset, not traffic.
    pub max_rate_per_s: f64,
}

impl Default for RegisterConfig {
    fn default() -> Self {
        RegisterConfig { max_rate_per_s: 50.0 }
    }
}

/// Segment risk tiers (CROWD-SAFETY.md defaults; per segment via the GeoJSON `thresholds`
/// property and `PUT /api/segments/{id}/thresholds`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RiskConfig {
    /// Default entry levels of every tier.
    pub thresholds: thresholds::Thresholds,
    /// Leave a tier only when every trigger is this fraction below its entry level.
    pub hysteresis: f64,
    /// Consecutive evaluations before escalating (critical is immediate).
    pub dwell: u32,
    /// How long the calmer condition must last before de-escalating.
    #[serde(with = "humantime_serde")]
    pub calm_period: Duration,
    /// A source silent for more than this × its nominal period makes its segment `degraded`.
    pub stale_factor: f64,
    /// Windows in the trend's least-squares fit.
    pub trend_windows: usize,
    /// People per device learnt from zone headcounts (`[risk.calibration]`).
    pub calibration: CalibrationConfig,
    /// The segment's count moved to the window's end along its own trend (`[risk.nowcast]`).
    pub nowcast: NowcastConfig,
}

/// A segment's phones were placed where they last spoke, on average `device_age_s` before the
/// window's end; on a filling or emptying segment that lags the crowd. The count is moved forward
/// along the slope of the segment's own recent counts by that age, at most `max_age`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct NowcastConfig {
    /// How far ahead a trend is trusted ("0s" turns the nowcast off): the positions' mean age is
    /// capped at this.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Windows of the segment's position counts in the slope's least-squares fit.
    pub trend_windows: usize,
}

impl Default for NowcastConfig {
    fn default() -> Self {
        NowcastConfig {
            max_age: Duration::from_secs(30),
            trend_windows: 12,
        }
    }
}

/// Self-calibrating fusion: each LBS source's people per device estimated online from the zone
/// headcounts of segments, against the devices the engine places there.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct CalibrationConfig {
    /// Learn the factors (false: the configured `scale`s stay in force).
    pub enabled: bool,
    /// Evidence is forgotten with this time constant (exponentially): shorter tracks a drifting
    /// panel faster, longer averages out noisy counts.
    #[serde(with = "humantime_serde")]
    pub time_constant: Duration,
    /// A zone's window counts as evidence only with at least this many devices placed in it.
    pub min_devices: f64,
    /// Bound on the learnt factor, as a ratio to the configured one both ways; a zone whose count
    /// against the configured estimate lies outside it disagrees wildly and is ignored.
    pub max_ratio: f64,
    /// A zone's count above this density (p/m²) is not a crowd but a fault, and is ignored.
    pub max_density: f64,
    /// ... as is a count above this multiple of the segment's capacity, when it has one.
    pub max_capacity_share: f64,
    /// A zone count unchanged for this many windows while the devices there change by more than
    /// 10 % is a stuck register, and is ignored until it moves.
    pub stuck_windows: u32,
    /// With no accepted evidence for this long, every source falls back to its configured factor.
    #[serde(with = "humantime_serde")]
    pub hold: Duration,
    /// No evidence is taken until the feeds have run this long (event time): before a panel's
    /// slowest phones have spoken once, the devices placed in a zone are too few and the panel
    /// looks thinner than it is.
    #[serde(with = "humantime_serde")]
    pub warmup: Duration,
}

impl Default for CalibrationConfig {
    fn default() -> Self {
        CalibrationConfig {
            enabled: true,
            time_constant: Duration::from_secs(300),
            min_devices: 20.0,
            max_ratio: 2.0,
            max_density: 9.0,
            max_capacity_share: 2.0,
            stuck_windows: 5,
            hold: Duration::from_secs(900),
            warmup: Duration::from_secs(300),
        }
    }
}

impl Default for RiskConfig {
    fn default() -> Self {
        RiskConfig {
            thresholds: thresholds::Thresholds::default(),
            hysteresis: 0.15,
            dwell: 2,
            calm_period: Duration::from_secs(300),
            stale_factor: 3.0,
            trend_windows: 6,
            calibration: CalibrationConfig::default(),
            nowcast: NowcastConfig::default(),
        }
    }
}

/// When the write-ahead log reaches the disk.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum FsyncPolicy {
    /// fsync every batch before acknowledging it (safe: survives power loss).
    Always,
    /// Leave it to the OS (survives a process crash, not a power cut).
    Never,
}

/// Write-ahead log and checkpoints.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DurabilityConfig {
    /// `always` (default) or `never`.
    pub fsync: FsyncPolicy,
    /// How often the engine is checkpointed (bounding the log and the replay at start).
    #[serde(with = "humantime_serde")]
    pub checkpoint_every: Duration,
}

impl Default for DurabilityConfig {
    fn default() -> Self {
        DurabilityConfig {
            fsync: FsyncPolicy::Always,
            checkpoint_every: Duration::from_secs(60),
        }
    }
}

/// Per-client limits (each answered with a clear 429 or 503, or closed with a logged reason).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Open WebSocket connections (live and ingest) per client address.
    pub ws_per_address: usize,
    /// Records per second per feed token over HTTP ingest (burst: two seconds' worth; 0: no limit).
    pub ingest_records_per_s: f64,
    /// Open connections per listener (HTTP, the PostgreSQL wire), WebSockets included (503 past it).
    pub max_connections: usize,
    /// Open connections per client address per listener (429 past it).
    pub connections_per_address: usize,
    /// A request header (HTTP, also the wait between keep-alive requests) or a PostgreSQL login
    /// must arrive within this, or the connection is closed.
    #[serde(with = "humantime_serde")]
    pub header_timeout: Duration,
    /// A connection that moves no byte (HTTP, mid-request) or runs no query (PostgreSQL) for this
    /// long is closed. Never shorter than `sql.timeout` plus a margin, so no query is cut.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Failed tokens (HTTP 401, PostgreSQL login) one address may present per minute; past it
    /// that address's requests with a token get 429 until the minute is over. 0: no throttle.
    pub auth_failures_per_minute: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            ws_per_address: 50,
            ingest_records_per_s: 0.0,
            max_connections: 4096,
            connections_per_address: 256,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            auth_failures_per_minute: 20,
        }
    }
}

/// Parquet history of closed windows (`<data-dir>/history/`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HistoryConfig {
    /// How often buffered windows are written to a Parquet file (they are queryable before).
    #[serde(with = "humantime_serde")]
    pub flush_every: Duration,
    /// Days of history kept, counted back from the newest window's day (0: keep everything).
    pub retention_days: u32,
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            flush_every: Duration::from_secs(30),
            retention_days: 30,
        }
    }
}

/// Limits on each SQL query (HTTP, CLI and the PostgreSQL wire).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SqlConfig {
    /// A query running longer is cancelled.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Memory a query's operators may hold (sorts, joins, aggregates), in MiB.
    pub memory_limit_mb: usize,
    /// Rows in one answer; a query returning more fails and says so (add LIMIT or aggregate).
    pub max_rows: usize,
}

impl Default for SqlConfig {
    fn default() -> Self {
        SqlConfig {
            timeout: Duration::from_secs(30),
            memory_limit_mb: 512,
            max_rows: 100_000,
        }
    }
}

/// TLS for HTTP and the PostgreSQL wire: both files, or neither (plain TCP).
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain.
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
}

/// One Kafka consumer-group subscription (`[[kafka]]`): NDJSON records in the messages' values.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Brokers, `host:port,host:port`.
    pub bootstrap: String,
    /// Topics to read.
    pub topics: Vec<String>,
    /// Consumer group (instances with the same group share the topics' partitions).
    pub group: String,
    /// How long the group waits for a silent member before handing its partitions to others.
    #[serde(default = "default_kafka_session", with = "humantime_serde")]
    pub session_timeout: Duration,
    /// `plaintext` (default), `ssl`, `sasl_plaintext` or `sasl_ssl`.
    #[serde(default)]
    pub security_protocol: Option<String>,
    /// `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512` with a `sasl_*` protocol.
    #[serde(default)]
    pub sasl_mechanism: Option<String>,
    /// SASL user name.
    #[serde(default)]
    pub sasl_username: Option<String>,
    /// SASL password.
    #[serde(default)]
    pub sasl_password: Option<String>,
    /// CA certificate file (PEM) that signed the brokers' certificates.
    #[serde(default)]
    pub ssl_ca: Option<PathBuf>,
    /// Further librdkafka consumer properties, passed as they are (e.g. `"fetch.max.bytes"`).
    #[serde(default)]
    pub properties: std::collections::BTreeMap<String, String>,
}

/// Cluster mode (`[cluster]`): every instance of one consumer group keeps each Kafka partition it
/// is assigned as its own window state, checkpointed with the partition's offset into a folder
/// every instance mounts, so another instance carries a partition on where a dead one left it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The shared folder: `partitions/<topic>-<n>/` (checkpoint, history, logs) per partition.
    pub dir: PathBuf,
    /// This instance's name in logs and checkpoints (default: host name and process id).
    #[serde(default)]
    pub instance: Option<String>,
    /// The topic each partition publishes its closed windows to, read by the city stage (created
    /// with one partition when missing).
    #[serde(default = "default_windows_topic")]
    pub windows_topic: String,
    /// A partition at its end that has never held a record for this long is empty: the city
    /// stage stops waiting for its windows (records it gets later join the windows still open).
    #[serde(default = "default_empty_after", with = "humantime_serde")]
    pub empty_after: Duration,
}

fn default_empty_after() -> Duration {
    Duration::from_secs(10)
}

fn default_windows_topic() -> String {
    "throng.windows".into()
}

fn default_kafka_session() -> Duration {
    Duration::from_secs(10)
}

/// The librdkafka properties a `[[kafka]]` entry's security keys stand for.
impl KafkaConfig {
    /// `(librdkafka key, value)` for the security options set.
    pub fn security_properties(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(p) = &self.security_protocol {
            out.push(("security.protocol", p.clone()));
        }
        if let Some(m) = &self.sasl_mechanism {
            out.push(("sasl.mechanism", m.clone()));
        }
        if let Some(u) = &self.sasl_username {
            out.push(("sasl.username", u.clone()));
        }
        if let Some(p) = &self.sasl_password {
            out.push(("sasl.password", p.clone()));
        }
        if let Some(c) = &self.ssl_ca {
            out.push(("ssl.ca.location", c.display().to_string()));
        }
        out
    }
}

/// One MQTT broker subscription (`[[mqtt]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttConfig {
    /// `mqtt://HOST:PORT`.
    pub url: String,
    /// Topic filters, e.g. `["throng/feeds/#"]`.
    pub topics: Vec<String>,
    /// Client id (a persistent session is kept under it).
    #[serde(default = "default_client_id")]
    pub client_id: String,
}

fn default_client_id() -> String {
    "throng".into()
}

/// The MQTT port when a URL names none.
const MQTT_DEFAULT_PORT: u16 = 1883;

impl MqttConfig {
    /// The broker's host and port from `url` (`mqtt://host:port`, port 1883 by default).
    pub fn host_port(&self) -> Result<(String, u16), String> {
        let url = self.url.as_str();
        let rest = url
            .strip_prefix("mqtt://")
            .or_else(|| url.strip_prefix("tcp://"))
            .ok_or_else(|| format!("{url:?}: expected mqtt://HOST:PORT"))?;
        let (host, port) = match rest.rsplit_once(':') {
            Some((h, p)) => (
                h,
                p.trim_end_matches('/')
                    .parse::<u16>()
                    .map_err(|_| format!("{url:?}: bad port"))?,
            ),
            None => (rest.trim_end_matches('/'), MQTT_DEFAULT_PORT),
        };
        if host.is_empty() {
            return Err(format!("{url:?}: no host"));
        }
        Ok((host.to_string(), port))
    }
}

/// Role tokens.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// None configured: open demo mode, loopback only.
    pub tokens: Vec<TokenConfig>,
    /// Web origins (`scheme://host:port`, or `*`) besides the server's own whose pages may open
    /// `/ws/live` and `/ws/ingest`; clients that send no `Origin` (feeds, tools) always may.
    pub allowed_origins: Vec<String>,
}

/// One named token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds it (shown in audit logs).
    pub name: String,
    /// `feed`, `viewer`, `organiser`, `analyst` or `admin`.
    pub role: crate::model::Role,
    /// The secret.
    pub token: String,
}

impl AuthConfig {
    /// The token holder whose token equals `presented`. Every token is compared, each in constant
    /// time, so the answer's timing says nothing about which token nearly matched.
    pub fn resolve(&self, presented: &str) -> Option<&TokenConfig> {
        let mut found = None;
        for t in &self.tokens {
            if ct_eq(t.token.as_bytes(), presented.as_bytes()) {
                found = Some(t);
            }
        }
        found
    }
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    // Constant time for equal lengths; a length mismatch says nothing about the content.
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Config {
    /// The configured H3 resolution as h3o's type (validated by `validate`).
    pub fn resolution(&self) -> h3o::Resolution {
        h3o::Resolution::try_from(self.h3.resolution).unwrap_or(h3o::Resolution::Eleven)
    }

    /// Reads and validates a config file. A `scenario` it names is found (see `find_scenario`)
    /// or the load fails: a server that silently ran without its segments would show no tiers
    /// and raise no alerts.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_for(path, None)
    }

    /// `load`, for a run whose scenario folder is given apart (`--scenario`): the file's own is
    /// then not looked for.
    pub fn load_for(path: &Path, scenario: Option<&Path>) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_owned(),
            source: e,
        })?;
        let mut cfg = Config::parse(&text).map_err(|e| e.in_file(path))?;
        let names_scenario = text
            .parse::<toml::Table>()
            .is_ok_and(|t| t.contains_key("scenario"));
        match scenario {
            Some(s) => cfg.scenario = s.to_owned(),
            None if names_scenario => {
                cfg.scenario = find_scenario(&cfg.scenario, path).map_err(|e| e.in_file(path))?
            }
            None => {}
        }
        Ok(cfg)
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let de = toml::de::Deserializer::parse(text).map_err(|e| ConfigError::Invalid {
            key: String::new(),
            reason: e.to_string(),
        })?;
        let cfg: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            ConfigError::Invalid {
                key,
                reason: e.into_inner().message().to_string(),
            }
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// The event's time zone (validated at load; UTC if it somehow is not).
    pub fn tz(&self) -> chrono_tz::Tz {
        self.time_zone.parse().unwrap_or(chrono_tz::UTC)
    }

    /// Checks the relations between keys that serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |key: &str, reason: String| {
            Err(ConfigError::Invalid {
                key: key.into(),
                reason,
            })
        };
        if self.time_zone.parse::<chrono_tz::Tz>().is_err() {
            return bad(
                "time_zone",
                format!(
                    "{:?} is not an IANA time zone name (write it as in the tz database, e.g. \"Asia/Shanghai\" or \"UTC\")",
                    self.time_zone
                ),
            );
        }
        let w = &self.window;
        if w.slide.is_zero() || !w.slide.subsec_nanos().is_multiple_of(1_000_000) {
            return bad(
                "window.slide",
                "must be a positive whole number of milliseconds".into(),
            );
        }
        // The engine holds a pane's times in 32 bits of milliseconds from within it.
        if w.slide > std::time::Duration::from_secs(86_400) {
            return bad("window.slide", format!("must be at most 24h, got {:?}", w.slide));
        }
        if w.size < w.slide || !w.size.as_millis().is_multiple_of(w.slide.as_millis()) {
            return bad(
                "window.size",
                format!(
                    "must be a multiple of window.slide ({:?}), got {:?}",
                    w.slide, w.size
                ),
            );
        }
        if w.size.as_millis() / w.slide.as_millis() > 1000 {
            return bad("window.size", "at most 1000 slides per window".into());
        }
        if w.idle_timeout.is_zero() {
            return bad("window.idle_timeout", "must be positive".into());
        }
        if self.h3.resolution > 15 {
            return bad(
                "h3.resolution",
                format!("{} is out of range 0..=15", self.h3.resolution),
            );
        }
        if !(self.lbs.max_accuracy_m.is_finite() && self.lbs.max_accuracy_m > 0.0) {
            return bad("lbs.max_accuracy_m", "must be positive".into());
        }
        for (key, v) in [
            ("lbs.default_accuracy_m", self.lbs.default_accuracy_m),
            ("lbs.max_match_m", self.lbs.max_match_m),
            ("lbs.overdue_factor", self.lbs.overdue_factor),
        ] {
            if !(v.is_finite() && v > 0.0) {
                return bad(key, "must be a positive number".into());
            }
        }
        if !(self.lbs.prior_scale_m.is_finite() && self.lbs.prior_scale_m >= 0.0) {
            return bad(
                "lbs.prior_scale_m",
                "must be a number of metres, 0 or more (6 is the default)".into(),
            );
        }
        if !(self.lbs.heading_persistence_m.is_finite() && self.lbs.heading_persistence_m >= 0.0) {
            return bad(
                "lbs.heading_persistence_m",
                "must be a number of metres, 0 or more (10 is the default; 0 turns the projection off)"
                    .into(),
            );
        }
        if self.lbs.ping_interval.is_zero() || self.lbs.max_presence < self.lbs.ping_interval {
            return bad(
                "lbs.max_presence",
                "must be at least lbs.ping_interval, which must be positive".into(),
            );
        }
        if !(self.lbs.default_scale.is_finite() && self.lbs.default_scale > 0.0) {
            return bad("lbs.default_scale", "must be a positive number".into());
        }
        for (name, s) in &self.lbs.sources {
            if !(s.scale.is_finite() && s.scale > 0.0) {
                return bad(
                    &format!("lbs.sources.{name}.scale"),
                    "must be a positive number".into(),
                );
            }
        }
        if !(self.registers.max_rate_per_s.is_finite() && self.registers.max_rate_per_s > 0.0) {
            return bad("registers.max_rate_per_s", "must be positive".into());
        }
        if let Err(e) = self.risk.thresholds.validate() {
            return bad(
                &format!("risk.thresholds.{}", e.split(':').next().unwrap_or("")),
                e,
            );
        }
        if !(0.0..1.0).contains(&self.risk.hysteresis) {
            return bad("risk.hysteresis", "must be in [0, 1)".into());
        }
        if self.risk.dwell == 0 {
            return bad("risk.dwell", "must be at least 1".into());
        }
        let c = &self.risk.calibration;
        if c.time_constant.is_zero() {
            return bad("risk.calibration.time_constant", "must be positive".into());
        }
        if !(c.min_devices.is_finite() && c.min_devices >= 1.0) {
            return bad("risk.calibration.min_devices", "must be at least 1".into());
        }
        if !(c.max_ratio.is_finite() && c.max_ratio > 1.0) {
            return bad("risk.calibration.max_ratio", "must be greater than 1".into());
        }
        if !(c.max_density.is_finite() && c.max_density > 0.0) {
            return bad("risk.calibration.max_density", "must be positive".into());
        }
        if !(c.max_capacity_share.is_finite() && c.max_capacity_share > 0.0) {
            return bad("risk.calibration.max_capacity_share", "must be positive".into());
        }
        if c.stuck_windows < 2 {
            return bad("risk.calibration.stuck_windows", "must be at least 2".into());
        }
        if !(self.risk.stale_factor.is_finite() && self.risk.stale_factor > 0.0) {
            return bad("risk.stale_factor", "must be positive".into());
        }
        if self.risk.nowcast.trend_windows < 2 {
            return bad(
                "risk.nowcast.trend_windows",
                "must be at least 2 (a slope needs two counts; turn the nowcast off with max_age = \"0s\")"
                    .into(),
            );
        }
        for (i, m) in self.mqtt.iter().enumerate() {
            if let Err(e) = m.host_port() {
                return bad(&format!("mqtt[{i}].url"), e);
            }
            if m.topics.is_empty() {
                return bad(
                    &format!("mqtt[{i}].topics"),
                    "name at least one topic filter".into(),
                );
            }
        }
        for (i, k) in self.kafka.iter().enumerate() {
            if k.bootstrap.trim().is_empty() || k.bootstrap.split(',').any(|b| !b.contains(':')) {
                return bad(
                    &format!("kafka[{i}].bootstrap"),
                    format!("{:?}: expected host:port[,host:port...]", k.bootstrap),
                );
            }
            if k.topics.is_empty() {
                return bad(&format!("kafka[{i}].topics"), "name at least one topic".into());
            }
            if k.group.trim().is_empty() {
                return bad(&format!("kafka[{i}].group"), "name the consumer group".into());
            }
            if let Some(p) = &k.security_protocol {
                if !["plaintext", "ssl", "sasl_plaintext", "sasl_ssl"].contains(&p.to_lowercase().as_str()) {
                    return bad(
                        &format!("kafka[{i}].security_protocol"),
                        format!("{p:?}: expected plaintext, ssl, sasl_plaintext or sasl_ssl"),
                    );
                }
            }
        }
        if let Some(c) = &self.cluster {
            if self.kafka.len() != 1 {
                return bad(
                    "cluster",
                    format!(
                        "cluster mode shares the partitions of one [[kafka]] source ({} given): list every feed topic in its `topics`",
                        self.kafka.len()
                    ),
                );
            }
            if c.windows_topic.trim().is_empty()
                || self.kafka.iter().any(|k| k.topics.contains(&c.windows_topic))
            {
                return bad(
                    "cluster.windows_topic",
                    format!("{:?}: name a topic of its own, not a feed topic", c.windows_topic),
                );
            }
            if c.dir.as_os_str().is_empty() {
                return bad("cluster.dir", "name the folder every instance shares".into());
            }
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return bad(
                if self.tls.cert.is_some() {
                    "tls.key"
                } else {
                    "tls.cert"
                },
                "TLS needs both tls.cert and tls.key".into(),
            );
        }
        if self.history.flush_every.is_zero() {
            return bad("history.flush_every", "must be positive".into());
        }
        let l = &self.limits;
        if l.max_connections == 0 || l.connections_per_address == 0 {
            return bad(
                if l.max_connections == 0 {
                    "limits.max_connections"
                } else {
                    "limits.connections_per_address"
                },
                "must be at least 1".into(),
            );
        }
        if l.header_timeout.is_zero() || l.idle_timeout.is_zero() {
            return bad(
                if l.header_timeout.is_zero() {
                    "limits.header_timeout"
                } else {
                    "limits.idle_timeout"
                },
                "must be positive".into(),
            );
        }
        if self.sql.timeout.is_zero() {
            return bad("sql.timeout", "must be positive".into());
        }
        if self.sql.memory_limit_mb == 0 {
            return bad("sql.memory_limit_mb", "must be at least 1".into());
        }
        if self.sql.max_rows == 0 {
            return bad("sql.max_rows", "must be at least 1".into());
        }
        if self.ingest.max_body_bytes < self.ingest.max_line_bytes {
            return bad(
                "ingest.max_body_bytes",
                "must be at least ingest.max_line_bytes".into(),
            );
        }
        if self.ingest.queue_batches == 0 {
            return bad("ingest.queue_batches", "must be at least 1".into());
        }
        if self.privacy.hash_key.is_empty() {
            return bad("privacy.hash_key", "must not be empty".into());
        }
        for (i, t) in self.auth.tokens.iter().enumerate() {
            if t.token.len() < 8 {
                return bad(
                    &format!("auth.tokens[{i}].token"),
                    "must be at least 8 characters".into(),
                );
            }
        }
        Ok(())
    }

    /// Window slide in milliseconds.
    pub fn slide_ms(&self) -> i64 {
        self.window.slide.as_millis() as i64
    }
}

/// Where a config file's `scenario` folder is: a relative path is looked for beside the config
/// file first, then in the current directory (configs written relative to the folder they are run
/// from, like the repository's `fixtures/bund/throng.toml`). A folder found in neither is an
/// error that names both places.
pub fn find_scenario(scenario: &Path, config: &Path) -> Result<PathBuf, ConfigError> {
    let missing = |reason: String| ConfigError::Invalid {
        key: "scenario".into(),
        reason,
    };
    if scenario.is_absolute() {
        return if scenario.is_dir() {
            Ok(scenario.to_owned())
        } else {
            Err(missing(format!(
                "folder {} does not exist (it should hold segments.geojson, sensors.json, stations.json)",
                scenario.display()
            )))
        };
    }
    let beside = config.parent().unwrap_or(Path::new("")).join(scenario);
    if beside.is_dir() {
        return Ok(beside);
    }
    if scenario.is_dir() {
        return Ok(scenario.to_owned());
    }
    let cwd = std::env::current_dir().unwrap_or_default();
    Err(missing(format!(
        "folder {:?} not found beside the config file ({}) nor in the current directory ({}): \
         run from the folder it is relative to, make it relative to the config file, or pass --scenario",
        scenario.display().to_string(),
        beside.display(),
        cwd.join(scenario).display()
    )))
}

#[cfg(test)]
mod tests {
    fn mqtt(url: &str) -> MqttConfig {
        MqttConfig {
            url: url.into(),
            topics: Vec::new(),
            client_id: "t".into(),
        }
    }

    #[test]
    fn broker_urls() {
        assert_eq!(
            mqtt("mqtt://127.0.0.1:1884").host_port().unwrap(),
            ("127.0.0.1".into(), 1884)
        );
        assert_eq!(
            mqtt("mqtt://broker").host_port().unwrap(),
            ("broker".into(), 1883)
        );
        assert!(mqtt("http://x").host_port().is_err());
        assert!(mqtt("mqtt://x:port").host_port().is_err());
    }

    use super::*;

    #[test]
    fn a_config_finds_its_scenario_beside_it_then_in_the_current_directory_or_says_where_it_looked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("night")).unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        // Beside the config file, wherever it is run from.
        let cfg = Config::load(&write("a.toml", "scenario = \"night\"\n")).unwrap();
        assert_eq!(cfg.scenario, dir.path().join("night"));
        // Relative to the current directory (tests run from the repository root).
        let cfg = Config::load(&write("b.toml", "scenario = \"fixtures/bund\"\n")).unwrap();
        assert_eq!(cfg.scenario, PathBuf::from("fixtures/bund"));
        // Neither: an error naming the key and both places, not a server without segments.
        let e = Config::load(&write("c.toml", "scenario = \"fixtures/bnud\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`scenario`") && e.contains("fixtures/bnud"), "{e}");
        assert!(
            e.contains(&dir.path().join("fixtures/bnud").display().to_string()),
            "{e}"
        );
        let e = Config::load(&write("d.toml", "scenario = \"/no/such/scenario\"\n")).unwrap_err();
        assert!(e.to_string().contains("/no/such/scenario does not exist"), "{e}");
        // A config that names no scenario keeps the default, found or not, as before.
        let cfg = Config::load(&write("e.toml", "[privacy]\nk = 0\n")).unwrap();
        assert_eq!(cfg.scenario, Config::default().scenario);
    }

    #[test]
    fn empty_file_gives_every_default() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.window.size, Duration::from_secs(60));
        assert_eq!(c.window.slide, Duration::from_secs(10));
        assert_eq!(c.h3.resolution, 11);
        assert_eq!(c.privacy.k, 10);
    }

    #[test]
    fn contract_example_parses() {
        let c = Config::parse(
            r#"scenario = "fixtures/bund"
[window]
size = "60s"
slide = "10s"
allowed_lateness = "5s"
idle_timeout = "30s"
[h3]
resolution = 10
[privacy]
k = 5
hash_key = "s3cret"
[[auth.tokens]]
name = "huangpu-command"
role = "viewer"
token = "abcdefghij"
"#,
        )
        .unwrap();
        assert_eq!(c.h3.resolution, 10);
        assert_eq!(c.auth.tokens[0].name, "huangpu-command");
    }

    #[test]
    fn every_toml_example_in_the_readme_is_a_valid_config() {
        let readme = include_str!("../../README.md");
        let blocks: Vec<&str> = readme
            .split("```toml\n")
            .skip(1)
            .filter_map(|b| b.split("```").next())
            // What-if files for `throng rehearse` are checked by their own parser's tests.
            .filter(|b| !b.starts_with("# what-if"))
            .collect();
        assert!(blocks.len() >= 2);
        for b in blocks {
            Config::parse(b).unwrap_or_else(|e| panic!("{e}\n{b}"));
        }
    }

    #[test]
    fn a_nowcast_fitted_on_fewer_than_two_counts_is_refused_by_name() {
        let e = Config::parse("[risk.nowcast]\ntrend_windows = 1\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("risk.nowcast.trend_windows") && e.contains("max_age"),
            "{e}"
        );
        let c = Config::parse("[risk.nowcast]\nmax_age = \"0s\"\n").unwrap();
        assert!(c.risk.nowcast.max_age.is_zero());
    }

    #[test]
    fn tls_needs_both_files_and_sql_limits_must_be_positive() {
        let e = Config::parse("[tls]\ncert = \"c.pem\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("tls.key"), "{e}");
        let e = Config::parse("[sql]\nmax_rows = 0\n").unwrap_err().to_string();
        assert!(e.contains("sql.max_rows"), "{e}");
        let e = Config::parse("[ingest]\nmax_body_bytes = 10\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("ingest.max_body_bytes"), "{e}");
    }

    #[test]
    fn unknown_key_names_its_path() {
        let e = Config::parse("[window]\nsizee = \"1m\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("window.sizee") || e.contains("sizee"), "{e}");
    }

    #[test]
    fn an_unknown_time_zone_is_refused_naming_the_key_and_the_form() {
        let e = Config::parse("time_zone = \"Shanghai\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("time_zone") && e.contains("Asia/Shanghai"), "{e}");
        let c = Config::parse("time_zone = \"Asia/Shanghai\"\n").unwrap();
        assert_eq!(c.tz(), chrono_tz::Asia::Shanghai);
    }

    #[test]
    fn bad_duration_names_its_path() {
        let e = Config::parse("[window]\nslide = \"ten seconds\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("window.slide"), "{e}");
    }

    #[test]
    fn a_slide_longer_than_a_day_is_refused_by_name() {
        let e = Config::parse("[window]\nslide = \"25h\"\nsize = \"25h\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("window.slide") && e.contains("24h"), "{e}");
        assert!(Config::parse("[window]\nslide = \"24h\"\nsize = \"24h\"\n").is_ok());
    }

    #[test]
    fn size_must_be_multiple_of_slide() {
        let e = Config::parse("[window]\nsize = \"65s\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("window.size"), "{e}");
    }

    #[test]
    fn the_heading_persistence_is_metres_zero_or_more() {
        let e = Config::parse("[lbs]\nheading_persistence_m = -3\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("lbs.heading_persistence_m") && e.contains("0 or more"),
            "{e}"
        );
        assert_eq!(Config::parse("").unwrap().lbs.heading_persistence_m, 10.0);
    }

    #[test]
    fn the_prior_scale_is_metres_zero_or_more() {
        let e = Config::parse("[lbs]\nprior_scale_m = -1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("lbs.prior_scale_m") && e.contains("0 or more"), "{e}");
        assert_eq!(Config::parse("").unwrap().lbs.prior_scale_m, 6.0);
        assert_eq!(
            Config::parse("[lbs]\nprior_scale_m = 0\n")
                .unwrap()
                .lbs
                .prior_scale_m,
            0.0
        );
    }

    #[test]
    fn resolution_out_of_range_is_refused() {
        let e = Config::parse("[h3]\nresolution = 16\n").unwrap_err().to_string();
        assert!(e.contains("h3.resolution"), "{e}");
    }

    #[test]
    fn unknown_role_is_refused() {
        let e = Config::parse("[[auth.tokens]]\nname='a'\nrole='king'\ntoken='12345678'\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("auth.tokens[0].role"), "{e}");
    }
}
