//! The history tables' Arrow schemas and the batches the pipeline appends to them.

use std::sync::{Arc, LazyLock};

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;

use crate::risk::{SegmentStatus, SourceCalibration};

pub use crate::window::HEX_WINDOWS_SCHEMA;

fn ts(name: &str, nullable: bool) -> Field {
    Field::new(
        name,
        DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        nullable,
    )
}

fn ts_array(v: Vec<i64>) -> ArrayRef {
    Arc::new(TimestampMillisecondArray::from(v).with_timezone("UTC"))
}

/// `segment_windows`: one row per segment per evaluated window (CONTRACT.md, plus `flow`,
/// `trend`, `degraded`).
pub static SEGMENT_WINDOWS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        ts("window_start", false),
        ts("window_end", false),
        Field::new("segment_id", DataType::Utf8, false),
        Field::new("name", DataType::Utf8, false),
        Field::new("area_m2", DataType::Float64, false),
        Field::new("people", DataType::Float64, false),
        Field::new("density", DataType::Float64, false),
        Field::new("inflow", DataType::Int64, false),
        Field::new("outflow", DataType::Int64, false),
        Field::new("flow", DataType::Float64, true),
        Field::new("trend", DataType::Float64, false),
        Field::new("tier", DataType::Utf8, false),
        Field::new("degraded", DataType::Boolean, false),
    ]))
});

/// The `segment_windows` batch of one evaluation.
pub fn segment_batch(rows: &[SegmentStatus]) -> Result<RecordBatch, ArrowError> {
    let f = |g: fn(&SegmentStatus) -> f64| -> ArrayRef {
        Arc::new(Float64Array::from_iter_values(rows.iter().map(g)))
    };
    let s = |g: fn(&SegmentStatus) -> &str| -> ArrayRef {
        Arc::new(StringArray::from_iter_values(rows.iter().map(g)))
    };
    RecordBatch::try_new(
        SEGMENT_WINDOWS_SCHEMA.clone(),
        vec![
            ts_array(rows.iter().map(|r| r.window_start).collect()),
            ts_array(rows.iter().map(|r| r.window_end).collect()),
            s(|r| r.id.as_str()),
            s(|r| &r.name),
            f(|r| r.area_m2),
            f(|r| r.people),
            f(|r| r.density),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.inflow as i64))),
            Arc::new(Int64Array::from_iter_values(
                rows.iter().map(|r| r.outflow as i64),
            )),
            Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.flow))),
            f(|r| r.trend),
            s(|r| r.tier.as_str()),
            Arc::new(BooleanArray::from_iter(rows.iter().map(|r| Some(r.degraded)))),
        ],
    )
}

/// `calibration`: one row per LBS source per evaluated window, its people per device after it.
pub static CALIBRATION_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        ts("window_start", false),
        ts("window_end", false),
        Field::new("source", DataType::Utf8, false),
        Field::new("prior", DataType::Float64, false),
        Field::new("people_per_device", DataType::Float64, false),
        Field::new("confidence", DataType::Float64, false),
        Field::new("status", DataType::Utf8, false),
        Field::new("evidence_devices", DataType::Float64, false),
    ]))
});

/// The `calibration` batch of one evaluation.
pub fn calibration_batch(
    start: i64,
    end: i64,
    rows: &[SourceCalibration],
) -> Result<RecordBatch, ArrowError> {
    let f = |g: fn(&SourceCalibration) -> f64| -> ArrayRef {
        Arc::new(Float64Array::from_iter_values(rows.iter().map(g)))
    };
    RecordBatch::try_new(
        CALIBRATION_SCHEMA.clone(),
        vec![
            ts_array(vec![start; rows.len()]),
            ts_array(vec![end; rows.len()]),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.source.as_str()),
            )),
            f(|r| r.prior),
            f(|r| r.people_per_device),
            f(|r| r.confidence),
            Arc::new(StringArray::from_iter_values(
                rows.iter().map(|r| r.status.as_str()),
            )),
            f(|r| r.evidence_devices),
        ],
    )
}

/// `alerts`, read from `<data-dir>/alerts.ndjson` (plus `name`).
pub static ALERTS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        ts("ts", false),
        Field::new("segment_id", DataType::Utf8, false),
        Field::new("name", DataType::Utf8, true),
        Field::new("from_tier", DataType::Utf8, false),
        Field::new("to_tier", DataType::Utf8, false),
        Field::new("people", DataType::Float64, false),
        Field::new("density", DataType::Float64, false),
        Field::new("reason", DataType::Utf8, false),
    ]))
});

