//! The coordinator's Prometheus metrics (docs/observability.md): counters and
//! histograms bumped where their events happen, and gauges computed at scrape time.
//!
//! Events are counted in place: leases granted and renewed and results by outcome in
//! the service's handlers (`service.rs`), expired leases in the sweep
//! (`server::sweep_loop`), each group commit's size and time by the writer
//! (`group_commit::CommitStats`), and every RPC's latency per method by [`Timed`],
//! the one wrapper `server.rs` puts around each connection's service. States are not
//! counted as they change: each scrape reads them from an [`Overview`] (the store's
//! per-campaign counts and the presence rules, never a scan of runs), so a restart
//! loses nothing a gauge shows. Each scrape encodes into a registry of its own: the
//! live counters (cheap handles) and a collector over that scrape's overview, so two
//! scrapes share no mutable state.
//!
//! Names follow Prometheus' conventions: `lem_coord_` first, the base unit last
//! (`_seconds`, `_watts`, `_celsius`, `_hertz`), `_total` on counters.

use std::fmt;
use std::sync::Arc;

use lem_common::rpc::{CoordinatorRequest, CoordinatorResponse};
use lem_wire::metrics::{counter_family, gauge_family};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::{Registry, Unit};
use tarpc::context::Context;
use tarpc::server::Serve;
use tarpc::ServerError;

use crate::overview::Overview;
use crate::service::Shared;

/// A histogram family whose histograms share one set of buckets.
pub type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ClassLabels {
    pub class: String,
}

/// The coordinator's counters and histograms. Each field is a handle: clones count
/// into the same metric.
#[derive(Clone, Debug)]
pub struct CoordMetrics {
    pub leases_granted: Counter,
    pub leases_renewed: Counter,
    /// Leases the sweep found past their deadline (their runs went back to pending,
    /// or failed past `--max-attempts`).
    pub leases_expired: Counter,
    /// `complete` calls by outcome: `accepted`, `already_accepted` (a retried call),
    /// `duplicate` (kept, not counted), `refused` (another worker's lease).
    pub results: Family<OutcomeLabels, Counter>,
    /// `fail` calls by failure class (`handback` included: not a failure, counted
    /// apart).
    pub failure_reports: Family<ClassLabels, Counter>,
    /// Each RPC's time in the server, from the request decoded to the reply made, per
    /// method (`lease` includes its long poll).
    pub rpc_seconds: HistogramFamily<MethodLabels>,
}

fn rpc_histogram() -> Histogram {
    // 0.5 ms to ~75 s: a renew is a commit; a lease long-polls up to a minute.
    Histogram::new(exponential_buckets(0.0005, 2.5, 14))
}

impl Default for CoordMetrics {
    fn default() -> Self {
        CoordMetrics {
            leases_granted: Counter::default(),
            leases_renewed: Counter::default(),
            leases_expired: Counter::default(),
            results: Family::default(),
            failure_reports: Family::default(),
            rpc_seconds: Family::new_with_constructor(rpc_histogram),
        }
    }
}

impl CoordMetrics {
    /// Counts one `complete` call's outcome.
    pub fn result(&self, outcome: &str) {
        self.results
            .get_or_create(&OutcomeLabels {
                outcome: outcome.to_string(),
            })
            .inc();
    }

    pub fn failure_report(&self, class: lem_common::types::FailureClass) {
        self.failure_reports
            .get_or_create(&ClassLabels {
                class: class.to_string(),
            })
            .inc();
    }
}

