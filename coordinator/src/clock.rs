//! The coordinator's clock: wall-clock Unix milliseconds for lease deadlines,
//! presence and timestamps ([`lem_wire::clock`], the same the workers write).

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    lem_wire::clock::unix_ms()
}
