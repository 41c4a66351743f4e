//! One reading of a GPU, as the worker's sampler thread takes it: the plain data the
//! run lifecycle measures a window from.

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
    /// Software power cap or hardware power brake.
    pub throttle_power: bool,
    /// Hardware slowdown (external power or thermal signal).
    pub hw_slowdown: bool,
    pub memory_used_mb: u64,
}

/// The power readings of `samples`, for the energy module.
pub fn power_samples(samples: &[TelemetrySample]) -> Vec<crate::energy::PowerSample> {
    samples
        .iter()
        .map(|s| crate::energy::PowerSample {
            t_mono_ns: s.t_mono_ns,
            power_w: s.power_w,
        })
        .collect()
}
