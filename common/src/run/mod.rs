//! The life of one leased run on a worker, as a state machine with no IO.
//!
//! A slot (the worker's driver, `worker/src/slot.rs`) creates a [`RunLifecycle`] for each
//! granted run and then does only what it is told: it asks [`RunLifecycle::poll`] for the
//! next [`Command`], carries it out (stop the harness, list the GPU's processes, measure
//! idle power, wait at the thermal gate, dispatch the run to the harness, collect the
//! window's samples), and hands back what came of it with [`RunLifecycle::handle`]. While
//! the harness runs, each of its events goes to [`RunLifecycle::handle_event`], which
//! answers with the [`Effect`]s the driver applies at once (counter bursts, the simulated
//! GPU's load). The last command is [`Command::Finish`] with the run's result or failure.
//! Time is an argument (`now_ns`, CLOCK_MONOTONIC); nothing here reads a clock or a
//! device.
//!
//! The steps, in order (docs/measurement.md): the device-idle baseline per the study's
//! strategy (the harness stopped, the GPUs' processes listed before and after), the
//! thermal gate, a last look at the GPUs, the run with its quiet spans and counter
//! bursts, a look at the GPUs as it ended, the window's energy from the samples and the
//! counter reads, the resident-idle baseline, and the result's assembly
//! ([`assemble::assemble`], the one constructor of a [`RunResult`]). The policies
//! live beside it as pure functions: [`baseline`] (when a cached baseline is reused),
//! [`crate::isolation`] (what another process on a GPU means), [`crate::energy`] (the
//! edge rule) and [`window`] (the window's telemetry).

pub mod assemble;
pub mod baseline;
pub mod sample;
pub mod window;

use std::collections::BTreeSet;
use std::time::Duration;

use crate::energy::{sum_windows, window_energy_in, EdgeRule, Window, WindowEnergy};
use crate::harness::{Event, HarnessEvent, RunOutcome, RunTranscript};
use crate::isolation::{
    decide, describe_processes, merge, shared_warnings, CheckPoint, GpuProcess, IsolationPolicy,
    Verdict,
};
use crate::thermal::GateReason;
use crate::types::{FailureClass, ForeignProcess, RunResult};
use crate::Value;

use self::baseline::{
    device_plan, drifted, resident_reusable, BaselineCache, BaselineSettings, CachedIdle,
    DevicePlan, Idle, SPOT_CHECK_S,
};
use self::sample::{power_samples, TelemetrySample};

/// Points kept of a window's telemetry in the result.
pub const TIMESERIES_POINTS: usize = 240;

/// Counter burst length at a window edge when the harness holds no quiet spans.
pub const EDGE_BURST: Duration = Duration::from_millis(300);

/// A run's failure: whether retrying can help, and why.
pub type Failure = (FailureClass, String);

/// The worker's settings a run needs (its flags).
#[derive(Clone, Debug, PartialEq)]
pub struct Settings {
    pub prefill_window_s: f64,
    /// Quiet span beside each window edge, in seconds (0: none).
    pub quiet_s: f64,
    /// The harness's `per_token_timing`.
    pub per_token_timing: String,
    pub isolation: IsolationPolicy,
    /// What this host lets a study decide ([`crate::policy`]).
    pub host: crate::policy::HostPolicy,
    /// GPU memory growth (MiB, over the run's GPUs) past the memory held after the
    /// model was loaded that recycles the harness after a run (0: never).
    pub recycle_memory_growth_mb: u64,
}

/// Who runs it and where: the parts of the result that do not come from the run.
#[derive(Clone, Debug, PartialEq)]
pub struct Where {
    pub worker: String,
    pub host: String,
    pub slot: u32,
    /// The GPUs of the run (NVML indices), in order, and each one's name, UUID and
    /// whether it is the simulated GPU.
    pub gpus: Vec<u32>,
    pub gpu_descriptions: Vec<(String, String, bool)>,
    /// The GPU memory (MiB, summed over the GPUs) the harness held after its last run
    /// that loaded a model, and that model (`task.model`): the mark memory growth is
    /// measured from.
    pub memory_mark: Option<(String, u64)>,
    /// The slot's environment snapshot (host and GPUs); the result has it with the
    /// engine versions the run's harness reported, and its hash.
    pub environment: serde_json::Value,
}

/// The run as it was leased.
#[derive(Clone, Debug, PartialEq)]
pub struct Leased {
    pub run_id: String,
    pub engine: String,
    pub config_json: String,
    /// The study's pause before this run (the thermal gate waits at least this).
    pub gap_before_s: f64,
    /// When the lease was granted (CLOCK_MONOTONIC ns).
    pub lease_mono_ns: u64,
    /// The study's limit on the whole run, and on the harness's silence between
    /// events (`None`: no watchdog).
    pub timeout: Duration,
    pub silence: Option<Duration>,
    /// Start cold: recycle the harness and load the model anew.
    pub force_cold_start: bool,
}

/// Which idle figure to measure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdleKind {
    /// No process of the worker's on the GPUs (the harness stopped).
    Device,
    /// The harness and the run's model loaded.
    Resident,
}

impl IdleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            IdleKind::Device => "device",
            IdleKind::Resident => "resident",
        }
    }
}

/// What the driver must do next.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    /// Stop the harness server (device idle means no CUDA context of ours), then
    /// [`Input::HarnessStopped`].
    StopHarness,
    /// List the processes on the run's GPUs and the worker's own, then
    /// [`Input::Processes`].
    ListProcesses(CheckPoint),
    /// Wait for the power to settle, average it for `duration_s`, then [`Input::Idle`].
    MeasureIdle {
        kind: IdleKind,
        duration_s: f64,
        strategy: &'static str,
    },
    /// Keep this for the next runs on these GPUs.
    Remember(Box<BaselineCache>),
    /// Keep this as the harness's memory mark (see [`Where::memory_mark`]).
    MarkMemory(Option<(String, u64)>),
    /// Wait the gap, then until the GPUs have cooled (`idle_temps` per GPU, from the
    /// baseline in use), then [`Input::GateOpened`].
    WaitGate {
        gap_s: f64,
        idle_temps: Vec<Option<f64>>,
    },
    /// Where the harness finds the prompt file `source` names, then [`Input::Dataset`].
    ResolveDataset(String),
    /// Send this request line to the harness and feed every event to
    /// [`RunLifecycle::handle_event`], then [`Input::HarnessEnded`]. The run may last
    /// `timeout` and the harness may be silent for `silence` (the study's limits).
    Dispatch {
        request_line: String,
        timeout: Duration,
        silence: Option<Duration>,
    },
    /// Collect each GPU's samples and counter reads around the run's window (and the
    /// prefill window's), then [`Input::Collected`].
    Collect {
        run: Window,
        prefill: Option<Window>,
    },
    /// The run is over.
    Finish(Result<Box<RunResult>, Failure>),
}

