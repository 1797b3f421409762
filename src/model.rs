//! The record model shared by every stage: typed ids and the parsed, pseudonymised records.
//!
//! Nothing here holds a raw device string: by the time a record exists, its device is a keyed hash.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Event time: milliseconds since the Unix epoch, UTC.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct EventTime(pub i64);

impl EventTime {
    /// Milliseconds since the Unix epoch.
    pub const fn millis(self) -> i64 {
        self.0
    }
}

impl fmt::Display for EventTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match chrono::DateTime::from_timestamp_millis(self.0) {
            Some(t) => write!(f, "{}", t.format("%Y-%m-%dT%H:%M:%S%.3fZ")),
            None => write!(f, "{}ms", self.0),
        }
    }
}

/// An H3 cell: the same 64-bit value as the H3 C library's index.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct CellId(pub u64);

impl CellId {
    /// The h3o view of this cell (always valid: a `CellId` is only built from an h3o cell).
    pub fn index(self) -> Option<h3o::CellIndex> {
        h3o::CellIndex::try_from(self.0).ok()
    }
}

impl From<h3o::CellIndex> for CellId {
    fn from(c: h3o::CellIndex) -> Self {
        CellId(u64::from(c))
    }
}

impl fmt::Display for CellId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:x}", self.0)
    }
}

/// Where a ping puts its device: WGS-84 micro-degrees (about 0.1 m) and the reported accuracy.
/// Integers, so a record stays hashable (the engine's idempotency key) and compact in the log.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Position {
    /// Latitude × 10⁶.
    pub lat_e6: i32,
    /// Longitude × 10⁶.
    pub lng_e6: i32,
    /// The feed's `accuracy_m` in decimetres (the 68 % radius); None when the feed gave none.
    pub accuracy_dm: Option<u16>,
}

impl Position {
    /// A position from degrees and an optional accuracy in metres.
    pub fn new(lat: f64, lng: f64, accuracy_m: Option<f64>) -> Position {
        Position {
            lat_e6: (lat * 1e6).round() as i32,
            lng_e6: (lng * 1e6).round() as i32,
            accuracy_dm: accuracy_m.map(|a| (a * 10.0).round().clamp(0.0, u16::MAX as f64) as u16),
        }
    }

    /// Latitude, degrees.
    pub fn lat(self) -> f64 {
        self.lat_e6 as f64 * 1e-6
    }

    /// Longitude, degrees.
    pub fn lng(self) -> f64 {
        self.lng_e6 as f64 * 1e-6
    }

    /// The reported accuracy, metres.
    pub fn accuracy_m(self) -> Option<f64> {
        self.accuracy_dm.map(|d| d as f64 / 10.0)
    }
}

/// A device pseudonym: a keyed hash of the provider's device string.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct DeviceId(pub u64);

/// A feed source, interned (see `ingest::sources`): `lbs/<provider>`, `counter` or `gate`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct SourceId(pub u16);

/// Index of a sensor in the sensor registry.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SensorIdx(pub u32);

/// A feed point: a counter sensor or a registered station exit, with the segment it feeds.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PointIdx(pub u32);

/// A cumulative register's identity: a counter sensor, or a station's gate.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RegisterKey(pub u64);

/// The three kinds of feed record.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    /// Phone-location ping.
    Lbs,
    /// Camera people-counter report.
    Counter,
    /// Metro fare-gate report.
    Gate,
}

impl Kind {
    /// The `kind` string used on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Lbs => "lbs",
            Kind::Counter => "counter",
            Kind::Gate => "gate",
        }
    }
}

/// A parsed, validated record, ready for the window engine.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Record {
    /// When it happened.
    pub ts: EventTime,
    /// Which feed source it came from (drives the watermark).
    pub source: SourceId,
    /// The H3 cell it is counted in (the ping's position, or the sensor's / gate's location).
    pub cell: CellId,
    /// The counter or station exit it came from (None for pings and unregistered gates).
    pub point: Option<PointIdx>,
    /// What it says.
    pub body: Body,
}

/// The kind-specific part of a record.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Body {
    /// A device was seen in `cell`, at `pos` (None only in logs written before positions were kept).
    Ping {
        device: DeviceId,
        #[serde(default)]
        pos: Option<Position>,
    },
    /// People crossing a counter line during the period ending at `ts`.
    CounterInterval {
        inn: u32,
        out: u32,
        period_ms: Option<u32>,
    },
    /// A counter's running totals.
    CounterCumulative {
        register: RegisterKey,
        in_total: u64,
        out_total: u64,
    },
    /// A direct headcount of a zone.
    Occupancy { sensor: SensorIdx, people: u32 },
    /// Gate entries and exits during the period ending at `ts`.
    GateInterval {
        entries: u32,
        exits: u32,
        period_ms: Option<u32>,
    },
    /// One tap at a gate; `seq`, when the feed numbers its taps, tells two taps in one
    /// millisecond apart from a re-send of one (it is part of the idempotency key).
    GateTap {
        exit: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
    },
    /// A gate's running totals.
    GateCumulative {
        register: RegisterKey,
        entries_total: u64,
        exits_total: u64,
    },
}

impl Body {
    /// The feed kind this body belongs to.
    pub const fn kind(&self) -> Kind {
        match self {
            Body::Ping { .. } => Kind::Lbs,
            Body::CounterInterval { .. } | Body::CounterCumulative { .. } | Body::Occupancy { .. } => {
                Kind::Counter
            }
            Body::GateInterval { .. } | Body::GateTap { .. } | Body::GateCumulative { .. } => Kind::Gate,
        }
    }
}

/// Wall-clock milliseconds since the epoch: the server's processing time. Only the edges read it
/// (the engine task, feed adapters, viewers); stages below take `now` as an argument.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// What a token holder may do (CONTRACT.md roles); `admin` may do everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Pushes feed records.
    Feed,
    /// Watches the live picture.
    Viewer,
    /// Watches, and changes thresholds.
    Organiser,
    /// Queries history with SQL.
    Analyst,
    /// Everything, including reloads.
    Admin,
}

impl Role {
    /// The role's name as in the config and the contract.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Feed => "feed",
            Role::Viewer => "viewer",
            Role::Organiser => "organiser",
            Role::Analyst => "analyst",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Role, String> {
        [
            Role::Feed,
            Role::Viewer,
            Role::Organiser,
            Role::Analyst,
            Role::Admin,
        ]
        .into_iter()
        .find(|r| r.as_str() == s)
        .ok_or_else(|| format!("unknown role `{s}` (feed, viewer, organiser, analyst or admin)"))
    }
}
