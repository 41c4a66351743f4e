//! `lem-coord report`: one self-contained HTML file for a campaign.
//!
//! [`render`] takes the campaign's status and rows and returns the page: a table of
//! configurations with their figures and 95 % intervals (from
//! [`lem_common::aggregate`]), four plots drawn here ([`crate::plots`], inline SVG),
//! the quality flags with their explanations and the runs that have them, the
//! validation verdict ([`crate::validation`]) and every run. No IO: the caller fetches
//! the rows and writes the file. The page loads nothing: CSS is inline, the one inline
//! script is allowed by its hash in the page's Content-Security-Policy (which forbids
//! every fetch), and it only marks each figure `data-drawn="yes"` once its SVG has a
//! size and its data points, so a headless browser can tell that every plot drew.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use lem_common::aggregate::{self, ConfigAggregate, Metric};
use lem_common::quality::{self, Flag};
use lem_common::rpc::{CampaignStatus, RunRow};
use lem_common::stats::Summary;
use lem_common::types::{parse_utc_ms, RunResult};
use lem_common::validate::Verdict;
use sha2::Digest as _;

use crate::plots::{self, CiPoint, Plot, ScatterPoint, Series, TempSeries, Timeline};
use crate::validation::CampaignValidation;

/// What the report is drawn from.
pub struct ReportInput<'a> {
    pub campaign: u64,
    pub status: &'a CampaignStatus,
    pub rows: &'a [RunRow],
    /// The run whose power timeline is drawn (`--run`, an experiment id such as
    /// `3-0007`); `None`: the median-energy run of the best configuration.
    pub timeline_run: Option<&'a str>,
    /// When the report was made (UTC, ISO 8601), written in its header.
    pub generated_at: &'a str,
}

/// Why a report cannot be drawn as asked.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ReportError {
    #[error("campaign {campaign} has no run `{run}` (--run takes an experiment id: {known})")]
    UnknownRun {
        campaign: u64,
        run: String,
        known: String,
    },
    #[error("run {run} has no result to draw (it is {state}); runs with a result: {known}")]
    NoResult {
        run: String,
        state: String,
        known: String,
    },
}

/// The parameters whose last dotted part names a batch size, per engine's schema
/// (`synthetic.engine_params.batch_size`, `transformers.llem_execution.batch_size`,
/// `vllm.engine_params.max_num_seqs`, `tensorrt.engine_params.max_batch_size`).
pub const BATCH_SIZE_KEYS: [&str; 3] = ["batch_size", "max_num_seqs", "max_batch_size"];

/// The page's one script: marks each plot drawn when its SVG has a size, the data
/// points its figure expects are circles with coordinates inside it, and no NaN.
const CHECK_SCRIPT: &str = r#"
for (const fig of document.querySelectorAll("figure[data-points]")) {
  const svg = fig.querySelector("svg");
  let ok = false, n = 0;
  if (svg) {
    const box = svg.getBBox();
    const w = svg.width.baseVal.value, h = svg.height.baseVal.value;
    n = [...svg.querySelectorAll("circle")].filter(c => {
      const x = c.cx.baseVal.value, y = c.cy.baseVal.value, r = c.getBBox();
      return isFinite(x) && isFinite(y) && x >= 0 && y >= 0 && x <= w && y <= h && r.width > 0;
    }).length;
    ok = box.width > 0 && box.height > 0 && n >= Number(fig.dataset.points) && !svg.outerHTML.includes("NaN");
  }
  fig.dataset.circles = String(n);
  fig.dataset.drawn = ok ? "yes" : "no";
}
document.body.dataset.checked = "yes";
"#;

