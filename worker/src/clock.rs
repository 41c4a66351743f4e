//! The worker's clocks: CLOCK_MONOTONIC nanoseconds (shared with the harness, which
//! stamps its events with Python's `time.monotonic_ns()`, the same clock on Linux)
//! and wall-clock Unix milliseconds for human-facing timestamps.

/// CLOCK_MONOTONIC in nanoseconds.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_MONOTONIC) failed");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

pub use lem_wire::clock::unix_ms;
