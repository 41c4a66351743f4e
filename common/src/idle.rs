//! The pure rules of `lem-worker --exit-when-idle` (the worker's side is
//! `lem_worker::idle`, whose module docs state when a worker leaves): what counts as an
//! idle long poll, and the `--idle-grace` value.

use std::time::Duration;

/// `--idle-grace` by default: how long a worker that has not been granted a run yet
/// keeps asking before it leaves.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(300);

/// Slack for the "held the whole wait" test: a `no_work` that came back more than
/// this before the wait the call asked for was not a full long poll.
const FULL_POLL_SLACK: Duration = Duration::from_secs(1);

/// Whether a `no_work` answer after `held` of a call that asked to wait `wait` was a
/// full long poll (the coordinator had nothing for the slot the whole time), rather
/// than an early answer (a coordinator stopping).
pub fn full_poll(held: Duration, wait: Duration) -> bool {
    held + FULL_POLL_SLACK >= wait
}

/// Parses `--idle-grace`: `0`, or a whole number with a unit `s`, `m`, `h` or `d`
/// (`90s`, `5m`, `1h`).
pub fn parse_grace(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (digits, unit) = t.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}`: expected a number with a unit, e.g. 90s, 5m, 1h"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "" => return Err(format!("`{text}`: give a unit (s, m, h or d), e.g. {n}s")),
        other => {
            return Err(format!(
                "`{text}`: unknown unit `{other}` (use s, m, h or d)"
            ))
        }
    };
    Ok(Duration::from_secs(n.saturating_mul(scale)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_long_poll_held_to_its_end_counts() {
        let wait = Duration::from_secs(20);
        assert!(full_poll(Duration::from_millis(20_003), wait));
        assert!(full_poll(Duration::from_millis(19_500), wait));
        assert!(
            !full_poll(Duration::from_millis(3), wait),
            "a stopping coordinator"
        );
        assert!(!full_poll(Duration::from_secs(10), wait));
    }

    #[test]
    fn grace_values() {
        assert_eq!(parse_grace("0"), Ok(Duration::ZERO));
        assert_eq!(parse_grace("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_grace("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_grace("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_grace("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_grace("1d"), Ok(Duration::from_secs(86_400)));
        assert!(parse_grace("5").unwrap_err().contains("unit"));
        assert!(parse_grace("5x").unwrap_err().contains("unknown unit"));
        assert!(parse_grace("m").is_err());
    }
}