const STYLE: &str = r#"
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1em 0; } figcaption { font-size: 0.9em; color: #444; max-width: 760px; }
code { font-size: 0.95em; } .warn { background: #fff3cd; border: 1px solid #e0c060; padding: 0.5em 1em; }
.fail { color: #a00; font-weight: bold; } .pass { color: #070; font-weight: bold; }
"#;

/// The report as one HTML page.
pub fn render(input: &ReportInput) -> Result<String, ReportError> {
    let rows = input.rows;
    let aggs = aggregate::aggregate_rows(rows);
    let rank = aggregate::rank_metric(&aggs);
    let timeline_row = choose_run(input, &aggs)?;
    let validation = CampaignValidation::new(input.campaign, rows);
    let labels: BTreeMap<&str, String> = aggs
        .iter()
        .map(|a| (a.config_hash.as_str(), config_label(a)))
        .collect();

    let mut body = String::new();
    header(&mut body, input, &aggs, &validation);

    // The configurations.
    let _ = writeln!(body, "<h2>Configurations</h2>");
    configs_table(&mut body, &aggs, rank);

    // Figure 1: J/token against the batch size (or the varying parameter).
    let (fig1, caption1) = jpt_figure(&aggs, rank);
    figure(&mut body, "jpt", &fig1, &caption1);
    // Figure 2: throughput against energy, with the Pareto front.
    let (fig2, caption2) = pareto_figure(&aggs, rank);
    figure(&mut body, "pareto", &fig2, &caption2);
    // Figure 3: one run's power timeline.
    let (fig3, caption3) = timeline_figure(timeline_row, &labels);
    figure(&mut body, "timeline", &fig3, &caption3);
    // Figure 4: temperature across the campaign.
    let (fig4, caption4) = temperature_figure(rows);
    figure(&mut body, "temperature", &fig4, &caption4);

    flags_tables(&mut body, rows, &aggs, &labels);
    validation_section(&mut body, &validation);
    runs_table(&mut body, rows, &labels, &validation);

    let title = format!(
        "lem fleet report: campaign {}{}",
        input.campaign,
        input
            .status
            .study_name
            .as_deref()
            .map(|n| format!(" ({n})"))
            .unwrap_or_default()
    );
    let script_hash = base64(&sha2::Sha256::digest(CHECK_SCRIPT.as_bytes()));
    Ok(format!(
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{script_hash}'; img-src data:\">\n\
<meta name=\"generator\" content=\"lem-coord {}\">\n<title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n{body}<script>{CHECK_SCRIPT}</script>\n</body>\n</html>\n",
        env!("CARGO_PKG_VERSION"),
        esc(&title),
    ))
}

/// Escapes text for HTML content and attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Standard base64 with padding (for the script's CSP hash).
pub(crate) fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A configuration's name in tables and plots: its varying parameters, else its hash.
fn config_label(a: &ConfigAggregate) -> String {
    let l = a.label();
    if l.is_empty() {
        a.config_hash.clone()
    } else {
        l
    }
}

/// A figure with 4 significant digits.
fn num(v: f64) -> String {
    plots::fmt_num(v)
}

/// `mean [low, high]` of a summary, `-` without one.
fn mean_ci(s: Option<&Summary>) -> String {
    match s {
        None => "-".into(),
        Some(s) => match (s.ci95_low, s.ci95_high) {
            (Some(lo), Some(hi)) => format!("{} [{}, {}]", num(s.mean), num(lo), num(hi)),
            _ => num(s.mean),
        },
    }
}

fn header(
    out: &mut String,
    input: &ReportInput,
    aggs: &[ConfigAggregate],
    validation: &CampaignValidation,
) {
    let s = input.status;
    let _ = writeln!(
        out,
        "<h1>lem fleet report: campaign {}{}</h1>",
        input.campaign,
        s.study_name
            .as_deref()
            .map(|n| format!(" <small>({})</small>", esc(n)))
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "<p>State <b>{}</b>: {} run(s) of {} configuration(s), {} done, {} failed, {} cancelled, {} pending or running. Submitted {}; report made {}. Study design hash <code>{}</code>.</p>",
        esc(&s.state),
        s.total,
        aggs.len(),
        s.done,
        s.failed,
        s.cancelled,
        s.pending + s.running,
        esc(&s.submitted_at),
        esc(input.generated_at),
        esc(&s.study_design_hash),
    );
    if aggs.iter().any(|a| a.simulated) {
        let _ = writeln!(
            out,
            "<p class=\"warn\"><b>Simulated GPU.</b> Runs of this campaign were measured on the labelled simulated GPU: their joules come from the fleet's GPU model, not from hardware. Never report them as measurements.</p>"
        );
    }
    let verdict = validation.verdict();
    let _ = writeln!(
        out,
        "<p>Validation (<code>lem-coord results validate {}</code>): <span class=\"{}\">{}</span>, {} run(s) checked (<a href=\"#validation\">details</a>).</p>",
        input.campaign,
        if verdict == Verdict::Fail { "fail" } else { "pass" },
        verdict,
        validation.checked()
    );
}

fn configs_table(out: &mut String, aggs: &[ConfigAggregate], rank: Metric) {
    if aggs.is_empty() {
        let _ = writeln!(out, "<p>No runs.</p>");
        return;
    }
    let raw = (rank != Metric::EnergyPerToken).then_some(Metric::EnergyPerToken);
    let _ = writeln!(
        out,
        "<p>One row per configuration, best first by {} (mean across cycles); intervals are 95 % bootstrap confidence intervals of the mean (BCa where defined, else percentile), none for a single cycle.</p>",
        esc(rank.name())
    );
    let _ = write!(
        out,
        "<table id=\"configs\"><tr><th>#</th><th>config_hash</th><th>engine</th><th>model</th><th>parameters</th><th>cycles</th><th>{}</th>",
        esc(rank.label())
    );
    if let Some(m) = raw {
        let _ = write!(out, "<th>{}</th>", esc(m.label()));
    }
    let _ = writeln!(
        out,
        "<th>tok/s</th><th>power W</th><th>CV</th><th>flags</th></tr>"
    );
    for (i, a) in aggs.iter().enumerate() {
        let cv = a
            .metrics
            .get(&rank)
            .and_then(|s| s.cv)
            .map(|c| format!("{:.1} %", c * 100.0))
            .unwrap_or_else(|| "-".into());
        let _ = write!(
            out,
            "<tr><td class=\"num\">{}</td><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}/{}</td><td class=\"num\">{}</td>",
            i + 1,
            esc(&a.config_hash),
            esc(&a.engine),
            esc(&a.model),
            esc(&a.label()),
            a.done,
            a.runs,
            mean_ci(a.metrics.get(&rank)),
        );
        if let Some(m) = raw {
            let _ = write!(out, "<td class=\"num\">{}</td>", mean_ci(a.metrics.get(&m)));
        }
        let _ = writeln!(
            out,
            "<td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{cv}</td><td>{}</td></tr>",
            mean_ci(a.metrics.get(&Metric::TokensPerSecond)),
            mean_ci(a.metrics.get(&Metric::MeanPowerW)),
            esc(&a.flag_names().join(" ")),
        );
    }
    let _ = writeln!(out, "</table>");
}

fn figure(out: &mut String, id: &str, plot: &Plot, caption: &str) {
    let _ = writeln!(
        out,
        "<figure id=\"fig-{id}\" data-plot=\"{id}\" data-points=\"{}\">\n{}\n<figcaption>{caption}</figcaption>\n</figure>",
        plot.points,
        plot.svg.trim()
    );
}

/// A number from a parameter value (an int, a float, or a string holding one).
fn numeric(v: &serde_json::Value) -> Option<f64> {
    v.as_f64()
        .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
        .filter(|x: &f64| x.is_finite())
}

/// What Figure 1 puts on x: the parameters (one per engine for the batch size) and a
/// description.
struct XAxis {
    names: Vec<String>,
    desc: String,
    log2: bool,
}

/// The x of a configuration on [`XAxis`], if it has one.
fn x_of(a: &ConfigAggregate, axis: &XAxis) -> Option<f64> {
    axis.names.iter().find_map(|n| a.param(n).and_then(numeric))
}

/// The batch-size parameter if it varies, else the first numeric parameter that
/// varies, else `None` (the configurations are then placed by rank).
fn choose_x(aggs: &[&ConfigAggregate]) -> Option<XAxis> {
    let names: Vec<String> = aggs
        .first()
        .map(|a| a.params.iter().map(|(k, _)| k.clone()).collect())
        .unwrap_or_default();
    let distinct = |axis: &XAxis| {
        let xs: Vec<f64> = aggs.iter().filter_map(|a| x_of(a, axis)).collect();
        let all = xs.len() == aggs.len();
        let set: BTreeSet<u64> = xs.iter().map(|x| x.to_bits()).collect();
        (all && set.len() > 1).then_some(xs)
    };
    let batch: Vec<String> = names
        .iter()
        .filter(|n| BATCH_SIZE_KEYS.contains(&n.rsplit('.').next().unwrap_or(n)))
        .cloned()
        .collect();
    let mut candidates = Vec::new();
    if !batch.is_empty() {
        candidates.push((batch.clone(), format!("batch size ({})", batch.join(", "))));
    }
    for n in names.iter().filter(|n| !batch.contains(n)) {
        candidates.push((vec![n.clone()], n.clone()));
    }
    candidates.into_iter().find_map(|(names, desc)| {
        let mut axis = XAxis {
            names,
            desc,
            log2: false,
        };
        let xs = distinct(&axis)?;
        let (lo, hi) = xs
            .iter()
            .fold((f64::INFINITY, 0f64), |(l, h), x| (l.min(*x), h.max(*x)));
        axis.log2 = lo > 0.0 && hi / lo >= 8.0;
        Some(axis)
    })
}

fn jpt_figure(aggs: &[ConfigAggregate], rank: Metric) -> (Plot, String) {
    let with: Vec<&ConfigAggregate> = aggs
        .iter()
        .filter(|a| a.metrics.contains_key(&rank))
        .collect();
    let axis = choose_x(&with);
    // One series per engine and per value of the other varying parameters.
    let mut series: Vec<Series> = Vec::new();
    for (i, a) in with.iter().enumerate() {
        let s = &a.metrics[&rank];
        let x = match &axis {
            Some(axis) => x_of(a, axis).unwrap_or(f64::NAN),
            None => (i + 1) as f64,
        };
        let others: Vec<String> = a
            .params
            .iter()
            .filter(|(k, v)| v.is_some() && axis.as_ref().is_none_or(|ax| !ax.names.contains(k)))
            .map(|(k, v)| {
                let short = k.rsplit('.').next().unwrap_or(k);
                format!("{short}={}", aggregate::value_text(v.as_ref().unwrap()))
            })
            .collect();
        let label = if axis.is_none() {
            a.engine.clone()
        } else {
            std::iter::once(a.engine.clone())
                .chain(others)
                .collect::<Vec<_>>()
                .join(" ")
        };
        let point = CiPoint {
            x,
            mean: s.mean,
            ci: s.ci95_low.zip(s.ci95_high),
        };
        match series.iter_mut().find(|s| s.label == label) {
            Some(s) => s.points.push(point),
            None => series.push(Series {
                label,
                points: vec![point],
            }),
        }
    }
    let (x_desc, log2, what) = match &axis {
        Some(a) => (
            a.desc.clone(),
            a.log2,
            format!(
                "x is {}{}",
                esc(&a.desc),
                if a.log2 { ", on a log2 scale" } else { "" }
            ),
        ),
        None => (
            "configuration (rank order)".to_string(),
            false,
            "no numeric parameter varies, so x is the configuration's rank in the table above"
                .to_string(),
        ),
    };
    let plot = plots::ci_lines(
        &format!("Energy per token ({})", rank.label()),
        &x_desc,
        &format!("{} (J/token)", rank.name()),
        &series,
        log2,
    );
    let caption = format!(
        "<b>Figure 1.</b> {} per configuration: the mean across cycles with its 95 % confidence interval as a bar; {what}. One line per engine{}.",
        esc(rank.name()),
        if series.len() > with.iter().map(|a| &a.engine).collect::<BTreeSet<_>>().len() {
            " and per value of the other parameters that vary"
        } else {
            ""
        }
    );
    (plot, caption)
}

fn pareto_figure(aggs: &[ConfigAggregate], rank: Metric) -> (Plot, String) {
    let engines: Vec<String> = aggs
        .iter()
        .map(|a| a.engine.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let points: Vec<ScatterPoint> = aggs
        .iter()
        .filter_map(|a| {
            let x = a.metrics.get(&Metric::TokensPerSecond)?.mean;
            let y = a.metrics.get(&rank)?.mean;
            Some(ScatterPoint {
                x,
                y,
                series: engines.iter().position(|e| *e == a.engine).unwrap_or(0),
                label: config_label(a),
            })
        })
        .collect();
    let front: Vec<String> =
        plots::pareto_front(&points.iter().map(|p| (p.x, p.y)).collect::<Vec<_>>())
            .into_iter()
            .map(|i| esc(&points[i].label))
            .collect();
    let plot = plots::pareto(
        "Throughput against energy per token",
        "throughput (avg_tokens_per_second, tokens/s)",
        &format!("{} (J/token)", rank.name()),
        &engines,
        &points,
    );
    let caption = format!(
        "<b>Figure 2.</b> Each configuration's mean throughput against its mean {} (one colour per engine). The Pareto front (ringed, dashed) holds the configurations no other beats on both: more tokens per second for no more joules per token. On the front: {}.",
        esc(rank.name()),
        if front.is_empty() {
            "none".to_string()
        } else {
            front.join("; ")
        }
    );
    (plot, caption)
}

/// Experiment ids of the runs with a result, for an error message.
fn known_runs(rows: &[RunRow]) -> String {
    let ids: Vec<String> = rows
        .iter()
        .filter(|r| r.result.is_some())
        .map(|r| r.run.to_string())
        .collect();
    match ids.len() {
        0 => "none".into(),
        n if n > 8 => format!("{} ... {} ({n} runs)", ids[..4].join(", "), ids[n - 1]),
        _ => ids.join(", "),
    }
}

/// The run whose timeline is drawn: `--run`'s, else the median-energy run of the best
/// configuration (the lower middle of an even count).
fn choose_run<'a>(
    input: &ReportInput<'a>,
    aggs: &[ConfigAggregate],
) -> Result<Option<&'a RunRow>, ReportError> {
    let rows = input.rows;
    if let Some(id) = input.timeline_run {
        let Some(row) = rows.iter().find(|r| r.run.to_string() == id) else {
            let known = match (rows.first(), rows.last()) {
                (Some(a), Some(b)) => format!("{} to {}", a.run, b.run),
                _ => "it has no runs".into(),
            };
            return Err(ReportError::UnknownRun {
                campaign: input.campaign,
                run: id.to_string(),
                known,
            });
        };
        if row.result.is_none() {
            return Err(ReportError::NoResult {
                run: id.to_string(),
                state: row.state.clone(),
                known: known_runs(rows),
            });
        }
        return Ok(Some(row));
    }
    let Some(best) = aggs.iter().find(|a| a.done > 0) else {
        return Ok(None);
    };
    let mut runs: Vec<&RunRow> = rows
        .iter()
        .filter(|r| r.config_hash == best.config_hash && r.result.is_some())
        .collect();
    runs.sort_by(|a, b| {
        let e = |r: &RunRow| r.result.as_ref().map_or(0.0, |x| x.energy.total_j);
        e(a).total_cmp(&e(b))
    });
    Ok(runs.get((runs.len().max(1) - 1) / 2).copied())
}

fn timeline_figure(row: Option<&RunRow>, labels: &BTreeMap<&str, String>) -> (Plot, String) {
    let Some((row, r)) = row.and_then(|row| row.result.as_ref().map(|r| (row, r))) else {
        return (
            Plot {
                svg: plots::message("no run has a result yet"),
                points: 0,
            },
            "<b>Figure 3.</b> A run's power timeline: no run has a result yet.".into(),
        );
    };
    let col = |k: &str| -> Vec<f64> {
        r.window
            .timeseries
            .get(k)
            .and_then(|v| v.as_array())
            .map(|a| a.iter().filter_map(|v| v.as_f64()).collect())
            .unwrap_or_default()
    };
    let hm = &r.harness.metrics;
    let batches = hm.get("batches").and_then(|v| v.as_u64());
    let ttft_s = hm
        .get("ttft_ms")
        .and_then(|t| t.get("max"))
        .and_then(|v| v.as_f64())
        .map(|ms| ms / 1000.0);
    let t = Timeline {
        t_s: col("t_s"),
        power_w: col("power_w"),
        window_s: r.window.duration_s,
        prefill_s: ttft_s.filter(|_| batches == Some(1)),
        quiet_s: hm.get("quiet_seconds").and_then(|v| v.as_f64()),
        quiet_power_w: r.energy.quiet_power_w,
        prefill_window: r.energy.prefill.as_ref().and_then(|p| {
            (p.window_s > 0.0).then_some((p.window_s, p.window_energy_j / p.window_s))
        }),
        device_idle_w: r.baselines.device.as_ref().map(|b| b.mean_power_w),
        resident_idle_w: r.baselines.resident.as_ref().map(|b| b.mean_power_w),
    };
    let plot = plots::power_timeline(&format!("Power of run {}", row.run), &t);
    let label = labels
        .get(row.config_hash.as_str())
        .cloned()
        .unwrap_or_default();
    let phases = match batches {
        Some(1) => "The window holds one batch: its prefill (shaded, up to the last first token) and then its decode.".to_string(),
        Some(n) => format!("The window holds {n} batches, each a prefill then a decode (not marked: their edges are not recorded)."),
        None => String::new(),
    };
    let caption = format!(
        "<b>Figure 3.</b> Run <code>{}</code> (cycle {}, {} {}, {} on {}): the GPU's power in the measured window ({} s, {} J, {} W mean; {} points of bucket means). {phases} Beside the window, the harness held the GPU quiet (the counter's mean power there), and after it came the prefill-only window (its mean). Dashed: the device-idle baseline (no model loaded) and the resident-idle baseline (harness and model loaded). Chosen with <code>--run</code>, or by default the median-energy run of the best configuration.",
        esc(&row.run.to_string()),
        row.cycle,
        esc(&row.engine),
        esc(&label),
        esc(&r.worker),
        esc(&r.gpu_name),
        num(r.window.duration_s),
        num(r.energy.total_j),
        num(r.energy.mean_power_w),
        t.t_s.len(),
    );
    (plot, caption)
}

fn temperature_figure(rows: &[RunRow]) -> (Plot, String) {
    let done: Vec<(&RunRow, &RunResult, u64)> = rows
        .iter()
        .filter_map(|r| {
            let x = r.result.as_ref()?;
            Some((r, x, parse_utc_ms(&x.started_at)?))
        })
        .collect();
    let t0 = done.iter().map(|d| d.2).min().unwrap_or(0);
    let mut series: Vec<TempSeries> = Vec::new();
    for (_, x, t) in &done {
        let label = format!("{} slot {}", x.worker, x.slot);
        let point = (
            (t - t0) as f64 / 60_000.0,
            x.thermal.start_temp_c,
            x.thermal.max_temp_c,
        );
        match series.iter_mut().find(|s| s.label == label) {
            Some(s) => s.points.push(point),
            None => series.push(TempSeries {
                label,
                points: vec![point],
            }),
        }
    }
    let gate: f64 = done.iter().map(|d| d.1.thermal.wait_s).sum();
    let plot = plots::temperatures("GPU temperature across the campaign", &series);
    let caption = format!(
        "<b>Figure 4.</b> Each run's hottest GPU temperature in its measured window (circles, joined per GPU slot), with a bar down to its temperature as the window began, placed at the run's start. The thermal gate held runs {} s in all before they started.",
        num(gate)
    );
    (plot, caption)
}

fn flags_tables(
    out: &mut String,
    rows: &[RunRow],
    aggs: &[ConfigAggregate],
    labels: &BTreeMap<&str, String>,
) {
    let _ = writeln!(out, "<h2 id=\"flags\">Quality flags</h2>");
    let mut by_flag: BTreeMap<Flag, Vec<String>> = BTreeMap::new();
    let mut with_result = 0;
    for r in rows {
        if let Some(x) = &r.result {
            with_result += 1;
            for f in quality::flags(x) {
                by_flag.entry(f).or_default().push(r.run.to_string());
            }
        }
    }
    if by_flag.is_empty() {
        let _ = writeln!(
            out,
            "<p>No run has a quality flag ({with_result} run(s) with a result).</p>"
        );
    } else {
        let _ = writeln!(
            out,
            "<p>Run flags (docs/results.md, \"Quality flags\"): what makes a run's figures weaker than a clean measurement.</p>\n<table id=\"run-flags\"><tr><th>flag</th><th>what it means</th><th>runs</th></tr>"
        );
        for (f, runs) in &by_flag {
            let which = if runs.len() == with_result && with_result > 1 {
                format!("all {with_result} runs with a result")
            } else {
                runs.join(", ")
            };
            let _ = writeln!(
                out,
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td></tr>",
                f.name(),
                esc(f.explanation()),
                esc(&which)
            );
        }
        let _ = writeln!(out, "</table>");
    }
    let config_flags: Vec<(&ConfigAggregate, &aggregate::ConfigFlag)> = aggs
        .iter()
        .flat_map(|a| a.flags.iter().map(move |f| (a, f)))
        .collect();
    if config_flags.is_empty() {
        let _ = writeln!(
            out,
            "<p>No configuration is flagged (CV across cycles, outlying cycles, environment drift).</p>"
        );
    } else {
        let _ = writeln!(
            out,
            "<p>Configuration flags: what weakens a configuration's figures across its cycles.</p>\n<table id=\"config-flags\"><tr><th>flag</th><th>configuration</th><th>what it means</th></tr>"
        );
        for (a, f) in config_flags {
            let _ = writeln!(
                out,
                "<tr><td><code>{}</code></td><td><code>{}</code> {}</td><td>{}</td></tr>",
                f.name(),
                esc(&a.config_hash),
                esc(labels
                    .get(a.config_hash.as_str())
                    .map_or("", String::as_str)),
                esc(&f.explanation())
            );
        }
        let _ = writeln!(out, "</table>");
    }
}

fn validation_section(out: &mut String, v: &CampaignValidation) {
    let _ = writeln!(out, "<h2 id=\"validation\">Validation</h2>");
    let failed: Vec<(&str, &lem_common::validate::Check)> = v
        .runs
        .iter()
        .flat_map(|r| {
            r.checks
                .iter()
                .filter(|c| c.verdict == Verdict::Fail)
                .map(move |c| (r.experiment_id.as_str(), c))
        })
        .collect();
    let summary = v.to_text();
    let _ = writeln!(
        out,
        "<p>Sanity checks per run (docs/results.md, \"Validation\"): <code>{}</code></p>",
        esc(summary.lines().last().unwrap_or(""))
    );
    if !failed.is_empty() {
        let _ = writeln!(
            out,
            "<table id=\"validation-failures\"><tr><th>run</th><th>check</th><th>why</th></tr>"
        );
        for (id, c) in failed {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
                esc(id),
                c.name,
                esc(&c.reason)
            );
        }
        let _ = writeln!(out, "</table>");
    }
}

fn runs_table(
    out: &mut String,
    rows: &[RunRow],
    labels: &BTreeMap<&str, String>,
    v: &CampaignValidation,
) {
    let _ = writeln!(
        out,
        "<h2 id=\"runs\">Runs</h2>\n<table id=\"runs-table\"><tr><th>run</th><th>configuration</th><th>cycle</th><th>state</th><th>worker</th><th>J/tok (raw)</th><th>J/tok (adj)</th><th>tok/s</th><th>energy J</th><th>window s</th><th>max °C</th><th>flags</th><th>validation</th></tr>"
    );
    for (r, check) in rows.iter().zip(&v.runs) {
        let cell = |f: &dyn Fn(&RunResult) -> Option<f64>| {
            r.result
                .as_ref()
                .and_then(f)
                .map(num)
                .unwrap_or_else(|| "-".into())
        };
        let flags = r
            .result
            .as_ref()
            .map(|x| quality::flag_names(x).join(" "))
            .unwrap_or_default();
        let note = r
            .last_failure
            .as_deref()
            .filter(|_| r.result.is_none())
            .map(|f| format!(" <small>({})</small>", esc(f)))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td><code>{}</code> {}</td><td class=\"num\">{}</td><td>{}{note}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.run.to_string()),
            esc(&r.config_hash),
            esc(labels.get(r.config_hash.as_str()).map_or("", String::as_str)),
            r.cycle,
            esc(&r.state),
            esc(r.result.as_ref().map_or("", |x| x.worker.as_str())),
            cell(&|x| Some(x.throughput.avg_energy_per_token_j)),
            cell(&|x| x.throughput.energy_per_token_adjusted_j),
            cell(&|x| Some(x.throughput.avg_tokens_per_second)),
            cell(&|x| Some(x.energy.total_j)),
            cell(&|x| Some(x.window.duration_s)),
            cell(&|x| Some(x.thermal.max_temp_c)),
            esc(&flags),
            check.verdict,
        );
    }
    let _ = writeln!(out, "</table>");
}

