//! The harness protocol as the worker sees it: requests it sends, events it reads,
//! and the transcript of one run folded from those events.
//!
//! The harness (Python, `docker/harness/`, protocol spec in its README) answers a run
//! request with JSON lines, each an object with `event` and `t_mono_ns`
//! (CLOCK_MONOTONIC nanoseconds, the clock the worker's telemetry samples use). This
//! module parses lines leniently, keeping every field, and folds them into a
//! [`RunTranscript`] with the window edges, the phases and the result; it does no IO.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::energy::{Quiet, Window};
use crate::types::FailureClass;

/// A quiet span belongs to a window edge when it ends (starts) at most this long
/// before (after) it: the harness writes the edge right after the span.
pub const QUIET_ADJACENT_NS: u64 = 5_000_000;

/// One event line from the harness.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HarnessEvent {
    pub event: String,
    #[serde(default)]
    pub t_mono_ns: u64,
    #[serde(flatten)]
    pub body: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Error)]
pub enum EventParseError {
    #[error("harness sent a line that is not a JSON event object: {line:?} ({source})")]
    NotJson {
        line: String,
        source: serde_json::Error,
    },
}

/// What a harness event says, typed (docker/harness/README.md lists them). An event
/// this worker does not know is [`Event::Other`]: the harness can grow.
#[derive(Clone, Debug, PartialEq)]
pub enum Event<'a> {
    Loaded {
        already_loaded: Option<bool>,
        load_seconds: Option<f64>,
    },
    WarmupDone,
    QuietStart,
    QuietEnd,
    MeasureStart,
    MeasureEnd,
    Phase {
        phase: &'a str,
        batch_size: u32,
    },
    PrefillWindowStart,
    PrefillWindowEnd {
        calls: u64,
        passes: u64,
    },
    FirstToken,
    RequestEnd,
    /// The run's result (`metrics`, `engine_version`, `versions`: see the body).
    Result,
    Error {
        class: FailureClass,
        message: &'a str,
    },
    Pong,
    Other(&'a str),
}

impl HarnessEvent {
    /// The event, typed.
    pub fn kind(&self) -> Event<'_> {
        match self.event.as_str() {
            "loaded" => Event::Loaded {
                already_loaded: self.bool_field("already_loaded"),
                load_seconds: self.f64_field("load_seconds"),
            },
            "warmup_done" => Event::WarmupDone,
            "quiet_start" => Event::QuietStart,
            "quiet_end" => Event::QuietEnd,
            "measure_start" => Event::MeasureStart,
            "measure_end" => Event::MeasureEnd,
            "phase" => Event::Phase {
                phase: self.str_field("phase").unwrap_or("idle"),
                batch_size: self.u64_field("batch_size").unwrap_or(1) as u32,
            },
            "prefill_window_start" => Event::PrefillWindowStart,
            "prefill_window_end" => Event::PrefillWindowEnd {
                calls: self.u64_field("calls").unwrap_or(0),
                passes: self.u64_field("passes").unwrap_or(0),
            },
            "first_token" => Event::FirstToken,
            "request_end" => Event::RequestEnd,
            "result" => Event::Result,
            "error" => Event::Error {
                class: match self.str_field("class") {
                    Some("configuration") => FailureClass::Configuration,
                    _ => FailureClass::Infrastructure,
                },
                message: self
                    .str_field("message")
                    .unwrap_or("harness reported an error without a message"),
            },
            "pong" => Event::Pong,
            other => Event::Other(other),
        }
    }

    /// Whether the event ends a run (its `result` or `error`).
    pub fn ends_run(&self) -> bool {
        matches!(self.kind(), Event::Result | Event::Error { .. })
    }

    pub fn parse(line: &str) -> Result<HarnessEvent, EventParseError> {
        serde_json::from_str(line).map_err(|source| EventParseError::NotJson {
            line: line.chars().take(200).collect(),
            source,
        })
    }

    pub fn f64_field(&self, key: &str) -> Option<f64> {
        self.body.get(key).and_then(|v| v.as_f64())
    }

    pub fn u64_field(&self, key: &str) -> Option<u64> {
        self.body.get(key).and_then(|v| v.as_u64())
    }

    pub fn bool_field(&self, key: &str) -> Option<bool> {
        self.body.get(key).and_then(|v| v.as_bool())
    }

    pub fn str_field(&self, key: &str) -> Option<&str> {
        self.body.get(key).and_then(|v| v.as_str())
    }
}

