//! Real NVIDIA GPUs through NVML (nvml-wrapper): the fast telemetry read, the energy
//! counter read, the per-GPU part of the environment snapshot, and the GPU's process
//! list for the device isolation check.
//!
//! NVML's total-energy counter costs milliseconds per read on an H100 (2.8-3.9 ms
//! seen) while a power read costs about a microsecond, so the two are read by
//! separate threads ([`crate::telemetry::Sampler`]): the counter thread may block
//! in the driver without ever delaying a power sample. Nothing here changes a card
//! setting; only getters are called.

use std::sync::Arc;

use anyhow::{anyhow, Context as _};
use nvml_wrapper::bitmasks::device::ThrottleReasons;
use nvml_wrapper::enum_wrappers::device::{Clock, PerformanceState, TemperatureSensor};
use nvml_wrapper::enums::device::UsedGpuMemory;
use nvml_wrapper::error::NvmlError;
use nvml_wrapper::struct_wrappers::device::ProcessInfo;
use nvml_wrapper::Nvml;
use serde_json::json;

use lem_common::isolation::GpuProcess;

use crate::telemetry::{
    CounterSource, GpuDescription, GpuProcesses, GpuTelemetry, TelemetrySample,
};

/// Loads NVML; the error says what is missing.
pub fn init() -> anyhow::Result<Arc<Nvml>> {
    Nvml::init().map(Arc::new).map_err(|e| {
        anyhow!("cannot initialise NVML ({e}); is the NVIDIA driver installed and libnvidia-ml.so.1 on the library path?")
    })
}

/// Indices of the GPUs this process may use: `CUDA_VISIBLE_DEVICES` when it lists
/// indices, else all of them.
pub fn visible_gpus(nvml: &Nvml) -> anyhow::Result<Vec<u32>> {
    let count = nvml.device_count().context("nvml device count")?;
    match std::env::var("CUDA_VISIBLE_DEVICES") {
        Ok(v) if !v.trim().is_empty() => {
            let mut out = Vec::new();
            for part in v.split(',') {
                let part = part.trim();
                if let Ok(i) = part.parse::<u32>() {
                    if i < count {
                        out.push(i);
                    }
                } else {
                    // A UUID: find its index.
                    for i in 0..count {
                        let d = nvml.device_by_index(i)?;
                        if d.uuid().map(|u| u.starts_with(part)).unwrap_or(false) {
                            out.push(i);
                        }
                    }
                }
            }
            Ok(out)
        }
        _ => Ok((0..count).collect()),
    }
}

fn pstate_number(p: PerformanceState) -> u32 {
    use PerformanceState::*;
    match p {
        Zero => 0,
        One => 1,
        Two => 2,
        Three => 3,
        Four => 4,
        Five => 5,
        Six => 6,
        Seven => 7,
        Eight => 8,
        Nine => 9,
        Ten => 10,
        Eleven => 11,
        Twelve => 12,
        Thirteen => 13,
        Fourteen => 14,
        Fifteen => 15,
        Unknown => 32,
    }
}

/// One GPU's fast telemetry (everything except the energy counter).
pub struct NvmlGpu {
    nvml: Arc<Nvml>,
    index: u32,
    desc: GpuDescription,
}

impl NvmlGpu {
    pub fn new(nvml: Arc<Nvml>, index: u32) -> anyhow::Result<NvmlGpu> {
        let d = nvml
            .device_by_index(index)
            .with_context(|| format!("NVML device {index}"))?;
        let desc = GpuDescription {
            name: d.name().unwrap_or_else(|_| "unknown NVIDIA GPU".into()),
            uuid: d.uuid().unwrap_or_default(),
            simulated: false,
        };
        Ok(NvmlGpu { nvml, index, desc })
    }

    /// A reader of this GPU's energy counter, for the counter thread; `None` when
    /// the GPU has no counter (pre-Volta, some vGPU/MIG setups).
    pub fn counter(&self) -> Option<NvmlCounter> {
        let d = self.nvml.device_by_index(self.index).ok()?;
        d.total_energy_consumption().ok()?;
        Some(NvmlCounter {
            nvml: self.nvml.clone(),
            index: self.index,
        })
    }

    /// A lister of this GPU's processes, for the device isolation check.
    pub fn processes(&self) -> NvmlProcesses {
        NvmlProcesses {
            nvml: self.nvml.clone(),
            index: self.index,
        }
    }

