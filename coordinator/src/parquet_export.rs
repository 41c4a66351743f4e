//! `lem-coord results ID --format parquet`: an export [`Table`] (the same columns and
//! rows as JSON lines and CSV, per run or `--aggregate` per configuration) as one
//! Parquet file with typed, nullable columns: float64 for measurements, int64 for
//! counts, bool for flags, utf8 for names, UTC timestamps (microseconds) for times,
//! and lists of utf8, int64 or float64 for the list columns (`flags`, `warnings`,
//! `gpu_foreign_pids`, `gpu_indices`, `gpu_energy_j`, `cycles`).
//!
//! The column set and each column's [`Kind`] are the export module's; this module only
//! maps a kind to its Arrow type.

use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Float64Builder, Int64Builder, ListBuilder, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use lem_common::rpc::RunRow;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use serde_json::Value as Json;

use crate::export::{Kind, Table};

#[derive(Debug, thiserror::Error)]
pub enum ParquetExportError {
    #[error("column '{column}' holds {found} where {expected} was expected (an export bug; please report it)")]
    WrongType {
        column: String,
        expected: &'static str,
        found: String,
    },
    #[error("cannot build the parquet file: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("cannot build the arrow batch: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
}

/// An Arrow list of `item` (nullable items, as `ListBuilder` makes them).
fn list_of(item: DataType) -> DataType {
    DataType::List(Arc::new(Field::new_list_field(item, true)))
}

/// The Arrow type of a column kind.
pub fn arrow_type(kind: Kind) -> DataType {
    match kind {
        Kind::Str => DataType::Utf8,
        Kind::Int => DataType::Int64,
        Kind::Float => DataType::Float64,
        Kind::Bool => DataType::Boolean,
        Kind::Time => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        Kind::ListStr => list_of(DataType::Utf8),
        Kind::ListInt => list_of(DataType::Int64),
        Kind::ListFloat => list_of(DataType::Float64),
    }
}

fn wrong(column: &str, expected: &'static str, v: &Json) -> ParquetExportError {
    ParquetExportError::WrongType {
        column: column.to_string(),
        expected,
        found: v.to_string(),
    }
}

/// A list column: null for a null value, else a list of the value's items, each put in
/// by `push` (false: an item of the wrong type, reported with `expected`).
fn list_column<B: arrow_array::builder::ArrayBuilder>(
    name: &str,
    values: &[&Json],
    expected: &'static str,
    items: B,
    mut push: impl FnMut(&mut B, &Json) -> bool,
) -> Result<ArrayRef, ParquetExportError> {
    let mut b = ListBuilder::new(items);
    for v in values {
        match v {
            Json::Null => b.append_null(),
            Json::Array(xs) => {
                for x in xs {
                    if !push(b.values(), x) {
                        return Err(wrong(name, expected, v));
                    }
                }
                b.append(true);
            }
            _ => return Err(wrong(name, expected, v)),
        }
    }
    Ok(Arc::new(b.finish()))
}

