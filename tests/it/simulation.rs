//! The simulator against the engine: its feeds, run through the same flow a server runs, give
//! segment people close to its ground truth (`throng accuracy`).

// Bounds at CI scale (6,000 people, 20 minutes, seed 4; docs/ACCURACY.md has the full-scale
// figures). The run is deterministic for a seed, so each bound is the figure measured plus about
// a fifth: a change that makes the counting worse by more fails here, one that makes it better
// should lower the bound. Issue 15's targets (every segment with ≥ 50 true people within 5 % MAPE,
// total within ±2 %) are not reached at this scale. Measured on 2026-12-07, with the scenario's
// ground (`fixtures/bund/ground.geojson`; before it, 2026-12-02, in brackets):
//
// | panel / error | median       | worst       | total         | tiers  | main streets      | steps       |
// | bund / panel  | 7.2 (6.0) %  | 24 (39) %   | −2.6 (+2.2) % | 100 %  | 4.2–4.6 (5.4–6.0) | 24 (31) %   |
// | bund / 30 m   | 10.8 (9.0) % | 41 (63) %   | −0.8 (+4.1) % | 100 %  | 2.6–5.0 (4.6–9.0) | 29 (30) %   |
// | sparse / panel| 18.0 (16.9) %| 40 (49) %   | −4.5 (−1.5) % | 97.6 % | 16–21 (15–17) %   | 40 (49) %   |
// | sparse / 30 m | 20.2 (16.2) %| 56 (69) %   | −3.4 (−0.4) % | 98.1 % | 16–20 (14–16) %   | 56 (69) %   |
//
// With the prior tempered by each ping's error (stop 47, later on 2026-12-07; `lbs.prior_scale_m` = 4 m):
//
// | panel / error | median | worst | total  | tiers  | main streets | steps |
// | bund / panel  | 7.3 %  | 19 %  | −2.0 % | 100 %  | 3.8–4.6 %    | 13 %  |
// | bund / 30 m   | 10.4 % | 40 %  | −0.5 % | 100 %  | 2.6–4.9 %    | 28 %  |
// | sparse / panel| 18.5 % | 38 %  | −3.9 % | 97.6 % | 16–21 %      | 27 %  |
// | sparse / 30 m | 20.1 % | 47 %  | −3.3 % | 98.2 % | 16–20 %      | 47 %  |
//
// With a walk carried only as far as a walker keeps its heading (stop 48, 10 m; L 6 m):
//
// | panel / error | median | worst | total  | tiers  | main streets | steps |
// | bund / panel  | 5.5 %  | 19 %  | −0.9 % | 100 %  | 5.1 %        | 19 %  |
// | bund / 30 m   | 9.6 %  | 39 %  | +0.0 % | 100 %  | 4.2–4.9 %    | 29 %  |
// | sparse / panel| 20.4 % | 38 %  | −3.4 % | 97.5 % | 17–21 %      | 31 %  |
// | sparse / 30 m | 21.1 % | 45 %  | −3.1 % | 98.1 % | 16–21 %      | 44 %  |
//
// The ground takes the walkers crossing junctions out of the streets beside them (the truth puts
// them on no segment): the worst segment and the steps improve, while at this small scale the
// sparse panel's streets, which those walkers' stale pings had propped up, read lower.
//
// Cell shares (the design positions replaced) read the steps 77 % low and the total −13 %.

/// Per panel mix: (median MAPE, worst segment MAPE, each main street's MAPE, the steps' MAPE).
const BOUNDS: [(&str, Bounds); 2] = [
    (
        "bund",
        Bounds {
            median: 0.12,
            worst: 0.49,
            street: 0.06,
            steps: 0.33,
        },
    ),
    (
        "sparse",
        Bounds {
            median: 0.24,
            worst: 0.56,
            street: 0.25,
            steps: 0.56,
        },
    ),
];
const TOTAL_BOUND: f64 = 0.055;
const TIER_BOUND: f64 = 0.95;

struct Bounds {
    median: f64,
    worst: f64,
    street: f64,
    steps: f64,
}

