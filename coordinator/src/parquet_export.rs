//! `lem-coord results ID --format parquet`: the flat export rows of
//! [`crate::export`] (the same [`COLUMNS`] and [`row`] as JSON lines and CSV) as one
//! Parquet file with typed, nullable columns: float64 for measurements, int64 for
//! counts, bool for flags, utf8 for names and times, and lists of utf8 or int64 for
//! the list columns (`flags`, `warnings`, `gpu_foreign_pids`).
//!
//! The column set is the export module's; this module only decides each column's
//! Arrow type. A column it has no type for (one added to `COLUMNS` later) gets the
//! type its values have (int64, float64, bool, else utf8).

use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Float64Builder, Int64Builder, ListBuilder, StringBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{DataType, Field, Schema};
use lem_common::rpc::RunRow;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use serde_json::Value as Json;

use crate::export::{row, COLUMNS};

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

/// The Arrow type of a known export column.
pub fn column_type(name: &str) -> Option<DataType> {
    Some(match name {
        "experiment_id"
        | "config_hash"
        | "engine"
        | "model_name"
        | "state"
        | "energy_method"
        | "gpu_name"
        | "worker"
        | "host"
        | "runner"
        | "image"
        | "image_id"
        | "started_at"
        | "ended_at"
        | "last_failure"
        | "environment_hash"
        | "energy_edge_rule"
        | "energy_adjusted_resident_source"
        | "harness_recycled"
        | "itl_measurement_mode" => DataType::Utf8,
        // Arrays, stored as their JSON text (`[0,1]`).
        "gpu_indices" | "gpu_energy_j" => DataType::Utf8,
        "flags" | "warnings" => list_of(DataType::Utf8),
        "gpu_foreign_pids" => list_of(DataType::Int64),
        "cycle"
        | "attempts"
        | "input_tokens"
        | "output_tokens"
        | "slot"
        | "tp_size"
        | "prefill_calls"
        | "sm_clock_min_mhz"
        | "sm_clock_max_mhz"
        | "window_start_mono_ns"
        | "window_end_mono_ns"
        | "gpu_memory_before_mb"
        | "gpu_memory_after_mb" => DataType::Int64,
        "total_energy_j"
        | "energy_adjusted_j"
        | "baseline_power_w"
        | "avg_tokens_per_second"
        | "avg_energy_per_token_j"
        | "energy_per_token_adjusted_j"
        | "output_tokens_per_second"
        | "total_inference_time_sec"
        | "mean_power_w"
        | "energy_integral_j"
        | "energy_disagreement_pct"
        | "energy_counter_raw_j"
        | "energy_uncertainty_j"
        | "quiet_power_w"
        | "max_temperature_c"
        | "thermal_wait_s"
        | "model_load_time_sec"
        | "energy_adjusted_resident_j"
        | "energy_adjusted_resident_uncertainty_j"
        | "resident_baseline_power_w"
        | "baseline_std_w"
        | "baseline_settle_s"
        | "resident_baseline_std_w"
        | "resident_baseline_settle_s"
        | "lease_to_measure_s"
        | "prefill_energy_per_call_j"
        | "prefill_energy_j"
        | "decode_energy_j"
        | "prefill_energy_adjusted_j"
        | "decode_energy_adjusted_j" => DataType::Float64,
        "energy_adjusted_clamped"
        | "model_already_loaded"
        | "cold_start"
        | "simulated"
        | "throttle_thermal"
        | "throttle_power"
        | "hw_slowdown"
        | "energy_disagreement_flagged"
        | "short_window"
        | "energy_uncertainty_flagged"
        | "baseline_subtracted"
        | "gpu_shared"
        | "latency_estimated" => DataType::Boolean,
        _ => return None,
    })
}

/// The type of a column the table above does not know, from its values.
fn inferred_type(values: &[&Json]) -> DataType {
    let non_null: Vec<&&Json> = values.iter().filter(|v| !v.is_null()).collect();
    if non_null.is_empty() {
        DataType::Utf8
    } else if non_null.iter().all(|v| v.is_i64() || v.is_u64()) {
        DataType::Int64
    } else if non_null.iter().all(|v| v.is_number()) {
        DataType::Float64
    } else if non_null.iter().all(|v| v.is_boolean()) {
        DataType::Boolean
    } else {
        DataType::Utf8
    }
}

