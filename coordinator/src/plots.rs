//! The report's plots, drawn by plotters to SVG text: figures with CI bars, a scatter
//! with its Pareto front, a run's power timeline and temperatures across a campaign.
//!
//! Pure: each function takes plain numbers and returns a [`Plot`], the SVG as a
//! string. plotters is used with its SVG backend only and without its `ttf` feature,
//! so text is laid out by estimate and written as SVG `<text>` for the browser to set
//! (no font files, no fontconfig). Every data point is drawn as a circle, and
//! [`Plot::points`] counts them, so a reader (the report's inline check, a test) can
//! tell a plot that drew its data from an empty frame.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Width and height of every plot, in SVG pixels.
pub const SIZE: (u32, u32) = (760, 420);

/// An SVG drawing and how many data points (circles) it holds.
#[derive(Clone, Debug, PartialEq)]
pub struct Plot {
    pub svg: String,
    pub points: usize,
}

/// The series colours, in order (colour-blind safe: Okabe and Ito's palette).
const COLOURS: [RGBColor; 8] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(0, 0, 0),
    RGBColor(240, 228, 66),
];

/// The colour of series `i`.
pub fn colour(i: usize) -> RGBColor {
    COLOURS[i % COLOURS.len()]
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

/// Draws with `f` on a white SVG of [`SIZE`]; a drawing error becomes a plot saying so
/// (zero points, so the report's check marks it).
fn draw(f: impl FnOnce(&DrawingArea<SVGBackend, plotters::coord::Shift>) -> DrawResult) -> String {
    let mut svg = String::new();
    let outcome = {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| e.into())
            .and_then(|()| f(&root))
            .and_then(|()| root.present().map_err(|e| e.into()))
    };
    match outcome {
        Ok(()) => svg,
        Err(e) => message(&format!("this plot could not be drawn: {e}")),
    }
}

/// A plot holding only `text` (no data to draw).
pub fn message(text: &str) -> String {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (SIZE.0, 80)).into_drawing_area();
        let _ = root.fill(&WHITE);
        let _ = root.draw(&Text::new(
            text.to_string(),
            (20, 30),
            ("sans-serif", 20).into_font().color(&RGBColor(90, 90, 90)),
        ));
        let _ = root.present();
    }
    svg
}

/// `(low, high)` of `values` padded by `pad` of the span on each side (and a span
/// for a single value), or `(0, 1)` when there are none.
fn span(values: impl IntoIterator<Item = f64>, pad: f64) -> (f64, f64) {
    let (lo, hi) = values
        .into_iter()
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        return (0.0, 1.0);
    }
    let width = if hi > lo {
        hi - lo
    } else {
        lo.abs().max(1.0) * 0.1
    };
    (lo - width * pad, hi + width * pad)
}

