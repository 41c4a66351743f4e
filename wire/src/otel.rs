//! Logs and traces of both binaries (docs/observability.md).
//!
//! [`init`] installs one `tracing` subscriber with two layers, each with its own
//! filter: the log lines on stderr (`LEM_LOG`, else the binary's default), and
//! OpenTelemetry spans (lem fleet's own spans and tarpc's RPC spans, at INFO,
//! whatever `LEM_LOG` says). The spans always get trace and span ids: tarpc carries
//! the caller's span context in every request, so a worker's lease call, the
//! coordinator's handling of it and the run that follows share one trace, and a
//! run's trace id is stored in its result. They leave the process only when an
//! OTLP endpoint is given (`--otlp-endpoint`, or `OTEL_EXPORTER_OTLP_ENDPOINT`):
//! then a batch exporter sends them as OTLP/HTTP protobuf to `ENDPOINT/v1/traces`.
//! Off by default.
//!
//! The exporter uses a blocking HTTP client on the batch processor's own thread, so
//! [`init`] must run before the tokio runtime starts and the [`Telemetry`] it returns
//! must be dropped after it ends (dropping it flushes what is queued).

use anyhow::{bail, Context as _};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::Layer as _;

/// The standard variable naming an OTLP collector's base URL.
pub const OTLP_ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// What [`init`] sets up.
pub struct TelemetrySetup<'a> {
    /// `service.name` of the spans (`lem-coord`, `lem-worker`).
    pub service: &'static str,
    /// `service.instance.id`: which coordinator or worker (its name), if known.
    pub instance: Option<String>,
    /// `--otlp-endpoint` (or `OTEL_EXPORTER_OTLP_ENDPOINT`, which clap reads): the
    /// collector's base URL, `http://host:4318`; `None` exports nothing.
    pub otlp_endpoint: Option<&'a str>,
    /// The log filter when `LEM_LOG` is not set.
    pub default_log: &'a str,
    /// Where log lines go (stderr, or around a progress bar).
    pub log_writer: BoxMakeWriter,
}

/// Keeps the tracer provider; dropping it flushes and stops the exporter.
pub struct Telemetry {
    provider: SdkTracerProvider,
    /// Where spans go (`ENDPOINT/v1/traces`), if anywhere.
    pub exporting_to: Option<String>,
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Err(e) = self.provider.shutdown() {
            if self.exporting_to.is_some() {
                eprintln!("warning: not every span reached the OTLP endpoint: {e}");
            }
        }
    }
}

/// The OTLP/HTTP traces URL for a collector's base URL: `BASE/v1/traces` (as the
/// OpenTelemetry specification says for `OTEL_EXPORTER_OTLP_ENDPOINT`), or the URL
/// as given when it already names that path. Only `http://` (a collector beside
/// the process, or a sidecar that forwards over TLS); pure.
pub fn traces_url(base: &str) -> anyhow::Result<String> {
    let base = base.trim();
    if let Some(rest) = base.strip_prefix("https://") {
        bail!(
            "OTLP endpoint {base}: this build exports over plain http:// only; run a collector beside it (http://{}) that forwards over TLS",
            rest.split('/').next().unwrap_or(rest)
        );
    }
    let Some(rest) = base.strip_prefix("http://") else {
        bail!("OTLP endpoint `{base}` is not a URL: give the collector's OTLP/HTTP base, e.g. http://127.0.0.1:4318");
    };
    if rest.is_empty() || rest.starts_with('/') {
        bail!("OTLP endpoint `{base}` has no host: give the collector's OTLP/HTTP base, e.g. http://127.0.0.1:4318");
    }
    let trimmed = base.trim_end_matches('/');
    Ok(if trimmed.ends_with("/v1/traces") {
        trimmed.to_string()
    } else {
        format!("{trimmed}/v1/traces")
    })
}

/// Installs the subscriber (logs to stderr, spans to OpenTelemetry). Call once,
/// before the tokio runtime starts.
pub fn init(setup: TelemetrySetup<'_>) -> anyhow::Result<Telemetry> {
    let exporting_to = setup
        .otlp_endpoint
        .filter(|e| !e.trim().is_empty())
        .map(traces_url)
        .transpose()?;
    let mut resource = Resource::builder()
        .with_service_name(setup.service)
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if let Some(i) = &setup.instance {
        resource = resource.with_attribute(KeyValue::new("service.instance.id", i.clone()));
    }
    let mut builder = SdkTracerProvider::builder().with_resource(resource.build());
    if let Some(url) = &exporting_to {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(url.clone())
            .build()
            .with_context(|| format!("cannot make the OTLP exporter for {url}"))?;
        builder = builder.with_batch_exporter(exporter);
    }
    let provider = builder.build();
    let tracer = provider.tracer(setup.service);
    let spans = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(span_targets());
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(setup.log_writer)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_filter(
            EnvFilter::try_from_env("LEM_LOG").unwrap_or_else(|_| setup.default_log.into()),
        );
    tracing_subscriber::registry()
        .with(logs)
        .with(spans)
        .try_init()
        .context("cannot install the log and trace subscriber")?;
    Ok(Telemetry {
        provider,
        exporting_to,
    })
}

/// The spans OpenTelemetry sees: lem fleet's and tarpc's RPC spans, at INFO.
fn span_targets() -> Targets {
    Targets::new()
        .with_target("lem_coord", LevelFilter::INFO)
        .with_target("lem_worker", LevelFilter::INFO)
        .with_target("lem_wire", LevelFilter::INFO)
        .with_target("tarpc", LevelFilter::INFO)
}

/// The trace id of `span` (32 lowercase hex digits), if it has one: `None` when no
/// OpenTelemetry layer is installed (a library caller) or the span is disabled.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_base_url_gets_the_traces_path() {
        assert_eq!(
            traces_url("http://127.0.0.1:4318").unwrap(),
            "http://127.0.0.1:4318/v1/traces"
        );
        assert_eq!(
            traces_url(" http://collector:4318/ ").unwrap(),
            "http://collector:4318/v1/traces"
        );
        assert_eq!(
            traces_url("http://c:4318/v1/traces").unwrap(),
            "http://c:4318/v1/traces"
        );
    }

    #[test]
    fn what_cannot_be_exported_to_is_named() {
        let e = traces_url("https://otel.example:4318")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("plain http:// only") && e.contains("http://otel.example:4318"),
            "{e}"
        );
        let e = traces_url("collector:4318").unwrap_err().to_string();
        assert!(e.contains("is not a URL"), "{e}");
        let e = traces_url("http://").unwrap_err().to_string();
        assert!(e.contains("has no host"), "{e}");
    }
}