/// What the worker asks of the harness for one run, besides the config.
#[derive(Clone, Debug, PartialEq)]
pub struct RunRequest<'a> {
    pub run_id: &'a str,
    /// The canonical config as Python-compatible JSON text (it may hold
    /// `NaN`/`Infinity`, which Python's `json.loads` reads); embedded as is.
    pub config_json: &'a str,
    pub dataset_path: &'a str,
    pub prefill_window_seconds: f64,
    /// Length of each quiet span beside a window edge (0: none).
    pub quiet_seconds: f64,
    /// `always` or `when_profiling` (llem's `measurement.latency_profiling`).
    pub per_token_timing: &'a str,
    pub force_cold_start: bool,
}

/// The JSON line of a run request; everything but the config is escaped here.
pub fn run_request_line(r: &RunRequest<'_>) -> String {
    let s = |v: &str| serde_json::Value::String(v.to_string());
    format!(
        "{{\"type\": \"run\", \"run_id\": {}, \"force_cold_start\": {}, \"dataset_path\": {}, \"prefill_window_seconds\": {}, \"quiet_seconds\": {}, \"per_token_timing\": {}, \"config\": {}}}",
        s(r.run_id),
        r.force_cold_start,
        s(r.dataset_path),
        serde_json::json!(r.prefill_window_seconds),
        serde_json::json!(r.quiet_seconds),
        s(r.per_token_timing),
        r.config_json
    )
}

/// A phase of the work inside the measured window, as the harness announced it.
#[derive(Clone, Debug, PartialEq)]
pub struct PhaseMark {
    pub t_mono_ns: u64,
    pub phase: String,
    pub batch_size: u32,
}

/// The harness's window of repeated prefill-only calls (same batches, one output
/// token), from which the worker derives J per prefill.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PrefillWindow {
    pub start_ns: u64,
    pub end_ns: Option<u64>,
    /// Prefill calls (one per batch) in the window.
    pub calls: u64,
    /// Whole passes over the measured run's batches.
    pub passes: u64,
}

/// How a run ended, as far as the harness is concerned.
#[derive(Clone, Debug, PartialEq)]
pub enum RunOutcome {
    Result {
        metrics: serde_json::Value,
        engine_version: Option<String>,
    },
    Error {
        class: FailureClass,
        message: String,
    },
}

/// Everything one run's events said, folded in order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunTranscript {
    pub loaded_at_ns: Option<u64>,
    pub already_loaded: Option<bool>,
    pub load_seconds: Option<f64>,
    pub warmup: Option<serde_json::Value>,
    pub measure_start_ns: Option<u64>,
    pub measure_end_ns: Option<u64>,
    pub phases: Vec<PhaseMark>,
    /// The prefill-only differential window after the measured one, if the harness ran it.
    pub prefill_window: Option<PrefillWindow>,
    pub n_first_tokens: u64,
    pub n_requests_ended: u64,
    pub outcome: Option<RunOutcome>,
    /// The quiet spans the harness held (`quiet_start` .. `quiet_end`), in order.
    pub quiet: Vec<Quiet>,
    /// A `quiet_start` not yet ended.
    pub quiet_open: Option<u64>,
}