/// A number for an axis: up to 4 significant digits, no trailing zeros.
pub fn fmt_num(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let digits = (3 - v.abs().log10().floor() as i32).clamp(0, 9) as usize;
    let s = format!("{v:.digits$}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// One point of a figure with its 95 % interval (none for a single cycle).
#[derive(Clone, Debug, PartialEq)]
pub struct CiPoint {
    pub x: f64,
    pub mean: f64,
    pub ci: Option<(f64, f64)>,
}

/// A named line of [`CiPoint`]s.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    pub label: String,
    pub points: Vec<CiPoint>,
}

/// Means joined by a line per series, each with a vertical CI bar. With `log2_x` the x
/// axis is log2 (ticks labelled with the values themselves): batch sizes 1, 4, 16 sit
/// evenly apart.
pub fn ci_lines(
    caption: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[Series],
    log2_x: bool,
) -> Plot {
    let points: usize = series.iter().map(|s| s.points.len()).sum();
    if points == 0 {
        return Plot {
            svg: message("no configuration has a result yet"),
            points: 0,
        };
    }
    let tx = |x: f64| if log2_x { x.log2() } else { x };
    let xs = series.iter().flat_map(|s| s.points.iter().map(|p| tx(p.x)));
    let (x0, x1) = span(xs, 0.08);
    let ys = series.iter().flat_map(|s| {
        s.points.iter().flat_map(|p| {
            let (lo, hi) = p.ci.unwrap_or((p.mean, p.mean));
            [lo, p.mean, hi]
        })
    });
    let (y0, y1) = span(ys, 0.1);
    let y0 = if y0 < 0.0
        && series
            .iter()
            .all(|s| s.points.iter().all(|p| p.mean >= 0.0))
    {
        0.0
    } else {
        y0
    };
    // On the log2 axis only whole exponents are labelled (1, 2, 4, ...).
    let x_fmt = move |v: &f64| {
        if !log2_x {
            fmt_num(*v)
        } else if (v - v.round()).abs() < 1e-9 {
            fmt_num(2f64.powf(v.round()))
        } else {
            String::new()
        }
    };
    let x_labels = if log2_x {
        ((x1 - x0).ceil() as usize + 1).clamp(2, 12)
    } else {
        10
    };
    let y_fmt = |v: &f64| fmt_num(*v);
    let svg = draw(|root| {
        let mut chart = ChartBuilder::on(root)
            .caption(caption, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(72)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .x_label_formatter(&x_fmt)
            .x_labels(x_labels)
            .y_label_formatter(&y_fmt)
            .light_line_style(RGBColor(240, 240, 240))
            .max_light_lines(1)
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 17))
            .draw()?;
        for (i, s) in series.iter().enumerate() {
            let c = colour(i);
            let mut pts: Vec<&CiPoint> = s.points.iter().collect();
            pts.sort_by(|a, b| a.x.total_cmp(&b.x));
            chart
                .draw_series(LineSeries::new(
                    pts.iter().map(|p| (tx(p.x), p.mean)),
                    c.stroke_width(2),
                ))?
                .label(s.label.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                });
            chart.draw_series(pts.iter().filter_map(|p| {
                p.ci.map(|(lo, hi)| {
                    ErrorBar::new_vertical(tx(p.x), lo, p.mean, hi, c.stroke_width(1), 10)
                })
            }))?;
            chart.draw_series(
                pts.iter()
                    .map(|p| Circle::new((tx(p.x), p.mean), 4, c.filled())),
            )?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .label_font(("sans-serif", 15))
            .draw()?;
        Ok(())
    });
    Plot { svg, points }
}

/// A configuration in the throughput-against-energy scatter.
#[derive(Clone, Debug, PartialEq)]
pub struct ScatterPoint {
    /// Throughput (tokens/s).
    pub x: f64,
    /// Energy per token (J).
    pub y: f64,
    /// Index into the series names (its colour).
    pub series: usize,
    /// Written beside the point when it is on the front.
    pub label: String,
}

/// The indices of the points no other point beats: none has at least the throughput
/// (`x`) and at most the energy (`y`) with one of them strictly better. Sorted by `x`.
pub fn pareto_front(points: &[(f64, f64)]) -> Vec<usize> {
    let mut front: Vec<usize> = (0..points.len())
        .filter(|&i| {
            let (x, y) = points[i];
            x.is_finite()
                && y.is_finite()
                && !points.iter().any(|&(ox, oy)| {
                    ox.is_finite() && oy.is_finite() && ox >= x && oy <= y && (ox > x || oy < y)
                })
        })
        .collect();
    front.sort_by(|&a, &b| points[a].0.total_cmp(&points[b].0));
    front
}

/// Throughput (x) against energy per token (y), one colour per series, with the
/// Pareto front (more tokens/s for fewer joules) joined by a dashed line and ringed.
pub fn pareto(
    caption: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[String],
    points: &[ScatterPoint],
) -> Plot {
    if points.is_empty() {
        return Plot {
            svg: message("no configuration has a result yet"),
            points: 0,
        };
    }
    let xy: Vec<(f64, f64)> = points.iter().map(|p| (p.x, p.y)).collect();
    let front = pareto_front(&xy);
    let (x0, x1) = span(points.iter().map(|p| p.x), 0.12);
    let (y0, y1) = span(points.iter().map(|p| p.y), 0.15);
    let (x0, y0) = (x0.max(0.0), y0.max(0.0));
    let fmt = |v: &f64| fmt_num(*v);
    let svg = draw(|root| {
        let mut chart = ChartBuilder::on(root)
            .caption(caption, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(72)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc(y_desc)
            .x_label_formatter(&fmt)
            .y_label_formatter(&fmt)
            .light_line_style(RGBColor(240, 240, 240))
            .max_light_lines(1)
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 17))
            .draw()?;
        let grey = RGBColor(60, 60, 60);
        chart
            .draw_series(DashedLineSeries::new(
                front.iter().map(|&i| xy[i]),
                6,
                4,
                grey.stroke_width(1),
            ))?
            .label("Pareto front")
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], grey.stroke_width(1))
            });
        chart.draw_series(
            front
                .iter()
                .map(|&i| Circle::new(xy[i], 9, grey.stroke_width(2))),
        )?;
        // Each front label beside its point, on the side with room.
        let mid = (x0 + x1) / 2.0;
        chart.draw_series(front.iter().map(|&i| {
            let (anchor, dx) = if xy[i].0 > mid {
                (HPos::Right, -12)
            } else {
                (HPos::Left, 12)
            };
            let style = ("sans-serif", 15)
                .into_font()
                .color(&grey)
                .pos(Pos::new(anchor, VPos::Bottom));
            EmptyElement::at(xy[i]) + Text::new(points[i].label.clone(), (dx, -8), style)
        }))?;
        for (s, name) in series.iter().enumerate() {
            let c = colour(s);
            chart
                .draw_series(
                    points
                        .iter()
                        .filter(|p| p.series == s)
                        .map(|p| Circle::new((p.x, p.y), 5, c.filled())),
                )?
                .label(name.as_str())
                .legend(move |(x, y)| Circle::new((x + 10, y), 5, c.filled()));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .label_font(("sans-serif", 15))
            .draw()?;
        Ok(())
    });
    Plot {
        svg,
        points: points.len(),
    }
}