#[cfg(test)]
mod tests {
    use super::*;
    use lem_common::types::{
        BaselineRecord, Baselines, CampaignId, EnergyFigures, HarnessFacts, MeasuredWindow,
        PrefillSplit, RunKey, Thermal, Throughput,
    };
    use serde_json::json;

    fn config(batch: i64) -> String {
        format!(
            r#"{{"task": {{"model": "synthetic/m", "dataset": {{"n_prompts": 4}}, "max_input_tokens": 32, "max_output_tokens": 8}}, "engine": "synthetic", "synthetic": {{"engine_params": {{"batch_size": {batch}}}}}}}"#
        )
    }

    /// A campaign of batch sizes 1, 4, 16, two cycles each; batch 16 is the leanest.
    fn rows() -> Vec<RunRow> {
        let mut out = Vec::new();
        for (c, batch) in [1i64, 4, 16].into_iter().enumerate() {
            for cycle in 1..=2u32 {
                let seq = (cycle - 1) * 3 + c as u32;
                let jpt = 1.0 / batch as f64 + 0.01 * f64::from(cycle);
                let energy = 32.0 * jpt;
                let baseline = |kind: &str, w: f64| BaselineRecord {
                    kind: kind.into(),
                    mean_power_w: w,
                    ..Default::default()
                };
                out.push(RunRow {
                    run: RunKey {
                        campaign: CampaignId(5),
                        seq,
                    },
                    config_hash: format!("hash{batch:012}"),
                    cycle,
                    engine: "synthetic".into(),
                    state: "done".into(),
                    attempts: 1,
                    config_json: config(batch),
                    result: Some(RunResult {
engine: "synthetic".into(),
worker: "w<0>".into(),
simulated: true,
started_at: format!("2026-01-01T00:0{seq}:00.000Z"),
ended_at: format!("2026-01-01T00:0{seq}:30.000Z"),
energy: EnergyFigures { total_j: energy, mean_power_w: energy / 0.5, quiet_power_w: Some(110.0), prefill: Some(PrefillSplit { window_s: 3.0, window_energy_j: 1200.0, ..Default::default() }), ..Default::default() },
baselines: Baselines { device: Some(baseline("device", 70.0)), resident: Some(baseline("resident", 110.0)), ..Default::default() },
throughput: Throughput { n_prompts: 4, input_tokens: 100, output_tokens: 32, avg_energy_per_token_j: jpt, avg_tokens_per_second: 264.0 * batch as f64, ..Default::default() },
thermal: Thermal { start_temp_c: 40.0, max_temp_c: 45.0 + f64::from(seq), ..Default::default() },
window: MeasuredWindow { duration_s: 0.5, timeseries: json!({"t_s": [0.05, 0.25, 0.45], "power_w": [300.0, 320.0, 310.0]}), ..Default::default() },
harness: HarnessFacts { metrics: json!({"batches": 1, "quiet_seconds": 0.35, "ttft_ms": {"max": 20.0}}), ..Default::default() },
..Default::default()
}),
                    last_failure: None,
                });
            }
        }
        out
    }

