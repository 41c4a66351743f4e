//! Live windows on the lent H200, replayed through the edge rule.
//!
//! The fixtures (`fixtures/h200-live-windows.json` and a later run's `h100-live-windows.json`, made by `tests/gpu/energy_reference.py
//! --fixture` from a validation run, docs/validation/h200.md) holds, for each measured
//! window of a live campaign, its edges and the quiet spans the harness held beside
//! them, and the energy counter as a second process read it back to back near those
//! edges, with that process's reference energy for the window (computed by the Python
//! script, independently of this crate: the counter's exact energy between its updates
//! around the window, less the quiet power over the short spans to the edges).
//!
//! Replayed here: the reads the worker takes (back to back over the quiet spans only)
//! go through [`window_energy_in`] and are judged against that reference and against
//! the raw counter delta a reader at each edge would see (the fixture's `raw_j`).

use lem_common::energy::{
    window_energy, window_energy_in, CounterSample, EdgeRule, PowerSample, Quiet, Window,
};

struct Fixture {
    reads: Vec<CounterSample>,
    power: Vec<PowerSample>,
    windows: Vec<LiveWindow>,
}

struct LiveWindow {
    id: String,
    window: Window,
    reference_j: f64,
    raw_j: f64,
    /// The reference's quiet power beside the window (W): its resident idle there.
    reference_quiet_w: f64,
}

fn load() -> Fixture {
    load_named("h200-live-windows.json")
}

/// A fixture of `tests/fixtures/` by name: `h200-live-windows.json` (the H200 run the
/// rule was developed on) or `h100-live-windows.json` (a later run of the same study
/// on an H100, 2026-12-07, after the worker was rebuilt: windows the rule never saw).
fn load_named(name: &str) -> Fixture {
    let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).expect("fixture");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let pair = |x: &serde_json::Value| (x[0].as_u64().unwrap(), x[1].clone());
    let reads = v["reads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            let (t, mj) = pair(x);
            CounterSample {
                t_mono_ns: t,
                energy_mj: mj.as_u64().unwrap(),
            }
        })
        .collect();
    let power = v["power"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| {
            let (t, w) = pair(x);
            PowerSample {
                t_mono_ns: t,
                power_w: w.as_f64().unwrap(),
            }
        })
        .collect();
    let span = |x: &serde_json::Value| Quiet {
        from_ns: x[0].as_u64().unwrap(),
        to_ns: x[1].as_u64().unwrap(),
    };
    let windows = v["windows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| LiveWindow {
            id: w["id"].as_str().unwrap().to_string(),
            window: Window {
                t0: w["t0_ns"].as_u64().unwrap(),
                t1: w["t1_ns"].as_u64().unwrap(),
                quiet_before: Some(span(&w["quiet_before_ns"])),
                quiet_after: Some(span(&w["quiet_after_ns"])),
            },
            reference_j: w["reference_j"].as_f64().unwrap(),
            raw_j: w["raw_j"].as_f64().unwrap(),
            reference_quiet_w: w["reference_quiet_w"].as_f64().unwrap(),
        })
        .collect();
    Fixture {
        reads,
        power,
        windows,
    }
}

/// The reads the worker takes: back to back over each quiet span, nothing inside.
fn worker_reads(fx: &Fixture, w: &Window) -> Vec<CounterSample> {
    every_nth_read(fx, w, 1)
}

/// Every `n`th of those reads: a worker whose reads are `n` times slower (NVML
/// serialises calls, so other readers of the GPU slow the worker's).
fn every_nth_read(fx: &Fixture, w: &Window, n: usize) -> Vec<CounterSample> {
    let spans = [w.quiet_before.unwrap(), w.quiet_after.unwrap()];
    fx.reads
        .iter()
        .filter(|c| {
            spans
                .iter()
                .any(|q| c.t_mono_ns >= q.from_ns && c.t_mono_ns <= q.to_ns)
        })
        .copied()
        .step_by(n)
        .collect()
}

fn pct(x: f64, r: f64) -> f64 {
    (x - r) / r * 100.0
}

#[test]
fn live_h200_windows_meet_the_targets_against_the_reference() {
    meets_the_targets(&load());
}

#[test]
fn live_h100_windows_of_a_later_run_meet_the_targets_too() {
    meets_the_targets(&load_named("h100-live-windows.json"));
}

#[test]
fn live_h100_windows_with_otlp_export_on_meet_the_targets_too() {
    // docs/validation/traced-2026-12-07.md: the worker and the coordinator sending
    // every span to an OTLP sink while the GPU was measured.
    meets_the_targets(&load_named("h100-traced-windows.json"));
}

