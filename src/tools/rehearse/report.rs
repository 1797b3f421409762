//! A rehearsal's outputs: `summary.json` for programs and `report.html` for people — one file
//! with its charts drawn as inline SVG by this program, so it opens with no internet and no
//! library to vendor.

use std::fmt::Write as _;

use serde_json::json;

use super::{rank, NightRun, SegmentSummary, WhatIf, TIERS};
use crate::risk::Shown;
use crate::tools::rehearse::Night;

/// Everything a report is made of.
#[derive(Debug)]
pub struct Rehearsal<'a> {
    /// Scenario folder (as given).
    pub scenario: String,
    /// The night.
    pub night: Night,
    /// Seed.
    pub seed: u64,
    /// What made it ("throng 0.1.0 (commit …)").
    pub generated_by: String,
    /// Evaluation slide, ms.
    pub slide_ms: i64,
    /// The baseline night.
    pub base: &'a NightRun,
    /// Its summary.
    pub base_summary: &'a [SegmentSummary],
    /// The what-if night, its summary and the what-if.
    pub other: Option<(&'a NightRun, &'a [SegmentSummary], &'a WhatIf)>,
}

/// A segment whose night the what-if changes: a higher tier, or a tier reached earlier.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Difference {
    /// Segment id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Highest tier in the baseline.
    pub baseline_tier: &'static str,
    /// Highest tier with the what-if.
    pub what_if_tier: &'static str,
    /// When high was first reached in the baseline (local "HH:MM").
    pub baseline_first_high: Option<String>,
    /// The same with the what-if.
    pub what_if_first_high: Option<String>,
    /// Peak density in the baseline.
    pub baseline_peak_density: f64,
    /// Peak density with the what-if.
    pub what_if_peak_density: f64,
}

/// Segments the what-if changes, worst first: those reaching a higher tier, then those reaching
/// high or critical earlier, then a peak density 10 % apart.
pub fn differences(base: &[SegmentSummary], other: &[SegmentSummary]) -> Vec<Difference> {
    let mut out: Vec<(u8, Difference)> = Vec::new();
    for (b, o) in base.iter().zip(other) {
        let (rb, ro) = (rank(b.highest_tier), rank(o.highest_tier));
        let earlier = |t: &str| match (b.first[t], o.first[t]) {
            (Some(x), Some(y)) => y < x,
            (None, Some(_)) => true,
            _ => false,
        };
        let peak_moved = (o.peak_density - b.peak_density).abs() > 0.1 * b.peak_density.max(0.1);
        if ro != rb || earlier("high") || earlier("critical") || peak_moved {
            out.push((
                ro.saturating_sub(rb) * 10 + ro,
                Difference {
                    id: b.id.clone(),
                    name: b.name.clone(),
                    baseline_tier: b.highest_tier.as_str(),
                    what_if_tier: o.highest_tier.as_str(),
                    baseline_first_high: b.first_local["high"].clone(),
                    what_if_first_high: o.first_local["high"].clone(),
                    baseline_peak_density: b.peak_density,
                    what_if_peak_density: o.peak_density,
                },
            ));
        }
    }
    out.sort_by(|a, b| {
        b.0.cmp(&a.0)
            .then(b.1.what_if_peak_density.total_cmp(&a.1.what_if_peak_density))
    });
    out.into_iter().map(|x| x.1).collect()
}

/// The night's highest density anywhere: (segment, density, window end).
fn overall_peak(s: &[SegmentSummary]) -> serde_json::Value {
    s.iter()
        .max_by(|a, b| a.peak_density.total_cmp(&b.peak_density))
        .map_or(serde_json::Value::Null, |p| {
            json!({"segment_id": p.id, "name": p.name, "density": p.peak_density, "people": p.peak_people, "at": p.peak_at, "at_local": p.peak_at_local})
        })
}

fn run_json(run: &NightRun, s: &[SegmentSummary]) -> serde_json::Value {
    json!({
        "label": run.label,
        "people": run.people,
        "windows": run.ends.len(),
        "alerts": run.alerts.len(),
        "peak": overall_peak(s),
        "segments": s,
    })
}

