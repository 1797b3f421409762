//! Risk tiers with hysteresis, dwell and a calm period, so a commander sees a tier they can trust.
//!
//! - Enter a tier when any of its triggers reaches its entry level.
//! - Escalate after the condition holds for `dwell` consecutive evaluations; critical at once.
//! - Leave a tier only when every trigger is at least `hysteresis` (15 %) below that tier's entry
//!   levels, and only after that has lasted `calm_period` without interruption.

use serde::{Deserialize, Serialize};

use super::thresholds::Thresholds;

/// A risk tier.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    Default,
    utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Fruin A–D.
    #[default]
    Low,
    /// Onset of Fruin E.
    Medium,
    /// UK planning density; 80 % of capacity.
    High,
    /// Still's 4 p/m²; Green Guide 82 p/m/min.
    Critical,
}

impl Tier {
    /// The contract's string.
    pub const fn as_str(self) -> &'static str {
        match self {
            Tier::Low => "low",
            Tier::Medium => "medium",
            Tier::High => "high",
            Tier::Critical => "critical",
        }
    }

    /// The tier above (None above critical).
    pub const fn next(self) -> Option<Tier> {
        match self {
            Tier::Low => Some(Tier::Medium),
            Tier::Medium => Some(Tier::High),
            Tier::High => Some(Tier::Critical),
            Tier::Critical => None,
        }
    }
}

/// The tier a segment shows: its tier, or `degraded` when every source of it is silent (never a
/// silent `low`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Shown {
    /// Fruin A–D.
    #[default]
    Low,
    /// Onset of Fruin E.
    Medium,
    /// UK planning density; 80 % of capacity.
    High,
    /// Still's 4 p/m²; Green Guide 82 p/m/min.
    Critical,
    /// Its sources are silent: the numbers are not to be trusted.
    Degraded,
}

impl Shown {
    /// The contract's string.
    pub const fn as_str(self) -> &'static str {
        match self {
            Shown::Low => "low",
            Shown::Medium => "medium",
            Shown::High => "high",
            Shown::Critical => "critical",
            Shown::Degraded => "degraded",
        }
    }
}

impl From<Tier> for Shown {
    fn from(t: Tier) -> Shown {
        match t {
            Tier::Low => Shown::Low,
            Tier::Medium => Shown::Medium,
            Tier::High => Shown::High,
            Tier::Critical => Shown::Critical,
        }
    }
}

impl std::fmt::Display for Shown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What one evaluation measured for a segment.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Measures {
    /// People per m² of walkable area.
    pub density: f64,
    /// People per metre of effective width per minute (None: no counter on the segment).
    pub flow: Option<f64>,
    /// People / organiser capacity (None: no capacity set).
    pub capacity_share: Option<f64>,
    /// Minutes until density reaches the high level at the current rate of rise (None: not rising).
    pub minutes_to_high: Option<f64>,
}

/// Tier settings beyond the thresholds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TierRules {
    /// Fraction below entry needed to leave a tier.
    pub hysteresis: f64,
    /// Consecutive evaluations before escalating (critical is immediate).
    pub dwell: u32,
    /// Milliseconds the calmer condition must last before de-escalating.
    pub calm_ms: i64,
}

impl Default for TierRules {
    fn default() -> Self {
        TierRules {
            hysteresis: 0.15,
            dwell: 2,
            calm_ms: 300_000,
        }
    }
}

/// The highest tier whose trigger fires with entry levels scaled by `factor`, and why.
pub fn level(m: &Measures, t: &Thresholds, factor: f64) -> (Tier, String) {
    for tier in [Tier::Critical, Tier::High, Tier::Medium] {
        let pick = |l: &super::thresholds::Levels| match tier {
            Tier::Critical => l.critical,
            Tier::High => l.high,
            _ => l.medium,
        };
        let d = pick(&t.density) * factor;
        if m.density >= d {
            return (tier, format!("density {:.2} p/m² ≥ {:.2}", m.density, d));
        }
        if let Some(f) = m.flow {
            let q = pick(&t.flow) * factor;
            if f >= q {
                return (tier, format!("flow {f:.0} p/m/min ≥ {q:.0}"));
            }
        }
        if let Some(c) = m.capacity_share {
            let s = pick(&t.capacity_share) * factor;
            if c >= s {
                return (
                    tier,
                    format!("{:.0} % of capacity ≥ {:.0} %", c * 100.0, s * 100.0),
                );
            }
        }
        if tier == Tier::High {
            // Scaling a horizon the other way: holding high needs the horizon within limit / factor.
            let limit = t.time_to_high_min / factor;
            if let Some(mins) = m.minutes_to_high {
                if mins < limit && m.density < t.density.high {
                    return (
                        tier,
                        format!("{mins:.1} min to {:.1} p/m² at the current rise", t.density.high),
                    );
                }
            }
        }
    }
    (Tier::Low, "all triggers below medium".into())
}

/// A tier change.
#[derive(Debug, Clone, PartialEq)]
pub struct Change {
    /// Tier before.
    pub from: Tier,
    /// Tier after.
    pub to: Tier,
    /// The trigger that fired (or why it calmed).
    pub reason: String,
}

/// One segment's tier state.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct TierMachine {
    tier: Tier,
    pending: Option<(Tier, u32)>,
    calm_since: Option<i64>,
}

impl TierMachine {
    /// The tier in force.
    pub fn tier(&self) -> Tier {
        self.tier
    }