    fn status() -> CampaignStatus {
        CampaignStatus {
            campaign: 5,
            study_name: Some("demo <b>".into()),
            state: "done".into(),
            total: 6,
            done: 6,
            ..Default::default()
        }
    }

    fn page(run: Option<&str>) -> Result<String, ReportError> {
        let rows = rows();
        let status = status();
        render(&ReportInput {
            campaign: 5,
            status: &status,
            rows: &rows,
            timeline_run: run,
            generated_at: "2026-01-01T01:00:00.000Z",
        })
    }

    #[test]
    fn the_page_is_self_contained_with_four_plots() {
        let html = page(None).unwrap();
        assert_eq!(html.matches("<figure ").count(), 4);
        assert_eq!(html.matches("<svg ").count(), 4);
        for id in ["jpt", "pareto", "timeline", "temperature"] {
            assert!(html.contains(&format!("data-plot=\"{id}\"")), "{id}");
        }
        // Nothing is fetched: no external URL, no src or href to another document.
        assert!(!html.contains("src="), "no src attributes");
        assert!(
            !html.contains("http://")
                || html.matches("http://").count()
                    == html.matches("http://www.w3.org/2000/svg").count()
        );
        assert!(!html.contains("https://"));
        assert!(html.contains("default-src 'none'"));
        // The study's name is escaped.
        assert!(html.contains("demo &lt;b&gt;") && !html.contains("demo <b>"));
        assert!(html.contains("Simulated GPU"));
        // Figure 1 says what x is, and draws it on a log2 scale (1 to 16).
        assert!(
            html.contains("x is batch size (synthetic.engine_params.batch_size), on a log2 scale")
        );
        // The flags table explains the simulated flag and names every run.
        assert!(html.contains(&esc(Flag::Simulated.explanation())));
        assert!(html.contains("all 6 runs with a result"));
    }