/// `summary.json`.
pub fn summary(r: &Rehearsal<'_>) -> serde_json::Value {
    let end = r.night.start_ms + (r.night.duration_s * 1000.0) as i64;
    json!({
        "scenario": r.scenario,
        "time_zone": r.night.tz.name(),
        "night": {"start": r.night.start_ms, "end": end, "start_local": r.night.clock(r.night.start_ms), "end_local": r.night.clock(end)},
        "seed": r.seed,
        "generated_by": r.generated_by,
        "baseline": run_json(r.base, r.base_summary),
        "what_if": r.other.map(|(_, _, w)| serde_json::to_value(w).unwrap_or_default()),
        "what_if_run": r.other.map(|(run, s, _)| run_json(run, s)),
        "differences": r.other.map(|(_, s, _)| differences(r.base_summary, s)),
    })
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

const TIER_COLOUR: [(&str, &str); 4] = [
    ("low", "#2e9e5b"),
    ("medium", "#e3b505"),
    ("high", "#e8590c"),
    ("critical", "#c92a2a"),
];

fn colour(tier: &str) -> &'static str {
    TIER_COLOUR
        .iter()
        .find(|c| c.0 == tier)
        .map_or("#868e96", |c| c.1)
}

/// One segment's density over the night against its thresholds: the baseline (grey when a
/// what-if is drawn over it) and the what-if (orange), local-time ticks every 15 minutes.
fn chart(r: &Rehearsal<'_>, i: usize) -> String {
    let (w, h, left, right, top, bottom) = (660.0, 210.0, 84.0, 70.0, 20.0, 24.0);
    let base = &r.base.tracks[i];
    let other = r.other.map(|(run, _, _)| (&run.tracks[i], &run.ends));
    let th = base.thresholds.density;
    let peak = base
        .density
        .iter()
        .chain(other.iter().flat_map(|(t, _)| t.density.iter()))
        .fold(0.0f64, |a, b| a.max(*b));
    let ymax = (peak.max(th.high) * 1.15).max(0.5);
    let (t0, t1) = (
        r.night.start_ms as f64,
        r.night.start_ms as f64 + r.night.duration_s * 1000.0,
    );
    let x = |ms: f64| left + (ms - t0) / (t1 - t0) * (w - left - right);
    let y = |d: f64| top + (1.0 - (d / ymax).min(1.02)) * (h - top - bottom);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg class="chart" data-segment="{}" viewBox="0 0 {w} {h}" width="100%" role="img" aria-label="density and people over the night">"#,
        esc(&base.id)
    );
    let _ = write!(
        s,
        r##"<rect x="{left}" y="{top}" width="{}" height="{}" fill="#11191f"/>"##,
        w - left - right,
        h - top - bottom
    );
    // Threshold lines, labelled on the right; one above the chart is named at its top edge.
    for (name, level) in [
        ("medium", th.medium),
        ("high", th.high),
        ("critical", th.critical),
    ] {
        let above = level > ymax;
        let yy = if above { top + 6.0 } else { y(level) };
        if !above {
            let _ = write!(
                s,
                r#"<line x1="{left}" x2="{}" y1="{yy:.1}" y2="{yy:.1}" stroke="{}" stroke-dasharray="5 4" stroke-width="1.2"/>"#,
                w - right,
                colour(name)
            );
        }
        let _ = write!(
            s,
            r#"<text x="{}" y="{:.1}" fill="{}" font-size="11">{name} {level}{}</text>"#,
            w - right + 4.0,
            yy + 4.0,
            colour(name),
            if above { " ↑" } else { "" }
        );
    }
    // Axes: density and the people it means on this segment, local-time ticks every 15 min.
    let _ = write!(
        s,
        r##"<text x="{}" y="{}" fill="#8c99a6" font-size="9" text-anchor="end">p/m² · people</text>"##,
        left - 4.0,
        top - 10.0
    );
    for k in 0..=4 {
        let d = ymax * k as f64 / 4.0;
        let _ = write!(
            s,
            r##"<text x="{}" y="{:.1}" fill="#8c99a6" font-size="10" text-anchor="end">{d:.1} · {:.0}</text>"##,
            left - 4.0,
            y(d) + 3.0,
            d * base.area_m2
        );
    }
    let quarter = 900_000i64;
    let mut tick = (r.night.start_ms + quarter - 1).div_euclid(quarter) * quarter;
    while (tick as f64) <= t1 {
        let xx = x(tick as f64);
        let _ = write!(
            s,
            r##"<line x1="{xx:.1}" x2="{xx:.1}" y1="{top}" y2="{}" stroke="#25313a"/><text x="{xx:.1}" y="{}" fill="#8c99a6" font-size="10" text-anchor="middle">{}</text>"##,
            h - bottom,
            h - 8.0,
            r.night.clock(tick)
        );
        tick += quarter;
    }
    let line = |ends: &[i64], d: &[f64], stroke: &str, dash: &str, class: &str| {
        let pts: Vec<String> = ends
            .iter()
            .zip(d)
            .map(|(e, v)| format!("{:.1},{:.1}", x(*e as f64), y(*v)))
            .collect();
        format!(
            r#"<polyline class="{class}" fill="none" stroke="{stroke}" stroke-width="1.8" {dash} points="{}"/>"#,
            pts.join(" ")
        )
    };
    match other {
        Some((t, ends)) => {
            s.push_str(&line(
                &r.base.ends,
                &base.density,
                "#8c99a6",
                r#"stroke-dasharray="3 3""#,
                "baseline",
            ));
            s.push_str(&line(ends, &t.density, "#ff922b", "", "what-if"));
        }
        None => s.push_str(&line(&r.base.ends, &base.density, "#4dabf7", "", "baseline")),
    }
    s.push_str("</svg>");
    s
}