fn meets_the_targets(fx: &Fixture) {
    assert!(fx.windows.len() >= 20, "{} windows", fx.windows.len());
    let (mut long, mut short) = (Vec::new(), Vec::new());
    for lw in &fx.windows {
        let w = &lw.window;
        let e = window_energy_in(&fx.power, &worker_reads(fx, w), w).unwrap();
        assert_eq!(e.edge_rule, Some(EdgeRule::Quiet), "{}: {e:?}", lw.id);
        let err = pct(e.energy_j, lw.reference_j);
        let raw_err = pct(lw.raw_j, lw.reference_j);
        let len_s = (w.t1 - w.t0) as f64 / 1e9;
        eprintln!(
            "{:<10} {len_s:6.2} s  err {err:+.3}%  raw {raw_err:+.3}%  uncertainty {:.3} J",
            lw.id,
            e.uncertainty_j.unwrap()
        );
        // Never worse than a raw counter delta on the same window by more than 0.1 pp.
        assert!(
            err.abs() <= raw_err.abs() + 0.1,
            "{}: {err:.3}% against raw {raw_err:.3}%",
            lw.id
        );
        // The uncertainty the rule claims covers what it is off by.
        let off_j = (e.energy_j - lw.reference_j).abs();
        assert!(
            off_j <= 3.0 * e.uncertainty_j.unwrap() + 0.1,
            "{}: off by {off_j:.3} J, uncertainty {:?}",
            lw.id,
            e.uncertainty_j
        );
        // Windows of 0.5 s or more carry no uncertainty flag. A shorter one may (the
        // rule then says it cannot vouch for 1 %: the traced run's 0.38 s window,
        // replayed from the fixture's subset of reads), and one off by more than 1 %
        // must.
        if len_s >= 0.5 {
            assert!(!e.uncertainty_flagged, "{}: {e:?}", lw.id);
        } else if err.abs() > 1.0 {
            assert!(e.uncertainty_flagged, "{}: {err:.3}% unflagged", lw.id);
        }
        if len_s >= 2.0 {
            long.push(err.abs());
        } else if len_s >= 0.5 {
            short.push(err.abs());
        }
    }
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    eprintln!(
        "windows >= 2 s: mean |err| {:.3}% ({}), 0.5-2 s: {:.3}% ({})",
        mean(&long),
        long.len(),
        mean(&short),
        short.len()
    );
    assert!(!long.is_empty() && mean(&long) <= 0.3, "{long:?}");
    assert!(!short.is_empty() && mean(&short) <= 1.0, "{short:?}");
}

#[test]
fn the_old_rule_on_the_same_windows_errs_more_and_says_so() {
    // The worker before quiet spans: a 300 ms burst of reads from each edge and every
    // edge carried through a neighbouring counter step.
    let fx = load();
    let (mut new_sum, mut old_sum) = (0.0, 0.0);
    for lw in &fx.windows {
        let w = &lw.window;
        let new = window_energy_in(&fx.power, &worker_reads(&fx, w), w).unwrap();
        let bursts: Vec<CounterSample> = fx
            .reads
            .iter()
            .filter(|c| {
                [w.t0, w.t1]
                    .iter()
                    .any(|t| c.t_mono_ns >= *t && c.t_mono_ns <= t + 300_000_000)
            })
            .copied()
            .collect();
        let old = window_energy(&fx.power, &bursts, w.t0, w.t1).unwrap();
        let old_err = pct(old.energy_j, lw.reference_j);
        new_sum += pct(new.energy_j, lw.reference_j).abs();
        old_sum += old_err.abs();
        // A window the carried edges got more than 1 % wrong is flagged as such.
        if old_err.abs() > 1.0 {
            assert!(old.uncertainty_flagged, "{}: {old_err:.2}% {old:?}", lw.id);
        }
    }
    let n = fx.windows.len() as f64;
    eprintln!(
        "mean |err|: quiet edges {:.3}%, carried edges {:.3}%",
        new_sum / n,
        old_sum / n
    );
    assert!(new_sum < old_sum / 3.0);
}

#[test]
fn slower_reads_keep_the_edges() {
    // The reference read every ~7 ms during the campaign (the worker read too); a worker
    // reading 2-4 times slower still places every update on the publication grid.
    let fx = load();
    for n in [2, 3, 4] {
        let mut worst = 0.0f64;
        for lw in &fx.windows {
            let w = &lw.window;
            let e = window_energy_in(&fx.power, &every_nth_read(&fx, w, n), w).unwrap();
            assert_eq!(e.edge_rule, Some(EdgeRule::Quiet), "{}: {e:?}", lw.id);
            worst = worst.max(pct(e.energy_j, lw.reference_j).abs());
        }
        eprintln!("one read in {n}: worst |err| {worst:.3}%");
        assert!(worst < 0.5, "every {n}th read: {worst}");
    }
}

#[test]
fn dynamic_energy_matches_the_reference_or_says_it_cannot() {
    // The dynamic energy is the window's energy less its resident idle, taken from the
    // quiet spans beside it. Its resolution is the counter's step noise (~1.3 W per
    // 100 ms step on the H200) over a few steps, times the window: a run drawing only a
    // few watts above idle cannot be resolved to 5 %, and the rule must say so.
    let fx = load();
    let (mut within, mut flagged) = (0, 0);
    for lw in &fx.windows {
        let w = &lw.window;
        let len_s = (w.t1 - w.t0) as f64 / 1e9;
        if len_s < 2.0 {
            continue;
        }
        let e = window_energy_in(&fx.power, &worker_reads(&fx, w), w).unwrap();
        let dynamic = e.energy_j - e.quiet_power_w.unwrap() * len_s;
        let reference = lw.reference_j - lw.reference_quiet_w * len_s;
        let err = pct(dynamic, reference);
        let se = e.quiet_power_se_w.expect("both quiet edges have steps");
        let uncertainty = ((se * len_s).powi(2) + e.uncertainty_j.unwrap().powi(2)).sqrt();
        let uncertain = uncertainty > dynamic.abs() * 0.10;
        eprintln!(
            "{:<8} {len_s:6.2} s dynamic {dynamic:8.2} J ref {reference:8.2} J ({err:+.2}%) ± {uncertainty:.2} J{}",
            lw.id,
            if uncertain { "  uncertain" } else { "" }
        );
        if uncertain {
            flagged += 1;
        } else {
            assert!(err.abs() <= 5.0, "{}: {err:.2}% and not flagged", lw.id);
            within += 1;
        }
        // Whatever the flag, the claimed uncertainty covers the difference.
        assert!(
            (dynamic - reference).abs() <= 3.0 * uncertainty + 0.5,
            "{}",
            lw.id
        );
    }
    eprintln!("{within} windows within 5 %, {flagged} flagged as unresolved");
    assert!(within >= 15, "{within}");
}