    #[test]
    fn the_script_hash_in_the_policy_is_the_scripts() {
        // sha256("abc"), base64: the test vector of RFC 4648 and FIPS 180-2 together.
        assert_eq!(
            base64(&sha2::Sha256::digest(b"abc")),
            "ungWv48Bz+pBQUDeXa4iI7ADYaOWF3qctBD/YfIAFa0="
        );
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        let html = page(None).unwrap();
        let hash = base64(&sha2::Sha256::digest(CHECK_SCRIPT.as_bytes()));
        assert!(html.contains(&format!("'sha256-{hash}'")));
        assert!(html.contains(&format!("<script>{CHECK_SCRIPT}</script>")));
    }

    #[test]
    fn the_timeline_is_the_median_run_of_the_best_config_unless_asked() {
        // Best: batch 16 (5-0003 cycle 1 and 5-0006 cycle 2); the lower middle of two.
        let html = page(None).unwrap();
        assert!(html.contains("Power of run 5-0003"), "default run");
        let html = page(Some("5-0002")).unwrap();
        assert!(html.contains("Power of run 5-0002"));
        assert_eq!(
            page(Some("5-0099")).unwrap_err(),
            ReportError::UnknownRun {
                campaign: 5,
                run: "5-0099".into(),
                known: "5-0001 to 5-0006".into()
            }
        );
    }

