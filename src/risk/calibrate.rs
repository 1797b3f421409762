//! Self-calibrating fusion: each LBS source's people per device, learnt online from zone
//! headcounts.
//!
//! A zone headcount counts everyone on its segment; the engine places `d[s][j]` devices of source
//! `s` on segment `j`. Each closed window, every plausible zone gives one equation
//! `count[j] ≈ Σ_s k[s] · d[s][j]`, and the factors `k` are the weighted least-squares fit over the
//! evidence so far, forgotten exponentially (`time_constant`), so a panel whose share drifts
//! through the night is followed. Weighting each zone by 1 / its devices makes one source's fit
//! the ratio estimator Σ count / Σ devices. A pull (ridge) towards one correction common to every
//! source decides what the counts cannot: with sources mixed alike in every zone only their sum
//! is measured, and the correction is then shared in proportion.
//!
//! What the counts must pass first, or they are ignored (and counted by reason): enough devices
//! in the zone for a ratio to mean something, a density a crowd can have, a count within a
//! multiple of the segment's capacity, a register that moves when the crowd does, and a ratio to
//! the configured estimate within `max_ratio`. With nothing accepted for `hold`, every source
//! falls back to its configured factor. No I/O and no clock: the same windows give the same
//! factors, in a live run and in its recovery.

use std::collections::{BTreeMap, VecDeque};

use serde::{Deserialize, Serialize};

use crate::config::CalibrationConfig;

/// Relative ridge towards the common correction (see `solve`).
const RIDGE: f64 = 0.1;

/// One zone's count in one window and the devices the engine placed on its segment.
#[derive(Debug, Clone, PartialEq)]
pub struct Evidence {
    /// The segment (its id: zone tracks survive a segments reload).
    pub segment: String,
    /// The zone headcount (latest in the window, summed over the segment's zones).
    pub count: f64,
    /// Devices placed on the segment, by source id.
    pub devices: Vec<f64>,
    /// Walkable area, m².
    pub area_m2: f64,
    /// Organiser-set capacity, people.
    pub capacity: Option<f64>,
    /// Mean age of the positions that placed those devices, at the window's end (seconds).
    pub age_s: f64,
}

/// How far back a zone's counts are kept to compare with older positions (presence holds a
/// device at most 10 minutes).
const HISTORY_MS: i64 = 15 * 60_000;

/// Why a zone's count was not used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Rejection {
    /// Above `max_density` or `max_capacity_share` × capacity.
    Implausible,
    /// Unchanged for `stuck_windows` while the devices there changed.
    Stuck,
    /// Its ratio to the configured estimate is outside `max_ratio`.
    Disagrees,
}

impl Rejection {
    /// Every reason (so each is exported from zero).
    pub const ALL: [Rejection; 3] = [Rejection::Implausible, Rejection::Stuck, Rejection::Disagrees];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Implausible => "implausible",
            Rejection::Stuck => "stuck",
            Rejection::Disagrees => "disagrees",
        }
    }
}

/// How a source's factor stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The configured factor: no evidence yet, or none for `hold`.
    Prior,
    /// Learnt, with evidence in this window.
    Calibrated,
    /// Learnt, no evidence in this window (within `hold` of the last).
    Holding,
}

impl Status {
    /// As the API and SQL show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Prior => "prior",
            Status::Calibrated => "calibrated",
            Status::Holding => "holding",
        }
    }
}

/// One source's factor after a window.
#[derive(Debug, Clone, PartialEq)]
pub struct Estimate {
    /// Source id.
    pub source: usize,
    /// The configured factor.
    pub prior: f64,
    /// The factor in force.
    pub people_per_device: f64,
    /// 0–1: how much evidence stands behind it (forgotten devices / (that + 10 × min_devices)).
    pub confidence: f64,
    /// Prior, calibrated or holding.
    pub status: Status,
    /// Devices of this source in the evidence, forgotten like it.
    pub evidence_devices: f64,
}

