//! GPU telemetry: a source trait, the labelled simulated GPU, and the sampler thread
//! that reads a source on a fixed interval into a ring buffer.
//!
//! The sampler runs on its own OS thread per slot (never on the async runtime, so a
//! busy executor cannot delay a power sample) and stamps every sample with
//! CLOCK_MONOTONIC, the clock of the harness's events. The measuring code asks the
//! ring for the samples of a window and hands them to `lem_common::energy`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use lem_common::energy::CounterSample;
use lem_common::isolation::GpuProcess;
use lem_common::simgpu::{parse_declared_processes, SimGpuModel, SimParams, FOREIGN_PROCESSES_ENV};

use crate::clock::mono_ns;

pub use lem_common::run::sample::TelemetrySample;

/// What a GPU is, for results and registration.
#[derive(Clone, Debug, PartialEq)]
pub struct GpuDescription {
    pub name: String,
    pub uuid: String,
    pub simulated: bool,
}

/// A source of GPU readings: [`SimulatedGpu`] or [`crate::nvml::NvmlGpu`].
pub trait GpuTelemetry: Send {
    fn describe(&self) -> GpuDescription;
    fn read(&mut self, t_mono_ns: u64) -> anyhow::Result<TelemetrySample>;
}

/// Lists the processes that hold one GPU (NVML's compute and graphics process lists),
/// for the device isolation check (`lem_common::isolation`). Getters only.
pub trait GpuProcesses: Send + Sync {
    /// The GPU's processes; `name` is left `None` (the worker reads it from `/proc`).
    fn gpu_processes(&self) -> anyhow::Result<Vec<GpuProcess>>;
}

/// A slow energy counter read on its own thread (NVML's costs milliseconds).
pub trait CounterSource: Send {
    fn read_mj(&mut self) -> anyhow::Result<u64>;
}

/// Receives what the harness says it is doing. A real GPU ignores it; the simulated
/// GPU turns it into load, which is how its power follows the work.
pub trait LoadSink: Send + Sync {
    fn on_phase(&self, phase: &str, batch_size: u32, t_mono_ns: u64);
    fn on_resident(&self, resident: bool, t_mono_ns: u64);
}

/// The labelled simulated GPU: `lem_common::simgpu`'s model, advanced in real time.
#[derive(Clone)]
pub struct SimulatedGpu {
    model: Arc<Mutex<SimGpuModel>>,
    slot: u32,
}

impl SimulatedGpu {
    pub fn new(slot: u32) -> Self {
        Self::with_params(slot, SimParams::default())
    }

    pub fn with_params(slot: u32, params: SimParams) -> Self {
        SimulatedGpu {
            model: Arc::new(Mutex::new(SimGpuModel::new(params, mono_ns()))),
            slot,
        }
    }

    /// The card the TEST HOOK `LEM_SIMGPU_PARAMS` describes
    /// ([`lem_common::simgpu::PARAMS_ENV`]), else the default card; the hook's text
    /// when it is set.
    pub fn from_env(slot: u32) -> anyhow::Result<(Self, Option<serde_json::Value>)> {
        let Ok(text) = std::env::var(lem_common::simgpu::PARAMS_ENV) else {
            return Ok((Self::new(slot), None));
        };
        let params = lem_common::simgpu::params_with(&text)
            .map_err(|e| anyhow::anyhow!("{}: {e}", lem_common::simgpu::PARAMS_ENV))?;
        let patch = serde_json::from_str(&text).ok();
        Ok((Self::with_params(slot, params), patch))
    }
}

impl GpuTelemetry for SimulatedGpu {
    fn describe(&self) -> GpuDescription {
        GpuDescription {
            name: "Simulated GPU (lem fleet, not real hardware)".into(),
            uuid: format!("SIM-GPU-{}", self.slot),
            simulated: true,
        }
    }

    fn read(&mut self, t_mono_ns: u64) -> anyhow::Result<TelemetrySample> {
        let mut m = self.model.lock().expect("sim gpu lock");
        m.advance(t_mono_ns);
        let r = m.sample(t_mono_ns);
        Ok(TelemetrySample {
            t_mono_ns,
            power_w: r.power_w,
            energy_mj: Some(r.energy_mj),
            temp_c: r.temp_c,
            sm_clock_mhz: r.sm_clock_mhz,
            mem_clock_mhz: r.mem_clock_mhz,
            pstate: r.pstate,
            util_pct: r.utilisation_pct as f64,
            throttle_thermal: r.throttle_thermal,
            throttle_power: false,
            hw_slowdown: false,
            memory_used_mb: 0,
        })
    }
}

