//! Interned feed sources: `counter`, `gate`, and one `lbs/<provider>` per LBS provider.
//!
//! Sources drive the watermark and carry the LBS scale factor (people per device). Provider names come
//! from input, so the table is capped: past `MAX_SOURCES` new names share one `lbs/(other)` entry.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::RwLock;

use rustc_hash::FxHashMap;

use crate::config::LbsConfig;
use crate::model::SourceId;

/// Counter reports' source.
pub const COUNTER: SourceId = SourceId(0);
/// Gate reports' source.
pub const GATE: SourceId = SourceId(1);
/// Most distinct sources kept apart.
pub const MAX_SOURCES: usize = 256;

#[derive(Debug)]
struct Inner {
    names: Vec<String>,
    scales: Vec<f64>,
    /// Per source, how long it may be silent and still hold the watermark (ms; 0: the idle timeout).
    max_delays: Vec<i64>,
    /// Per source, what its devices are like (error, ping interval).
    profiles: Vec<DeviceProfile>,
    /// Fx, not SipHash: looked up for every ping, and capped, so colliding names cannot grow it.
    index: FxHashMap<String, SourceId>,
}

/// What a source's devices are like, for locating them and keeping them present between pings.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DeviceProfile {
    /// Error of a ping without `accuracy_m` (metres, 68 % radius).
    pub accuracy_m: f64,
    /// Typical ping interval before a device's own is known (ms).
    pub ping_interval_ms: i64,
}

#[derive(Debug, Clone, Copy)]
struct Configured {
    scale: f64,
    max_delay: i64,
    profile: DeviceProfile,
}

/// The shared source table.
#[derive(Debug)]
pub struct Sources {
    inner: RwLock<Inner>,
    /// `inner.names.len()`, readable without the lock (asked after every record).
    len: AtomicUsize,
    default_scale: f64,
    default_profile: DeviceProfile,
    configured: HashMap<String, Configured>,
    /// This table's own number, so a thread's cache of its last answer (see `lbs`) is never
    /// read for another table.
    instance: u64,
}

/// Numbers tables for `Sources::instance`.
static INSTANCES: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// The last provider a thread looked up: (table, provider, id). Feeds send runs of records of
    /// one provider, and the lock and hash of a look-up were 2 % of a replay (issue 20). An id,
    /// once given to a name, never changes, so the cached answer stays right.
    static LAST_LBS: RefCell<(u64, String, SourceId)> = const { RefCell::new((0, String::new(), SourceId(0))) };
}

impl Sources {
    /// A table with the fixed sources and the configured LBS providers.
    pub fn new(cfg: &LbsConfig) -> Sources {
        Sources::resuming(cfg, &[])
    }

    /// The fixed sources only; configured settings are applied as providers are registered.
    fn fixed(cfg: &LbsConfig) -> Sources {
        let inner = Inner {
            names: vec!["counter".into(), "gate".into()],
            scales: vec![1.0, 1.0],
            max_delays: vec![0, 0],
            profiles: Vec::new(),
            index: FxHashMap::default(),
        };
        let default_profile = DeviceProfile {
            accuracy_m: cfg.default_accuracy_m,
            ping_interval_ms: cfg.ping_interval.as_millis() as i64,
        };
        let mut inner = inner;
        inner.profiles = vec![default_profile; 2];
        let s = Sources {
            len: AtomicUsize::new(inner.names.len()),
            instance: INSTANCES.fetch_add(1, Ordering::Relaxed),
            inner: RwLock::new(inner),
            default_scale: cfg.default_scale,
            default_profile,
            configured: cfg
                .sources
                .iter()
                .map(|(k, v)| {
                    let c = Configured {
                        scale: v.scale,
                        max_delay: v.max_delay.map_or(0, |d| d.as_millis() as i64),
                        profile: DeviceProfile {
                            accuracy_m: v.accuracy_m.unwrap_or(cfg.default_accuracy_m),
                            ping_interval_ms: v
                                .ping_interval
                                .map_or(default_profile.ping_interval_ms, |d| d.as_millis() as i64),
                        },
                    };
                    (k.clone(), c)
                })
                .collect(),
        };
        s
    }