/// One LBS source's factor as the API, metrics and the `calibration` table show it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SourceCalibration {
    /// The source (`lbs/<provider>`).
    pub source: String,
    /// The configured people per device.
    pub prior: f64,
    /// The people per device in force.
    pub people_per_device: f64,
    /// 0–1: how much evidence stands behind it.
    pub confidence: f64,
    /// prior, calibrated or holding.
    pub status: Status,
    /// Devices of this source in the (forgotten) evidence.
    pub evidence_devices: f64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct ZoneTrack {
    last: f64,
    same: u32,
    devices_at_start: f64,
    /// (window end, count), oldest first, over the last `HISTORY_MS`.
    #[serde(default)]
    recent: VecDeque<(i64, f64)>,
}

impl ZoneTrack {
    /// The zone's count as it was at `t`, interpolated between the windows around it (the oldest
    /// kept, if `t` is older).
    fn count_at(&self, t: i64) -> Option<f64> {
        let i = self.recent.partition_point(|(e, _)| *e <= t);
        match (
            i.checked_sub(1).and_then(|j| self.recent.get(j)),
            self.recent.get(i),
        ) {
            (Some(&(t0, c0)), Some(&(t1, c1))) if t1 > t0 => {
                Some(c0 + (c1 - c0) * (t - t0) as f64 / (t1 - t0) as f64)
            }
            (Some(&(_, c)), _) | (None, Some(&(_, c))) => Some(c),
            (None, None) => None,
        }
    }
}

/// What the calibrator remembers (checkpointed with the segments stage).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CalibrationState {
    /// Σ w d dᵀ, row-major, n × n (n = sources known).
    a: Vec<f64>,
    /// Σ w d count.
    b: Vec<f64>,
    /// Σ d per source.
    weight: Vec<f64>,
    /// End of the newest window seen (evidence is forgotten by the event time between windows).
    last_end: Option<i64>,
    /// End of the first window seen (the warm-up runs from it).
    #[serde(default)]
    first_end: Option<i64>,
    /// Window end of the newest accepted evidence.
    last_accepted: Option<i64>,
    /// Zones accepted in the newest window.
    accepted_now: u32,
    zones: BTreeMap<String, ZoneTrack>,
    rejected: BTreeMap<Rejection, u64>,
    /// The newest rejection, said for a person.
    note: Option<String>,
}

/// The online estimator.
#[derive(Debug, Clone)]
pub struct Calibrator {
    cfg: CalibrationConfig,
    priors: Vec<f64>,
    state: CalibrationState,
    factors: Vec<f64>,
}

impl Calibrator {
    /// A calibrator with the configured rules.
    pub fn new(cfg: CalibrationConfig) -> Calibrator {
        Calibrator {
            cfg,
            priors: Vec::new(),
            state: CalibrationState::default(),
            factors: Vec::new(),
        }
    }

    /// The configured factors, by source id (more appear as providers do).
    pub fn set_priors(&mut self, priors: Vec<f64>) {
        self.priors = priors;
        self.resize();
        self.solve();
    }

    /// The factors in force, by source id.
    pub fn factors(&self) -> &[f64] {
        &self.factors
    }

    /// The state to checkpoint.
    pub fn state(&self) -> CalibrationState {
        self.state.clone()
    }

    /// Carries on from a checkpointed state.
    pub fn restore(&mut self, s: CalibrationState) {
        self.state = s;
        self.resize();
        self.solve();
    }

    /// Zones ignored so far, by reason.
    pub fn rejected(&self) -> &BTreeMap<Rejection, u64> {
        &self.state.rejected
    }

    /// The newest rejection, said for a person.
    pub fn note(&self) -> Option<&str> {
        self.state.note.as_deref()
    }

    fn resize(&mut self) {
        let n = self.priors.len();
        let s = &mut self.state;
        let old = s.weight.len();
        if old == n {
            return;
        }
        let mut a = vec![0.0; n * n];
        for i in 0..old.min(n) {
            for j in 0..old.min(n) {
                a[i * n + j] = s.a.get(i * old + j).copied().unwrap_or(0.0);
            }
        }
        s.a = a;
        s.b.resize(n, 0.0);
        s.weight.resize(n, 0.0);
    }

