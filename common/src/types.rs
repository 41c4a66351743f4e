//! Domain vocabulary shared by the coordinator, the worker and the CLI.
//!
//! Identifiers and units are newtypes or carry their unit in the field name
//! (`energy_j`, `power_w`, `ttl_ms`), so a joule is never mistaken for a watt and a
//! campaign id never for a run index.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A campaign: one submitted study, expanded into runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CampaignId(pub u64);

impl fmt::Display for CampaignId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One run of a campaign: a (config, cycle) pair at a position of the execution order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RunKey {
    pub campaign: CampaignId,
    /// 0-based position in the campaign's execution order.
    pub seq: u32,
}

impl fmt::Display for RunKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{:04}", self.campaign.0, self.seq + 1)
    }
}

/// A monotonic token handed out with every lease; a result or renewal carrying an older
/// token than the run's current lease is stale and is never counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FencingToken(pub u64);

impl fmt::Display for FencingToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A worker's identity as the coordinator knows it (chosen by the worker, unique per host).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WorkerId(pub String);

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The engines the fleet knows. `synthetic` is fleet-only: an emulation for hosts
/// without a GPU; the other three are llem's.
pub const KNOWN_ENGINES: [&str; 4] = ["synthetic", "tensorrt", "transformers", "vllm"];

/// What a worker reports about one engine it could run.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EngineCapability {
    pub engine: String,
    pub available: bool,
    /// Why not, when unavailable (e.g. "python module vllm is not installed").
    pub reason: Option<String>,
    pub version: Option<String>,
}

/// Why a run failed; decides whether the coordinator retries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// The host, the network, a crash: another attempt may succeed.
    Infrastructure,
    /// The configuration itself cannot run (out of memory, an invalid parameter):
    /// retrying would fail the same way.
    Configuration,
    /// Not a failure: the worker handed the run back unfinished on request
    /// (`lem-worker --drain` and SIGTERM). The run goes back to pending and the
    /// attempt does not count.
    Handback,
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FailureClass::Infrastructure => "infrastructure",
            FailureClass::Configuration => "configuration",
            FailureClass::Handback => "handback",
        })
    }
}

// The stored result and its parts live in `crate::result`; they are domain vocabulary too.
pub use crate::result::{
    BaselineRecord, Baselines, EnergyFigures, ForeignProcess, GpuFigures, HarnessFacts, Isolation,
    MeasuredWindow, PrefillSplit, RunResult, Thermal, Throughput,
};

/// Formats Unix milliseconds as ISO 8601 UTC with a `Z` (`2026-11-25T10:00:00.123Z`),
/// through chrono.
pub fn format_utc_ms(unix_ms: u64) -> String {
    let ms = i64::try_from(unix_ms).unwrap_or(i64::MAX);
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Reads back an RFC 3339 time in UTC with a `Z`, as [`format_utc_ms`] writes it (the
/// fraction may have 0 to 9 digits, read to the millisecond), as Unix milliseconds;
/// `None` for anything else (an offset other than `Z`, a date before 1970).
pub fn parse_utc_ms(text: &str) -> Option<u64> {
    if !text.ends_with('Z') {
        return None;
    }
    let t = chrono::DateTime::parse_from_rfc3339(text).ok()?;
    u64::try_from(t.timestamp_millis()).ok()
}

#[cfg(test)]
mod time_tests {
    #[test]
    fn formats_known_instants() {
        assert_eq!(super::format_utc_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            super::format_utc_ms(1_736_935_200_123),
            "2025-01-15T10:00:00.123Z"
        );
        assert_eq!(
            super::format_utc_ms(951_782_400_000),
            "2000-02-29T00:00:00.000Z"
        );
    }

    #[test]
    fn parses_what_it_formats() {
        for ms in [0, 951_782_400_000, 1_736_935_200_123, 4_102_444_799_999] {
            let text = super::format_utc_ms(ms);
            assert_eq!(super::parse_utc_ms(&text), Some(ms), "{text}");
        }
        assert_eq!(
            super::parse_utc_ms("2025-01-15T10:00:00Z"),
            Some(1_736_935_200_000)
        );
        assert_eq!(
            super::parse_utc_ms("2025-01-15T10:00:00.1234567Z"),
            Some(1_736_935_200_123)
        );
        for bad in [
            "",
            "2025-01-15T10:00:00",
            "2025-01-15T10:00:00+01:00",
            "2025-13-15T10:00:00Z",
            "2025-01-15T10:00:00.Z",
            "1969-12-31T23:59:59Z",
            "2025-01-15T1a:00:00Z",
        ] {
            assert_eq!(super::parse_utc_ms(bad), None, "{bad}");
        }
    }
}
