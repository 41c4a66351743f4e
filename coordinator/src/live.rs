//! The live view of a campaign: `lem-coord status ID --watch`, `submit --wait` and
//! `lem-coord run`'s progress.
//!
//! On a terminal it is an indicatif bar redrawn in place (runs finished of the
//! total, elapsed time, ETA), with a line per engine and the blocked reasons below
//! it; log lines are printed above the bar ([`LogWriter`]), never through it.
//! Anywhere else (a pipe, a CI log) it prints one plain line per change. The text
//! comes from pure functions ([`progress_line`], [`engine_lines`],
//! [`blocked_lines`], [`eta`]) that the unit tests call.

use std::io::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use lem_common::rpc::CampaignStatus;

/// Workers named per distinct blocked reason (the rest are counted).
pub const NAMES_SHOWN: usize = 5;
/// Distinct reasons shown per blocked engine (the rest are counted; `--json` has all).
pub const REASONS_SHOWN: usize = 5;

/// The bar being drawn, if any: [`LogWriter`] prints log lines above it.
static ACTIVE: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Runs that have ended (done, failed or cancelled).
pub fn finished(s: &CampaignStatus) -> u64 {
    s.done + s.failed + s.cancelled
}

/// Whether nothing is left to run: no run pending or leased, or the campaign was
/// cancelled.
pub fn is_over(s: &CampaignStatus) -> bool {
    s.pending + s.running == 0 || s.state == "cancelled"
}

/// Time left at the rate runs finished while watched: `finished_at_start` runs had
/// finished when watching began `watched` ago, `finished` have now, of `total`.
/// `None` until a run has finished while watched (no rate yet).
pub fn eta(
    finished_at_start: u64,
    finished: u64,
    total: u64,
    watched: Duration,
) -> Option<Duration> {
    let n = finished.saturating_sub(finished_at_start);
    if n == 0 || watched.is_zero() {
        return None;
    }
    let left = total.saturating_sub(finished);
    Some(watched.mul_f64(left as f64 / n as f64))
}

/// `42s`, `3:07`, `1:02:03`.
pub fn format_duration(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, (s % 3600) / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}:{s:02}"),
        (h, m, s) => format!("{h}:{m:02}:{s:02}"),
    }
}

/// The one-line progress of a campaign, with the elapsed time and the ETA (`--`
/// while unknown).
pub fn progress_line(s: &CampaignStatus, elapsed: Duration, eta: Option<Duration>) -> String {
    let mut line = format!(
        "campaign {}: {}/{} run(s) finished ({} done, {} failed), {} running, {} pending",
        s.campaign,
        finished(s),
        s.total,
        s.done,
        s.failed,
        s.running,
        s.pending
    );
    if s.cancelled > 0 {
        line.push_str(&format!(", {} cancelled", s.cancelled));
    }
    line.push_str(&format!("; elapsed {}", format_duration(elapsed)));
    if !is_over(s) {
        let eta = eta.map_or_else(|| "--".to_string(), format_duration);
        line.push_str(&format!(", ETA {eta}"));
    }
    if s.state != "running" {
        line.push_str(&format!(" [{}]", s.state));
    }
    line
}

/// One line per engine: done of its runs, running, failed, pending.
pub fn engine_lines(s: &CampaignStatus) -> Vec<String> {
    let width = s.engines.iter().map(|e| e.engine.len()).max().unwrap_or(0);
    s.engines
        .iter()
        .map(|e| {
            let mut line = format!(
                "  {:<width$}  done {}/{}  running {}  failed {}  pending {}",
                e.engine, e.done, e.total, e.running, e.failed, e.pending
            );
            if e.cancelled > 0 {
                line.push_str(&format!("  cancelled {}", e.cancelled));
            }
            line
        })
        .collect()
}

