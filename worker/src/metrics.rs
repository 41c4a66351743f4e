//! The worker's Prometheus metrics (`lem-worker --http ADDR`, docs/observability.md):
//! each GPU's power, temperature and SM clock as its sampler last read them, what its
//! energy counter costs to read, each slot's current run (as numbers, never a label
//! per run), runs by outcome and the thermal gate's waits.
//!
//! GPU readings and the current runs are read at scrape time from the samplers and
//! the slots' state; runs and gate waits are counted where they happen (`slot.rs`).
//! Nothing here touches a GPU: a scrape reads the samplers' rings, so it never adds
//! an NVML call to a measurement. The same readings go to the coordinator with every
//! lease and renew call ([`WorkerMetrics::readings`]), for its status page. The
//! encoding helpers ([`gauge_family`], [`counter_family`]) are the wire crate's,
//! shared with `lem-coord`'s metrics.
//!
//! Names follow Prometheus' conventions: `lem_worker_` first, the base unit last
//! (`_watts`, `_celsius`, `_hertz`, `_seconds`), `_total` on counters.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};

use lem_common::rpc::GpuReading;
use lem_common::thermal::GateReason;
use lem_common::types::RunKey;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};

use crate::clock::mono_ns;
use crate::telemetry::{GpuDescription, Sampler, TelemetrySample};
pub use lem_wire::metrics::{counter_family, gauge_family};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RunLabels {
    slot: String,
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GateLabels {
    slot: String,
    reason: String,
}

/// What a slot is running: the run as numbers (a run id as a label would make one
/// series per run, which a million-run campaign would turn into a million series).
#[derive(Clone, Debug, PartialEq)]
struct CurrentRun {
    campaign: u64,
    /// The `SEQ` of `CAMPAIGN-SEQ`, as run ids are written (from 1).
    number: u32,
    leased_mono_ns: u64,
}

fn gate_histogram() -> Histogram {
    // 0 (opened at once) to the gate's own limit of minutes.
    Histogram::new([
        0.01, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0,
    ])
}

/// The worker's metrics: shared by its slots (which count into it) and its HTTP
/// endpoint (which encodes it).
pub struct WorkerMetrics {
    worker: Mutex<String>,
    gpus: Mutex<Vec<(u32, Arc<Sampler>)>>,
    /// Every slot (a dynamic pool's lanes), and what each runs now.
    slots: Mutex<BTreeMap<u32, Option<CurrentRun>>>,
    runs: Family<RunLabels, Counter>,
    gate_waits: Family<GateLabels, Histogram, fn() -> Histogram>,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        WorkerMetrics {
            worker: Mutex::default(),
            gpus: Mutex::default(),
            slots: Mutex::default(),
            runs: Family::default(),
            gate_waits: Family::new_with_constructor(gate_histogram),
        }
    }
}

impl WorkerMetrics {
    pub fn set_worker(&self, name: &str) {
        *self.worker.lock().expect("worker lock") = name.to_string();
    }

    /// Adds a GPU (its index on this host) whose sampler is read at each scrape.
    pub fn add_gpu(&self, index: u32, sampler: Arc<Sampler>) {
        let mut gpus = self.gpus.lock().expect("gpus lock");
        gpus.retain(|(i, _)| *i != index);
        gpus.push((index, sampler));
        gpus.sort_by_key(|(i, _)| *i);
    }

    /// Adds a slot (idle until [`WorkerMetrics::run_started`]).
    pub fn add_slot(&self, slot: u32) {
        self.slots
            .lock()
            .expect("slots lock")
            .entry(slot)
            .or_insert(None);
    }

    /// Every GPU's latest sample, for the coordinator (lease and renew calls).
    pub fn readings(&self) -> Vec<GpuReading> {
        let gpus = self.gpus.lock().expect("gpus lock");
        gpus.iter()
            .filter_map(|(index, sampler)| {
                let s = sampler.latest()?;
                Some(GpuReading {
                    gpu: *index,
                    power_w: s.power_w,
                    temp_c: s.temp_c,
                    sm_clock_mhz: s.sm_clock_mhz,
                })
            })
            .collect()
    }

    pub fn run_started(&self, slot: u32, run: RunKey) {
        self.slots.lock().expect("slots lock").insert(
            slot,
            Some(CurrentRun {
                campaign: run.campaign.0,
                number: run.seq + 1,
                leased_mono_ns: mono_ns(),
            }),
        );
    }