/// What the driver saw.
#[derive(Clone, Debug, PartialEq)]
pub enum Input {
    HarnessStopped,
    /// The processes NVML lists on the run's GPUs, the worker's own pids, and GPUs
    /// that could not be listed.
    Processes {
        listed: Vec<GpuProcess>,
        own: BTreeSet<u32>,
        errors: Vec<String>,
    },
    Idle(Idle),
    GateOpened {
        waited_s: f64,
        reason: GateReason,
    },
    /// The dataset's path as the harness sees it.
    Dataset(String),
    /// The run request ended: `Err` when the harness could not be reached or the
    /// connection broke (the host's fault), with the wall time it ended at.
    HarnessEnded {
        result: Result<(), String>,
        started_unix_ms: u64,
        ended_unix_ms: u64,
    },
    Collected(Collected),
}

/// One GPU's telemetry around the windows.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GpuCollected {
    /// Samples around the run's window, and counter reads reaching over its quiet spans.
    pub samples: Vec<TelemetrySample>,
    pub counter: Vec<crate::energy::CounterSample>,
    /// The same around the prefill window.
    pub prefill_samples: Vec<TelemetrySample>,
    pub prefill_counter: Vec<crate::energy::CounterSample>,
    /// The sampler's last error, for a message when no sample is usable.
    pub last_error: Option<String>,
}

/// Every GPU's telemetry, in the run's GPU order, and the sampler's timing.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Collected {
    pub gpus: Vec<GpuCollected>,
    pub sample_interval_ms: f64,
    pub sampler_mean_late_us: f64,
    pub sampler_max_late_us: f64,
}

/// What the driver applies at once while the harness runs.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Read the counter back to back for this long (a quiet span began, or a window
    /// edge passed with no quiet spans).
    CounterBurst(Duration),
    /// Stop reading the counter back to back (the quiet span ended).
    CounterBurstStop,
    /// The work changed (the simulated GPU's load follows it).
    Phase {
        phase: String,
        batch_size: u32,
        t_mono_ns: u64,
    },
    /// A model is resident (loaded) from now on.
    Resident { t_mono_ns: u64 },
}

/// What the device isolation checks found during one run.
#[derive(Clone, Debug, Default, PartialEq)]
struct IsolationLog {
    foreign: Vec<ForeignProcess>,
    errors: BTreeSet<String>,
    notes: Vec<String>,
}

impl IsolationLog {
    fn warnings(&self) -> Vec<String> {
        let mut out = shared_warnings(&self.foreign);
        out.extend(self.notes.iter().cloned());
        out.extend(
            self.errors
                .iter()
                .map(|e| format!("device isolation not checked on {e}")),
        );
        out
    }
}

/// Where the lifecycle is. Each state but `Finished` waits for one input.
#[derive(Clone, Debug, PartialEq)]
enum Stage {
    /// Decide the device baseline (nothing asked yet).
    Start,
    /// Waiting for the harness to stop before a device-idle measurement.
    Stopping {
        spot: bool,
    },
    /// Waiting for the process listing before (`measured` None) or after a device-idle
    /// measurement; `spot` for the `validated` spot check.
    DeviceCheck {
        spot: bool,
        shared_before: bool,
        measured: Option<Idle>,
    },
    /// Waiting for a device-idle measurement.
    DeviceMeasure {
        spot: bool,
        shared_before: bool,
    },
    Gate,
    Dataset,
    /// Waiting for the harness to stop before a cold start.
    Recycling,
    /// Waiting for the process listing before dispatching the run.
    WindowCheckBefore,
    Running,
    /// Waiting for the process listing as the run ended.
    WindowCheckAfter,
    Collecting,
    /// Waiting for the listing before (`measured` None) or after the resident idle.
    ResidentCheck {
        shared_before: bool,
        measured: Option<Idle>,
    },
    ResidentMeasure {
        shared_before: bool,
    },
    /// Waiting for the harness to stop after a run whose memory grew too much; then
    /// the run finishes with `outcome`.
    RecyclingAfter {
        outcome: Result<Box<RunResult>, Failure>,
    },
    Finished,
}

/// What the run has gathered so far.
#[derive(Clone, Debug, Default, PartialEq)]
struct Gathered {
    warnings: Vec<String>,
    iso: IsolationLog,
    baseline: Option<Idle>,
    gate: Option<(f64, GateReason)>,
    transcript: RunTranscript,
    started_unix_ms: u64,
    ended_unix_ms: u64,
    window: Option<Measured>,
    resident: Option<Idle>,
}

/// The window's figures, computed from the collected telemetry.
#[derive(Clone, Debug, PartialEq)]
struct Measured {
    run: Window,
    energy: WindowEnergy,
    per_gpu: Vec<WindowEnergy>,
    prefill: Option<WindowEnergy>,
    samples: Vec<Vec<TelemetrySample>>,
    collected: Collected,
    /// GPU memory (MiB, summed over the GPUs) as the run began and as it ended.
    memory_mb: Option<(u64, u64)>,
    /// Why the harness is recycled after this run, if it is.
    recycle: Option<String>,
}

/// One leased run's lifecycle (see the module docs for the contract).
#[derive(Debug)]
pub struct RunLifecycle {
    leased: Leased,
    settings: Settings,
    place: Where,
    config: Option<Value>,
    baseline_settings: BaselineSettings,
    cache: BaselineCache,
    stage: Stage,
    got: Gathered,
    /// What the `validated` spot check's listings found (noted, not flagged: the
    /// cached baseline was measured with the GPUs to itself).
    spot: IsolationLog,
    /// The prompt file as the harness sees it.
    dataset: Option<String>,
    pending: std::collections::VecDeque<Command>,
}

impl RunLifecycle {
    /// A lifecycle for `leased`, measured on `place` with the worker's `settings`;
    /// `cache` is what the slot remembers of earlier runs on the same GPUs.
    pub fn new(leased: Leased, settings: Settings, place: Where, cache: BaselineCache) -> Self {
        let config = crate::pyjson::parse(&leased.config_json).ok();
        let baseline_settings = config
            .as_ref()
            .map(BaselineSettings::from_config)
            .unwrap_or_else(|| BaselineSettings::from_config(&Value::Null));
        RunLifecycle {
            leased,
            settings,
            place,
            config,
            baseline_settings,
            cache,
            stage: Stage::Start,
            got: Gathered::default(),
            spot: IsolationLog::default(),
            dataset: None,
            pending: std::collections::VecDeque::new(),
        }
    }

    /// The next command, or `None` while waiting for an input. `now_ns` is the time
    /// (CLOCK_MONOTONIC) as the driver asks.
    pub fn poll(&mut self, now_ns: u64) -> Option<Command> {
        if let Some(c) = self.pending.pop_front() {
            return Some(c);
        }
        if self.stage == Stage::Start {
            self.start(now_ns);
            return self.pending.pop_front();
        }
        None
    }

    fn finish(&mut self, outcome: Result<Box<RunResult>, Failure>) {
        if outcome.as_ref().is_ok_and(|r| r.harness.recycled.is_some()) {
            self.stage = Stage::RecyclingAfter { outcome };
            self.pending.push_back(Command::StopHarness);
            return;
        }
        self.stage = Stage::Finished;
        self.pending.push_back(Command::Finish(outcome));
    }

    fn fail(&mut self, class: FailureClass, message: impl Into<String>) {
        self.finish(Err((class, message.into())));
    }