/// `a, b, c and 47 more (50)`: at most [`NAMES_SHOWN`] names.
fn names(workers: &[String]) -> String {
    let list = crate::service::name_list(workers, NAMES_SHOWN);
    if workers.len() <= NAMES_SHOWN {
        return list;
    }
    format!("{list} ({} workers)", workers.len())
}

/// The blocked runs, summarised: per blocked engine its cause, then each distinct
/// reason the connected workers give with (a few of) the workers that give it, and
/// the fix; disconnected workers are only counted, once.
pub fn blocked_lines(s: &CampaignStatus) -> Vec<String> {
    let mut out = Vec::new();
    for b in &s.blocked {
        let tp = if b.tp_size > 1 {
            format!(" (TP {})", b.tp_size)
        } else {
            String::new()
        };
        // A coordinator older than `cause` sends the whole reason only.
        let cause = if b.cause.is_empty() {
            &b.reason
        } else {
            &b.cause
        };
        out.push(format!(
            "  blocked: {}{tp} pending {} run(s): {cause}",
            b.engine, b.pending
        ));
        if b.cause.is_empty() {
            continue;
        }
        for g in b.by_reason.iter().take(REASONS_SHOWN) {
            out.push(format!("    {}: {}", names(&g.workers), g.reason));
        }
        if b.by_reason.len() > REASONS_SHOWN {
            let rest = &b.by_reason[REASONS_SHOWN..];
            let n: usize = rest.iter().map(|g| g.workers.len()).sum();
            out.push(format!(
                "    and {} more reason(s) from {n} worker(s) (`lem-coord status {} --json` lists them all)",
                rest.len(),
                s.campaign
            ));
        }
        if let Some(fix) = &b.fix {
            out.push(format!("    fix: {fix}"));
        }
    }
    if !s.blocked.is_empty() && s.disconnected_workers > 0 {
        out.push(format!(
            "  ({} disconnected worker(s) left out; `lem-coord workers` lists them)",
            s.disconnected_workers
        ));
    }
    out
}

/// Draws a campaign's progress on stderr while it is watched.
pub struct LiveView {
    bar: Option<ProgressBar>,
    started: Instant,
    /// Runs finished when the view first saw the campaign: the rate counts from there.
    finished_at_start: Option<u64>,
    /// What the plain view printed last (it prints only on a change).
    last_plain: Option<String>,
    /// The last status shown, printed as plain lines when the bar is taken down.
    last: Option<CampaignStatus>,
}