/// One run's power over its measured window and what surrounds it on the worker.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Timeline {
    /// Seconds from the window's start, and the GPU's power then (bucket means).
    pub t_s: Vec<f64>,
    pub power_w: Vec<f64>,
    /// The measured window's length.
    pub window_s: f64,
    /// The first batch's prefill inside the window (its TTFT), where the run was one batch.
    pub prefill_s: Option<f64>,
    /// The quiet spans the harness held beside each edge, and the power in them.
    pub quiet_s: Option<f64>,
    pub quiet_power_w: Option<f64>,
    /// The prefill-only window after the run: its length and mean power.
    pub prefill_window: Option<(f64, f64)>,
    pub device_idle_w: Option<f64>,
    pub resident_idle_w: Option<f64>,
}

/// The power timeline: samples inside the window (shaded), the prefill phase, the
/// quiet spans and the prefill-only window after it as their mean power, and both
/// idle baselines as dashed lines.
pub fn power_timeline(caption: &str, t: &Timeline) -> Plot {
    let n = t.t_s.len().min(t.power_w.len());
    if n == 0 {
        return Plot {
            svg: message("this run has no power timeseries"),
            points: 0,
        };
    }
    let samples: Vec<(f64, f64)> = (0..n).map(|i| (t.t_s[i], t.power_w[i])).collect();
    let quiet = t.quiet_s.zip(t.quiet_power_w).filter(|(s, _)| *s > 0.0);
    let q = quiet.map_or(0.0, |(s, _)| s);
    // The spans after the window, in the order the worker holds them.
    let mut after = t.window_s;
    let mut segments: Vec<(&str, f64, f64, f64)> = Vec::new();
    if let Some((s, w)) = quiet {
        segments.push(("quiet", -s, 0.0, w));
        segments.push(("quiet", after, after + s, w));
        after += s;
    }
    // A prefill-only window much longer than the run is cut short, so the run keeps
    // the width of the plot; its legend says how long it was.
    let mut prefill_label = "prefill-only window (mean)".to_string();
    if let Some((s, w)) = t.prefill_window.filter(|(s, _)| *s > 0.0) {
        let shown = s.min(t.window_s * 0.6 + q);
        segments.push(("prefill window", after, after + shown, w));
        after += shown;
        if shown < s {
            prefill_label = format!("prefill-only window (mean; {} s, cut short)", fmt_num(s));
        } else if let Some((qs, qw)) = quiet {
            segments.push(("quiet", after, after + qs, qw));
            after += qs;
        }
    }
    let x0 = -q - 0.02 * (after + q);
    let x1 = after + 0.02 * (after + q);
    let ys = samples
        .iter()
        .map(|p| p.1)
        .chain(segments.iter().map(|s| s.3))
        .chain(t.device_idle_w)
        .chain(t.resident_idle_w);
    let (y0, y1) = span(ys, 0.12);
    let y0 = y0.max(0.0);
    // Room above the data for the legend.
    let y1 = y1 + (y1 - y0) * 0.9;
    let fmt = |v: &f64| fmt_num(*v);
    let svg = draw(|root| {
        let mut chart = ChartBuilder::on(root)
            .caption(caption, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        chart
            .configure_mesh()
            .x_desc("seconds from the start of the measured window")
            .y_desc("power (W)")
            .x_label_formatter(&fmt)
            .y_label_formatter(&fmt)
            .light_line_style(RGBColor(240, 240, 240))
            .max_light_lines(1)
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 17))
            .draw()?;
        let window = RGBColor(0, 114, 178);
        chart
            .draw_series(std::iter::once(Rectangle::new(
                [(0.0, y0), (t.window_s, y1)],
                window.mix(0.08).filled(),
            )))?
            .label(format!("measured window ({} s)", fmt_num(t.window_s)))
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 20, y + 5)], window.mix(0.2).filled())
            });
        if let Some(p) = t.prefill_s.filter(|p| *p > 0.0) {
            let c = RGBColor(230, 159, 0);
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(0.0, y0), (p.min(t.window_s), y1)],
                    c.mix(0.25).filled(),
                )))?
                .label("prefill (first token), then decode")
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 5), (x + 20, y + 5)], c.mix(0.4).filled())
                });
        }
        let span_colour = RGBColor(0, 158, 115);
        let mut labelled = (false, false);
        for (what, a, b, w) in &segments {
            let (c, width) = if *what == "quiet" {
                (span_colour, 3)
            } else {
                (RGBColor(204, 121, 167), 3)
            };
            let drawn = chart.draw_series(std::iter::once(PathElement::new(
                vec![(*a, *w), (*b, *w)],
                c.stroke_width(width),
            )))?;
            let first = if *what == "quiet" {
                !std::mem::replace(&mut labelled.0, true)
            } else {
                !std::mem::replace(&mut labelled.1, true)
            };
            if first {
                let label = if *what == "quiet" {
                    "quiet spans (mean, from the counter)".to_string()
                } else {
                    prefill_label.clone()
                };
                drawn.label(label).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(3))
                });
            }
        }
        for (w, label, c) in [
            (
                t.device_idle_w,
                "device idle baseline",
                RGBColor(120, 120, 120),
            ),
            (
                t.resident_idle_w,
                "resident idle baseline",
                RGBColor(213, 94, 0),
            ),
        ] {
            if let Some(w) = w {
                chart
                    .draw_series(DashedLineSeries::new(
                        [(x0, w), (x1, w)],
                        8,
                        5,
                        c.stroke_width(2),
                    ))?
                    .label(format!("{label} {} W", fmt_num(w)))
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
                    });
            }
        }
        chart
            .draw_series(LineSeries::new(
                samples.iter().copied(),
                window.stroke_width(2),
            ))?
            .label("power in the window (samples, bucket means)")
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], window.stroke_width(2))
            });
        chart.draw_series(samples.iter().map(|p| Circle::new(*p, 2, window.filled())))?;
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .label_font(("sans-serif", 15))
            .draw()?;
        Ok(())
    });
    Plot { svg, points: n }
}