    fn start(&mut self, now_ns: u64) {
        let Some(config) = &self.config else {
            return self.fail(
                FailureClass::Configuration,
                "the coordinator sent a config that is not JSON",
            );
        };
        // The host's policy wins over the study: refused before anything runs.
        if let Some(why) = crate::policy::refusal(config, &self.settings.host) {
            let message = format!("worker {} refuses the run: {why}", self.place.worker);
            return self.fail(FailureClass::Configuration, message);
        }
        if !self.baseline_settings.enabled {
            self.got.warnings.push(
                "measurement.baseline.enabled is false: energy_adjusted_j is not reported"
                    .to_string(),
            );
            return self.enter_gate();
        }
        match device_plan(&self.cache, &self.baseline_settings, now_ns) {
            DevicePlan::Reuse => self.use_cached_device(now_ns),
            DevicePlan::SpotCheck => self.stop_for_device(true),
            DevicePlan::Measure => self.stop_for_device(false),
        }
    }

    fn stop_for_device(&mut self, spot: bool) {
        self.stage = Stage::Stopping { spot };
        self.pending.push_back(Command::StopHarness);
    }

    /// The cached device idle serves this run (after a clean measurement or spot
    /// check, or as it was).
    fn use_cached_device(&mut self, now_ns: u64) {
        self.cache.runs_since_check += 1;
        self.pending
            .push_back(Command::Remember(Box::new(self.cache.clone())));
        let cached = self.cache.device.as_ref().expect("a cached device idle");
        self.got.baseline = Some(cached.as_used(self.baseline_settings.strategy, now_ns));
        self.enter_gate();
    }

    fn enter_gate(&mut self) {
        let idle_temps = match &self.got.baseline {
            Some(b) => b.per_gpu.iter().map(|g| Some(g.temp_c)).collect(),
            None => (0..self.place.gpus.len())
                .map(|i| {
                    self.cache
                        .device
                        .as_ref()
                        .and_then(|c| c.idle.per_gpu.get(i))
                        .map(|g| g.temp_c)
                })
                .collect(),
        };
        self.stage = Stage::Gate;
        self.pending.push_back(Command::WaitGate {
            gap_s: self.leased.gap_before_s,
            idle_temps,
        });
    }

    /// Applies the isolation policy to a listing: `Ok(true)` when another process
    /// holds a GPU (recorded in `log` unless `spot`), `Err` under `refuse`.
    fn check(
        &mut self,
        at: CheckPoint,
        listed: &[GpuProcess],
        own: &BTreeSet<u32>,
        errors: Vec<String>,
        into_spot: Option<&mut IsolationLog>,
    ) -> Result<bool, Failure> {
        let log = match into_spot {
            Some(l) => l,
            None => &mut self.got.iso,
        };
        log.errors.extend(errors);
        match decide(listed, own, at, self.settings.isolation) {
            Verdict::Clean => Ok(false),
            Verdict::Shared(foreign) => {
                merge(&mut log.foreign, &foreign);
                Ok(true)
            }
            Verdict::Refuse { message, .. } => Err((FailureClass::Infrastructure, message)),
        }
    }

    /// Feeds the outcome of the last command in; afterwards [`RunLifecycle::poll`] has
    /// the next one.
    pub fn handle(&mut self, input: Input, now_ns: u64) {
        let stage = std::mem::replace(&mut self.stage, Stage::Finished);
        match (stage, input) {
            (Stage::Stopping { spot }, Input::HarnessStopped) => {
                self.stage = Stage::DeviceCheck {
                    spot,
                    shared_before: false,
                    measured: None,
                };
                self.pending
                    .push_back(Command::ListProcesses(CheckPoint::BeforeBaseline));
            }
            (
                Stage::DeviceCheck {
                    spot,
                    shared_before,
                    measured,
                },
                Input::Processes {
                    listed,
                    own,
                    errors,
                },
            ) => self.device_checked(spot, shared_before, measured, &listed, &own, errors, now_ns),
            (
                Stage::DeviceMeasure {
                    spot,
                    shared_before,
                },
                Input::Idle(idle),
            ) => {
                self.stage = Stage::DeviceCheck {
                    spot,
                    shared_before,
                    measured: Some(idle),
                };
                self.pending
                    .push_back(Command::ListProcesses(CheckPoint::AfterBaseline));
            }
            (Stage::Gate, Input::GateOpened { waited_s, reason }) => {
                if reason == GateReason::Timeout {
                    self.got.warnings.push(format!(
                        "thermal gate timed out after {waited_s:.0} s: the GPU was still cooling"
                    ));
                }
                self.got.gate = Some((waited_s, reason));
                let source = self
                    .config
                    .as_ref()
                    .and_then(|c| c.get_path("task.dataset.source"))
                    .and_then(Value::as_str)
                    .unwrap_or("aienergyscore")
                    .to_string();
                self.stage = Stage::Dataset;
                self.pending.push_back(Command::ResolveDataset(source));
            }
            (Stage::Dataset, Input::Dataset(path)) => {
                self.got.transcript = RunTranscript::default();
                self.dataset = Some(path);
                if self.leased.force_cold_start {
                    // A cold start: a fresh harness (container), imports and load.
                    self.stage = Stage::Recycling;
                    self.pending.push_back(Command::StopHarness);
                } else {
                    self.stage = Stage::WindowCheckBefore;
                    self.pending
                        .push_back(Command::ListProcesses(CheckPoint::BeforeWindow));
                }
            }
            (Stage::RecyclingAfter { outcome }, Input::HarnessStopped) => {
                self.stage = Stage::Finished;
                self.pending.push_back(Command::Finish(outcome));
            }
            (Stage::Recycling, Input::HarnessStopped) => {
                self.stage = Stage::WindowCheckBefore;
                self.pending
                    .push_back(Command::ListProcesses(CheckPoint::BeforeWindow));
            }
            (
                Stage::WindowCheckBefore,
                Input::Processes {
                    listed,
                    own,
                    errors,
                },
            ) => match self.check(CheckPoint::BeforeWindow, &listed, &own, errors, None) {
                Err((class, message)) => self.fail(class, message),
                Ok(_) => {
                    self.stage = Stage::Running;
                    let request_line = self.request_line();
                    self.pending.push_back(Command::Dispatch {
                        request_line,
                        timeout: self.leased.timeout,
                        silence: self.leased.silence,
                    });
                }
            },
            (
                Stage::Running,
                Input::HarnessEnded {
                    result,
                    started_unix_ms,
                    ended_unix_ms,
                },
            ) => {
                self.got.started_unix_ms = started_unix_ms;
                self.got.ended_unix_ms = ended_unix_ms;
                match result {
                    // Every harness/transport failure is the host's, not the config's.
                    Err(message) => self.fail(FailureClass::Infrastructure, message),
                    Ok(()) => {
                        self.stage = Stage::WindowCheckAfter;
                        self.pending
                            .push_back(Command::ListProcesses(CheckPoint::AfterWindow));
                    }
                }
            }
            (
                Stage::WindowCheckAfter,
                Input::Processes {
                    listed,
                    own,
                    errors,
                },
            ) => {
                if let Err((class, message)) =
                    self.check(CheckPoint::AfterWindow, &listed, &own, errors, None)
                {
                    return self.fail(class, message);
                }
                match self.got.transcript.outcome.clone() {
                    Some(RunOutcome::Result { .. }) => {}
                    Some(RunOutcome::Error { class, message }) => return self.fail(class, message),
                    None => {
                        return self.fail(
                            FailureClass::Infrastructure,
                            "harness ended without a result",
                        )
                    }
                }
                let Some(run) = self.got.transcript.window() else {
                    return self.fail(
                        FailureClass::Infrastructure,
                        "harness result has no measure_start/measure_end window",
                    );
                };
                self.stage = Stage::Collecting;
                self.pending.push_back(Command::Collect {
                    run,
                    prefill: self.got.transcript.prefill_window_edges(),
                });
            }
            (Stage::Collecting, Input::Collected(c)) => match self.measure(c) {
                Err((class, message)) => self.fail(class, message),
                Ok(()) => self.resident_or_assemble(now_ns),
            },
            (
                Stage::ResidentCheck {
                    shared_before,
                    measured,
                },
                Input::Processes {
                    listed,
                    own,
                    errors,
                },
            ) => self.resident_checked(shared_before, measured, &listed, &own, errors, now_ns),
            (Stage::ResidentMeasure { shared_before }, Input::Idle(idle)) => {
                self.stage = Stage::ResidentCheck {
                    shared_before,
                    measured: Some(idle),
                };
                self.pending
                    .push_back(Command::ListProcesses(CheckPoint::AfterResidentBaseline));
            }
            (stage, input) => {
                self.stage = stage.clone();
                self.fail(
                    FailureClass::Infrastructure,
                    format!("worker bug: the run lifecycle got {input:?} in {stage:?}"),
                );
            }
        }
    }