fn build_column(name: &str, kind: Kind, values: &[&Json]) -> Result<ArrayRef, ParquetExportError> {
    Ok(match kind {
        Kind::Time => {
            let mut b =
                TimestampMicrosecondBuilder::with_capacity(values.len()).with_timezone("UTC");
            for v in values {
                match v {
                    Json::Null => b.append_null(),
                    // A run that never started its window has no time.
                    Json::String(t) if t.is_empty() => b.append_null(),
                    Json::String(t) => b.append_value(
                        chrono::DateTime::parse_from_rfc3339(t)
                            .map_err(|_| wrong(name, "an RFC 3339 time", v))?
                            .timestamp_micros(),
                    ),
                    _ => return Err(wrong(name, "an RFC 3339 time", v)),
                }
            }
            Arc::new(b.finish())
        }
        Kind::ListFloat => list_column(
            name,
            values,
            "a list of numbers",
            Float64Builder::new(),
            |b, x| {
                match x {
                    Json::Null => b.append_null(),
                    _ => b.append_value(match x.as_f64() {
                        Some(f) => f,
                        None => return false,
                    }),
                }
                true
            },
        )?,
        Kind::Float => {
            let mut b = Float64Builder::with_capacity(values.len());
            for v in values {
                match v {
                    Json::Null => b.append_null(),
                    Json::Number(n) => {
                        b.append_value(n.as_f64().ok_or_else(|| wrong(name, "a number", v))?)
                    }
                    _ => return Err(wrong(name, "a number", v)),
                }
            }
            Arc::new(b.finish())
        }
        Kind::Int => {
            let mut b = Int64Builder::with_capacity(values.len());
            for v in values {
                match v {
                    Json::Null => b.append_null(),
                    _ => b.append_value(v.as_i64().ok_or_else(|| wrong(name, "an integer", v))?),
                }
            }
            Arc::new(b.finish())
        }
        Kind::Bool => {
            let mut b = BooleanBuilder::with_capacity(values.len());
            for v in values {
                match v {
                    Json::Null => b.append_null(),
                    Json::Bool(x) => b.append_value(*x),
                    _ => return Err(wrong(name, "a boolean", v)),
                }
            }
            Arc::new(b.finish())
        }
        Kind::ListInt => list_column(
            name,
            values,
            "a list of integers",
            Int64Builder::new(),
            |b, x| {
                match x {
                    Json::Null => b.append_null(),
                    _ => b.append_value(match x.as_i64() {
                        Some(i) => i,
                        None => return false,
                    }),
                }
                true
            },
        )?,
        Kind::ListStr => list_column(name, values, "a list", StringBuilder::new(), |b, x| {
            match x {
                Json::Null => b.append_null(),
                Json::String(x) => b.append_value(x),
                other => b.append_value(other.to_string()),
            }
            true
        })?,
        Kind::Str => {
            let mut b = StringBuilder::with_capacity(values.len(), values.len() * 16);
            for v in values {
                match v {
                    Json::Null => b.append_null(),
                    Json::String(x) => b.append_value(x),
                    other => b.append_value(other.to_string()),
                }
            }
            Arc::new(b.finish())
        }
    })
}

/// A table as an Arrow record batch, its columns in order.
pub fn to_record_batch(table: &Table) -> Result<RecordBatch, ParquetExportError> {
    let mut fields = Vec::with_capacity(table.columns.len());
    let mut arrays = Vec::with_capacity(table.columns.len());
    for (i, (name, kind)) in table.columns.iter().enumerate() {
        let values: Vec<&Json> = table.rows.iter().map(|r| &r[i]).collect();
        arrays.push(build_column(name, *kind, &values)?);
        fields.push(Field::new(name, arrow_type(*kind), true));
    }
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?)
}

/// A table as the bytes of a Parquet file (uncompressed, one row group).
pub fn table_to_parquet(table: &Table) -> Result<Vec<u8>, ParquetExportError> {
    let batch = to_record_batch(table)?;
    let props = WriterProperties::builder()
        .set_created_by(format!("lem-fleet {}", env!("CARGO_PKG_VERSION")))
        .build();
    let mut buf = Vec::new();
    let mut w = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props))?;
    w.write(&batch)?;
    w.close()?;
    Ok(buf)
}

/// One row per run as the bytes of a Parquet file.
pub fn to_parquet(rows: &[RunRow]) -> Result<Vec<u8>, ParquetExportError> {
    table_to_parquet(&Table::runs(rows))
}

