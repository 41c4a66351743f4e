//! GPU telemetry: a source trait, the labelled simulated GPU, and the sampler thread
//! that reads a source on a fixed interval into a ring buffer.
//!
//! The sampler runs on its own OS thread per slot (never on the async runtime, so a
//! busy executor cannot delay a power sample) and stamps every sample with
//! CLOCK_MONOTONIC, the clock of the harness's events. The measuring code asks the
//! ring for the samples of a window and hands them to `lem_common::energy`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lem_common::energy::{CounterSample, PowerSample};
use lem_common::simgpu::{SimGpuModel, SimParams};

use crate::clock::mono_ns;

/// One reading of a GPU.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TelemetrySample {
    pub t_mono_ns: u64,
    pub power_w: f64,
    /// The total-energy counter (mJ since driver load), where the GPU has one.
    pub energy_mj: Option<u64>,
    pub temp_c: f64,
    pub sm_clock_mhz: u32,
    pub mem_clock_mhz: u32,
    pub pstate: u32,
    pub util_pct: f64,
    pub throttle_thermal: bool,
}

/// What a GPU is, for results and registration.
#[derive(Clone, Debug, PartialEq)]
pub struct GpuDescription {
    pub name: String,
    pub uuid: String,
    pub simulated: bool,
}

/// A source of GPU readings. Implementations: [`SimulatedGpu`]; NVML comes with the
/// real-GPU work.
pub trait GpuTelemetry: Send {
    fn describe(&self) -> GpuDescription;
    fn read(&mut self, t_mono_ns: u64) -> anyhow::Result<TelemetrySample>;
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
        SimulatedGpu {
            model: Arc::new(Mutex::new(SimGpuModel::new(
                SimParams::default(),
                mono_ns(),
            ))),
            slot,
        }
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
        })
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

/// A load sink that ignores everything (real hardware measures itself).
pub struct NoLoadSink;

impl LoadSink for NoLoadSink {
    fn on_phase(&self, _: &str, _: u32, _: u64) {}
    fn on_resident(&self, _: bool, _: u64) {}
}

/// Samples a telemetry source on its own thread into a bounded ring.
pub struct Sampler {
    ring: Arc<Mutex<VecDeque<TelemetrySample>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub interval: Duration,
    pub description: GpuDescription,
    errors: Arc<Mutex<Option<String>>>,
}

impl Sampler {
    /// Starts sampling `source` every `interval`, keeping at most `capacity` samples.
    pub fn start(
        mut source: Box<dyn GpuTelemetry>,
        interval: Duration,
        capacity: usize,
    ) -> Sampler {
        let ring = Arc::new(Mutex::new(VecDeque::with_capacity(capacity)));
        let stop = Arc::new(AtomicBool::new(false));
        let errors = Arc::new(Mutex::new(None));
        let description = source.describe();
        let thread = {
            let (ring, stop, errors) = (ring.clone(), stop.clone(), errors.clone());
            std::thread::Builder::new()
                .name("lem-sampler".into())
                .spawn(move || {
                    let step = interval.as_nanos() as u64;
                    let mut next = mono_ns();
                    while !stop.load(Ordering::Relaxed) {
                        let now = mono_ns();
                        match source.read(now) {
                            Ok(s) => {
                                let mut r = ring.lock().expect("ring lock");
                                if r.len() == capacity {
                                    r.pop_front();
                                }
                                r.push_back(s);
                            }
                            Err(e) => {
                                *errors.lock().expect("errors lock") = Some(e.to_string());
                            }
                        }
                        // Fixed-rate schedule: late samples do not push later ones back.
                        next += step;
                        let now = mono_ns();
                        if next > now {
                            std::thread::sleep(Duration::from_nanos(next - now));
                        } else {
                            next = now;
                        }
                    }
                })
                .expect("spawn sampler thread")
        };
        Sampler {
            ring,
            stop,
            thread: Some(thread),
            interval,
            description,
            errors,
        }
    }

    /// Samples with `t0 - margin <= t <= t1 + margin`.
    pub fn window(&self, t0: u64, t1: u64, margin_ns: u64) -> Vec<TelemetrySample> {
        let r = self.ring.lock().expect("ring lock");
        r.iter()
            .filter(|s| s.t_mono_ns + margin_ns >= t0 && s.t_mono_ns <= t1 + margin_ns)
            .cloned()
            .collect()
    }

    pub fn latest(&self) -> Option<TelemetrySample> {
        self.ring.lock().expect("ring lock").back().cloned()
    }

    pub fn last_error(&self) -> Option<String> {
        self.errors.lock().expect("errors lock").clone()
    }

    /// Waits until a sample newer than `t` exists (at most two intervals and a bit).
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
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Splits samples into the energy module's inputs.
pub fn energy_inputs(samples: &[TelemetrySample]) -> (Vec<PowerSample>, Vec<CounterSample>) {
    let power = samples
        .iter()
        .map(|s| PowerSample {
            t_mono_ns: s.t_mono_ns,
            power_w: s.power_w,
        })
        .collect();
    let counter = samples
        .iter()
        .filter_map(|s| {
            s.energy_mj.map(|e| CounterSample {
                t_mono_ns: s.t_mono_ns,
                energy_mj: e,
            })
        })
        .collect();
    (power, counter)
}