/// The simulated GPU's energy counter, read like NVML's (on the counter thread, in
/// bursts at window edges), so simulated runs go through the same energy path.
impl CounterSource for SimulatedGpu {
    fn read_mj(&mut self) -> anyhow::Result<u64> {
        let now = mono_ns();
        let mut m = self.model.lock().expect("sim gpu lock");
        m.advance(now);
        Ok(m.sample(now).energy_mj)
    }
}

/// The simulated GPU's processes: none, unless the TEST HOOK of the simulated GPU
/// names a file in `LEM_SIMGPU_FOREIGN_PROCESSES` (`GPU PID [MIB|-]` per line,
/// `lem_common::simgpu::parse_declared_processes`). The file is read at every
/// listing, and a declared process is listed on its GPU while it is alive, as NVML
/// lists a process while it holds a context. Real GPUs never read the file.
impl GpuProcesses for SimulatedGpu {
    fn gpu_processes(&self) -> anyhow::Result<Vec<GpuProcess>> {
        let Some(path) = std::env::var_os(FOREIGN_PROCESSES_ENV) else {
            return Ok(vec![]);
        };
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "{FOREIGN_PROCESSES_ENV}: cannot read {}",
                        std::path::Path::new(&path).display()
                    )
                })
            }
        };
        let declared = parse_declared_processes(&text).map_err(|e| {
            anyhow::anyhow!(
                "{FOREIGN_PROCESSES_ENV}: {}: {e}",
                std::path::Path::new(&path).display()
            )
        })?;
        Ok(declared
            .into_iter()
            .filter(|d| d.gpu_index == self.slot && crate::isolation::is_alive(d.pid))
            .map(|d| GpuProcess {
                pid: d.pid,
                gpu_index: d.gpu_index,
                used_memory_mb: d.used_memory_mb,
                name: None,
            })
            .collect())
    }
}

impl LoadSink for SimulatedGpu {
    fn on_phase(&self, phase: &str, batch_size: u32, t_mono_ns: u64) {
        let util = lem_common::simgpu::utilisation_for(phase, batch_size);
        let mut m = self.model.lock().expect("sim gpu lock");
        m.set_load(util, t_mono_ns);
    }

    fn on_resident(&self, resident: bool, t_mono_ns: u64) {
        let mut m = self.model.lock().expect("sim gpu lock");
        m.set_resident(resident, t_mono_ns);
    }
}

/// The load sinks of every GPU of a slot: a tensor-parallel run loads them all.
pub struct FanOutLoad(pub Vec<Arc<dyn LoadSink>>);

impl LoadSink for FanOutLoad {
    fn on_phase(&self, phase: &str, batch_size: u32, t_mono_ns: u64) {
        for l in &self.0 {
            l.on_phase(phase, batch_size, t_mono_ns);
        }
    }

    fn on_resident(&self, resident: bool, t_mono_ns: u64) {
        for l in &self.0 {
            l.on_resident(resident, t_mono_ns);
        }
    }
}

/// A load sink that ignores everything (real hardware measures itself).
pub struct NoLoadSink;

impl LoadSink for NoLoadSink {
    fn on_phase(&self, _: &str, _: u32, _: u64) {}
    fn on_resident(&self, _: bool, _: u64) {}
}

/// How late samples were against their fixed-rate schedule.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct JitterStats {
    pub n: u64,
    pub mean_late_us: f64,
    pub max_late_us: f64,
}

/// Samples a telemetry source on its own thread into a bounded ring, and an optional
/// energy counter on a second thread into a second ring.
pub struct Sampler {
    ring: Arc<Mutex<VecDeque<TelemetrySample>>>,
    /// Until when (CLOCK_MONOTONIC ns) the counter thread reads back to back.
    burst: Arc<(Mutex<u64>, Condvar)>,
    counter_ring: Arc<Mutex<VecDeque<CounterSample>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    pub interval: Duration,
    pub description: GpuDescription,
    pub has_counter_thread: bool,
    errors: Arc<Mutex<Option<String>>>,
    jitter: Arc<Mutex<JitterStats>>,
    /// Energy-counter reads made, and the nanoseconds they took in all (what the
    /// counter costs; `lem-worker --http` exports it).
    counter_cost: Arc<(AtomicU64, AtomicU64)>,
    /// Lists the GPU's processes for the device isolation check; `None` where the
    /// source cannot (the check then says so in the result).
    processes: Option<Arc<dyn GpuProcesses>>,
}