    /// A table that gives the sources a data dir's log and checkpoint already number their
    /// records with (`known`, in id order) the same ids again, then adds the configured ones not
    /// among them. Ids are assigned as providers first appear; without this, a provider seen
    /// first after a restart in another order would be handed another's records, scale and name.
    pub fn resuming(cfg: &LbsConfig, known: &[String]) -> Sources {
        let s = Sources::fixed(cfg);
        for name in known.iter().skip(s.len()) {
            match name.strip_prefix("lbs/") {
                Some("(other)") => break,
                Some(p) => {
                    s.lbs(Some(p));
                }
                None if name == "lbs" => {
                    s.lbs(None);
                }
                None => break,
            }
        }
        for name in cfg.sources.keys() {
            s.lbs(Some(name));
        }
        s
    }

    /// Every source's name, in id order (what a checkpoint and the log keep).
    pub fn names(&self) -> Vec<String> {
        self.read().names.clone()
    }

    /// Names from id `from` on.
    pub fn names_from(&self, from: usize) -> Vec<String> {
        self.read()
            .names
            .get(from..)
            .map(<[String]>::to_vec)
            .unwrap_or_default()
    }

    /// The source id of an LBS provider (the `source` field; absent = `lbs`).
    pub fn lbs(&self, provider: Option<&str>) -> SourceId {
        let provider = provider.unwrap_or("");
        let cached = LAST_LBS.with(|c| {
            let c = c.borrow();
            (c.0 == self.instance && c.1 == provider).then_some(c.2)
        });
        if let Some(id) = cached {
            return id;
        }
        let id = self.lbs_uncached(provider);
        LAST_LBS.with(|c| {
            let mut c = c.borrow_mut();
            c.0 = self.instance;
            c.1.clear();
            c.1.push_str(provider);
            c.2 = id;
        });
        id
    }