    /// The events of the run, as the harness sends them: folded into the run's
    /// transcript, answered with what the driver applies at once.
    pub fn handle_event(&mut self, ev: &HarnessEvent) -> Vec<Effect> {
        let quiet = self.settings.quiet_s > 0.0;
        let mut out = Vec::new();
        match ev.kind() {
            Event::Phase { phase, batch_size } => out.push(Effect::Phase {
                phase: phase.to_string(),
                batch_size,
                t_mono_ns: ev.t_mono_ns,
            }),
            Event::Loaded { .. } => out.push(Effect::Resident {
                t_mono_ns: ev.t_mono_ns,
            }),
            // With quiet spans the counter is read back to back over each span and
            // never inside a window; without, in a burst from each window edge.
            Event::QuietStart => out.push(Effect::CounterBurst(Duration::from_secs_f64(
                self.settings.quiet_s + 0.1,
            ))),
            Event::QuietEnd => out.push(Effect::CounterBurstStop),
            Event::MeasureStart
            | Event::MeasureEnd
            | Event::PrefillWindowStart
            | Event::PrefillWindowEnd { .. }
                if !quiet =>
            {
                out.push(Effect::CounterBurst(EDGE_BURST))
            }
            Event::Result | Event::Error { .. } => out.push(Effect::Phase {
                phase: "idle".into(),
                batch_size: 1,
                t_mono_ns: ev.t_mono_ns,
            }),
            _ => {}
        }
        self.got.transcript.handle_event(ev);
        out
    }