    /// One closed window ending at `end`, with the zones that reported in it.
    pub fn update(&mut self, end: i64, evidence: &[Evidence]) {
        if !self.cfg.enabled {
            return;
        }
        let n = self.priors.len();
        let cfg = self.cfg.clone();
        let s = &mut self.state;
        let dt = s.last_end.map_or(0, |l| (end - l).max(0));
        if s.last_end.is_some_and(|l| end < l) {
            return; // an older window than one already seen: the evidence is in
        }
        s.last_end = Some(end);
        let warming = end - *s.first_end.get_or_insert(end) < cfg.warmup.as_millis() as i64;
        let keep = (-(dt as f64) / cfg.time_constant.as_millis().max(1) as f64).exp();
        s.a.iter_mut()
            .chain(s.b.iter_mut())
            .chain(s.weight.iter_mut())
            .for_each(|x| *x *= keep);
        s.accepted_now = 0;
        for ev in evidence {
            let devices: f64 = ev.devices.iter().take(n).sum();
            let z = s.zones.entry(ev.segment.clone()).or_default();
            if z.same > 0 && ev.count == z.last {
                z.same += 1;
            } else {
                z.last = ev.count;
                z.same = 1;
                z.devices_at_start = devices;
            }
            z.recent.push_back((end, ev.count));
            while z.recent.front().is_some_and(|(e, _)| end - e > HISTORY_MS) {
                z.recent.pop_front();
            }
            // The phones say where people were when they last spoke: compare them with the count
            // as it was then (a growing crowd otherwise reads as a panel covering fewer people).
            let then = z
                .count_at(end - (ev.age_s * 1000.0).round() as i64)
                .unwrap_or(ev.count);
            if devices < cfg.min_devices || warming {
                continue;
            }
            let expected: f64 = ev.devices.iter().zip(&self.priors).map(|(d, p)| d * p).sum();
            let ratio = then / expected.max(1e-9);
            let density = ev.count / ev.area_m2.max(1e-9);
            let why = if density > cfg.max_density {
                Some((
                    Rejection::Implausible,
                    format!(
                        "zone on {} counts {:.0} people, {density:.1} p/m², above risk.calibration.max_density {}",
                        ev.segment, ev.count, cfg.max_density
                    ),
                ))
            } else if let Some(c) = ev.capacity.filter(|c| ev.count > cfg.max_capacity_share * c) {
                Some((
                    Rejection::Implausible,
                    format!(
                        "zone on {} counts {:.0} people, {:.1}× its capacity {c:.0} (risk.calibration.max_capacity_share {})",
                        ev.segment,
                        ev.count,
                        ev.count / c,
                        cfg.max_capacity_share
                    ),
                ))
            } else if z.same >= cfg.stuck_windows
                && (devices / z.devices_at_start.max(1e-9) - 1.0).abs() > 0.1
            {
                Some((
                    Rejection::Stuck,
                    format!(
                        "zone on {} has read {:.0} for {} windows while the phones there changed {:+.0} %: a stuck register",
                        ev.segment,
                        ev.count,
                        z.same,
                        (devices / z.devices_at_start.max(1e-9) - 1.0) * 100.0
                    ),
                ))
            } else if ratio > cfg.max_ratio || ratio < 1.0 / cfg.max_ratio {
                Some((
                    Rejection::Disagrees,
                    format!(
                        "zone on {} counts {then:.0} people where the phones say {expected:.0}: {ratio:.2}×, outside risk.calibration.max_ratio {}",
                        ev.segment, cfg.max_ratio
                    ),
                ))
            } else {
                None
            };
            if let Some((r, text)) = why {
                *s.rejected.entry(r).or_default() += 1;
                s.note = Some(text);
                continue;
            }
            let w = 1.0 / devices;
            for i in 0..n {
                let di = ev.devices.get(i).copied().unwrap_or(0.0);
                if di == 0.0 {
                    continue;
                }
                for j in 0..n {
                    s.a[i * n + j] += w * di * ev.devices.get(j).copied().unwrap_or(0.0);
                }
                s.b[i] += w * di * then;
                s.weight[i] += di;
            }
            s.accepted_now += 1;
        }
        if s.accepted_now > 0 {
            s.last_accepted = Some(end);
        }
        let hold = cfg.hold.as_millis() as i64;
        if s.last_accepted.is_some_and(|t| end - t > hold) {
            // The counters have said nothing usable for too long: trust the configuration again.
            s.a.iter_mut()
                .chain(s.b.iter_mut())
                .chain(s.weight.iter_mut())
                .for_each(|x| *x = 0.0);
            s.last_accepted = None;
        }
        self.solve();
    }