fn first_cell(s: &SegmentSummary, tier: Shown) -> String {
    s.first_local[tier.as_str()].clone().unwrap_or_else(|| "—".into())
}

fn tier_badge(t: &str) -> String {
    format!(
        r#"<span class="tier" style="background:{}">{t}</span>"#,
        colour(t)
    )
}

/// `report.html`.
pub fn html(r: &Rehearsal<'_>) -> String {
    let end = r.night.start_ms + (r.night.duration_s * 1000.0) as i64;
    let title = match r.other {
        Some((_, _, w)) => format!("Rehearsal: {}", w.title()),
        None => "Rehearsal: the night as planned".into(),
    };
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<!doctype html><html lang="zh-CN"><head><meta charset="utf-8"><title>{t}</title><style>
body{{margin:0;padding:1em 2em;background:#0f1418;color:#e9ecef;font:14px/1.45 system-ui,"Noto Sans CJK SC","WenQuanYi Micro Hei",sans-serif}}
h1{{font-size:1.4em;margin:.2em 0}} h2{{font-size:1.1em;margin:1.2em 0 .4em;color:#adb5bd}}
table{{border-collapse:collapse;font-variant-numeric:tabular-nums}} td,th{{padding:.25em .6em;text-align:right;border-bottom:1px solid #25313a}}
td:first-child,th:first-child{{text-align:left}} .tier{{padding:0 .45em;border-radius:.3em;color:#000;font-weight:600}}
.grid{{display:grid;grid-template-columns:repeat(auto-fill,minmax(640px,1fr));gap:.8em}} .card{{background:#172026;border-radius:6px;padding:.5em .8em}}
.card h3{{font-size:.95em;margin:.2em 0}} .muted{{color:#8c99a6}} .key span{{display:inline-block;width:2em;height:.25em;vertical-align:middle;margin:0 .4em 0 1em}}
</style></head><body>
<h1>{t}</h1>
<p class="muted">{scen} · night {a}–{b} ({tz}) · baseline {people} people{other} · seed {seed} · windows every {slide} s · {ver}</p>"#,
        t = esc(&title),
        scen = esc(&r.scenario),
        a = r.night.clock(r.night.start_ms),
        b = r.night.clock(end),
        tz = r.night.tz.name(),
        people = r.base.people,
        other = r.other.map_or(String::new(), |(run, _, _)| format!(
            ", what-if {} people",
            run.people
        )),
        seed = r.seed,
        slide = r.slide_ms / 1000,
        ver = esc(&r.generated_by),
    );
    if let Some((_, so, w)) = r.other {
        s.push_str("<h2>What changes 变化</h2><ul id=\"changes\">");
        if let Some(f) = w.crowd.people_factor {
            let _ = write!(s, "<li>crowd × {f}</li>");
        }
        if let Some(a) = w.crowd.arrival_shape {
            let _ = write!(
                s,
                "<li>arrival curve shape {a} (baseline 0.7; lower is a later, steeper rush)</li>"
            );
        }
        for c in &w.close {
            let what = c
                .exit
                .as_deref()
                .map(|e| format!("metro exit {e}"))
                .or(c.segment.as_ref().map(|x| format!("segment {x}")));
            let _ = write!(
                s,
                "<li>close {} from {}</li>",
                esc(&what.unwrap_or_default()),
                esc(c.at.as_deref().unwrap_or("the start"))
            );
        }
        for c in &w.capacity {
            let _ = write!(
                s,
                "<li>capacity of {} set to {}</li>",
                esc(&c.segment),
                c.capacity
            );
        }
        s.push_str("</ul><h2>Segments the what-if changes 受影响路段</h2>");
        let diffs = differences(r.base_summary, so);
        if diffs.is_empty() {
            s.push_str("<p id=\"no-differences\">No segment reaches a different tier, reaches high earlier, or peaks 10 % apart.</p>");
        } else {
            s.push_str("<table id=\"differences\"><thead><tr><th>segment</th><th>baseline tier</th><th>what-if tier</th><th>high first (baseline)</th><th>high first (what-if)</th><th>peak p/m² (baseline → what-if)</th></tr></thead><tbody>");
            for d in &diffs {
                let _ = write!(
                    s,
                    r#"<tr data-segment="{}"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class="first-high">{}</td><td>{:.2} → {:.2}</td></tr>"#,
                    esc(&d.id),
                    esc(&d.name),
                    tier_badge(d.baseline_tier),
                    tier_badge(d.what_if_tier),
                    d.baseline_first_high.as_deref().unwrap_or("—"),
                    d.what_if_first_high.as_deref().unwrap_or("—"),
                    d.baseline_peak_density,
                    d.what_if_peak_density
                );
            }
            s.push_str("</tbody></table>");
        }
    }
    // Per segment: when each tier is first reached, the peak and where it happens.
    let runs: Vec<(&str, &[SegmentSummary])> = std::iter::once(("baseline", r.base_summary))
        .chain(r.other.map(|(_, so, _)| ("what-if", so)))
        .collect();
    for (label, sums) in &runs {
        let peak = sums
            .iter()
            .max_by(|a, b| a.peak_density.total_cmp(&b.peak_density));
        let _ = write!(s, "<h2>{label}: per segment 各路段</h2>");
        if let Some(p) = peak {
            let _ = write!(
                s,
                r#"<p class="peak" data-run="{label}">Peak: <b>{:.2} p/m²</b> on {} at {} ({} people).</p>"#,
                p.peak_density,
                esc(&p.name),
                p.peak_at_local.as_deref().unwrap_or("—"),
                p.peak_people
            );
        }
        let _ = write!(
            s,
            r#"<table class="segments" data-run="{label}"><thead><tr><th>segment</th><th>highest</th><th>medium from</th><th>high from</th><th>critical from</th><th>min ≥ high</th><th>peak people</th><th>peak p/m²</th><th>at</th></tr></thead><tbody>"#
        );
        let mut order: Vec<&SegmentSummary> = sums.iter().collect();
        order.sort_by(|a, b| {
            rank(b.highest_tier)
                .cmp(&rank(a.highest_tier))
                .then(b.peak_density.total_cmp(&a.peak_density))
        });
        for x in order {
            let _ = write!(
                s,
                r#"<tr data-segment="{}"><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.0}</td><td>{:.0}</td><td>{:.2}</td><td>{}</td></tr>"#,
                esc(&x.id),
                esc(&x.name),
                tier_badge(x.highest_tier.as_str()),
                first_cell(x, TIERS[0]),
                first_cell(x, TIERS[1]),
                first_cell(x, TIERS[2]),
                x.minutes_high_or_above,
                x.peak_people,
                x.peak_density,
                x.peak_at_local.as_deref().unwrap_or("—"),
            );
        }
        s.push_str("</tbody></table>");
    }
    s.push_str("<h2>Density over the night 密度 (p/m²)</h2><p class=\"key muted\">");
    if r.other.is_some() {
        s.push_str(r#"<span style="background:#8c99a6"></span>baseline<span style="background:#ff922b"></span>what-if"#);
    } else {
        s.push_str(r#"<span style="background:#4dabf7"></span>the night as planned"#);
    }
    s.push_str(" · dashed: the segment's density thresholds</p><div class=\"grid\">");
    let mut order: Vec<usize> = (0..r.base.tracks.len()).collect();
    let worst = |i: usize| {
        let o = r.other.map_or(0, |(_, so, _)| rank(so[i].highest_tier));
        o.max(rank(r.base_summary[i].highest_tier))
    };
    order.sort_by_key(|&i| std::cmp::Reverse(worst(i)));
    for i in order {
        let t = &r.base.tracks[i];
        let _ = write!(
            s,
            r#"<div class="card"><h3>{} <span class="muted">{} · {:.0} m²</span></h3>{}"#,
            esc(&t.name),
            esc(&t.id),
            t.area_m2,
            chart(r, i)
        );
        // Density is one trigger of several (flow, share of capacity, time to high): say which.
        for (label, sums) in &runs {
            let x = &sums[i];
            let why: Vec<String> = TIERS
                .iter()
                .filter_map(|tier| {
                    let at = x.first_local[tier.as_str()].as_deref()?;
                    let reason = x.first_reason[tier.as_str()].as_deref().unwrap_or("");
                    Some(format!("{} {at} ({})", tier.as_str(), esc(reason)))
                })
                .collect();
            if !why.is_empty() {
                let _ = write!(
                    s,
                    r#"<div class="why muted" data-run="{label}">{label}: {}</div>"#,
                    why.join(" · ")
                );
            }
        }
        s.push_str("</div>");
    }
    s.push_str("</div><p class=\"muted\">People are the engine's estimates from the simulated feeds (phones, counters, gates), as the command centre would see them; `summary.json` beside this file holds the same numbers.</p></body></html>\n");
    s
}