/// Writes bytes through a temporary file and a rename, so a reader never sees half
/// a file.
pub fn write_atomic_bytes(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::Array as _;
    use lem_common::types::{
        CampaignId, EnergyFigures, Isolation, MeasuredWindow, RunKey, RunResult, Throughput,
    };

    fn rows() -> Vec<RunRow> {
        let done = RunRow {
            run: RunKey {
                campaign: CampaignId(1),
                seq: 0,
            },
            config_hash: "a0767dbccba6fc45".into(),
            cycle: 1,
            engine: "synthetic".into(),
            state: "done".into(),
            attempts: 1,
            config_json: r#"{"task": {"model": "gpt2"}}"#.into(),
            result: Some(RunResult {
                worker: "w1".into(),
                host: "h".into(),
                simulated: true,
                warnings: vec!["short window".into()],
                energy: EnergyFigures {
                    total_j: 12.5,
                    adjusted_j: Some(3.0),
                    ..Default::default()
                },
                throughput: Throughput {
                    input_tokens: 10,
                    output_tokens: 5,
                    ..Default::default()
                },
                window: MeasuredWindow {
                    short: true,
                    ..Default::default()
                },
                isolation: Isolation {
                    foreign_processes: vec![lem_common::types::ForeignProcess {
                        pid: 31,
                        ..Default::default()
                    }],
                    ..Default::default()
                },
                ..Default::default()
            }),
            last_failure: None,
        };
        let pending = RunRow {
            run: RunKey {
                campaign: CampaignId(1),
                seq: 1,
            },
            state: "failed".into(),
            result: None,
            last_failure: Some("boom".into()),
            ..done.clone()
        };
        vec![done, pending]
    }

    #[test]
    fn every_column_is_typed_and_values_fit() {
        let batch = to_record_batch(&Table::runs(&rows())).unwrap();
        assert_eq!(batch.num_columns(), crate::export::RUN_COLUMNS.len());
        assert_eq!(batch.num_rows(), 2);
        let schema = batch.schema();
        assert_eq!(
            schema
                .field_with_name("total_energy_j")
                .unwrap()
                .data_type(),
            &DataType::Float64
        );
        assert_eq!(
            schema.field_with_name("output_tokens").unwrap().data_type(),
            &DataType::Int64
        );
        assert_eq!(
            schema.field_with_name("simulated").unwrap().data_type(),
            &DataType::Boolean
        );
        let energy = batch
            .column_by_name("total_energy_j")
            .unwrap()
            .as_any()
            .downcast_ref::<arrow_array::Float64Array>()
            .unwrap();
        assert_eq!(energy.value(0), 12.5);
        assert!(energy.is_null(1));
        let bytes = to_parquet(&rows()).unwrap();
        assert_eq!(&bytes[..4], b"PAR1");
        assert_eq!(&bytes[bytes.len() - 4..], b"PAR1");
    }

    #[test]
    fn list_columns_are_arrow_lists_and_null_without_a_result() {
        let batch = to_record_batch(&Table::runs(&rows())).unwrap();
        let list = |name: &str| {
            batch
                .column_by_name(name)
                .unwrap()
                .as_any()
                .downcast_ref::<arrow_array::ListArray>()
                .unwrap()
                .clone()
        };
        let strings = |a: &arrow_array::ListArray, i: usize| -> Vec<String> {
            let v = a.value(i);
            let v = v
                .as_any()
                .downcast_ref::<arrow_array::StringArray>()
                .unwrap();
            (0..v.len()).map(|j| v.value(j).to_string()).collect()
        };
        let flags = list("flags");
        assert_eq!(
            strings(&flags, 0),
            [
                "simulated",
                "short_window",
                "baseline_not_subtracted",
                "gpu_shared"
            ]
        );
        assert!(flags.is_null(1), "a run without a result has no flags list");
        let warnings = list("warnings");
        assert_eq!(strings(&warnings, 0), ["short window"]);
        assert!(warnings.is_null(1));
        let pids = list("gpu_foreign_pids");
        let first = pids.value(0);
        let first = first
            .as_any()
            .downcast_ref::<arrow_array::Int64Array>()
            .unwrap();
        assert_eq!(first.values().to_vec(), [31]);
        assert!(pids.is_null(1));
    }

    #[test]
    fn inference_covers_unknown_columns() {
        let (a, b, c) = (Json::from(1), Json::from(1.5), Json::Null);
        let (t, s) = (Json::from(true), Json::from("x"));
        assert_eq!(Kind::of_values([&a, &c]), Kind::Int);
        assert_eq!(Kind::of_values([&a, &b]), Kind::Float);
        assert_eq!(Kind::of_values([&c]), Kind::Str);
        assert_eq!(Kind::of_values([&t, &c]), Kind::Bool);
        assert_eq!(Kind::of_values([&a, &s]), Kind::Str);
    }
}