    /// Solves (A + R) k = b + R t, bounded to [p / max_ratio, p × max_ratio]; a source with too
    /// little evidence keeps its prior. `t` is the common correction, every configured factor
    /// times one c (the one-parameter fit c = pᵀb / pᵀAp), and R pulls towards it: the counts
    /// move a source apart from the others only as far as they tell the sources apart. Where
    /// they do not (the same mix of panels in every zone), a free fit follows the noise in the mix
    /// to factors far apart (1.96 and 0.62 where both are 1.25, in one simulated night).
    fn solve(&mut self) {
        let n = self.priors.len();
        let s = &self.state;
        if !self.cfg.enabled || s.weight.iter().all(|w| *w < self.cfg.min_devices) {
            self.factors = self.priors.clone();
            return;
        }
        let p = &self.priors;
        let pb: f64 = (0..n).map(|i| p[i] * s.b[i]).sum();
        let pap: f64 = (0..n)
            .map(|i| (0..n).map(|j| p[i] * s.a[i * n + j] * p[j]).sum::<f64>())
            .sum();
        let c = if pap > 0.0 { pb / pap } else { 1.0 };
        let mut m = s.a.clone();
        let mut rhs = s.b.clone();
        for i in 0..n {
            let r = RIDGE * m[i * n + i] + 1e-9;
            m[i * n + i] += r;
            rhs[i] += r * c * p[i];
        }
        let k = gauss(&mut m, &mut rhs, n).unwrap_or_else(|| self.priors.clone());
        self.factors = (0..n)
            .map(|i| {
                let p = self.priors[i];
                if s.weight[i] < self.cfg.min_devices || !k[i].is_finite() {
                    p
                } else {
                    k[i].clamp(p / self.cfg.max_ratio, p * self.cfg.max_ratio)
                }
            })
            .collect();
    }

    /// Every source's factor, as it stands.
    pub fn estimates(&self) -> Vec<Estimate> {
        let s = &self.state;
        (0..self.priors.len())
            .map(|i| {
                let w = s.weight.get(i).copied().unwrap_or(0.0);
                let learnt = self.cfg.enabled && w >= self.cfg.min_devices;
                let status = match (learnt, s.accepted_now > 0 && w > 0.0) {
                    (false, _) => Status::Prior,
                    (true, true) => Status::Calibrated,
                    (true, false) => Status::Holding,
                };
                Estimate {
                    source: i,
                    prior: self.priors[i],
                    people_per_device: self.factors.get(i).copied().unwrap_or(self.priors[i]),
                    confidence: if learnt {
                        w / (w + 10.0 * self.cfg.min_devices)
                    } else {
                        0.0
                    },
                    status,
                    evidence_devices: w,
                }
            })
            .collect()
    }
}

