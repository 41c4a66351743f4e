//! The coordinator's limits: how big a study, a grid, a campaign and a worker name
//! may be, and what a connection can make the server hold (docs/security.md).

use std::time::Duration;

use lem_common::study;

/// Largest study accepted (its text and its `base:` file's together).
pub const MAX_STUDY_BYTES: usize = 4 << 20;
/// Largest grid (configs before validation) the coordinator expands, whatever the
/// client's `--allow-large-grid` says: counted before expanding, so a runaway
/// sweep costs nothing.
pub const MAX_CONFIGS_PER_CAMPAIGN: usize = 100_000;
/// Largest number of runs one campaign may expand to.
pub const MAX_RUNS_PER_CAMPAIGN: usize = study::MAX_PLANNED_RUNS;

/// Longest worker name; names go into certificates and log lines.
pub const MAX_WORKER_NAME: usize = 64;

/// Limits on what a connection can make the server hold.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Open connections at most; past it new ones are closed at once.
    pub max_connections: usize,
    /// Connections not yet authenticated (handshaking, TLS without a certificate,
    /// refused) at most, so they cannot crowd out workers.
    pub max_unauthenticated: usize,
    /// Time from accept to the first byte, and again to a finished TLS handshake.
    pub handshake: Duration,
    /// Time a frame may take to arrive once its first byte did.
    pub frame: Duration,
    /// Lifetime of an unauthenticated connection (enough to enrol).
    pub unauthenticated_lifetime: Duration,
    /// Largest frame an unauthenticated peer may send (an enrolment is ~1 KiB).
    pub unauthenticated_frame: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_unauthenticated: 128,
            handshake: Duration::from_secs(10),
            frame: Duration::from_secs(30),
            unauthenticated_lifetime: Duration::from_secs(60),
            unauthenticated_frame: 64 << 10,
        }
    }
}
