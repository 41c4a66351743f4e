//! Prometheus encoding helpers shared by both binaries' `/metrics`: families whose
//! values are read at scrape time (from a sampler's ring, the manifest's counts),
//! written through prometheus-client's collector interface.

use std::fmt;

use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;

/// Writes one gauge family of `rows` (labels, value); a family without rows is
/// written as its description alone.
pub fn gauge_family<L: EncodeLabelSet>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    rows: impl IntoIterator<Item = (L, f64)>,
) -> Result<(), fmt::Error> {
    family(e, (name, help, unit), MetricType::Gauge, rows, |v, m| {
        ConstGauge::new(v).encode(m)
    })
}

/// [`gauge_family`] for counters read at scrape time (`NAME_total` samples).
pub fn counter_family<L: EncodeLabelSet>(
    e: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    rows: impl IntoIterator<Item = (L, f64)>,
) -> Result<(), fmt::Error> {
    family(e, (name, help, unit), MetricType::Counter, rows, |v, m| {
        ConstCounter::new(v).encode(m)
    })
}

/// A family of `kind` described by (name, help, unit), each row's value written by
/// `value`.
fn family<L: EncodeLabelSet>(
    e: &mut DescriptorEncoder,
    (name, help, unit): (&str, &str, Option<&Unit>),
    kind: MetricType,
    rows: impl IntoIterator<Item = (L, f64)>,
    value: impl Fn(f64, prometheus_client::encoding::MetricEncoder<'_>) -> Result<(), fmt::Error>,
) -> Result<(), fmt::Error> {
    let mut m = e.encode_descriptor(name, help, unit, kind)?;
    for (labels, v) in rows {
        value(v, m.encode_family(&labels)?)?;
    }
    Ok(())
}
