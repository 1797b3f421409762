//! Closed windows as Arrow record batches with the `hex_windows` schema, and back to JSON rows.

use std::sync::{Arc, LazyLock};

use arrow::array::{
    Array, ArrayRef, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMillisecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;

use super::engine::HexWindow;

fn ts_field(name: &str) -> Field {
    Field::new(
        name,
        DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
        false,
    )
}

/// The `hex_windows` table schema (CONTRACT.md, plus `occupancy` and `lbs_off_network`: devices
/// whose position matched no segment).
pub static HEX_WINDOWS_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        ts_field("window_start"),
        ts_field("window_end"),
        Field::new("cell", DataType::Int64, false),
        Field::new("h3", DataType::Utf8, false),
        Field::new("res", DataType::Int32, false),
        Field::new("lbs_devices", DataType::Int64, false),
        Field::new("counter_in", DataType::Int64, false),
        Field::new("counter_out", DataType::Int64, false),
        Field::new("occupancy", DataType::Int64, true),
        Field::new("gate_entries", DataType::Int64, false),
        Field::new("gate_exits", DataType::Int64, false),
        Field::new("people", DataType::Float64, false),
        Field::new("density", DataType::Float64, false),
        // Nullable: history written before positions were matched has no such column.
        Field::new("lbs_off_network", DataType::Int64, true),
    ]))
});

/// Builds the `hex_windows` batch of one window. Density is people per m² of the whole hexagon;
/// segment densities (over walkable area) are the risk stage's job.
pub fn to_record_batch(w: &HexWindow) -> Result<RecordBatch, ArrowError> {
    let n = w.rows.len();
    let mut h3 = Vec::with_capacity(n);
    let mut res = Vec::with_capacity(n);
    let mut people = Vec::with_capacity(n);
    let mut density = Vec::with_capacity(n);
    for r in &w.rows {
        let idx = r
            .cell
            .index()
            .ok_or_else(|| ArrowError::InvalidArgumentError(format!("bad cell {}", r.cell)))?;
        h3.push(idx.to_string());
        res.push(u8::from(idx.resolution()) as i32);
        let p = r.people();
        people.push(p);
        density.push(p / idx.area_m2());
    }
    let col_u = |f: fn(&super::engine::HexRow) -> u64| -> ArrayRef {
        Arc::new(Int64Array::from_iter_values(w.rows.iter().map(|r| f(r) as i64)))
    };
    let ts =
        |v: i64| -> ArrayRef { Arc::new(TimestampMillisecondArray::from(vec![v; n]).with_timezone("UTC")) };
    RecordBatch::try_new(
        HEX_WINDOWS_SCHEMA.clone(),
        vec![
            ts(w.start.0),
            ts(w.end.0),
            col_u(|r| r.cell.0),
            Arc::new(StringArray::from(h3)),
            Arc::new(Int32Array::from(res)),
            col_u(|r| r.lbs_devices),
            col_u(|r| r.counter_in),
            col_u(|r| r.counter_out),
            Arc::new(Int64Array::from_iter(
                w.rows.iter().map(|r| r.occupancy.map(|o| o as i64)),
            )),
            col_u(|r| r.gate_entries),
            col_u(|r| r.gate_exits),
            Arc::new(Float64Array::from(people)),
            Arc::new(Float64Array::from(density)),
            Arc::new(Int64Array::from_iter(
                // Null when no segments were matched (an offline run without a scenario's segments).
                w.rows
                    .iter()
                    .map(|r| (!w.segments.people.is_empty()).then_some(r.lbs_off_network as i64)),
            )),
        ],
    )
}

/// One late record as a JSON row of the `late_records` table: `ts`, `watermark` (epoch ms),
/// `source`, `kind`, `cell`, `h3`, `windows_missed`.
pub fn late_row(l: &super::engine::LateRecord, source: &str) -> String {
    serde_json::json!({
        "ts": l.ts.0,
        "watermark": l.watermark.0,
        "source": source,
        "kind": l.kind.as_str(),
        "cell": l.cell.0,
        "h3": l.cell.to_string(),
        "windows_missed": l.windows_missed,
    })
    .to_string()
}

/// Renders a `hex_windows` batch as JSON rows: times in epoch ms, `cell` a number, `h3` a string.
pub fn json_rows(batch: &RecordBatch) -> Result<Vec<String>, ArrowError> {
    let schema = batch.schema();
    let mut out = vec![String::with_capacity(256); batch.num_rows()];
    for (i, field) in schema.fields().iter().enumerate() {
        let col = batch.column(i);
        for (r, line) in out.iter_mut().enumerate() {
            line.push(if i == 0 { '{' } else { ',' });
            line.push_str(&serde_json::to_string(field.name()).unwrap_or_default());
            line.push(':');
            let v: serde_json::Value = if col.is_null(r) {
                serde_json::Value::Null
            } else if let Some(a) = col.as_any().downcast_ref::<TimestampMillisecondArray>() {
                a.value(r).into()
            } else if let Some(a) = col.as_any().downcast_ref::<Int64Array>() {
                a.value(r).into()
            } else if let Some(a) = col.as_any().downcast_ref::<Int32Array>() {
                a.value(r).into()
            } else if let Some(a) = col.as_any().downcast_ref::<Float64Array>() {
                serde_json::Number::from_f64(a.value(r))
                    .map(Into::into)
                    .unwrap_or(serde_json::Value::Null)
            } else if let Some(a) = col.as_any().downcast_ref::<StringArray>() {
                a.value(r).into()
            } else {
                return Err(ArrowError::NotYetImplemented(format!(
                    "JSON of {}",
                    field.data_type()
                )));
            };
            line.push_str(&v.to_string());
        }
    }
    for line in &mut out {
        line.push('}');
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CellId, EventTime};
    use crate::window::engine::HexRow;

    #[test]
    fn a_window_becomes_a_batch_and_json_rows() {
        let cell = h3o::LatLng::new(31.2405, 121.4832)
            .unwrap()
            .to_cell(h3o::Resolution::Eleven);
        let w = HexWindow {
            start: EventTime(1_000),
            end: EventTime(61_000),
            rows: vec![HexRow {
                cell: CellId::from(cell),
                lbs_devices: 3,
                lbs_people: 6.0,
                counter_in: 2,
                ..Default::default()
            }],
            points: vec![],
            segments: Default::default(),
            is_final: true,
        };
        let b = to_record_batch(&w).unwrap();
        assert_eq!(b.num_rows(), 1);
        let rows = json_rows(&b).unwrap();
        let v: serde_json::Value = serde_json::from_str(&rows[0]).unwrap();
        assert_eq!(v["cell"], u64::from(cell));
        assert_eq!(v["h3"], cell.to_string());
        assert_eq!(v["res"], 11);
        assert_eq!(v["window_start"], 1_000);
        assert_eq!(v["people"], 6.0);
        assert_eq!(v["occupancy"], serde_json::Value::Null);
        let d = v["density"].as_f64().unwrap();
        assert!((d - 6.0 / cell.area_m2()).abs() < 1e-12);
    }
}