/// The OpenMetrics text of one scrape: the live counters of `shared` and the gauges
/// of `overview` (taken just before).
pub fn encode(shared: &Shared, overview: Overview) -> String {
    let mut registry = Registry::default();
    let m = &shared.metrics;
    registry.register(
        "lem_coord_leases_granted",
        "Leases granted to workers",
        m.leases_granted.clone(),
    );
    registry.register(
        "lem_coord_leases_renewed",
        "Lease renewals accepted",
        m.leases_renewed.clone(),
    );
    registry.register(
        "lem_coord_leases_expired",
        "Leases that expired unrenewed (their runs were returned to pending or failed)",
        m.leases_expired.clone(),
    );
    registry.register(
        "lem_coord_results",
        "Results reported by outcome: accepted, already_accepted, duplicate (kept, not counted), refused",
        m.results.clone(),
    );
    registry.register(
        "lem_coord_failure_reports",
        "Runs reported failed by workers, by class (handback: handed back unfinished, not a failure)",
        m.failure_reports.clone(),
    );
    registry.register_with_unit(
        "lem_coord_rpc_duration",
        "Time each RPC took in the coordinator, by method (lease includes its long poll)",
        Unit::Seconds,
        m.rpc_seconds.clone(),
    );
    let stats = &shared.commits.stats;
    registry.register(
        "lem_coord_commit_batch_ops",
        "Lease transitions applied per group commit (one transaction, one fsync)",
        stats.batch_ops.clone(),
    );
    registry.register_with_unit(
        "lem_coord_commit_duration",
        "Time from a group commit's first write to its durable commit",
        Unit::Seconds,
        stats.commit_seconds.clone(),
    );
    registry.register(
        "lem_coord_build",
        "The coordinator's version",
        Info::new(vec![("version", env!("CARGO_PKG_VERSION"))]),
    );
    registry.register_collector(Box::new(OverviewCollector(Arc::new(overview))));
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &registry)
        .expect("writing to a String cannot fail");
    out
}

/// The states a campaign can be in, as `lem-coord status` names them.
pub const CAMPAIGN_STATES: [&str; 5] = [
    "running",
    "blocked",
    "done",
    "finished_with_failures",
    "cancelled",
];

/// The gauges of one scrape, from its [`Overview`].
#[derive(Debug)]
struct OverviewCollector(Arc<Overview>);

impl Collector for OverviewCollector {
    fn encode(&self, mut e: DescriptorEncoder) -> Result<(), fmt::Error> {
        let o = &self.0;
        let campaign_states = CAMPAIGN_STATES.iter().map(|state| {
            let n = o
                .campaigns
                .iter()
                .filter(|c| c.status.state == *state)
                .count();
            (vec![("state", state.to_string())], n as f64)
        });
        gauge_family(
            &mut e,
            "lem_coord_campaigns",
            "Campaigns by state (as lem-coord status names them)",
            None,
            campaign_states,
        )?;
        let runs = o.campaigns.iter().flat_map(|c| {
            let s = &c.status;
            let id = s.campaign.to_string();
            [
                ("pending", s.pending),
                ("leased", s.running),
                ("done", s.done),
                ("failed", s.failed),
                ("cancelled", s.cancelled),
            ]
            .map(|(state, n)| {
                (
                    vec![("campaign", id.clone()), ("state", state.to_string())],
                    n as f64,
                )
            })
        });
        gauge_family(
            &mut e,
            "lem_coord_runs",
            "Runs of each campaign by state, from the manifest's counts",
            None,
            runs,
        )?;
        gauge_family(
            &mut e,
            "lem_coord_duplicate_results",
            "Results kept as duplicates (late or repeated; never counted), per campaign",
            None,
            o.campaigns.iter().map(|c| {
                (
                    vec![("campaign", c.status.campaign.to_string())],
                    c.status.duplicates as f64,
                )
            }),
        )?;
        gauge_family(
            &mut e,
            "lem_coord_flagged_runs",
            "Accepted results with each quality flag, per campaign (docs/results.md)",
            None,
            o.campaigns.iter().flat_map(|c| {
                let id = c.status.campaign.to_string();
                c.flags.iter().flatten().map(move |(flag, n)| {
                    (
                        vec![("campaign", id.clone()), ("flag", flag.clone())],
                        *n as f64,
                    )
                })
            }),
        )?;
        let connected = o.workers.iter().filter(|w| w.connected).count();
        gauge_family(
            &mut e,
            "lem_coord_workers",
            "Registered workers, connected or not (docs/lease-protocol.md#presence-connected-or-not)",
            None,
            [
                (vec![("state", "connected".to_string())], connected as f64),
                (
                    vec![("state", "disconnected".to_string())],
                    (o.workers.len() - connected) as f64,
                ),
            ],
        )?;
        let by_worker = |f: fn(&crate::overview::WorkerOverview) -> f64| {
            o.workers
                .iter()
                .map(move |w| (vec![("worker", w.worker.clone())], f(w)))
        };
        gauge_family(
            &mut e,
            "lem_coord_worker_connected",
            "1 while the worker is connected, else 0",
            None,
            by_worker(|w| f64::from(u8::from(w.connected))),
        )?;
        gauge_family(
            &mut e,
            "lem_coord_worker_leases",
            "Runs the worker holds leases on",
            None,
            by_worker(|w| w.leases_held as f64),
        )?;
        counter_family(
            &mut e,
            "lem_coord_worker_runs_done",
            "Results the worker delivered that were accepted (kept in the manifest)",
            None,
            by_worker(|w| w.runs_done as f64),
        )?;
        // Live readings only from connected workers: a stale one is no reading.
        let live = || o.workers.iter().filter(|w| w.connected);
        let per_gpu = |f: fn(&lem_common::rpc::GpuReading) -> f64| {
            live().flat_map(move |w| {
                w.gpus.iter().map(move |g| {
                    (
                        vec![("worker", w.worker.clone()), ("gpu", g.gpu.to_string())],
                        f(g),
                    )
                })
            })
        };
        gauge_family(
            &mut e,
            "lem_coord_worker_gpu_power",
            "Each connected worker's GPU power as it last reported it with a lease or renew call",
            Some(&Unit::Other("watts".into())),
            per_gpu(|g| g.power_w),
        )?;
        gauge_family(
            &mut e,
            "lem_coord_worker_gpu_temperature",
            "Each connected worker's GPU temperature as it last reported it",
            Some(&Unit::Celsius),
            per_gpu(|g| g.temp_c),
        )?;
        gauge_family(
            &mut e,
            "lem_coord_worker_telemetry_age",
            "Time since each connected worker last reported its GPUs",
            Some(&Unit::Seconds),
            live().filter_map(|w| {
                w.telemetry_age_s
                    .map(|age| (vec![("worker", w.worker.clone())], age))
            }),
        )?;
        Ok(())
    }
}