impl RunTranscript {
    /// Folds one event in. Unknown events are ignored so the harness can grow.
    pub fn handle_event(&mut self, ev: &HarnessEvent) {
        let t = ev.t_mono_ns;
        match ev.kind() {
            Event::Loaded {
                already_loaded,
                load_seconds,
            } => {
                self.loaded_at_ns = Some(t);
                self.already_loaded = already_loaded;
                self.load_seconds = load_seconds;
            }
            Event::WarmupDone => {
                self.warmup = Some(serde_json::Value::Object(ev.body.clone()));
            }
            Event::MeasureStart => self.measure_start_ns = Some(t),
            Event::MeasureEnd => self.measure_end_ns = Some(t),
            Event::Phase { phase, batch_size } => self.phases.push(PhaseMark {
                t_mono_ns: t,
                phase: phase.to_string(),
                batch_size,
            }),
            Event::PrefillWindowStart => {
                self.prefill_window = Some(PrefillWindow {
                    start_ns: t,
                    ..Default::default()
                })
            }
            Event::PrefillWindowEnd { calls, passes } => {
                if let Some(w) = self.prefill_window.as_mut() {
                    w.end_ns = Some(t);
                    w.calls = calls;
                    w.passes = passes;
                }
            }
            Event::QuietStart => self.quiet_open = Some(t),
            Event::QuietEnd => {
                if let Some(from_ns) = self.quiet_open.take() {
                    if t > from_ns {
                        self.quiet.push(Quiet { from_ns, to_ns: t });
                    }
                }
            }
            Event::FirstToken => self.n_first_tokens += 1,
            Event::RequestEnd => self.n_requests_ended += 1,
            Event::Result => {
                let mut metrics = ev
                    .body
                    .get("metrics")
                    .cloned()
                    .unwrap_or(serde_json::Value::Null);
                // Library versions travel beside the metrics; keep them together.
                if let (Some(m), Some(v)) = (metrics.as_object_mut(), ev.body.get("versions")) {
                    m.insert("versions".into(), v.clone());
                }
                self.outcome = Some(RunOutcome::Result {
                    metrics,
                    engine_version: ev.str_field("engine_version").map(str::to_string),
                })
            }
            Event::Error { class, message } => {
                self.outcome = Some(RunOutcome::Error {
                    class,
                    message: message.to_string(),
                });
            }
            Event::Pong | Event::Other(_) => {}
        }
    }

    /// The measured window, when both edges were seen in order.
    pub fn window_ns(&self) -> Option<(u64, u64)> {
        match (self.measure_start_ns, self.measure_end_ns) {
            (Some(a), Some(b)) if b > a => Some((a, b)),
            _ => None,
        }
    }

    /// The measured window with the quiet spans beside its edges.
    pub fn window(&self) -> Option<Window> {
        let (t0, t1) = self.window_ns()?;
        Some(self.with_quiet(t0, t1))
    }

    /// The prefill window (start and end seen, in order) with the quiet spans beside it.
    pub fn prefill_window_edges(&self) -> Option<Window> {
        let pw = self.prefill_window.as_ref()?;
        let end = pw.end_ns.filter(|e| *e > pw.start_ns)?;
        Some(self.with_quiet(pw.start_ns, end))
    }

    fn with_quiet(&self, t0: u64, t1: u64) -> Window {
        Window {
            t0,
            t1,
            quiet_before: self
                .quiet
                .iter()
                .rev()
                .find(|q| q.to_ns <= t0 && t0 - q.to_ns <= QUIET_ADJACENT_NS)
                .copied(),
            quiet_after: self
                .quiet
                .iter()
                .find(|q| q.from_ns >= t1 && q.from_ns - t1 <= QUIET_ADJACENT_NS)
                .copied(),
        }
    }