impl LiveView {
    /// A view drawing a bar when `tty`, plain lines otherwise.
    pub fn new(tty: bool) -> LiveView {
        let bar = tty.then(|| {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            let style = ProgressStyle::with_template(
                "{spinner} [{bar:30}] {pos}/{len} run(s) finished  elapsed {elapsed}  {msg}",
            )
            .expect("a valid progress template")
            .progress_chars("#>.");
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(250));
            *ACTIVE.lock().unwrap_or_else(|e| e.into_inner()) = Some(bar.clone());
            bar
        });
        LiveView {
            bar,
            started: Instant::now(),
            finished_at_start: None,
            last_plain: None,
            last: None,
        }
    }

    /// How long the view has watched.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Shows `s`: redraws the bar, or prints the plain lines if they changed.
    pub fn update(&mut self, s: &CampaignStatus) {
        let start = *self.finished_at_start.get_or_insert(finished(s));
        let elapsed = self.started.elapsed();
        let eta = eta(start, finished(s), s.total, elapsed);
        self.last = Some(s.clone());
        match &self.bar {
            Some(bar) => {
                bar.set_length(s.total);
                bar.set_position(finished(s));
                let mut msg = format!(
                    "{} done, {} failed, {} running, {} pending, ETA {}",
                    s.done,
                    s.failed,
                    s.running,
                    s.pending,
                    eta.map_or_else(|| "--".to_string(), format_duration)
                );
                if s.state != "running" {
                    msg.push_str(&format!(" [{}]", s.state));
                }
                for l in engine_lines(s).into_iter().chain(blocked_lines(s)) {
                    msg.push('\n');
                    msg.push_str(&l);
                }
                bar.set_message(msg);
            }
            None => {
                // Printed again only when something other than the clock changed.
                let mut key = progress_line(s, Duration::ZERO, None);
                let mut details = if s.engines.len() > 1 {
                    engine_lines(s)
                } else {
                    vec![]
                };
                details.extend(blocked_lines(s));
                key.push_str(&details.join("\n"));
                if self.last_plain.as_deref() == Some(key.as_str()) {
                    return;
                }
                self.last_plain = Some(key);
                let mut err = std::io::stderr().lock();
                let _ = writeln!(err, "{}", progress_line(s, elapsed, eta));
                for d in details {
                    let _ = writeln!(err, "{d}");
                }
            }
        }
    }

    /// Prints `line` on stderr, above the bar if one is drawn.
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    /// Stops drawing: the bar is taken down and the last status printed in its
    /// place as plain lines (a bar left drawn is broken by the `^C` a terminal
    /// echoes on Ctrl-C).
    pub fn finish(&mut self) {
        let Some(bar) = self.bar.take() else {
            return;
        };
        bar.finish_and_clear();
        ACTIVE.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(s) = &self.last {
            let start = self.finished_at_start.unwrap_or(0);
            let elapsed = self.started.elapsed();
            eprintln!(
                "{}",
                progress_line(s, elapsed, eta(start, finished(s), s.total, elapsed))
            );
            for l in engine_lines(s).into_iter().chain(blocked_lines(s)) {
                eprintln!("{l}");
            }
        }
    }
}

impl Drop for LiveView {
    fn drop(&mut self) {
        self.finish();
    }
}

/// tracing's writer for the CLI: stderr, with the live bar (if one is drawn) taken
/// down while a line is written, so log lines print above it instead of into it.
pub struct LogWriter;

/// One log event's write (tracing's formatter writes each event at once).
pub struct LogLine;

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogWriter {
    type Writer = LogLine;

    fn make_writer(&'a self) -> LogLine {
        LogLine
    }
}

