//! `lem-gpu-trace`: records a raw NVML trace for validating the energy maths.
//!
//! Samples power (and temperature, clocks) on one thread at a fixed interval and the
//! total-energy counter on another as fast as it can be read (or at a given
//! interval), for a given time, and writes JSON lines: `{"k":"p",...}` power samples,
//! `{"k":"c","t":..,"ta":..,"mj":..}` counter reads (`ta` when the read began, `t` when
//! it returned), and a final `{"k":"stats",...}` line with
//! read costs and the process's CPU time. With the counter read back to back, the
//! counter's own update instants give a reference energy for any sub-window, which is
//! what the energy fixture test uses. Only getters are called; no card setting changes.

use std::io::Write as _;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use lem_worker::clock::mono_ns;
use lem_worker::nvml;
use lem_worker::telemetry::{CounterSource, GpuTelemetry};

fn cpu_seconds() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn main() -> anyhow::Result<()> {
    let mut seconds = 10.0f64;
    let mut power_ms = 50u64;
    let mut counter_ms = 0u64;
    let mut out_path = String::from("trace.jsonl");
    let mut gpu = 0u32;
    let mut stop_file: Option<std::path::PathBuf> = None;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--seconds" => seconds = v.parse()?,
            "--power-interval-ms" => power_ms = v.parse()?,
            "--counter-interval-ms" => counter_ms = v.parse()?,
            "--out" => out_path = v,
            "--gpu" => gpu = v.parse()?,
            "--stop-file" => stop_file = Some(v.into()),
            other => anyhow::bail!("unknown flag {other} (flags: --seconds --power-interval-ms --counter-interval-ms --out --gpu --stop-file)"),
        }
        i += 2;
    }
    let nvml_h = nvml::init()?;
    let mut dev = nvml::NvmlGpu::new(nvml_h.clone(), gpu)?;
    let mut counter = dev.counter().context("this GPU has no energy counter")?;
    let snapshot = dev.snapshot();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let cpu0 = cpu_seconds();
    // Ends early once the stop file exists (checked by the power loop; the counter
    // thread follows through `stopped`).
    let stopped = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped_c = stopped.clone();

    let counter_thread = std::thread::spawn(move || {
        let mut reads = Vec::new();
        let mut costs = Vec::new();
        while Instant::now() < deadline && !stopped_c.load(std::sync::atomic::Ordering::Relaxed) {
            let a = mono_ns();
            let mj = counter.read_mj().expect("counter read");
            let b = mono_ns();
            reads.push((a, b, mj));
            costs.push((b - a) as f64 / 1e3);
            if counter_ms > 0 {
                std::thread::sleep(Duration::from_millis(counter_ms));
            }
        }
        (reads, costs)
    });
    let mut samples = Vec::new();
    let mut power_costs = Vec::new();
    let step = Duration::from_millis(power_ms);
    let mut next = Instant::now();
    while Instant::now() < deadline {
        if stop_file.as_ref().is_some_and(|f| f.exists()) {
            stopped.store(true, std::sync::atomic::Ordering::Relaxed);
            break;
        }
        let a = mono_ns();
        let s = dev.read(a)?;
        let b = mono_ns();
        power_costs.push((b - a) as f64 / 1e3);
        samples.push(s);
        next += step;
        if let Some(d) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(d);
        }
    }
    let (reads, counter_costs) = counter_thread.join().expect("counter thread");
    let cpu = cpu_seconds() - cpu0;
    let seconds = (deadline - Duration::from_secs_f64(seconds))
        .elapsed()
        .as_secs_f64();
    let mut out = std::io::BufWriter::new(std::fs::File::create(&out_path)?);
    writeln!(out, "{}", serde_json::json!({"k": "env", "gpu": snapshot}))?;
    for s in &samples {
        writeln!(
            out,
            "{}",
            serde_json::json!({"k": "p", "t": s.t_mono_ns, "w": s.power_w, "temp": s.temp_c, "sm": s.sm_clock_mhz, "ps": s.pstate, "util": s.util_pct})
        )?;
    }
    for (ta, t, mj) in &reads {
        writeln!(
            out,
            "{}",
            serde_json::json!({"k": "c", "t": t, "ta": ta, "mj": mj})
        )?;
    }
    let stat = |v: &[f64]| {
        let mean = lem_common::stats::mean(v).unwrap_or(0.0);
        let p50 = lem_common::stats::percentile(v, 0.5).unwrap_or(0.0);
        let p99 = lem_common::stats::percentile(v, 0.99).unwrap_or(0.0);
        serde_json::json!({"mean_us": mean, "p50_us": p50, "p99_us": p99, "n": v.len()})
    };
    let stats = serde_json::json!({
        "k": "stats",
        "seconds": seconds,
        "power_interval_ms": power_ms,
        "counter_interval_ms": counter_ms,
        "fast_read_cost": stat(&power_costs),
        "counter_read_cost": stat(&counter_costs),
        "process_cpu_s": cpu,
        "process_cpu_pct_of_one_core": cpu / seconds * 100.0,
    });
    writeln!(out, "{stats}")?;
    out.flush()?;
    println!("{stats}");
    Ok(())
}