/// Gaussian elimination with partial pivoting (n is the number of sources: a handful).
fn gauss(m: &mut [f64], rhs: &mut [f64], n: usize) -> Option<Vec<f64>> {
    for c in 0..n {
        let p = (c..n).max_by(|&x, &y| m[x * n + c].abs().total_cmp(&m[y * n + c].abs()))?;
        if m[p * n + c].abs() < 1e-12 {
            return None;
        }
        if p != c {
            for j in 0..n {
                m.swap(p * n + j, c * n + j);
            }
            rhs.swap(p, c);
        }
        for r in c + 1..n {
            let f = m[r * n + c] / m[c * n + c];
            for j in c..n {
                m[r * n + j] -= f * m[c * n + j];
            }
            rhs[r] -= f * rhs[c];
        }
    }
    let mut x = vec![0.0; n];
    for c in (0..n).rev() {
        let sum: f64 = (c + 1..n).map(|j| m[c * n + j] * x[j]).sum();
        x[c] = (rhs[c] - sum) / m[c * n + c];
    }
    Some(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SLIDE: i64 = 10_000;

    fn calibrator(priors: Vec<f64>) -> Calibrator {
        let mut c = Calibrator::new(CalibrationConfig {
            warmup: std::time::Duration::ZERO,
            ..Default::default()
        });
        c.set_priors(priors);
        c
    }

    /// A zone of 1,500 m² whose crowd is `people`, sampled by sources whose true people per
    /// device are `truth`, mixed in shares `mix` (devices d_s = people × mix_s / truth_s).
    fn zone(people: f64, truth: &[f64], mix: &[f64]) -> Evidence {
        Evidence {
            segment: "square".into(),
            count: people.round(),
            devices: truth.iter().zip(mix).map(|(t, m)| people * m / t).collect(),
            area_m2: 1500.0,
            capacity: Some(3000.0),
            age_s: 0.0,
        }
    }

    fn close(a: f64, b: f64, rel: f64) -> bool {
        (a / b - 1.0).abs() <= rel
    }

    #[test]
    fn converges_to_the_true_share_within_two_windows() {
        // Configured 1.25 (an 80 % panel); the panel really covers 62.5 %: 1.6 people per device.
        let mut c = calibrator(vec![1.0, 1.0, 1.25]);
        for w in 1..=2 {
            c.update(w * SLIDE, &[zone(2000.0, &[1.0, 1.0, 1.6], &[0.0, 0.0, 1.0])]);
        }
        let e = &c.estimates()[2];
        assert!(close(e.people_per_device, 1.6, 0.01), "{e:?}");
        assert_eq!(e.status, Status::Calibrated);
        assert!(e.confidence > 0.8, "{e:?}");
        // Counter and gate sources have no devices: they keep their factor.
        assert_eq!(c.factors()[0], 1.0);
    }

    #[test]
    fn tracks_a_share_that_drifts_by_thirty_percent_over_an_hour() {
        let mut c = calibrator(vec![1.0, 1.0, 1.25]);
        let windows = 360; // an hour of 10 s slides
        let mut worst: f64 = 0.0;
        for w in 0..=windows {
            let truth = 1.25 * (1.0 + 0.3 * w as f64 / windows as f64);
            let crowd = 1500.0 + 500.0 * ((w as f64) / 40.0).sin();
            c.update(w * SLIDE, &[zone(crowd, &[1.0, 1.0, truth], &[0.0, 0.0, 1.0])]);
            if w > 30 {
                worst = worst.max((c.factors()[2] / truth - 1.0).abs());
            }
        }
        // The lag of a 5-minute memory behind a 30 %/hour drift: about 2.5 %.
        assert!(worst < 0.04, "worst lag {worst}");
        assert!(close(c.factors()[2], 1.625, 0.03), "{}", c.factors()[2]);
    }

    #[test]
    fn two_sources_mixed_alike_share_the_correction_and_get_the_total_right() {
        // One 30 % too high, one 30 % too low: one zone cannot tell them apart, only their sum.
        let mut c = calibrator(vec![1.0, 1.0, 1.25, 1.25]);
        let truth = [1.0, 1.0, 1.25 / 1.3, 1.25 / 0.7];
        let mix = [0.0, 0.0, 0.5 / 0.8, 0.3 / 0.8];
        for w in 1..=10 {
            c.update(w * SLIDE, &[zone(2000.0, &truth, &mix)]);
        }
        let z = zone(2000.0, &truth, &mix);
        let est: f64 = z.devices.iter().zip(c.factors()).map(|(d, k)| d * k).sum();
        assert!(close(est, 2000.0, 0.005), "estimate {est}");
    }

    #[test]
    fn two_zones_with_different_mixes_separate_the_sources() {
        let mut c = calibrator(vec![1.0, 1.0, 1.25, 1.25]);
        let truth = [1.0, 1.0, 1.0, 2.0];
        for w in 1..=5 {
            let mut a = zone(2000.0, &truth, &[0.0, 0.0, 0.8, 0.2]);
            let mut b = zone(1500.0, &truth, &[0.0, 0.0, 0.2, 0.8]);
            a.segment = "a".into();
            b.segment = "b".into();
            c.update(w * SLIDE, &[a, b]);
        }
        // The pull towards a common correction costs a little of the separation.
        assert!(
            close(c.factors()[2], 1.0, 0.06) && close(c.factors()[3], 2.0, 0.06),
            "{:?}",
            c.factors()
        );
        assert!(c.factors()[3] / c.factors()[2] > 1.8, "{:?}", c.factors());
    }

    #[test]
    fn a_growing_crowd_seen_through_old_positions_is_not_taken_for_a_thinner_panel() {
        // The square fills by 30 people a minute; the phones placed there speak every few
        // minutes, so they show the crowd of two minutes ago. Against the count at the window's
        // end the panel would look 15 % thinner than it is.
        let mut c = calibrator(vec![1.0, 1.0, 1.25]);
        for w in 1..=60 {
            let t = w * SLIDE;
            let people_now = 400.0 + 30.0 * t as f64 / 60_000.0;
            let people_then = people_now - 60.0;
            let mut z = zone(people_then, &[1.0, 1.0, 1.25], &[0.0, 0.0, 1.0]);
            z.count = people_now.round();
            z.age_s = 120.0;
            c.update(t, &[z]);
        }
        assert!(close(c.factors()[2], 1.25, 0.02), "{}", c.factors()[2]);
    }

    #[test]
    fn falls_back_to_the_prior_when_the_counters_go_silent() {
        let mut c = calibrator(vec![1.0, 1.0, 1.25]);
        let mut t = 0;
        for _ in 0..10 {
            t += SLIDE;
            c.update(t, &[zone(2000.0, &[1.0, 1.0, 1.6], &[0.0, 0.0, 1.0])]);
        }
        assert!(close(c.factors()[2], 1.6, 0.01));
        // Silent: the learnt factor holds for `hold` (15 min), then the configured one returns.
        for _ in 0..89 {
            t += SLIDE;
            c.update(t, &[]);
        }
        assert!(close(c.factors()[2], 1.6, 0.01), "still holding at 14 min 50 s");
        assert_eq!(c.estimates()[2].status, Status::Holding);
        for _ in 0..2 {
            t += SLIDE;
            c.update(t, &[]);
        }
        assert_eq!(c.factors()[2], 1.25);
        assert_eq!(c.estimates()[2].status, Status::Prior);
    }

    #[test]
    fn a_stuck_register_is_ignored_once_the_crowd_moves_past_it() {
        let mut c = calibrator(vec![1.0, 1.0, 1.25]);
        let mut t = 0;
        for _ in 0..5 {
            t += SLIDE;
            c.update(t, &[zone(2000.0, &[1.0, 1.0, 1.6], &[0.0, 0.0, 1.0])]);
        }
        // The register sticks at 2000 while the crowd doubles: at first the counts look like a
        // panel shrinking, until it is plainly stuck.
        for k in 1..=30 {
            t += SLIDE;
            let mut z = zone(
                2000.0 * (1.0 + k as f64 / 30.0),
                &[1.0, 1.0, 1.6],
                &[0.0, 0.0, 1.0],
            );
            z.count = 2000.0;
            c.update(t, &[z]);
        }
        assert!(
            c.rejected().get(&Rejection::Stuck).copied().unwrap_or(0) >= 20,
            "{:?}",
            c.rejected()
        );
        assert!(c.note().is_some_and(|n| n.contains("stuck")), "{:?}", c.note());
        // Its early windows were forgotten: the factor is back near the truth, not dragged down.
        assert!(close(c.factors()[2], 1.6, 0.1), "{}", c.factors()[2]);
    }

    #[test]
    fn a_zone_at_ten_times_capacity_is_ignored() {
        let mut c = calibrator(vec![1.0, 1.0, 1.25]);
        for w in 1..=10 {
            let mut z = zone(2000.0, &[1.0, 1.0, 1.25], &[0.0, 0.0, 1.0]);
            z.count = 30_000.0; // 10 × the capacity, 20 p/m²
            c.update(w * SLIDE, &[z]);
        }
        assert_eq!(c.factors()[2], 1.25);
        assert_eq!(c.estimates()[2].status, Status::Prior);
        assert_eq!(c.rejected().get(&Rejection::Implausible), Some(&10));
        let mut z = zone(2000.0, &[1.0, 1.0, 1.25], &[0.0, 0.0, 1.0]);
        z.count = 6_500.0; // 4.3 p/m² but 2.2 × capacity
        c.update(11 * SLIDE, &[z]);
        assert!(c.note().is_some_and(|n| n.contains("capacity")), "{:?}", c.note());
    }

    #[test]
    fn a_count_far_from_the_phones_is_ignored_and_few_devices_are_no_evidence() {
        let mut c = calibrator(vec![1.0, 1.0, 1.25]);
        c.update(SLIDE, &[zone(2000.0, &[1.0, 1.0, 1.25 * 3.0], &[0.0, 0.0, 1.0])]);
        assert_eq!(c.rejected().get(&Rejection::Disagrees), Some(&1));
        c.update(2 * SLIDE, &[zone(20.0, &[1.0, 1.0, 2.0], &[0.0, 0.0, 1.0])]);
        assert_eq!(c.factors()[2], 1.25, "10 devices are not evidence");
    }

    #[test]
    fn no_evidence_is_taken_before_the_warmup_has_run() {
        // While the slowest phones have not spoken yet the zone looks thinly sampled (here
        // 1.8 people per device where it is 1.25): the default five minutes ignore it.
        let mut c = Calibrator::new(CalibrationConfig::default());
        c.set_priors(vec![1.0, 1.0, 1.25]);
        // (A crowd that moves a little: a count frozen while the phones change would be a stuck
        // register.)
        let crowd = |w: i64| 2000.0 + (w % 7) as f64 * 10.0;
        for w in 0..30 {
            c.update(w * SLIDE, &[zone(crowd(w), &[1.0, 1.0, 1.8], &[0.0, 0.0, 1.0])]);
        }
        assert_eq!(c.factors()[2], 1.25, "warming up");
        assert_eq!(c.estimates()[2].status, Status::Prior);
        for w in 30..40 {
            c.update(w * SLIDE, &[zone(crowd(w), &[1.0, 1.0, 1.25], &[0.0, 0.0, 1.0])]);
        }
        assert!(close(c.factors()[2], 1.25, 0.001), "{}", c.factors()[2]);
        assert_eq!(c.estimates()[2].status, Status::Calibrated);
    }

    #[test]
    fn disabled_keeps_the_configured_factors() {
        let cfg = CalibrationConfig {
            enabled: false,
            ..Default::default()
        };
        let mut c = Calibrator::new(cfg);
        c.set_priors(vec![1.0, 1.0, 1.25]);
        c.update(SLIDE, &[zone(2000.0, &[1.0, 1.0, 1.6], &[0.0, 0.0, 1.0])]);
        assert_eq!(c.factors(), &[1.0, 1.0, 1.25]);
    }

    #[test]
    fn a_restored_calibrator_gives_the_same_factors() {
        let mut c = calibrator(vec![1.0, 1.0, 1.25]);
        c.update(SLIDE, &[zone(2000.0, &[1.0, 1.0, 1.5], &[0.0, 0.0, 1.0])]);
        let json = serde_json::to_string(&c.state()).expect("serialise");
        let mut d = Calibrator::new(CalibrationConfig::default());
        d.set_priors(vec![1.0, 1.0, 1.25]);
        d.restore(serde_json::from_str(&json).expect("parse"));
        assert_eq!(c.factors(), d.factors());
    }
}