    #[test]
    fn a_run_without_a_result_cannot_be_drawn() {
        let mut rows = rows();
        rows[1].result = None;
        rows[1].state = "failed".into();
        let id = rows[1].run.to_string();
        let status = status();
        let err = render(&ReportInput {
            campaign: 5,
            status: &status,
            rows: &rows,
            timeline_run: Some(&id),
            generated_at: "now",
        })
        .unwrap_err();
        assert!(
            err.to_string()
                .contains(&format!("run {id} has no result to draw (it is failed)")),
            "{err}"
        );
    }

    #[test]
    fn an_empty_campaign_still_renders() {
        let status = CampaignStatus::default();
        let html = render(&ReportInput {
            campaign: 9,
            status: &status,
            rows: &[],
            timeline_run: None,
            generated_at: "now",
        })
        .unwrap();
        assert_eq!(html.matches("<figure ").count(), 4);
        assert!(html.contains("data-points=\"0\""));
    }

    #[test]
    fn x_falls_back_to_the_varying_parameter_then_the_rank() {
        let with_dtype = |rows: &mut Vec<RunRow>| {
            for r in rows.iter_mut() {
                let batch = r
                    .config_hash
                    .trim_start_matches("hash")
                    .parse::<i64>()
                    .unwrap();
                r.config_json = r.config_json.replace(
                    &format!("\"batch_size\": {batch}"),
                    &format!("\"batch_size\": 2, \"max_tokens_x\": {}", batch * 10),
                );
            }
        };
        let mut rows = rows();
        with_dtype(&mut rows);
        let aggs = aggregate::aggregate_rows(&rows);
        let refs: Vec<&ConfigAggregate> = aggs.iter().collect();
        let axis = choose_x(&refs).unwrap();
        assert_eq!(axis.names, ["synthetic.engine_params.max_tokens_x"]);
        assert!(axis.log2);
        // Nothing numeric varies: placed by rank.
        let mut rows = rows;
        for r in rows.iter_mut() {
            r.config_json = r.config_json.replace("\"max_tokens_x\": ", "\"name\": \"n");
            r.config_json = r.config_json.replace("0}}}", "0\"}}}");
        }
        let aggs = aggregate::aggregate_rows(&rows);
        let refs: Vec<&ConfigAggregate> = aggs.iter().collect();
        assert!(choose_x(&refs).is_none(), "{:?}", aggs[0].params);
        let (_, caption) = jpt_figure(&aggs, Metric::EnergyPerToken);
        assert!(
            caption.contains("x is the configuration's rank"),
            "{caption}"
        );
    }
}