fn wrong(column: &str, expected: &'static str, v: &Json) -> ParquetExportError {
    ParquetExportError::WrongType {
        column: column.to_string(),
        expected,
        found: v.to_string(),
    }
}

fn build_column(
    name: &str,
    ty: &DataType,
    values: &[&Json],
) -> Result<ArrayRef, ParquetExportError> {
    Ok(match ty {
        DataType::Float64 => {
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
        DataType::Int64 => {
            let mut b = Int64Builder::with_capacity(values.len());
            for v in values {
                match v {
                    Json::Null => b.append_null(),
                    _ => b.append_value(v.as_i64().ok_or_else(|| wrong(name, "an integer", v))?),
                }
            }
            Arc::new(b.finish())
        }
        DataType::Boolean => {
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
        DataType::List(item) if item.data_type() == &DataType::Int64 => {
            let mut b = ListBuilder::new(Int64Builder::new());
            for v in values {
                match v {
                    Json::Null => b.append_null(),
                    Json::Array(items) => {
                        for x in items {
                            match x {
                                Json::Null => b.values().append_null(),
                                _ => b.values().append_value(
                                    x.as_i64()
                                        .ok_or_else(|| wrong(name, "a list of integers", v))?,
                                ),
                            }
                        }
                        b.append(true);
                    }
                    _ => return Err(wrong(name, "a list of integers", v)),
                }
            }
            Arc::new(b.finish())
        }
        DataType::List(_) => {
            let mut b = ListBuilder::new(StringBuilder::new());
            for v in values {
                match v {
                    Json::Null => b.append_null(),
                    Json::Array(items) => {
                        for x in items {
                            match x {
                                Json::Null => b.values().append_null(),
                                Json::String(x) => b.values().append_value(x),
                                other => b.values().append_value(other.to_string()),
                            }
                        }
                        b.append(true);
                    }
                    _ => return Err(wrong(name, "a list", v)),
                }
            }
            Arc::new(b.finish())
        }
        _ => {
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

/// The rows as an Arrow record batch with the export's columns, in order.
pub fn to_record_batch(rows: &[RunRow]) -> Result<RecordBatch, ParquetExportError> {
    let flat: Vec<serde_json::Map<String, Json>> = rows.iter().map(row).collect();
    let null = Json::Null;
    let mut fields = Vec::with_capacity(COLUMNS.len());
    let mut arrays = Vec::with_capacity(COLUMNS.len());
    for name in COLUMNS {
        let values: Vec<&Json> = flat.iter().map(|m| m.get(*name).unwrap_or(&null)).collect();
        let ty = column_type(name).unwrap_or_else(|| inferred_type(&values));
        arrays.push(build_column(name, &ty, &values)?);
        fields.push(Field::new(*name, ty, true));
    }
    Ok(RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?)
}

/// The rows as the bytes of a Parquet file (uncompressed, one row group).
pub fn to_parquet(rows: &[RunRow]) -> Result<Vec<u8>, ParquetExportError> {
    let batch = to_record_batch(rows)?;
    let props = WriterProperties::builder()
        .set_created_by(format!("lem-fleet {}", env!("CARGO_PKG_VERSION")))
        .build();
    let mut buf = Vec::new();
    let mut w = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props))?;
    w.write(&batch)?;
    w.close()?;
    Ok(buf)
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
    use lem_common::types::{CampaignId, RunKey, RunResult};

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
                total_energy_j: 12.5,
                energy_adjusted_j: Some(3.0),
                input_tokens: 10,
                output_tokens: 5,
                simulated: true,
                short_window: true,
                warnings: vec!["short window".into()],
                gpu_foreign_processes: vec![lem_common::types::ForeignProcess {
                    pid: 31,
                    ..Default::default()
                }],
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
        let batch = to_record_batch(&rows()).unwrap();
        assert_eq!(batch.num_columns(), COLUMNS.len());
        assert_eq!(batch.num_rows(), 2);
        for name in COLUMNS {
            assert!(
                column_type(name).is_some(),
                "export column '{name}' has no parquet type; add it to column_type()"
            );
        }
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
        let batch = to_record_batch(&rows()).unwrap();
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
        assert_eq!(inferred_type(&[&a, &c]), DataType::Int64);
        assert_eq!(inferred_type(&[&a, &b]), DataType::Float64);
        assert_eq!(inferred_type(&[&c]), DataType::Utf8);
    }
}