    fn lbs_uncached(&self, provider: &str) -> SourceId {
        if let Some(id) = self.read().index.get(provider) {
            return *id;
        }
        let mut w = self.inner.write().unwrap_or_else(|p| p.into_inner());
        if let Some(id) = w.index.get(provider) {
            return *id;
        }
        let full = w.names.len() >= MAX_SOURCES;
        let (key, name) = if full {
            ("\u{0}other", "lbs/(other)".to_string())
        } else if provider.is_empty() {
            ("", "lbs".to_string())
        } else {
            (provider, format!("lbs/{provider}"))
        };
        if let Some(id) = w.index.get(key) {
            return *id;
        }
        let id = SourceId(w.names.len() as u16);
        let c = self.configured.get(provider).copied().unwrap_or(Configured {
            scale: self.default_scale,
            max_delay: 0,
            profile: self.default_profile,
        });
        w.names.push(name);
        w.scales.push(c.scale);
        w.max_delays.push(c.max_delay);
        w.profiles.push(c.profile);
        w.index.insert(key.to_string(), id);
        self.len.store(w.names.len(), Ordering::Release);
        id
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    /// A source's display name.
    pub fn name(&self, id: SourceId) -> String {
        self.read()
            .names
            .get(id.0 as usize)
            .cloned()
            .unwrap_or_else(|| format!("source#{}", id.0))
    }

    /// People per device for each source, indexed by `SourceId`.
    pub fn scales(&self) -> Vec<f64> {
        self.read().scales.clone()
    }

    /// How long each source may be silent and still hold the watermark (ms; 0: the idle timeout).
    pub fn max_delays(&self) -> Vec<i64> {
        self.read().max_delays.clone()
    }

    /// Each source's device profile, indexed by `SourceId`.
    pub fn profiles(&self) -> Vec<DeviceProfile> {
        self.read().profiles.clone()
    }

    /// Number of sources so far.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    /// Always false: the fixed sources exist from the start.
    pub fn is_empty(&self) -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::LbsSourceConfig;

    #[test]
    fn a_thread_asking_two_tables_in_turn_gets_each_tables_own_id() {
        // The same provider numbered differently by two tables: the thread's cache of the last
        // answer must never hand one table's id to the other.
        let cfg = LbsConfig::default();
        let (a, b) = (Sources::new(&cfg), Sources::new(&cfg));
        let a_x = a.lbs(Some("x"));
        let b_y = b.lbs(Some("y"));
        let b_x = b.lbs(Some("x"));
        assert_ne!(a_x, b_x, "x came first to a, second to b");
        for _ in 0..3 {
            assert_eq!(a.lbs(Some("x")), a_x);
            assert_eq!(b.lbs(Some("x")), b_x);
            assert_eq!(b.lbs(Some("y")), b_y);
            assert_eq!(a.lbs(Some("x")), a_x);
            assert_eq!(a.lbs(None), a.lbs(None));
        }
        let a_y = a.lbs(Some("y"));
        assert_eq!(a.names()[a_y.0 as usize], "lbs/y");
        assert_eq!(b.names()[b_x.0 as usize], "lbs/x");
        // A table made after another is dropped never reads the old one's answers.
        drop(a);
        let c = Sources::new(&cfg);
        let c_z = c.lbs(Some("z"));
        assert_eq!(c.lbs(Some("x")).0, c_z.0 + 1);
    }

    #[test]
    fn a_resumed_table_gives_known_providers_their_old_ids_whatever_arrives_first() {
        let mut cfg = LbsConfig::default();
        cfg.sources.insert(
            "carrier-a".into(),
            LbsSourceConfig {
                scale: 2.0,
                max_delay: None,
                accuracy_m: None,
                ping_interval: None,
            },
        );
        let first = Sources::new(&cfg);
        let (x, y) = (first.lbs(Some("x")), first.lbs(Some("y")));
        // After a restart "y" speaks first; and carrier-b has been added to the config since.
        cfg.sources.insert(
            "carrier-b".into(),
            LbsSourceConfig {
                scale: 3.0,
                max_delay: None,
                accuracy_m: None,
                ping_interval: None,
            },
        );
        let again = Sources::resuming(&cfg, &first.names());
        assert_eq!(again.lbs(Some("y")), y);
        assert_eq!(again.lbs(Some("x")), x);
        assert_eq!(again.lbs(Some("carrier-a")), first.lbs(Some("carrier-a")));
        let b = again.lbs(Some("carrier-b"));
        assert_eq!(
            again.scales()[b.0 as usize],
            3.0,
            "a newly configured one is added after"
        );
        assert!(b.0 as usize >= first.len());
    }

    #[test]
    fn providers_get_their_configured_scale() {
        let mut cfg = LbsConfig::default();
        cfg.sources.insert(
            "carrier-a".into(),
            LbsSourceConfig {
                scale: 2.5,
                max_delay: None,
                accuracy_m: Some(40.0),
                ping_interval: None,
            },
        );
        let s = Sources::new(&cfg);
        let a = s.lbs(Some("carrier-a"));
        let b = s.lbs(Some("app-x"));
        assert_eq!(s.scales()[a.0 as usize], 2.5);
        assert_eq!(s.scales()[b.0 as usize], 1.0);
        assert_eq!(s.profiles()[a.0 as usize].accuracy_m, 40.0);
        assert_eq!(s.profiles()[b.0 as usize].accuracy_m, 30.0);
        assert_eq!(s.profiles()[a.0 as usize].ping_interval_ms, 60_000);
        assert_eq!(s.name(a), "lbs/carrier-a");
        assert_eq!(s.lbs(Some("carrier-a")), a);
    }

    #[test]
    fn table_is_capped() {
        let s = Sources::new(&LbsConfig::default());
        for i in 0..1000 {
            s.lbs(Some(&format!("p{i}")));
        }
        assert!(s.len() <= MAX_SOURCES + 1);
        assert_eq!(s.name(s.lbs(Some("p999"))), "lbs/(other)");
    }
}