    fn request_line(&self) -> String {
        crate::harness::run_request_line(&crate::harness::RunRequest {
            run_id: &self.leased.run_id,
            config_json: &self.leased.config_json,
            dataset_path: self.dataset.as_deref().unwrap_or(""),
            prefill_window_seconds: self.settings.prefill_window_s,
            quiet_seconds: self.settings.quiet_s,
            per_token_timing: &self.settings.per_token_timing,
            force_cold_start: self.leased.force_cold_start,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn device_checked(
        &mut self,
        spot: bool,
        shared_before: bool,
        measured: Option<Idle>,
        listed: &[GpuProcess],
        own: &BTreeSet<u32>,
        errors: Vec<String>,
        now_ns: u64,
    ) {
        let at = if measured.is_none() {
            CheckPoint::BeforeBaseline
        } else {
            CheckPoint::AfterBaseline
        };
        if spot {
            let mut log = std::mem::take(&mut self.spot);
            let checked = self.check(at, listed, own, errors, Some(&mut log));
            self.spot = log;
            let shared = match checked {
                Err((class, message)) => return self.fail(class, message),
                Ok(shared) => shared,
            };
            match (measured, shared) {
                (None, false) => {
                    self.stage = Stage::DeviceMeasure {
                        spot: true,
                        shared_before: false,
                    };
                    self.pending.push_back(Command::MeasureIdle {
                        kind: IdleKind::Device,
                        duration_s: SPOT_CHECK_S,
                        strategy: "validated",
                    });
                }
                (Some(spot_idle), false) => {
                    self.cache.runs_since_check = 0;
                    let cached_w = self
                        .cache
                        .device
                        .as_ref()
                        .map_or(0.0, |c| c.idle.record.mean_power_w);
                    if drifted(
                        spot_idle.record.mean_power_w,
                        cached_w,
                        self.baseline_settings.drift_threshold,
                    ) {
                        // Re-measured in full (the harness is still stopped).
                        self.got
                            .iso
                            .errors
                            .extend(std::mem::take(&mut self.spot.errors));
                        self.stage = Stage::DeviceCheck {
                            spot: false,
                            shared_before: false,
                            measured: None,
                        };
                        self.pending
                            .push_back(Command::ListProcesses(CheckPoint::BeforeBaseline));
                    } else {
                        self.after_spot(now_ns);
                    }
                }
                (_, true) => self.after_spot(now_ns),
            }
            return;
        }
        let shared = match self.check(at, listed, own, errors, None) {
            Err((class, message)) => return self.fail(class, message),
            Ok(shared) => shared,
        };
        match measured {
            None => {
                self.stage = Stage::DeviceMeasure {
                    spot: false,
                    shared_before: shared,
                };
                self.pending.push_back(Command::MeasureIdle {
                    kind: IdleKind::Device,
                    duration_s: self.baseline_settings.duration_s,
                    strategy: self.baseline_settings.strategy.as_str(),
                });
            }
            // Measured while another process held a GPU: for this run only.
            Some(idle) if shared || shared_before => {
                self.got.baseline = Some(idle);
                self.enter_gate();
            }
            Some(idle) => {
                self.cache.device = Some(CachedIdle {
                    idle,
                    measured_mono_ns: now_ns,
                });
                self.cache.runs_since_check = 0;
                self.use_cached_device(now_ns);
            }
        }
    }

    /// The spot check is over without a re-measurement: its notes go to the run.
    fn after_spot(&mut self, now_ns: u64) {
        let spot = std::mem::take(&mut self.spot);
        self.got.iso.errors.extend(spot.errors);
        if !spot.foreign.is_empty() {
            self.got.iso.notes.push(format!(
                "baseline spot check postponed: {}; the cached baseline (measured with no other process on the GPUs) was used",
                describe_processes(&spot.foreign)
            ));
        }
        self.use_cached_device(now_ns);
    }

    fn model(&self) -> String {
        self.config
            .as_ref()
            .and_then(|c| c.get_path("task.model"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    }

    /// Computes the window's energies from the collected telemetry.
    fn measure(&mut self, c: Collected) -> Result<(), Failure> {
        let run = self
            .got
            .transcript
            .window()
            .expect("collected for a window");
        let mut per_gpu = Vec::new();
        for (i, g) in c.gpus.iter().enumerate() {
            let we =
                window_energy_in(&power_samples(&g.samples), &g.counter, &run).map_err(|e| {
                    let uuid = self
                        .place
                        .gpu_descriptions
                        .get(i)
                        .map_or("?", |d| d.1.as_str());
                    (
                        FailureClass::Infrastructure,
                        format!(
                            "no usable samples of GPU {uuid} for the window ({e}); sampler: {}",
                            g.last_error.as_deref().unwrap_or("no error")
                        ),
                    )
                })?;
            per_gpu.push(we);
        }
        let energy = sum_windows(&per_gpu).ok_or((
            FailureClass::Infrastructure,
            "no GPU's telemetry was collected (a worker bug)".to_string(),
        ))?;
        let w = &mut self.got.warnings;
        if energy.disagreement_flagged {
            w.push(format!(
                "energy counter and power integral disagree by {:.1}%",
                energy.disagreement_pct.unwrap_or(0.0)
            ));
        }
        if energy.short_window {
            w.push("short window: fewer than one counter step or two power samples".into());
        }
        if energy.uncertainty_flagged {
            let u = energy.uncertainty_j.unwrap_or(0.0);
            w.push(format!(
                "the window's edges may be off by {u:.2} J ({:.1}% of its energy): {}",
                u / energy.energy_j.abs().max(1e-9) * 100.0,
                match energy.edge_rule {
                    Some(EdgeRule::Quiet) | None => "too few counter updates for its length",
                    Some(_) =>
                        "an edge was carried through a counter step that no quiet span isolated",
                }
            ));
        }
        // Prefill energy by the differential method: the prefill-only window's energy
        // per pass over the run's batches; decode is the rest of the run.
        let mut prefill = None;
        if let (Some(pw), Some(pwin)) = (
            self.got.transcript.prefill_window.clone(),
            self.got.transcript.prefill_window_edges(),
        ) {
            if pw.passes > 0 && pw.calls > 0 {
                let parts: Result<Vec<_>, _> = c
                    .gpus
                    .iter()
                    .map(|g| {
                        window_energy_in(
                            &power_samples(&g.prefill_samples),
                            &g.prefill_counter,
                            &pwin,
                        )
                    })
                    .collect();
                match parts.map(|p| sum_windows(&p)) {
                    Ok(e) => prefill = e,
                    Err(e) => self
                        .got
                        .warnings
                        .push(format!("prefill window energy unavailable: {e}")),
                }
            }
        }
        let samples = c
            .gpus
            .iter()
            .map(|g| window::window_samples(&g.samples, run.t0, run.t1))
            .collect();
        let memory_mb = c
            .gpus
            .iter()
            .map(|g| {
                Some((
                    g.samples.first()?.memory_used_mb,
                    g.samples.last()?.memory_used_mb,
                ))
            })
            .collect::<Option<Vec<_>>>()
            .map(|v| v.iter().fold((0, 0), |a, m| (a.0 + m.0, a.1 + m.1)));
        let recycle = memory_mb.and_then(|(_, after)| self.memory_rule(after));
        self.got.window = Some(Measured {
            run,
            energy,
            per_gpu,
            prefill,
            samples,
            collected: c,
            memory_mb,
            recycle,
        });
        Ok(())
    }

    /// The memory mark after this run, and why the harness is recycled, if it is: a
    /// run that loaded its model sets the mark; a run of the same model whose GPU
    /// memory ended more than `recycle_memory_growth_mb` above it recycles the harness
    /// (a leak, or a cache that would crowd the next run).
    fn memory_rule(&mut self, after_mb: u64) -> Option<String> {
        let model = self.model();
        if self.got.transcript.already_loaded == Some(false) {
            self.pending
                .push_back(Command::MarkMemory(Some((model, after_mb))));
            return None;
        }
        let threshold = self.settings.recycle_memory_growth_mb;
        let (mark_model, mark) = self.place.memory_mark.clone()?;
        if threshold == 0 || mark_model != model || after_mb <= mark + threshold {
            return None;
        }
        self.pending.push_back(Command::MarkMemory(None));
        Some(format!(
            "GPU memory ended at {after_mb} MiB, {} MiB above the {mark} MiB held after the model was loaded (threshold {threshold} MiB, lem-worker --recycle-memory-growth-mb): the harness was recycled after the run",
            after_mb - mark
        ))
    }

    fn resident_or_assemble(&mut self, now_ns: u64) {
        if !self.baseline_settings.enabled {
            return self.assemble();
        }
        let model = self.model();
        if resident_reusable(&self.cache, &model, &self.baseline_settings, now_ns) {
            let (_, c) = self
                .cache
                .resident
                .as_ref()
                .expect("reusable implies cached");
            let mut idle = c.idle.clone();
            idle.record.cache_age_s = now_ns.saturating_sub(c.measured_mono_ns) as f64 / 1e9;
            self.got.resident = Some(idle);
            return self.assemble();
        }
        self.stage = Stage::ResidentCheck {
            shared_before: false,
            measured: None,
        };
        self.pending
            .push_back(Command::ListProcesses(CheckPoint::BeforeResidentBaseline));
    }

    /// A resident-idle listing: measured while another process held a GPU, it is used
    /// for this run only and never cached; under `refuse` none is measured (the run's
    /// own figures stand, and a warning says why the resident figures are missing).
    fn resident_checked(
        &mut self,
        shared_before: bool,
        measured: Option<Idle>,
        listed: &[GpuProcess],
        own: &BTreeSet<u32>,
        errors: Vec<String>,
        now_ns: u64,
    ) {
        let at = if measured.is_none() {
            CheckPoint::BeforeResidentBaseline
        } else {
            CheckPoint::AfterResidentBaseline
        };
        let shared = match self.check(at, listed, own, errors, None) {
            Err((_, message)) => {
                self.got.iso.notes.push(message);
                return self.assemble();
            }
            Ok(shared) => shared,
        };
        match measured {
            None => {
                self.stage = Stage::ResidentMeasure {
                    shared_before: shared,
                };
                self.pending.push_back(Command::MeasureIdle {
                    kind: IdleKind::Resident,
                    duration_s: self.baseline_settings.duration_s,
                    strategy: self.baseline_settings.strategy.as_str(),
                });
            }
            Some(idle) if shared || shared_before => {
                self.got.resident = Some(idle);
                self.assemble();
            }
            Some(idle) => {
                self.cache.resident = Some((
                    self.model(),
                    CachedIdle {
                        idle: idle.clone(),
                        measured_mono_ns: now_ns,
                    },
                ));
                self.pending
                    .push_back(Command::Remember(Box::new(self.cache.clone())));
                self.got.resident = Some(idle);
                self.assemble();
            }
        }
    }

    /// The run's result from everything gathered ([`assemble::assemble`], the one
    /// constructor), refused when a figure is not finite.
    fn assemble(&mut self) {
        let got = std::mem::take(&mut self.got);
        let result = assemble::assemble(
            &self.leased,
            &self.place,
            self.model(),
            self.baseline_settings.enabled,
            got,
        );
        // JSON has no NaN: a non-finite number would poison the connection, and a
        // wrong number must never be published. Refuse the result instead.
        let bad = result.non_finite_fields();
        if !bad.is_empty() {
            return self.fail(
                FailureClass::Infrastructure,
                format!(
                    "measurement produced non-finite values in {} (a worker bug; the run will be retried)",
                    bad.join(", ")
                ),
            );
        }
        self.finish(Ok(Box::new(result)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::energy::CounterSample;
    use crate::types::BaselineRecord;

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000_000_000;

    /// The world a slot would be: a clock, one GPU at 100 W idle and 200 W while the
    /// window runs, an energy counter publishing every 100 ms, and a harness that
    /// answers a run request with a scripted run.
    struct World {
        now: u64,
        foreign: Vec<GpuProcess>,
        harness_fails: bool,
        harness_error: Option<(&'static str, &'static str)>,
        commands: Vec<String>,
        effects: Vec<Effect>,
        cache: BaselineCache,
        /// The run's window as the harness reports it.
        window: (u64, u64),
        /// The harness loads the model in the next run (else it is already loaded).
        loads: bool,
        /// GPU memory in use (MiB).
        memory_mb: u64,
        mark: Option<(String, u64)>,
    }

    impl World {
        fn new() -> World {
            World {
                now: 10 * S,
                foreign: vec![],
                harness_fails: false,
                harness_error: None,
                commands: vec![],
                effects: vec![],
                cache: BaselineCache::default(),
                window: (0, 0),
                loads: false,
                memory_mb: 0,
                mark: None,
            }
        }

        fn power(&self, t: u64) -> f64 {
            if t >= self.window.0 && t < self.window.1 {
                200.0
            } else {
                100.0
            }
        }

        /// Energy (mJ) from 0 to `t` for the piecewise power.
        fn energy_mj(&self, t: u64) -> u64 {
            let (a, b) = self.window;
            let idle = |d: u64| 100.0 * d as f64 / 1e9;
            let j = if t <= a {
                idle(t)
            } else if t <= b {
                idle(a) + 200.0 * (t - a) as f64 / 1e9
            } else {
                idle(a) + 200.0 * (b - a) as f64 / 1e9 + idle(t - b)
            };
            (j * 1000.0) as u64
        }

        /// Counter reads every 4 ms over `[from, to]`, publishing on a 100 ms grid
        /// whose values cover the energy up to COUNTER_LAG_NS before.
        fn reads(&self, from: u64, to: u64) -> Vec<CounterSample> {
            let lag = crate::energy::COUNTER_LAG_NS;
            (0..)
                .map(|k| from + k * 4 * MS)
                .take_while(|t| *t <= to)
                .map(|t| {
                    let grid = (t / (100 * MS)) * 100 * MS;
                    CounterSample {
                        t_mono_ns: t,
                        energy_mj: self.energy_mj(grid.saturating_sub(lag)),
                    }
                })
                .collect()
        }

        fn samples(&self, from: u64, to: u64) -> Vec<TelemetrySample> {
            (0..)
                .map(|k| from + k * 50 * MS)
                .take_while(|t| *t <= to)
                .map(|t| TelemetrySample {
                    t_mono_ns: t,
                    power_w: self.power(t),
                    temp_c: 40.0,
                    sm_clock_mhz: 1980,
                    memory_used_mb: self.memory_mb,
                    ..Default::default()
                })
                .collect()
        }

        fn idle(&self, kind: IdleKind, strategy: &str) -> Idle {
            let w = match kind {
                IdleKind::Device => 80.0,
                IdleKind::Resident => 100.0,
            };
            Idle {
                record: BaselineRecord {
                    kind: kind.as_str().into(),
                    mean_power_w: w,
                    strategy: strategy.into(),
                    ..Default::default()
                },
                per_gpu: vec![baseline::GpuIdle {
                    power_w: w,
                    temp_c: 38.0,
                }],
            }
        }

        /// The harness's events for one run: quiet, a 2 s window, quiet, result.
        fn events(&mut self, quiet_s: f64) -> Vec<HarnessEvent> {
            let q = (quiet_s * 1e9) as u64;
            let t = self.now;
            let (a, b) = (t + 500 * MS + q, t + 2_500 * MS + q);
            self.window = (a, b);
            let ev = |name: &str, at: u64, body: &str| {
                HarnessEvent::parse(&format!(r#"{{"event":"{name}","t_mono_ns":{at}{body}}}"#))
                    .unwrap()
            };
            let loaded = format!(r#","already_loaded":{},"load_seconds":0.0"#, !self.loads);
            let mut out = vec![ev("loaded", t + 400 * MS, &loaded)];
            if q > 0 {
                out.push(ev("quiet_start", a - q, ""));
                out.push(ev("quiet_end", a, ""));
            }
            out.push(ev("measure_start", a, ""));
            out.push(ev("phase", a + MS, r#","phase":"prefill","batch_size":2"#));
            out.push(ev("measure_end", b, ""));
            if q > 0 {
                out.push(ev("quiet_start", b, ""));
                out.push(ev("quiet_end", b + q, ""));
            }
            match self.harness_error {
                Some((class, message)) => out.push(ev(
                    "error",
                    b + q + MS,
                    &format!(r#","class":"{class}","message":"{message}""#),
                )),
                None => out.push(ev(
                    "result",
                    b + q + MS,
                    r#","metrics":{"n_prompts":2,"input_tokens":64,"output_tokens":40},"engine_version":"0.1.0""#,
                )),
            }
            self.now = b + q + 2 * MS;
            out
        }

        /// Drives `lc` to its end, as a slot would; returns the outcome.
        fn drive(&mut self, lc: &mut RunLifecycle) -> Result<Box<RunResult>, Failure> {
            for _ in 0..100 {
                let cmd = lc.poll(self.now).expect("a command while not finished");
                self.commands.push(match &cmd {
                    Command::ListProcesses(at) => format!("list:{}", at.seen()),
                    Command::MeasureIdle { kind, .. } => format!("idle:{}", kind.as_str()),
                    other => format!("{other:?}")
                        .split([' ', '(', '{'])
                        .next()
                        .unwrap()
                        .to_string(),
                });
                let input = match cmd {
                    Command::Finish(outcome) => return outcome,
                    Command::StopHarness => Input::HarnessStopped,
                    Command::ListProcesses(_) => Input::Processes {
                        listed: self.foreign.clone(),
                        own: BTreeSet::from([1]),
                        errors: vec![],
                    },
                    Command::MeasureIdle {
                        kind,
                        duration_s,
                        strategy,
                    } => {
                        self.now += (duration_s * 1e9) as u64;
                        Input::Idle(self.idle(kind, strategy))
                    }
                    Command::Remember(cache) => {
                        self.cache = *cache;
                        continue;
                    }
                    Command::MarkMemory(mark) => {
                        self.mark = mark;
                        continue;
                    }
                    Command::WaitGate { gap_s, .. } => {
                        self.now += (gap_s * 1e9) as u64;
                        Input::GateOpened {
                            waited_s: gap_s,
                            reason: GateReason::Cooled,
                        }
                    }
                    Command::ResolveDataset(source) => {
                        Input::Dataset(format!("/data/{source}.jsonl"))
                    }
                    Command::Dispatch { request_line, .. } => {
                        let v: serde_json::Value = serde_json::from_str(&request_line).unwrap();
                        let quiet_s = v["quiet_seconds"].as_f64().unwrap();
                        if self.harness_fails {
                            Input::HarnessEnded {
                                result: Err("harness connection failed: broken pipe".into()),
                                started_unix_ms: 1,
                                ended_unix_ms: 2,
                            }
                        } else {
                            for ev in self.events(quiet_s) {
                                self.effects.extend(lc.handle_event(&ev));
                            }
                            Input::HarnessEnded {
                                result: Ok(()),
                                started_unix_ms: 1_700_000_000_000,
                                ended_unix_ms: 1_700_000_003_000,
                            }
                        }
                    }
                    Command::Collect { run, prefill } => {
                        assert!(prefill.is_none());
                        let reach = |w: &Window| {
                            (
                                w.quiet_before.map_or(w.t0, |q| q.from_ns),
                                w.quiet_after.map_or(w.t1, |q| q.to_ns),
                            )
                        };
                        let (from, to) = reach(&run);
                        let mut counter = self.reads(from, run.t0);
                        counter.extend(self.reads(run.t1, to));
                        Input::Collected(Collected {
                            gpus: vec![GpuCollected {
                                samples: self.samples(run.t0 - 200 * MS, run.t1 + 200 * MS),
                                counter,
                                ..Default::default()
                            }],
                            sample_interval_ms: 50.0,
                            ..Default::default()
                        })
                    }
                };
                lc.handle(input, self.now);
            }
            panic!("the lifecycle did not finish: {:?}", self.commands);
        }
    }

    fn lifecycle(
        world: &World,
        baseline: &str,
        isolation: IsolationPolicy,
        quiet_s: f64,
    ) -> RunLifecycle {
        let config = format!(
            r#"{{"task": {{"model": "m"}}, "engine": "synthetic", "measurement": {{"baseline": {baseline}}}}}"#
        );
        RunLifecycle::new(
            Leased {
                run_id: "1-0001".into(),
                engine: "synthetic".into(),
                config_json: config,
                gap_before_s: 1.0,
                lease_mono_ns: world.now,
                timeout: Duration::from_secs(600),
                silence: Some(Duration::from_secs(300)),
                force_cold_start: false,
            },
            Settings {
                prefill_window_s: 0.0,
                quiet_s,
                per_token_timing: "always".into(),
                isolation,
                host: crate::policy::HostPolicy::default(),
                recycle_memory_growth_mb: 4096,
            },
            Where {
                worker: "w".into(),
                host: "h".into(),
                slot: 0,
                gpus: vec![0],
                gpu_descriptions: vec![("Simulated".into(), "SIM-0".into(), true)],
                memory_mark: world.mark.clone(),
                environment: serde_json::json!({"host": {"os": "test"}, "gpu": {"name": "Simulated"}}),
            },
            world.cache.clone(),
        )
    }

    const CACHED: &str = r#"{"strategy": "cached", "duration_seconds": 10}"#;

    #[test]
    fn a_first_run_measures_both_idles_and_the_window_between_quiet_spans() {
        let mut w = World::new();
        let mut lc = lifecycle(&w, CACHED, IsolationPolicy::Warn, 0.35);
        let r = w.drive(&mut lc).unwrap();
        assert_eq!(
            w.commands,
            [
                "StopHarness",
                "list:baseline",
                "idle:device",
                "list:baseline",
                "Remember",
                "WaitGate",
                "ResolveDataset",
                "list:window",
                "Dispatch",
                "list:window",
                "Collect",
                "list:resident_baseline",
                "idle:resident",
                "list:resident_baseline",
                "Remember",
                "Finish"
            ]
        );
        // 2 s at 200 W between quiet spans at 100 W.
        assert!(
            (r.energy.total_j - 400.0).abs() < 0.5,
            "{}",
            r.energy.total_j
        );
        assert_eq!(r.energy.edge_rule.as_deref(), Some("quiet"));
        assert_eq!(r.baselines.device_power_w, Some(80.0));
        assert_eq!(
            r.baselines.resident.as_ref().map(|b| b.mean_power_w),
            Some(100.0)
        );
        assert!((r.energy.adjusted_j.unwrap() - 240.0).abs() < 0.5);
        // The quiet spans' own power is the resident idle subtracted.
        assert_eq!(r.energy.adjusted_resident_source.as_deref(), Some("quiet"));
        assert!((r.energy.adjusted_resident_j.unwrap() - 200.0).abs() < 1.0);
        assert_eq!(r.throughput.output_tokens, 40);
        assert!(r.harness.model_already_loaded);
        // The slot's environment, with the engine versions the harness reported.
        assert_eq!(r.environment["host"]["os"], "test");
        assert!(r.environment.get("engine_versions").is_some());
        assert_eq!(r.environment_hash.len(), 16);
        assert!(
            !r.isolation.gpu_shared && r.warnings.is_empty(),
            "{:?}",
            r.warnings
        );
        // Bursts only over the quiet spans, never at the window edges.
        let bursts: Vec<&Effect> = w
            .effects
            .iter()
            .filter(|e| matches!(e, Effect::CounterBurst(_) | Effect::CounterBurstStop))
            .collect();
        assert_eq!(bursts.len(), 4, "{bursts:?}");
        assert_eq!(bursts[0], &Effect::CounterBurst(Duration::from_millis(450)));
        assert!(w.cache.device.is_some() && w.cache.resident.is_some());
    }

    #[test]
    fn a_second_run_reuses_what_the_first_measured() {
        let mut w = World::new();
        let mut lc = lifecycle(&w, CACHED, IsolationPolicy::Warn, 0.35);
        w.drive(&mut lc).unwrap();
        w.commands.clear();
        let mut lc = lifecycle(&w, CACHED, IsolationPolicy::Warn, 0.35);
        let r = w.drive(&mut lc).unwrap();
        assert_eq!(
            w.commands,
            [
                "Remember",
                "WaitGate",
                "ResolveDataset",
                "list:window",
                "Dispatch",
                "list:window",
                "Collect",
                "Finish"
            ]
        );
        assert!(r.baselines.device.as_ref().unwrap().cache_age_s > 1.0);
        assert_eq!(w.cache.runs_since_check, 2);
    }

    #[test]
    fn validated_spot_checks_and_re_measures_on_drift() {
        let mut w = World::new();
        let validated =
            r#"{"strategy": "validated", "validation_interval": 1, "drift_threshold": 0.1}"#;
        let mut lc = lifecycle(&w, validated, IsolationPolicy::Warn, 0.35);
        w.drive(&mut lc).unwrap();
        // The cached device idle is 80 W; make it stale enough to drift past 10 %.
        w.cache.device.as_mut().unwrap().idle.record.mean_power_w = 60.0;
        w.commands.clear();
        let mut lc = lifecycle(&w, validated, IsolationPolicy::Warn, 0.35);
        let r = w.drive(&mut lc).unwrap();
        assert_eq!(
            &w.commands[..9],
            [
                "StopHarness",
                "list:baseline",
                "idle:device",
                "list:baseline",
                "list:baseline",
                "idle:device",
                "list:baseline",
                "Remember",
                "WaitGate"
            ]
        );
        assert_eq!(r.baselines.device_power_w, Some(80.0));
    }

    fn foreign() -> Vec<GpuProcess> {
        vec![GpuProcess {
            pid: 4242,
            gpu_index: 0,
            used_memory_mb: Some(512),
            name: Some("python3".into()),
        }]
    }

    #[test]
    fn warn_flags_a_shared_gpu_and_never_caches_its_baselines() {
        let mut w = World::new();
        w.foreign = foreign();
        let mut lc = lifecycle(&w, CACHED, IsolationPolicy::Warn, 0.35);
        let r = w.drive(&mut lc).unwrap();
        assert!(r.isolation.gpu_shared);
        assert!(r.isolation.foreign_processes.iter().all(|p| p.pid == 4242));
        assert!(!r.warnings.is_empty());
        assert_eq!(r.baselines.device_power_w, Some(80.0));
        assert!(
            w.cache.device.is_none() && w.cache.resident.is_none(),
            "{:?}",
            w.cache
        );
    }

    #[test]
    fn refuse_fails_the_run_before_anything_is_measured() {
        let mut w = World::new();
        w.foreign = foreign();
        let mut lc = lifecycle(&w, CACHED, IsolationPolicy::Refuse, 0.35);
        let (class, message) = w.drive(&mut lc).unwrap_err();
        assert_eq!(class, FailureClass::Infrastructure);
        assert!(message.contains("4242"), "{message}");
        assert!(!w
            .commands
            .iter()
            .any(|c| c == "Dispatch" || c.starts_with("idle:")));
    }

    #[test]
    fn harness_failures_keep_their_class() {
        let mut w = World::new();
        w.harness_error = Some(("configuration", "bad dtype"));
        let mut lc = lifecycle(&w, CACHED, IsolationPolicy::Warn, 0.35);
        assert_eq!(
            w.drive(&mut lc).unwrap_err(),
            (FailureClass::Configuration, "bad dtype".to_string())
        );
        let mut w = World::new();
        w.harness_fails = true;
        let mut lc = lifecycle(&w, CACHED, IsolationPolicy::Warn, 0.35);
        let (class, message) = w.drive(&mut lc).unwrap_err();
        assert_eq!(class, FailureClass::Infrastructure);
        assert!(message.contains("broken pipe"));
    }

    #[test]
    fn without_quiet_spans_the_counter_is_burst_at_each_edge() {
        let mut w = World::new();
        let mut lc = lifecycle(&w, r#"{"enabled": false}"#, IsolationPolicy::Warn, 0.0);
        let r = w.drive(&mut lc).unwrap();
        let bursts = w
            .effects
            .iter()
            .filter(|e| **e == Effect::CounterBurst(EDGE_BURST))
            .count();
        assert_eq!(bursts, 2);
        assert_eq!(r.energy.adjusted_j, None);
        assert!(r
            .warnings
            .iter()
            .any(|w| w.contains("baseline.enabled is false")));
        assert!(!w.commands.iter().any(|c| c.starts_with("idle:")));
    }

    #[test]
    fn a_cold_start_recycles_the_harness_before_the_run() {
        let mut w = World::new();
        let mut lc = lifecycle(&w, CACHED, IsolationPolicy::Warn, 0.35);
        w.drive(&mut lc).unwrap();
        w.commands.clear();
        let mut lc = lifecycle(&w, CACHED, IsolationPolicy::Warn, 0.35);
        lc.leased.force_cold_start = true;
        let r = w.drive(&mut lc).unwrap();
        assert_eq!(
            &w.commands[..5],
            [
                "Remember",
                "WaitGate",
                "ResolveDataset",
                "StopHarness",
                "list:window"
            ]
        );
        assert!(r.harness.cold_start);
        assert!(lc.request_line().contains(r#""force_cold_start": true"#));
    }

    #[test]
    fn a_study_asking_for_remote_code_is_refused_before_anything_runs() {
        let mut w = World::new();
        let mut lc = lifecycle(&w, CACHED, IsolationPolicy::Warn, 0.35);
        lc.config.as_mut().unwrap().as_map_mut().unwrap().insert(
            "passthrough_kwargs".into(),
            crate::yaml::load("{trust_remote_code: true}", "t")
                .unwrap()
                .value,
        );
        let (class, message) = w.drive(&mut lc).unwrap_err();
        assert_eq!(class, FailureClass::Configuration);
        assert!(
            message.contains("passthrough_kwargs.trust_remote_code"),
            "{message}"
        );
        assert_eq!(w.commands, ["Finish"]);
    }

    #[test]
    fn gpu_memory_growth_past_the_threshold_recycles_the_harness() {
        let mut w = World::new();
        // The run that loads the model sets the mark.
        w.loads = true;
        w.memory_mb = 20_000;
        let mut lc = lifecycle(&w, CACHED, IsolationPolicy::Warn, 0.35);
        let r = w.drive(&mut lc).unwrap();
        assert_eq!(w.mark, Some(("m".to_string(), 20_000)));
        assert_eq!(
            (
                r.harness.gpu_memory_before_mb,
                r.harness.gpu_memory_after_mb
            ),
            (Some(20_000), Some(20_000))
        );
        assert_eq!(r.harness.recycled, None);
        // Within the threshold: nothing happens.
        w.loads = false;
        w.memory_mb = 23_000;
        w.commands.clear();
        let mut lc = lifecycle(&w, CACHED, IsolationPolicy::Warn, 0.35);
        assert_eq!(w.drive(&mut lc).unwrap().harness.recycled, None);
        assert_eq!(w.commands.last().map(String::as_str), Some("Finish"));
        // Past it: the harness is stopped after the run, and the result says why.
        w.memory_mb = 25_000;
        w.commands.clear();
        let mut lc = lifecycle(&w, CACHED, IsolationPolicy::Warn, 0.35);
        let r = w.drive(&mut lc).unwrap();
        let why = r.harness.recycled.expect("recycled");
        assert!(
            why.contains("5000 MiB above") && why.contains("4096"),
            "{why}"
        );
        assert_eq!(
            &w.commands[w.commands.len() - 2..],
            ["StopHarness", "Finish"]
        );
        assert_eq!(w.mark, None);
    }

    #[test]
    fn a_config_that_is_not_json_is_the_configs_fault() {
        let w = World::new();
        let mut lc = lifecycle(&w, CACHED, IsolationPolicy::Warn, 0.35);
        lc.config = None;
        match lc.poll(0) {
            Some(Command::Finish(Err((FailureClass::Configuration, _)))) => {}
            other => panic!("{other:?}"),
        }
    }
}