    /// Feeds one evaluation at event time `now`; returns the change, if any.
    pub fn step(&mut self, m: &Measures, t: &Thresholds, rules: &TierRules, now: i64) -> Option<Change> {
        let (raw, why) = level(m, t, 1.0);
        if raw > self.tier {
            self.calm_since = None;
            let count = match self.pending {
                Some((p, n)) if p == raw => n + 1,
                _ => 1,
            };
            if raw == Tier::Critical || count >= rules.dwell {
                return Some(self.switch(raw, why));
            }
            self.pending = Some((raw, count));
            return None;
        }
        self.pending = None;
        if self.tier == Tier::Low {
            return None;
        }
        // Still holding the current tier (within the hysteresis band)?
        let (held, _) = level(m, t, 1.0 - rules.hysteresis);
        if held >= self.tier {
            self.calm_since = None;
            return None;
        }
        let since = *self.calm_since.get_or_insert(now);
        if now - since >= rules.calm_ms {
            let reason = format!("calm for {} min: {why}", (now - since) / 60_000);
            return Some(self.switch(held, reason));
        }
        None
    }

    fn switch(&mut self, to: Tier, reason: String) -> Change {
        let from = self.tier;
        self.tier = to;
        self.pending = None;
        self.calm_since = None;
        Change { from, to, reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dens(d: f64) -> Measures {
        Measures {
            density: d,
            ..Default::default()
        }
    }

    fn run(seq: &[f64]) -> Vec<Tier> {
        let mut m = TierMachine::default();
        let t = Thresholds::default();
        let r = TierRules::default();
        seq.iter()
            .enumerate()
            .map(|(i, d)| {
                m.step(&dens(*d), &t, &r, i as i64 * 10_000);
                m.tier()
            })
            .collect()
    }

    #[test]
    fn rising_density_escalates_after_the_dwell() {
        use Tier::*;
        assert_eq!(
            run(&[0.5, 1.1, 1.2, 1.5, 2.1, 2.2, 2.3]),
            vec![Low, Low, Medium, Medium, Medium, High, High]
        );
    }

    #[test]
    fn critical_is_immediate() {
        assert_eq!(run(&[0.5, 4.5]), vec![Tier::Low, Tier::Critical]);
    }

    #[test]
    fn oscillating_around_a_threshold_does_not_flap() {
        // 0.95 / 1.05 around the medium entry of 1.0: escalates once, then holds (0.95 > 0.85).
        let seq: Vec<f64> = (0..60).map(|i| if i % 2 == 0 { 1.05 } else { 0.95 }).collect();
        let tiers = run(&seq);
        let changes = tiers.windows(2).filter(|w| w[0] != w[1]).count();
        assert!(changes <= 1, "{tiers:?}");
        // Alternating above/below entry never escalates: dwell needs two in a row.
        assert_eq!(tiers[0], Tier::Low);
    }

    #[test]
    fn de_escalation_waits_for_the_calm_period() {
        let mut m = TierMachine::default();
        let t = Thresholds::default();
        let r = TierRules::default();
        m.step(&dens(4.5), &t, &r, 0);
        assert_eq!(m.tier(), Tier::Critical);
        // 3.5 is within 15 % of 4.0: holds critical however long.
        for i in 1..50 {
            m.step(&dens(3.5), &t, &r, i * 10_000);
        }
        assert_eq!(m.tier(), Tier::Critical);
        // Calm (0.5 p/m²) from t = 500 s: nothing changes until 5 minutes have passed.
        for i in 50..79 {
            assert!(m.step(&dens(0.5), &t, &r, i * 10_000).is_none());
        }
        let c = m.step(&dens(0.5), &t, &r, 800_000).expect("calm for 5 min");
        assert_eq!((c.from, c.to), (Tier::Critical, Tier::Low));
    }

    #[test]
    fn an_interrupted_calm_starts_again() {
        let mut m = TierMachine::default();
        let t = Thresholds::default();
        let r = TierRules::default();
        m.step(&dens(4.5), &t, &r, 0);
        m.step(&dens(0.5), &t, &r, 10_000);
        m.step(&dens(3.9), &t, &r, 200_000);
        assert!(
            m.step(&dens(0.5), &t, &r, 320_000).is_none(),
            "calm restarted at 320 s"
        );
        assert!(m.step(&dens(0.5), &t, &r, 620_000).is_some());
    }

    #[test]
    fn each_trigger_reports_why() {
        let t = Thresholds {
            capacity: Some(1000.0),
            ..Default::default()
        };
        let (tier, why) = level(
            &Measures {
                density: 0.2,
                flow: Some(70.0),
                ..Default::default()
            },
            &t,
            1.0,
        );
        assert_eq!((tier, why.as_str()), (Tier::High, "flow 70 p/m/min ≥ 66"));
        let (tier, why) = level(
            &Measures {
                density: 0.2,
                capacity_share: Some(0.96),
                ..Default::default()
            },
            &t,
            1.0,
        );
        assert_eq!(tier, Tier::Critical);
        assert!(why.contains("96 % of capacity"), "{why}");
        let (tier, why) = level(
            &Measures {
                density: 1.2,
                minutes_to_high: Some(6.0),
                ..Default::default()
            },
            &t,
            1.0,
        );
        assert_eq!(tier, Tier::High);
        assert!(why.contains("6.0 min to 2.0"), "{why}");
        let (tier, why) = level(&dens(2.3), &t, 1.0);
        assert_eq!((tier, why.as_str()), (Tier::High, "density 2.30 p/m² ≥ 2.00"));
    }
}