    pub fn is_finished(&self) -> bool {
        self.outcome.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transcript_folds_a_run() {
        let lines = [
            r#"{"event":"loaded","t_mono_ns":10,"already_loaded":true,"load_seconds":0.0,"model_key":"k"}"#,
            r#"{"event":"measure_start","t_mono_ns":100}"#,
            r#"{"event":"phase","phase":"prefill","batch_size":4,"t_mono_ns":101}"#,
            r#"{"event":"first_token","request":0,"t_mono_ns":120}"#,
            r#"{"event":"phase","phase":"decode","batch_size":4,"t_mono_ns":121}"#,
            r#"{"event":"request_end","request":0,"t_mono_ns":190}"#,
            r#"{"event":"some_future_event","t_mono_ns":195}"#,
            r#"{"event":"measure_end","t_mono_ns":200}"#,
            r#"{"event":"result","t_mono_ns":201,"metrics":{"output_tokens":8},"engine_version":"1.0"}"#,
        ];
        let mut t = RunTranscript::default();
        for l in lines {
            t.handle_event(&HarnessEvent::parse(l).unwrap());
        }
        assert_eq!(t.window_ns(), Some((100, 200)));
        assert_eq!(t.already_loaded, Some(true));
        assert_eq!(t.phases.len(), 2);
        assert_eq!(t.phases[0].batch_size, 4);
        assert_eq!(t.n_first_tokens, 1);
        assert!(matches!(t.outcome, Some(RunOutcome::Result { .. })));
    }

    #[test]
    fn quiet_spans_attach_to_the_window_edges_beside_them() {
        let lines = [
            r#"{"event":"quiet_start","t_mono_ns":1000000,"seconds":0.35}"#,
            r#"{"event":"quiet_end","t_mono_ns":351000000}"#,
            r#"{"event":"measure_start","t_mono_ns":351010000}"#,
            r#"{"event":"measure_end","t_mono_ns":900000000}"#,
            r#"{"event":"quiet_start","t_mono_ns":900020000}"#,
            r#"{"event":"quiet_end","t_mono_ns":1250000000}"#,
            r#"{"event":"prefill_window_start","t_mono_ns":1250010000}"#,
            r#"{"event":"prefill_window_end","t_mono_ns":1500000000,"calls":4,"passes":2}"#,
            r#"{"event":"quiet_start","t_mono_ns":1500030000}"#,
            r#"{"event":"quiet_end","t_mono_ns":1850000000}"#,
        ];
        let mut t = RunTranscript::default();
        for l in lines {
            t.handle_event(&HarnessEvent::parse(l).unwrap());
        }
        let w = t.window().unwrap();
        assert_eq!((w.t0, w.t1), (351_010_000, 900_000_000));
        assert_eq!(w.quiet_before.unwrap().from_ns, 1_000_000);
        assert_eq!(w.quiet_after.unwrap().to_ns, 1_250_000_000);
        let p = t.prefill_window_edges().unwrap();
        assert_eq!(p.quiet_before, w.quiet_after);
        assert_eq!(p.quiet_after.unwrap().from_ns, 1_500_030_000);
        // A span that ended well before an edge is not that edge's.
        let mut far = RunTranscript::default();
        for l in [
            r#"{"event":"quiet_start","t_mono_ns":1000}"#,
            r#"{"event":"quiet_end","t_mono_ns":2000}"#,
            r#"{"event":"measure_start","t_mono_ns":100000000}"#,
            r#"{"event":"measure_end","t_mono_ns":200000000}"#,
        ] {
            far.handle_event(&HarnessEvent::parse(l).unwrap());
        }
        assert_eq!(far.window().unwrap().quiet_before, None);
        assert_eq!(far.window().unwrap().quiet_after, None);
    }

    #[test]
    fn error_event_keeps_class() {
        let mut t = RunTranscript::default();
        t.handle_event(
            &HarnessEvent::parse(
                r#"{"event":"error","class":"configuration","message":"bad dtype","t_mono_ns":5}"#,
            )
            .unwrap(),
        );
        assert_eq!(
            t.outcome,
            Some(RunOutcome::Error {
                class: FailureClass::Configuration,
                message: "bad dtype".into()
            })
        );
    }

    #[test]
    fn run_request_line_is_json_with_the_config_embedded() {
        let req = RunRequest {
            run_id: "1-0001",
            config_json: r#"{"task": {"model": "m"}}"#,
            dataset_path: "/d/a \"b\".jsonl",
            prefill_window_seconds: 3.0,
            quiet_seconds: 0.35,
            per_token_timing: "always",
            force_cold_start: false,
        };
        let line = run_request_line(&req);
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["type"], "run");
        assert_eq!(v["run_id"], "1-0001");
        assert_eq!(v["dataset_path"], "/d/a \"b\".jsonl");
        assert_eq!(v["prefill_window_seconds"], 3.0);
        assert_eq!(v["quiet_seconds"], 0.35);
        assert_eq!(v["per_token_timing"], "always");
        assert_eq!(v["force_cold_start"], false);
        assert_eq!(v["config"]["task"]["model"], "m");
        // A non-finite float in the config passes through for Python to read.
        let line = run_request_line(&RunRequest {
            config_json: r#"{"rate": Infinity}"#,
            ..req
        });
        assert!(line.ends_with(r#""config": {"rate": Infinity}}"#), "{line}");
    }

    #[test]
    fn garbage_line_is_a_clear_error() {
        let e = HarnessEvent::parse("Traceback (most recent call last):").unwrap_err();
        assert!(e.to_string().contains("not a JSON event object"));
    }
}