impl std::io::Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bar = ACTIVE.lock().unwrap_or_else(|e| e.into_inner()).clone();
        match bar {
            Some(bar) => bar.suspend(|| std::io::stderr().write_all(buf))?,
            None => std::io::stderr().write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// SIGINT (Ctrl-C) and SIGTERM, as one stream.
pub struct Interrupts {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Interrupts {
    /// Takes over SIGINT and SIGTERM for this process (they no longer end it).
    pub fn new() -> std::io::Result<Interrupts> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Interrupts {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    /// The next signal's name.
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lem_common::rpc::{BlockedEngine, EngineProgress, ReasonWorkers};

    fn status() -> CampaignStatus {
        CampaignStatus {
            campaign: 7,
            state: "running".into(),
            total: 12,
            pending: 5,
            running: 2,
            done: 4,
            failed: 1,
            ..Default::default()
        }
    }

    #[test]
    fn eta_is_the_rate_while_watched_applied_to_what_is_left() {
        // 4 runs finished in 20 s while watched, 6 left: 30 s.
        assert_eq!(
            eta(2, 6, 12, Duration::from_secs(20)),
            Some(Duration::from_secs(30))
        );
        // Nothing finished while watched: no rate, no ETA.
        assert_eq!(eta(6, 6, 12, Duration::from_secs(20)), None);
        assert_eq!(eta(0, 3, 12, Duration::ZERO), None);
        assert_eq!(eta(0, 12, 12, Duration::from_secs(5)), Some(Duration::ZERO));
    }

    #[test]
    fn durations_read_as_clocks() {
        assert_eq!(format_duration(Duration::from_secs(42)), "42s");
        assert_eq!(format_duration(Duration::from_secs(187)), "3:07");
        assert_eq!(format_duration(Duration::from_secs(3723)), "1:02:03");
    }

    #[test]
    fn the_progress_line_counts_every_state() {
        let s = status();
        assert_eq!(
            progress_line(&s, Duration::from_secs(65), Some(Duration::from_secs(30))),
            "campaign 7: 5/12 run(s) finished (4 done, 1 failed), 2 running, 5 pending; elapsed 1:05, ETA 30s"
        );
        let over = CampaignStatus {
            pending: 0,
            running: 0,
            done: 11,
            state: "finished_with_failures".into(),
            ..s
        };
        assert_eq!(
            progress_line(&over, Duration::from_secs(5), None),
            "campaign 7: 12/12 run(s) finished (11 done, 1 failed), 0 running, 0 pending; elapsed 5s [finished_with_failures]"
        );
    }

    #[test]
    fn engines_get_a_line_each() {
        let mut s = status();
        s.engines = vec![
            EngineProgress {
                engine: "synthetic".into(),
                total: 8,
                done: 4,
                running: 2,
                failed: 1,
                pending: 1,
                cancelled: 0,
            },
            EngineProgress {
                engine: "vllm".into(),
                total: 4,
                pending: 4,
                ..Default::default()
            },
        ];
        assert_eq!(
            engine_lines(&s),
            [
                "  synthetic  done 4/8  running 2  failed 1  pending 1",
                "  vllm       done 0/4  running 0  failed 0  pending 4",
            ]
        );
    }

    #[test]
    fn blocked_reasons_name_a_few_workers_each_and_count_the_rest() {
        let mut s = status();
        let hosts: Vec<String> = (0..48).map(|i| format!("h{i:02}")).collect();
        s.blocked = vec![BlockedEngine {
            engine: "vllm".into(),
            tp_size: 1,
            pending: 4,
            reason: "(the whole line)".into(),
            cause: "no connected worker can run vllm".into(),
            by_reason: vec![
                ReasonWorkers {
                    reason: "No module named 'vllm'".into(),
                    workers: hosts,
                },
                ReasonWorkers {
                    reason: "engine vllm not offered".into(),
                    workers: vec!["h48".into(), "h49".into()],
                },
            ],
            fix: None,
        }];
        s.disconnected_workers = 3;
        assert_eq!(
            blocked_lines(&s),
            [
                "  blocked: vllm pending 4 run(s): no connected worker can run vllm",
                "    h00, h01, h02, h03, h04 and 43 more (48 workers): No module named 'vllm'",
                "    h48, h49: engine vllm not offered",
                "  (3 disconnected worker(s) left out; `lem-coord workers` lists them)",
            ]
        );
        // From a coordinator that sends only the whole reason: that line.
        s.blocked[0].cause.clear();
        assert_eq!(
            blocked_lines(&s)[0],
            "  blocked: vllm pending 4 run(s): (the whole line)"
        );
    }

    #[test]
    fn many_distinct_reasons_are_cut_with_a_count() {
        let mut s = status();
        s.blocked = vec![BlockedEngine {
            engine: "sglang".into(),
            tp_size: 2,
            pending: 1,
            reason: String::new(),
            cause: "c".into(),
            by_reason: (0..8)
                .map(|i| ReasonWorkers {
                    reason: format!("r{i}"),
                    workers: vec![format!("w{i}")],
                })
                .collect(),
            fix: Some("do this".into()),
        }];
        let lines = blocked_lines(&s);
        assert_eq!(lines[0], "  blocked: sglang (TP 2) pending 1 run(s): c");
        assert_eq!(lines.len(), 1 + REASONS_SHOWN + 2, "{lines:?}");
        assert_eq!(
            lines[REASONS_SHOWN + 1],
            "    and 3 more reason(s) from 3 worker(s) (`lem-coord status 7 --json` lists them all)"
        );
        assert_eq!(lines[REASONS_SHOWN + 2], "    fix: do this");
    }
}
