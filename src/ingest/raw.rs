//! A feed record as read, before any validation: every field any kind may carry, each optional.
//! Both readers fill it — the hot-path scanner (`scan`) and serde_json — and `parse` validates it.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// `ts`: epoch milliseconds or RFC 3339.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Ts(pub(super) Result<i64, &'static str>);

impl Ts {
    /// An RFC 3339 string's epoch ms, or why it is not one.
    pub(super) fn rfc3339(v: &str) -> Ts {
        Ts(chrono::DateTime::parse_from_rfc3339(v)
            .map(|t| t.timestamp_millis())
            .map_err(|_| "is not an RFC 3339 time with an offset (e.g. 2026-12-31T23:59:58.120+08:00)"))
    }
}

impl<'de> Deserialize<'de> for Ts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Ts;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("epoch milliseconds or an RFC 3339 string")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Ts, E> {
                Ok(Ts(Ok(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Ts, E> {
                Ok(Ts(i64::try_from(v).map_err(|_| "is too large")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Ts, E> {
                if v.is_finite() && v.fract() == 0.0 && v.abs() < 9.0e15 {
                    Ok(Ts(Ok(v as i64)))
                } else {
                    Ok(Ts(Err("must be whole milliseconds since the epoch")))
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Ts, E> {
                Ok(Ts::rfc3339(v))
            }
        }
        d.deserialize_any(V)
    }
}

/// Every field any kind may carry; unknown fields are ignored.
#[derive(Deserialize, Default, Debug, PartialEq)]
pub(super) struct Raw<'a> {
    #[serde(borrow)]
    pub(super) kind: Option<Cow<'a, str>>,
    pub(super) ts: Option<Ts>,
    #[serde(borrow)]
    pub(super) device: Option<Cow<'a, str>>,
    pub(super) lat: Option<f64>,
    pub(super) lng: Option<f64>,
    #[serde(borrow)]
    pub(super) crs: Option<Cow<'a, str>>,
    pub(super) accuracy_m: Option<f64>,
    #[serde(borrow)]
    pub(super) source: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub(super) sensor: Option<Cow<'a, str>>,
    #[serde(rename = "in")]
    pub(super) inn: Option<u64>,
    pub(super) out: Option<u64>,
    pub(super) period_s: Option<f64>,
    pub(super) in_total: Option<u64>,
    pub(super) out_total: Option<u64>,
    pub(super) occupancy: Option<u64>,
    #[serde(borrow)]
    pub(super) station: Option<Cow<'a, str>>,
    #[serde(borrow)]
    pub(super) gate: Option<Cow<'a, str>>,
    pub(super) entries: Option<u64>,
    /// A tap's sequence number at its gate (optional).
    pub(super) seq: Option<u64>,
    pub(super) exits: Option<u64>,
    #[serde(borrow)]
    pub(super) dir: Option<Cow<'a, str>>,
    pub(super) entries_total: Option<u64>,
    pub(super) exits_total: Option<u64>,
}