fn push_bounded<T>(ring: &Mutex<VecDeque<T>>, capacity: usize, item: T) {
    let mut r = ring.lock().expect("ring lock");
    if r.len() == capacity {
        r.pop_front();
    }
    r.push_back(item);
}

/// Runs `f` on a fixed-rate schedule until `stop`; returns how late each call was.
fn fixed_rate(
    stop: &AtomicBool,
    interval: Duration,
    mut on_late: impl FnMut(u64),
    mut f: impl FnMut(u64),
) {
    let step = interval.as_nanos() as u64;
    let mut next = mono_ns();
    while !stop.load(Ordering::Relaxed) {
        let now = mono_ns();
        on_late(now.saturating_sub(next));
        f(now);
        // Late samples do not push later ones back.
        next += step;
        let now = mono_ns();
        if next > now {
            std::thread::sleep(Duration::from_nanos(next - now));
        } else {
            next = now;
        }
    }
}

impl Sampler {
    /// Starts sampling `source` every `interval`, keeping at most `capacity` samples.
    /// With `counter`, a second thread reads that counter in bursts asked for with
    /// [`Sampler::counter_burst`] (back to back: each NVML read costs ~4 ms of CPU on
    /// an H100) and, if `counter.1` is non-zero, also once every `counter.1`.
    pub fn start(
        mut source: Box<dyn GpuTelemetry>,
        interval: Duration,
        capacity: usize,
        counter: Option<(Box<dyn CounterSource>, Duration)>,
    ) -> Sampler {
        let ring = Arc::new(Mutex::new(VecDeque::with_capacity(capacity)));
        let counter_ring = Arc::new(Mutex::new(VecDeque::with_capacity(capacity)));
        let stop = Arc::new(AtomicBool::new(false));
        let errors = Arc::new(Mutex::new(None));
        let jitter = Arc::new(Mutex::new(JitterStats::default()));
        let description = source.describe();
        let mut threads = Vec::new();
        {
            let (ring, stop, errors, jitter) =
                (ring.clone(), stop.clone(), errors.clone(), jitter.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("lem-sampler".into())
                    .spawn(move || {
                        fixed_rate(
                            &stop,
                            interval,
                            |late_ns| {
                                let mut j = jitter.lock().expect("jitter lock");
                                let late_us = late_ns as f64 / 1000.0;
                                j.n += 1;
                                j.mean_late_us += (late_us - j.mean_late_us) / j.n as f64;
                                j.max_late_us = j.max_late_us.max(late_us);
                            },
                            |now| match source.read(now) {
                                Ok(s) => push_bounded(&ring, capacity, s),
                                Err(e) => {
                                    *errors.lock().expect("errors lock") = Some(e.to_string())
                                }
                            },
                        )
                    })
                    .expect("spawn sampler thread"),
            );
        }
        let has_counter_thread = counter.is_some();
        let burst = Arc::new((Mutex::new(0u64), Condvar::new()));
        let counter_cost = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
        if let Some((mut reader, every)) = counter {
            let (counter_ring, stop, errors, burst, cost) = (
                counter_ring.clone(),
                stop.clone(),
                errors.clone(),
                burst.clone(),
                counter_cost.clone(),
            );
            threads.push(
                std::thread::Builder::new()
                    .name("lem-counter".into())
                    .spawn(move || {
                        let mut timed_read = || {
                            let started = mono_ns();
                            let r = reader.read_mj();
                            cost.0.fetch_add(1, Ordering::Relaxed);
                            cost.1
                                .fetch_add(mono_ns().saturating_sub(started), Ordering::Relaxed);
                            r
                        };
                        let mut read = || match timed_read() {
                            // Stamped with the time the read returned: the value is at
                            // least as new as that instant.
                            Ok(mj) => push_bounded(
                                &counter_ring,
                                capacity,
                                CounterSample {
                                    t_mono_ns: mono_ns(),
                                    energy_mj: mj,
                                },
                            ),
                            Err(e) => *errors.lock().expect("errors lock") = Some(e.to_string()),
                        };
                        let (lock, cv) = &*burst;
                        let idle_wait = if every.is_zero() {
                            Duration::from_millis(200)
                        } else {
                            every
                        };
                        while !stop.load(Ordering::Relaxed) {
                            let until = *lock.lock().expect("burst lock");
                            if mono_ns() < until {
                                let before = mono_ns();
                                read();
                                // A cheap counter (the simulated GPU's) need not spin:
                                // a read every 2 ms brackets its updates closely enough.
                                if mono_ns() - before < 1_000_000 {
                                    std::thread::sleep(Duration::from_millis(2));
                                }
                                continue;
                            }
                            let guard = lock.lock().expect("burst lock");
                            let (guard, timeout) =
                                cv.wait_timeout(guard, idle_wait).expect("burst wait");
                            drop(guard);
                            if timeout.timed_out() && !every.is_zero() {
                                read();
                            }
                        }
                    })
                    .expect("spawn counter thread"),
            );
        }
        Sampler {
            ring,
            burst,
            counter_ring,
            stop,
            threads,
            interval,
            description,
            has_counter_thread,
            errors,
            jitter,
            counter_cost,
            processes: None,
        }
    }