/// A GPU's runs across a campaign: `(minutes since the first run started, start °C,
/// hottest °C in the window)` per run.
#[derive(Clone, Debug, PartialEq)]
pub struct TempSeries {
    pub label: String,
    pub points: Vec<(f64, f64, f64)>,
}

/// Temperature across the campaign: per GPU, each run's hottest temperature in its
/// window (circles, joined) and its temperature as the window began (a bar down to it).
pub fn temperatures(caption: &str, series: &[TempSeries]) -> Plot {
    let points: usize = series.iter().map(|s| s.points.len()).sum();
    if points == 0 {
        return Plot {
            svg: message("no run has a result yet"),
            points: 0,
        };
    }
    let (x0, x1) = span(
        series.iter().flat_map(|s| s.points.iter().map(|p| p.0)),
        0.05,
    );
    let (y0, y1) = span(
        series
            .iter()
            .flat_map(|s| s.points.iter().flat_map(|p| [p.1, p.2])),
        0.15,
    );
    let fmt = |v: &f64| fmt_num(*v);
    let svg = draw(|root| {
        let mut chart = ChartBuilder::on(root)
            .caption(caption, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(44)
            .y_label_area_size(64)
            .build_cartesian_2d(x0..x1, y0..y1)?;
        chart
            .configure_mesh()
            .x_desc("minutes since the campaign's first run started")
            .y_desc("GPU temperature (°C)")
            .x_label_formatter(&fmt)
            .y_label_formatter(&fmt)
            .light_line_style(RGBColor(240, 240, 240))
            .max_light_lines(1)
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 17))
            .draw()?;
        for (i, s) in series.iter().enumerate() {
            let c = colour(i);
            let mut pts = s.points.clone();
            pts.sort_by(|a, b| a.0.total_cmp(&b.0));
            chart.draw_series(pts.iter().map(|p| {
                PathElement::new(vec![(p.0, p.1), (p.0, p.2)], c.mix(0.5).stroke_width(2))
            }))?;
            chart
                .draw_series(LineSeries::new(
                    pts.iter().map(|p| (p.0, p.2)),
                    c.stroke_width(1),
                ))?
                .label(format!(
                    "{} (hottest in window; bar from its start)",
                    s.label
                ))
                .legend(move |(x, y)| Circle::new((x + 10, y), 4, c.filled()));
            chart.draw_series(pts.iter().map(|p| Circle::new((p.0, p.2), 4, c.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(RGBColor(180, 180, 180))
            .label_font(("sans-serif", 15))
            .draw()?;
        Ok(())
    });
    Plot { svg, points }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn circles(svg: &str) -> usize {
        svg.matches("<circle").count()
    }

    #[test]
    fn pareto_front_keeps_what_nothing_beats() {
        // (tok/s, J/tok): 0 and 2 are beaten by 1; 3 is the fastest; 4 the leanest.
        let pts = [
            (100.0, 0.5),
            (200.0, 0.3),
            (150.0, 0.4),
            (400.0, 0.6),
            (50.0, 0.1),
        ];
        assert_eq!(pareto_front(&pts), vec![4, 1, 3]);
        // Equal points are both on it; a NaN is on nothing and beats nothing.
        assert_eq!(pareto_front(&[(1.0, 1.0), (1.0, 1.0)]), vec![0, 1]);
        assert_eq!(pareto_front(&[(f64::NAN, 0.0), (1.0, 1.0)]), vec![1]);
        assert!(pareto_front(&[]).is_empty());
    }

    #[test]
    fn numbers_on_axes_are_short() {
        assert_eq!(fmt_num(0.123456), "0.1235");
        assert_eq!(fmt_num(1500.0), "1500");
        assert_eq!(fmt_num(2.5), "2.5");
        assert_eq!(fmt_num(0.0), "0");
        assert_eq!(fmt_num(16.000001), "16");
    }

    #[test]
    fn every_plot_draws_its_points_as_svg_without_fonts() {
        let s = |label: &str, k: f64| Series {
            label: label.into(),
            points: [1.0, 4.0, 16.0]
                .iter()
                .map(|&x| CiPoint {
                    x,
                    mean: k / x,
                    ci: Some((0.9 * k / x, 1.1 * k / x)),
                })
                .collect(),
        };
        let p = ci_lines(
            "J/token",
            "batch size",
            "J/token",
            &[s("a", 1.0), s("b", 2.0)],
            true,
        );
        assert_eq!(p.points, 6);
        assert!(circles(&p.svg) >= 6, "{}", p.svg);
        assert!(p.svg.starts_with("<svg") && p.svg.contains("<text") && !p.svg.contains("NaN"));

        let pts: Vec<ScatterPoint> = (0..4)
            .map(|i| ScatterPoint {
                x: 100.0 * f64::from(i + 1),
                y: 0.1 * f64::from((i % 2) + 1),
                series: 0,
                label: format!("c{i}"),
            })
            .collect();
        let p = pareto("front", "tok/s", "J/tok", &["synthetic".into()], &pts);
        assert_eq!(p.points, 4);
        assert!(
            circles(&p.svg) >= 4 && p.svg.contains("\nc3\n"),
            "{}",
            p.svg
        );

        let t = Timeline {
            t_s: vec![0.05, 0.15, 0.25],
            power_w: vec![300.0, 310.0, 305.0],
            window_s: 0.3,
            prefill_s: Some(0.02),
            quiet_s: Some(0.35),
            quiet_power_w: Some(110.0),
            prefill_window: Some((3.0, 400.0)),
            device_idle_w: Some(70.0),
            resident_idle_w: Some(110.0),
        };
        let p = power_timeline("run 1-0001", &t);
        assert_eq!(p.points, 3);
        assert!(circles(&p.svg) >= 3);
        for legend in [
            "device idle baseline 70 W",
            "resident idle baseline 110 W",
            "prefill-only window",
        ] {
            assert!(p.svg.contains(legend), "{legend}");
        }

        let p = temperatures(
            "temperature",
            &[TempSeries {
                label: "gpu0".into(),
                points: vec![(0.0, 40.0, 45.0), (1.0, 42.0, 47.0)],
            }],
        );
        assert_eq!(p.points, 2);
        assert!(circles(&p.svg) >= 2);
    }

    #[test]
    fn nothing_to_draw_says_so() {
        let p = ci_lines("x", "x", "y", &[], false);
        assert_eq!(p.points, 0);
        assert!(p.svg.contains("no configuration has a result yet"));
        assert_eq!(power_timeline("t", &Timeline::default()).points, 0);
    }
}