    /// The per-GPU part of the environment snapshot. Only getters.
    pub fn snapshot(&self) -> serde_json::Value {
        let Ok(d) = self.nvml.device_by_index(self.index) else {
            return json!({"error": "device not available"});
        };
        let mig = d.mig_mode().ok().map(|m| m.current == 1);
        json!({
            "name": self.desc.name,
            "uuid": self.desc.uuid,
            "index": self.index,
            "vram_total_mb": d.memory_info().ok().map(|m| m.total / (1024 * 1024)),
            "compute_capability": d.cuda_compute_capability().ok().map(|c| format!("{}.{}", c.major, c.minor)),
            "power_limit_w": d.power_management_limit().ok().map(|p| p as f64 / 1000.0),
            "default_power_limit_w": d.power_management_limit_default().ok().map(|p| p as f64 / 1000.0),
            "enforced_power_limit_w": d.enforced_power_limit().ok().map(|p| p as f64 / 1000.0),
            "persistence_mode": d.is_in_persistent_mode().ok(),
            "mig_enabled": mig,
            "mig_warning": mig.filter(|m| *m).map(|_| "MIG instance detected. Energy readings include all MIG slices on the parent GPU, not just this instance. For per-instance energy, disable MIG or make sure no other workload runs on sibling instances."),
            "ecc_enabled": d.is_ecc_enabled().ok().map(|e| e.currently_enabled),
            "pcie_gen": d.current_pcie_link_gen().ok(),
            "pcie_width": d.current_pcie_link_width().ok(),
            "max_sm_clock_mhz": d.max_clock_info(Clock::SM).ok(),
            "driver_version": self.nvml.sys_driver_version().ok(),
            "cuda_driver_version": self.nvml.sys_cuda_driver_version().ok().map(|v| format!("{}.{}", v / 1000, (v % 1000) / 10)),
            "nvml_version": self.nvml.sys_nvml_version().ok(),
        })
    }
}

impl GpuTelemetry for NvmlGpu {
    fn describe(&self) -> GpuDescription {
        self.desc.clone()
    }

    fn read(&mut self, t_mono_ns: u64) -> anyhow::Result<TelemetrySample> {
        let d = self.nvml.device_by_index(self.index)?;
        let power_w = d.power_usage().context("nvmlDeviceGetPowerUsage")? as f64 / 1000.0;
        let reasons = d
            .current_throttle_reasons()
            .unwrap_or(ThrottleReasons::NONE);
        Ok(TelemetrySample {
            t_mono_ns,
            power_w,
            energy_mj: None,
            temp_c: d.temperature(TemperatureSensor::Gpu).unwrap_or(0) as f64,
            sm_clock_mhz: d.clock_info(Clock::SM).unwrap_or(0),
            mem_clock_mhz: d.clock_info(Clock::Memory).unwrap_or(0),
            pstate: d.performance_state().map(pstate_number).unwrap_or(32),
            util_pct: d.utilization_rates().map(|u| u.gpu as f64).unwrap_or(0.0),
            throttle_thermal: reasons.intersects(
                ThrottleReasons::SW_THERMAL_SLOWDOWN | ThrottleReasons::HW_THERMAL_SLOWDOWN,
            ),
            throttle_power: reasons.intersects(
                ThrottleReasons::SW_POWER_CAP | ThrottleReasons::HW_POWER_BRAKE_SLOWDOWN,
            ),
            hw_slowdown: reasons.intersects(ThrottleReasons::HW_SLOWDOWN),
            memory_used_mb: d.memory_info().map(|m| m.used / (1024 * 1024)).unwrap_or(0),
        })
    }
}

/// Reads one GPU's total-energy counter (mJ since driver load).
pub struct NvmlCounter {
    nvml: Arc<Nvml>,
    index: u32,
}

impl CounterSource for NvmlCounter {
    fn read_mj(&mut self) -> anyhow::Result<u64> {
        let d = self.nvml.device_by_index(self.index)?;
        d.total_energy_consumption()
            .context("nvmlDeviceGetTotalEnergyConsumption")
    }
}

/// Lists one GPU's processes through NVML: those with a compute context, with a
/// graphics context, and MPS clients. NVML reports pids of the host's PID namespace
/// (the driver knows no other), so a worker in a container without the host's PID
/// namespace sees them as pids it does not have: foreign, with no name.
pub struct NvmlProcesses {
    nvml: Arc<Nvml>,
    index: u32,
}

impl GpuProcesses for NvmlProcesses {
    fn gpu_processes(&self) -> anyhow::Result<Vec<GpuProcess>> {
        let d = self
            .nvml
            .device_by_index(self.index)
            .with_context(|| format!("NVML device {}", self.index))?;
        let mut all = d
            .running_compute_processes()
            .context("nvmlDeviceGetComputeRunningProcesses")?;
        // Graphics contexts and MPS clients where the card and driver report them;
        // a datacenter card may answer "not supported".
        for (what, listed) in [
            (
                "nvmlDeviceGetGraphicsRunningProcesses",
                d.running_graphics_processes(),
            ),
            (
                "nvmlDeviceGetMPSComputeRunningProcesses",
                d.mps_running_compute_processes(),
            ),
        ] {
            match listed {
                Ok(p) => all.extend(p),
                Err(
                    NvmlError::NotSupported
                    | NvmlError::FunctionNotFound
                    | NvmlError::FailedToLoadSymbol(_),
                ) => {}
                Err(e) => return Err(anyhow!("{what}: {e}")),
            }
        }
        Ok(all
            .into_iter()
            .map(|p: ProcessInfo| GpuProcess {
                pid: p.pid,
                gpu_index: self.index,
                // The H200's driver may say "not available" for a process's memory.
                used_memory_mb: match p.used_gpu_memory {
                    UsedGpuMemory::Used(bytes) => Some(bytes / (1024 * 1024)),
                    UsedGpuMemory::Unavailable => None,
                },
                name: None,
            })
            .collect())
    }
}