    /// The same sampler, whose GPU's processes `processes` lists.
    pub fn with_processes(mut self, processes: Arc<dyn GpuProcesses>) -> Sampler {
        self.processes = Some(processes);
        self
    }

    /// What lists this GPU's processes, if anything does.
    pub fn processes(&self) -> Option<Arc<dyn GpuProcesses>> {
        self.processes.clone()
    }

    /// Samples with `t0 - margin <= t <= t1 + margin`.
    pub fn window(&self, t0: u64, t1: u64, margin_ns: u64) -> Vec<TelemetrySample> {
        let r = self.ring.lock().expect("ring lock");
        r.iter()
            .filter(|s| s.t_mono_ns + margin_ns >= t0 && s.t_mono_ns <= t1 + margin_ns)
            .cloned()
            .collect()
    }

    /// The energy counter over a window: the counter thread's reads, or the counter
    /// values carried in the telemetry samples (the simulated GPU).
    pub fn counter_window(&self, t0: u64, t1: u64, margin_ns: u64) -> Vec<CounterSample> {
        if self.has_counter_thread {
            let r = self.counter_ring.lock().expect("counter ring lock");
            r.iter()
                .filter(|s| s.t_mono_ns + margin_ns >= t0 && s.t_mono_ns <= t1 + margin_ns)
                .cloned()
                .collect()
        } else {
            self.window(t0, t1, margin_ns)
                .iter()
                .filter_map(|s| {
                    s.energy_mj.map(|e| CounterSample {
                        t_mono_ns: s.t_mono_ns,
                        energy_mj: e,
                    })
                })
                .collect()
        }
    }

    /// Reads the energy counter back to back for `duration` from now (no-op without a
    /// counter thread). The worker asks for one over each quiet span the harness holds
    /// beside a window edge (or, without quiet spans, from each edge), so the counter's
    /// update instants there are known to within one read.
    pub fn counter_burst(&self, duration: Duration) {
        if !self.has_counter_thread {
            return;
        }
        let (lock, cv) = &*self.burst;
        let mut until = lock.lock().expect("burst lock");
        *until = (*until).max(mono_ns() + duration.as_nanos() as u64);
        cv.notify_all();
    }

    /// Ends the current counter burst now (the quiet span it covered has ended).
    pub fn counter_burst_stop(&self) {
        if !self.has_counter_thread {
            return;
        }
        let (lock, cv) = &*self.burst;
        *lock.lock().expect("burst lock") = mono_ns();
        cv.notify_all();
    }

    /// Waits until the current counter burst is over (bounded by the burst itself).
    pub async fn wait_counter_burst(&self) {
        let until = *self.burst.0.lock().expect("burst lock");
        let now = mono_ns();
        if until > now {
            tokio::time::sleep(Duration::from_nanos(until - now + 10_000_000)).await;
        }
    }

    pub fn latest(&self) -> Option<TelemetrySample> {
        self.ring.lock().expect("ring lock").back().cloned()
    }

    pub fn last_error(&self) -> Option<String> {
        self.errors.lock().expect("errors lock").clone()
    }

    pub fn jitter(&self) -> JitterStats {
        *self.jitter.lock().expect("jitter lock")
    }

    /// Energy-counter reads made so far, and the time they took in all.
    pub fn counter_read_cost(&self) -> (u64, Duration) {
        (
            self.counter_cost.0.load(Ordering::Relaxed),
            Duration::from_nanos(self.counter_cost.1.load(Ordering::Relaxed)),
        )
    }

    /// Waits until a sample newer than `t` exists (bounded).
    pub async fn wait_past(&self, t: u64) {
        for _ in 0..100 {
            if self.latest().is_some_and(|s| s.t_mono_ns >= t) {
                return;
            }
            tokio::time::sleep(self.interval / 2).await;
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

pub use lem_common::run::sample::power_samples;