/// A service that times each request into `rpc_seconds`, labelled with its method.
/// `server.rs` wraps every connection's service in it, outside the authorization
/// check, so refused calls are timed too.
#[derive(Clone)]
pub struct Timed<S> {
    pub inner: S,
    pub rpc_seconds: HistogramFamily<MethodLabels>,
}

impl<S> Serve for Timed<S>
where
    S: Serve<Req = CoordinatorRequest, Resp = CoordinatorResponse>,
{
    type Req = CoordinatorRequest;
    type Resp = CoordinatorResponse;

    async fn serve(self, ctx: Context, req: CoordinatorRequest) -> Result<Self::Resp, ServerError> {
        let method = crate::auth::method_name(&req).to_string();
        let started = std::time::Instant::now();
        // The handling's span, named as OpenTelemetry names RPC spans (tarpc's own
        // server span above it is named `RPC`); a child of the caller's span.
        let span = tracing::info_span!(
            "serve",
            otel.name = %format_args!("Coordinator/{method}"),
            rpc.system = "tarpc",
            rpc.method = %method,
        );
        let reply = tracing::Instrument::instrument(self.inner.serve(ctx, req), span).await;
        self.rpc_seconds
            .get_or_create(&MethodLabels { method })
            .observe(started.elapsed().as_secs_f64());
        reply
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every family's name in an OpenMetrics text, with its type.
    pub(crate) fn families(text: &str) -> Vec<(String, String)> {
        text.lines()
            .filter_map(|l| l.strip_prefix("# TYPE "))
            .map(|l| {
                let (name, kind) = l.split_once(' ').unwrap();
                (name.to_string(), kind.to_string())
            })
            .collect()
    }

    #[test]
    fn an_empty_coordinator_encodes_every_family_under_the_naming_rules() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let shared = Shared::new(store, Default::default(), None).unwrap();
        shared.metrics.leases_granted.inc();
        shared.metrics.result("accepted");
        shared
            .metrics
            .rpc_seconds
            .get_or_create(&MethodLabels {
                method: "renew".into(),
            })
            .observe(0.002);
        let overview = crate::overview::overview(&shared).unwrap();
        let text = encode(&shared, overview);
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert!(
            text.contains("lem_coord_leases_granted_total 1\n"),
            "{text}"
        );
        assert!(
            text.contains("lem_coord_results_total{outcome=\"accepted\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("lem_coord_rpc_duration_seconds_count{method=\"renew\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("lem_coord_campaigns{state=\"running\"} 0.0\n"),
            "{text}"
        );
        assert!(
            text.contains("lem_coord_workers{state=\"connected\"} 0.0\n"),
            "{text}"
        );
        let fams = families(&text);
        for want in [
            "lem_coord_leases_expired",
            "lem_coord_commit_batch_ops",
            "lem_coord_commit_duration_seconds",
            "lem_coord_runs",
            "lem_coord_flagged_runs",
            "lem_coord_worker_gpu_power_watts",
            "lem_coord_worker_gpu_temperature_celsius",
            "lem_coord_build",
        ] {
            assert!(fams.iter().any(|(n, _)| n == want), "{want} in {fams:?}");
        }
        for (name, kind) in &fams {
            assert!(name.starts_with("lem_coord_"), "{name}");
            if kind == "counter" {
                // The samples carry `_total`; the family's name must not.
                assert!(!name.ends_with("_total"), "{name}");
            }
        }
        drop(shared);
    }

    /// The sample names a family is queried by: `NAME_total` for a counter,
    /// `NAME_info` for an info metric, `NAME` and its `_bucket`, `_count` and `_sum`
    /// for a histogram, `NAME` otherwise.
    fn sample_names(name: &str, kind: &str) -> Vec<String> {
        match kind {
            "counter" => vec![format!("{name}_total")],
            "info" => vec![format!("{name}_info")],
            "histogram" => ["", "_bucket", "_count", "_sum"]
                .iter()
                .map(|s| format!("{name}{s}"))
                .collect(),
            _ => vec![name.to_string()],
        }
    }

    #[test]
    fn the_docs_list_every_metric_and_the_dashboard_queries_only_real_ones() {
        // Every family of both processes, each with at least one sample.
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(dir.path()).unwrap();
        let shared = Shared::new(store, Default::default(), None).unwrap();
        shared
            .metrics
            .failure_report(lem_common::types::FailureClass::Infrastructure);
        shared.metrics.result("accepted");
        shared
            .metrics
            .rpc_seconds
            .get_or_create(&MethodLabels {
                method: "lease".into(),
            })
            .observe(1.0);
        let mut text = encode(&shared, crate::overview::overview(&shared).unwrap());
        drop(shared);
        let worker = lem_worker::metrics::WorkerMetrics::default();
        worker.run_ended(0, "completed");
        worker.gate_waited(0, lem_common::thermal::GateReason::Cooled, 1.0);
        text.push_str(&worker.encode());
        let names: Vec<String> = families(&text)
            .iter()
            .flat_map(|(n, k)| sample_names(n, k))
            .collect();

        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let doc = std::fs::read_to_string(root.join("docs/observability.md")).unwrap();
        for (name, kind) in families(&text) {
            let shown = &sample_names(&name, &kind)[0];
            assert!(
                doc.contains(&format!("| `{shown}` | {kind} |")),
                "docs/observability.md lists `{shown}` as a {kind}"
            );
        }
        let dashboard: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(root.join("docs/grafana-dashboard.json")).unwrap(),
        )
        .expect("docs/grafana-dashboard.json is JSON");
        let mut queried = 0;
        for panel in dashboard["panels"].as_array().unwrap() {
            for target in panel["targets"].as_array().into_iter().flatten() {
                let expr = target["expr"].as_str().unwrap();
                for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                    if word.starts_with("lem_coord_") || word.starts_with("lem_worker_") {
                        assert!(
                            names.iter().any(|n| n == word),
                            "panel {:?} queries {word}, which nothing exports",
                            panel["title"]
                        );
                        queried += 1;
                    }
                }
            }
        }
        assert!(queried > 20, "{queried}");
    }
}