/// `thresholds_audit`, read from `<data-dir>/thresholds-audit.ndjson`: who changed which
/// segment's thresholds, with the values before and after as JSON text.
pub static AUDIT_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        ts("ts", false),
        Field::new("segment_id", DataType::Utf8, false),
        Field::new("by", DataType::Utf8, false),
        Field::new("role", DataType::Utf8, false),
        Field::new("old", DataType::Utf8, false),
        Field::new("new", DataType::Utf8, false),
    ]))
});

/// `alert_acks`, read from `<data-dir>/alert-acks.ndjson`: who acknowledged which alert, when.
pub static ACKS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        ts("ts", false),
        ts("alert_ts", false),
        Field::new("segment_id", DataType::Utf8, false),
        Field::new("by", DataType::Utf8, false),
        Field::new("role", DataType::Utf8, false),
        Field::new("note", DataType::Utf8, true),
    ]))
});

/// `late_records`, read from `<data-dir>/late-records.ndjson`: records that arrived after their
/// oldest window closed (counted in their open windows, kept here).
pub static LATE_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        ts("ts", false),
        ts("watermark", false),
        Field::new("source", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("cell", DataType::Int64, false),
        Field::new("h3", DataType::Utf8, false),
        Field::new("windows_missed", DataType::Int64, false),
    ]))
});

/// Builds a batch of `schema` from NDJSON objects: timestamps from epoch-ms numbers, objects and
/// arrays kept as JSON text. Lines that are not objects, or lack a non-null field, are skipped
/// and counted.
pub fn batch_from_ndjson(schema: &SchemaRef, text: &str) -> Result<(RecordBatch, usize), ArrowError> {
    let mut rows: Vec<serde_json::Map<String, serde_json::Value>> = Vec::new();
    let mut skipped = 0;
    'line: for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(serde_json::Value::Object(o)) = serde_json::from_str(line) else {
            skipped += 1;
            continue;
        };
        for f in schema.fields() {
            if !f.is_nullable() && o.get(f.name()).is_none_or(|v| v.is_null()) {
                skipped += 1;
                continue 'line;
            }
        }
        rows.push(o);
    }
    let mut cols: Vec<ArrayRef> = Vec::with_capacity(schema.fields().len());
    for f in schema.fields() {
        let vals = rows.iter().map(|o| o.get(f.name()).filter(|v| !v.is_null()));
        let col: ArrayRef = match f.data_type() {
            DataType::Timestamp(..) => Arc::new(
                TimestampMillisecondArray::from_iter(vals.map(|v| v.and_then(|v| v.as_i64())))
                    .with_timezone("UTC"),
            ),
            DataType::Int64 => Arc::new(Int64Array::from_iter(vals.map(|v| v.and_then(|v| v.as_i64())))),
            DataType::Float64 => Arc::new(Float64Array::from_iter(vals.map(|v| v.and_then(|v| v.as_f64())))),
            DataType::Boolean => Arc::new(BooleanArray::from_iter(vals.map(|v| v.and_then(|v| v.as_bool())))),
            _ => Arc::new(StringArray::from_iter(vals.map(|v| {
                v.map(|v| match v {
                    serde_json::Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
            }))),
        };
        cols.push(col);
    }
    Ok((RecordBatch::try_new(schema.clone(), cols)?, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ndjson_rows_become_typed_columns_and_bad_lines_are_skipped() {
        let text = r#"{"ts":1000,"segment_id":"a","by":"org","role":"organiser","old":{"capacity":1},"new":{"capacity":2}}
not json
{"ts":2000,"segment_id":"b","by":"x","role":"admin","old":{},"new":{}}
{"segment_id":"c"}
"#;
        let (b, skipped) = batch_from_ndjson(&AUDIT_SCHEMA, text).unwrap();
        assert_eq!(b.num_rows(), 2);
        assert_eq!(skipped, 2);
        let old = b.column(4).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(old.value(0), r#"{"capacity":1}"#);
        let ts = b
            .column(0)
            .as_any()
            .downcast_ref::<TimestampMillisecondArray>()
            .unwrap();
        assert_eq!(ts.value(1), 2000);
    }
}