    /// The slot's run ended: `completed`, or the failure class (`infrastructure`,
    /// `configuration`, `handback`).
    pub fn run_ended(&self, slot: u32, outcome: &str) {
        self.slots.lock().expect("slots lock").insert(slot, None);
        self.runs
            .get_or_create(&RunLabels {
                slot: slot.to_string(),
                outcome: outcome.to_string(),
            })
            .inc();
    }

    /// The thermal gate opened after `waited_s` (0 when it opened at once).
    pub fn gate_waited(&self, slot: u32, reason: GateReason, waited_s: f64) {
        self.gate_waits
            .get_or_create(&GateLabels {
                slot: slot.to_string(),
                reason: reason.as_str().to_string(),
            })
            .observe(waited_s);
    }

    /// The OpenMetrics text of one scrape.
    pub fn encode(&self) -> String {
        let now = mono_ns();
        let gpus = self
            .gpus
            .lock()
            .expect("gpus lock")
            .iter()
            .map(|(index, s)| GpuNow {
                index: *index,
                description: s.description.clone(),
                latest: s.latest(),
                counter_reads: s.counter_read_cost(),
            })
            .collect();
        let snapshot = Snapshot {
            now_mono_ns: now,
            gpus,
            slots: self.slots.lock().expect("slots lock").clone(),
        };
        let mut registry = Registry::default();
        registry.register(
            "lem_worker_runs",
            "Runs this worker ended, by slot and outcome (completed, or the failure class: infrastructure, configuration, handback)",
            self.runs.clone(),
        );
        registry.register_with_unit(
            "lem_worker_thermal_gate_wait",
            "Time each slot waited at the thermal gate before a run (the study's gap and the cool-down), by the reason it opened",
            Unit::Seconds,
            self.gate_waits.clone(),
        );
        registry.register(
            "lem_worker_build",
            "The worker's name and version",
            Info::new(vec![
                ("worker", self.worker.lock().expect("worker lock").clone()),
                ("version", env!("CARGO_PKG_VERSION").to_string()),
            ]),
        );
        registry.register_collector(Box::new(snapshot));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[derive(Debug)]
struct GpuNow {
    index: u32,
    description: GpuDescription,
    latest: Option<TelemetrySample>,
    counter_reads: (u64, std::time::Duration),
}

/// What one scrape reads of the samplers and slots.
#[derive(Debug)]
struct Snapshot {
    now_mono_ns: u64,
    gpus: Vec<GpuNow>,
    slots: BTreeMap<u32, Option<CurrentRun>>,
}

impl Collector for Snapshot {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), fmt::Error> {
        let gpu = |g: &GpuNow| vec![("gpu", g.index.to_string())];
        let sampled = || {
            self.gpus
                .iter()
                .filter_map(|g| g.latest.as_ref().map(|s| (g, s)))
        };
        gauge_family(
            &mut e,
            "lem_worker_gpu_power",
            "Each GPU's power as its sampler last read it",
            Some(&Unit::Other("watts".into())),
            sampled().map(|(g, s)| (gpu(g), s.power_w)),
        )?;
        gauge_family(
            &mut e,
            "lem_worker_gpu_temperature",
            "Each GPU's temperature as its sampler last read it",
            Some(&Unit::Celsius),
            sampled().map(|(g, s)| (gpu(g), s.temp_c)),
        )?;
        gauge_family(
            &mut e,
            "lem_worker_gpu_sm_clock",
            "Each GPU's SM clock as its sampler last read it",
            Some(&Unit::Other("hertz".into())),
            sampled().map(|(g, s)| (gpu(g), f64::from(s.sm_clock_mhz) * 1e6)),
        )?;
        gauge_family(
            &mut e,
            "lem_worker_gpu_sample_age",
            "Time since each GPU's sampler last read it (a stalled sampler grows it)",
            Some(&Unit::Seconds),
            sampled().map(|(g, s)| {
                (
                    gpu(g),
                    self.now_mono_ns.saturating_sub(s.t_mono_ns) as f64 / 1e9,
                )
            }),
        )?;
        let mut info = e.encode_descriptor(
            "lem_worker_gpu",
            "Each GPU: its name, UUID and whether it is the labelled simulated GPU",
            None,
            MetricType::Info,
        )?;
        for g in &self.gpus {
            info.encode_info(&vec![
                ("gpu", g.index.to_string()),
                ("name", g.description.name.clone()),
                ("uuid", g.description.uuid.clone()),
                ("simulated", g.description.simulated.to_string()),
            ])?;
        }
        counter_family(
            &mut e,
            "lem_worker_energy_counter_reads",
            "Energy-counter reads made (in bursts at window edges, and every --counter-interval-ms)",
            None,
            self.gpus
                .iter()
                .map(|g| (gpu(g), g.counter_reads.0 as f64)),
        )?;
        counter_family(
            &mut e,
            "lem_worker_energy_counter_read",
            "Time the energy-counter reads took in all (their cost: about 4 ms each on an H100)",
            Some(&Unit::Seconds),
            self.gpus
                .iter()
                .map(|g| (gpu(g), g.counter_reads.1.as_secs_f64())),
        )?;
        gauge_family(
            &mut e,
            "lem_worker_slot_busy",
            "1 while the slot has a run leased, else 0",
            None,
            self.slots.iter().map(|(slot, run)| {
                (
                    vec![("slot", slot.to_string())],
                    f64::from(u8::from(run.is_some())),
                )
            }),
        )?;
        let running = || {
            self.slots.iter().filter_map(|(slot, run)| {
                run.as_ref().map(|r| (vec![("slot", slot.to_string())], r))
            })
        };
        gauge_family(
            &mut e,
            "lem_worker_slot_run_campaign",
            "The campaign of each busy slot's run (the CAMPAIGN of run CAMPAIGN-SEQ)",
            None,
            running().map(|(l, r)| (l, r.campaign as f64)),
        )?;
        gauge_family(
            &mut e,
            "lem_worker_slot_run_number",
            "The number of each busy slot's run in its campaign (the SEQ of run CAMPAIGN-SEQ)",
            None,
            running().map(|(l, r)| (l, f64::from(r.number))),
        )?;
        gauge_family(
            &mut e,
            "lem_worker_slot_run_elapsed",
            "Time since each busy slot's run was leased",
            Some(&Unit::Seconds),
            running().map(|(l, r)| {
                (
                    l,
                    self.now_mono_ns.saturating_sub(r.leased_mono_ns) as f64 / 1e9,
                )
            }),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::SimulatedGpu;
    use lem_common::types::CampaignId;

    #[test]
    fn a_scrape_shows_each_gpu_and_slot_and_counts_runs_and_gate_waits() {
        let m = WorkerMetrics::default();
        m.set_worker("w1");
        let gpu = SimulatedGpu::new(0);
        let sampler = Sampler::start(
            Box::new(gpu.clone()),
            std::time::Duration::from_millis(10),
            100,
            Some((Box::new(gpu), std::time::Duration::from_millis(5))),
        );
        let sampler = Arc::new(sampler);
        while sampler.latest().is_none() || sampler.counter_read_cost().0 == 0 {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        m.add_gpu(0, sampler);
        m.add_slot(0);
        m.add_slot(1);
        let run = RunKey {
            campaign: CampaignId(3),
            seq: 6,
        };
        m.run_started(1, run);
        m.gate_waited(1, GateReason::Cooled, 2.5);
        let readings = m.readings();
        assert_eq!(readings.len(), 1);
        assert!(readings[0].power_w > 0.0, "{readings:?}");

        let text = m.encode();
        assert!(text.ends_with("# EOF\n"), "{text}");
        for want in [
            "# TYPE lem_worker_gpu_power_watts gauge\n",
            "lem_worker_gpu_power_watts{gpu=\"0\"} ",
            "lem_worker_gpu_temperature_celsius{gpu=\"0\"} ",
            "lem_worker_gpu_sm_clock_hertz{gpu=\"0\"} ",
            "lem_worker_energy_counter_reads_total{gpu=\"0\"} ",
            "lem_worker_energy_counter_read_seconds_total{gpu=\"0\"} ",
            "lem_worker_slot_busy{slot=\"0\"} 0.0\n",
            "lem_worker_slot_busy{slot=\"1\"} 1.0\n",
            "lem_worker_slot_run_campaign{slot=\"1\"} 3.0\n",
            "lem_worker_slot_run_number{slot=\"1\"} 7.0\n",
            "lem_worker_slot_run_elapsed_seconds{slot=\"1\"} ",
            "lem_worker_thermal_gate_wait_seconds_count{slot=\"1\",reason=\"cooled\"} 1\n",
            "lem_worker_build_info{worker=\"w1\",",
            "simulated=\"true\"",
        ] {
            assert!(text.contains(want), "{want} in\n{text}");
        }
        m.run_ended(1, "completed");
        let text = m.encode();
        assert!(
            text.contains("lem_worker_slot_busy{slot=\"1\"} 0.0\n"),
            "{text}"
        );
        assert!(!text.contains("lem_worker_slot_run_number{"), "{text}");
        assert!(
            text.contains("lem_worker_runs_total{slot=\"1\",outcome=\"completed\"} 1\n"),
            "{text}"
        );
    }
}