/// Where the crowd stands rather than walks through, the estimate is close.
const STOCK_BOUND: f64 = 0.08;
const STOCK: [&str; 2] = ["chenyi-square", "bund-promenade"];
/// East Nanjing Road, the two blocks that carry the most people.
const STREETS: [&str; 2] = ["enr-xizang-henan", "enr-henan-bund"];
/// The 2014 crush site.
const STEPS: &str = "chenyi-steps";

/// `throng accuracy --json` at CI scale (6,000 people, 20 minutes, seed 4) for these panels and
/// error models. Calibration is off: at this scale one zone of ~300 people learns the people per
/// device only within ±7 % (docs/ACCURACY.md), which would blur the placement of positions on
/// segments these tests guard; calibration has its own test (it::calibration).
fn accuracy_at_ci_scale(panels: &str, errors: &str) -> String {
    let o = crate::support::throng(&[
        "accuracy",
        "--people",
        "6000",
        "--duration",
        "1200",
        "--seeds",
        "4",
        "--panels",
        panels,
        "--errors",
        errors,
        "--no-calibration",
        "--json",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8(o.stdout).unwrap()
}

/// `throng accuracy` at CI scale: two panel mixes, the panels' own error and 30 m scatter, one
/// seed, with the bounds above asserted.
#[test]
fn throng_accuracy_scores_the_engine_within_its_bounds() {
    let text = accuracy_at_ci_scale("bund,sparse", "panel,30");
    let scores: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(scores.len(), 4, "{text}");
    for s in &scores {
        let name = format!("{} / {}", s["panel"], s["error"]);
        let f = |k: &str| s[k].as_f64().unwrap();
        eprintln!(
            "{name}: median MAPE {:.1} %, worst {:.1} %, total {:+.1} %, tiers {:.1} %",
            f("median_mape") * 100.0,
            f("max_mape") * 100.0,
            f("total_error") * 100.0,
            f("tier_agreement") * 100.0
        );
        let b = &BOUNDS
            .iter()
            .find(|(p, _)| s["panel"] == *p)
            .unwrap_or_else(|| panic!("no bounds for {name}"))
            .1;
        assert!(f("median_mape") < b.median, "{name}: {s}");
        assert!(f("max_mape") < b.worst, "{name}: {s}");
        assert!(f("total_error").abs() < TOTAL_BOUND, "{name}: {s}");
        assert!(f("tier_agreement") > TIER_BOUND, "{name}: {s}");
        let segs = s["segments"].as_array().unwrap();
        let mape = |id: &str| {
            segs.iter()
                .find(|g| g["segment_id"] == id)
                .and_then(|g| g["mape"].as_f64())
                .unwrap_or_else(|| panic!("{name}: no score for {id}: {s}"))
        };
        for id in STOCK {
            assert!(
                mape(id) < STOCK_BOUND,
                "{name}: {id} MAPE {:.1} %",
                mape(id) * 100.0
            );
        }
        for id in STREETS {
            assert!(mape(id) < b.street, "{name}: {id} MAPE {:.1} %", mape(id) * 100.0);
        }
        assert!(
            mape(STEPS) < b.steps,
            "{name}: {STEPS} MAPE {:.1} %",
            mape(STEPS) * 100.0
        );
        assert!(s["segment_windows"].as_u64().unwrap() > 500);
    }
}

/// With precise pings at the Bund panel's rhythms (1 m error, carrier-a every 20–90 s), a walker
/// is carried to the window's end only as far as people keep a heading. Carried straight for a
/// whole ping interval, the walkers crossing Chen Yi square towards the steps were left on the
/// square and those on the steps carried past their top: seed 4 read the steps 45 % low (median
/// 6.8 %, worst 45 %); with the 10 m heading 24 % low (median 6.1 %, worst 24 %). What is left is
/// lag (docs/ACCURACY.md, "The projection keeps a heading only so far").
#[test]
fn with_precise_pings_walkers_reaching_the_steps_are_not_carried_past_them() {
    let text = accuracy_at_ci_scale("bund", "1");
    let s: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let steps = s["segments"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["segment_id"] == STEPS)
        .unwrap_or_else(|| panic!("no score for the steps: {s}"));
    let bias = steps["bias"].as_f64().unwrap();
    assert!(
        bias > -0.32,
        "the steps read {:.1} % with 1 m error: {s}",
        bias * 100.0
    );
    assert!(s["max_mape"].as_f64().unwrap() < 0.3, "{s}");
    assert!(s["total_error"].as_f64().unwrap().abs() < 0.03, "{s}");
}

/// With perfect data (`--panels oracle`: everyone carries a phone pinging every 2–4 s with 1 m
/// error) what error is left is the method's own: matching, prior, presence, projection. Seed 4
/// measured on 2026-12-07: median 0.9 %, total −0.1 %, every segment ≤ 3.7 % (the steps; 7.0 %
/// before the prior was tempered by the ping's error, when a precise ping beside the steps went
/// to them for their density alone); 14 devices off the network (docs/ACCURACY.md).
#[test]
fn with_perfect_data_the_method_counts_every_segment_within_a_few_percent() {
    let text = accuracy_at_ci_scale("oracle", "panel");
    let s: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    let f = |k: &str| s[k].as_f64().unwrap();
    assert!(f("median_mape") < 0.015, "{s}");
    assert!(f("total_error").abs() < 0.015, "{s}");
    assert!(f("tier_agreement") > 0.99, "{s}");
    // Every phone is on the network here (14 off it at seed 4). Carried a full minute past where
    // they fell silent (into the metro, off the map), 4,128 were.
    assert!(f("off_network_devices") < 100.0, "{s}");
    let mut scored = 0;
    for g in s["segments"].as_array().unwrap() {
        let Some(m) = g["mape"].as_f64() else { continue };
        scored += 1;
        let id = g["segment_id"].as_str().unwrap();
        // The bound, on every segment, the small packed ones included.
        assert!(m < 0.05, "{id}: MAPE {:.1} % with perfect data", m * 100.0);
    }
    assert!(scored >= 12, "too few segments scored: {s}");
    // Ground is reported per feature (seed 4: Henan Road junction 135 / 138, Zhongshan Road at
    // Jiujiang Road 117 / 121 a window), the features summing to the night's ground total. With
    // perfect data the wide ones read their walkers; the narrow kerbs (7 people) are noise.
    let ground = s["ground"].as_array().unwrap();
    assert_eq!(
        ground.len(),
        9,
        "one score per feature of fixtures/bund/ground.geojson: {s}"
    );
    let sum: f64 = ground.iter().map(|g| g["estimate"].as_f64().unwrap()).sum();
    assert!(
        (sum - s["ground_people"][0].as_f64().unwrap()).abs() < 1e-6,
        "{s}"
    );
    let mut wide = 0;
    for g in ground {
        let (e, t) = (g["estimate"].as_f64().unwrap(), g["truth"].as_f64().unwrap());
        if t >= 100.0 {
            wide += 1;
            assert!(
                (e / t - 1.0).abs() < 0.1,
                "{}: {e:.0} of {t:.0} people",
                g["ground_id"]
            );
        }
    }
    assert!(wide >= 2, "{s}");
}

#[test]
fn simulate_cli_writes_feeds_and_truth_deterministically() {
    let dir = tempfile::tempdir().unwrap();
    let run = |name: &str| {
        let out = dir.path().join(format!("{name}.ndjson"));
        let truth = dir.path().join(format!("{name}-truth.ndjson"));
        let o = crate::support::throng(&[
            "simulate",
            "--devices",
            "500",
            "--duration",
            "300",
            "--seed",
            "5",
            "--start",
            "2025-12-31T23:00:00+08:00",
            "--out",
            out.to_str().unwrap(),
            "--truth",
            truth.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        (
            std::fs::read(out).unwrap(),
            std::fs::read_to_string(truth).unwrap(),
        )
    };
    let (a, ta) = run("a");
    let (b, tb) = run("b");
    assert_eq!(a, b, "same seed, same feeds");
    assert_eq!(ta, tb);
    let first: serde_json::Value = serde_json::from_str(ta.lines().next().unwrap()).unwrap();
    assert!(first["segment_id"].is_string() && first["people"].is_u64());
}
