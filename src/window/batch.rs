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

/// A cell's area (m²), remembered per thread: the area is a spherical computation per cell (a
/// tenth of a whole offline replay's time when it ran for every row) and the same cells come back
/// every window.
pub fn cell_area_m2(c: h3o::CellIndex) -> f64 {
    thread_local! {
        static AREAS: std::cell::RefCell<rustc_hash::FxHashMap<u64, f64>> =
            std::cell::RefCell::new(rustc_hash::FxHashMap::default());
    }
    AREAS.with(|m| {
        let mut m = m.borrow_mut();
        if m.len() > 1 << 20 {
            m.clear();
        }
        *m.entry(u64::from(c)).or_insert_with(|| c.area_m2())
    })
}

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
        density.push(p / cell_area_m2(idx));
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
    let mut out = vec![Vec::<u8>::with_capacity(256); batch.num_rows()];
    // Values go through serde_json's own number and string writers: the bytes a `Value` gave,
    // without building one per cell (that was a tenth of an offline replay's time).
    for (i, field) in schema.fields().iter().enumerate() {
        let col = batch.column(i);
        let mut key = Vec::with_capacity(field.name().len() + 4);
        key.push(if i == 0 { b'{' } else { b',' });
        put(&mut key, field.name())?;
        key.push(b':');
        let any = col.as_any();
        macro_rules! each {
            ($array:ty, $write:expr) => {
                if let Some(a) = any.downcast_ref::<$array>() {
                    for (r, line) in out.iter_mut().enumerate() {
                        line.extend_from_slice(&key);
                        if a.is_null(r) {
                            line.extend_from_slice(b"null");
                        } else {
                            $write(line, a.value(r))?;
                        }
                    }
                    continue;
                }
            };
        }
        each!(TimestampMillisecondArray, |l: &mut Vec<u8>, v: i64| put(l, &v));
        each!(Int64Array, |l: &mut Vec<u8>, v: i64| put(l, &v));
        each!(Int32Array, |l: &mut Vec<u8>, v: i32| put(l, &v));
        // A float that is no JSON number (NaN, ±inf) is null, as `Value` had it.
        each!(Float64Array, |l: &mut Vec<u8>, v: f64| if v.is_finite() {
            put(l, &v)
        } else {
            l.extend_from_slice(b"null");
            Ok(())
        });
        each!(StringArray, |l: &mut Vec<u8>, v: &str| put(l, v));
        return Err(ArrowError::NotYetImplemented(format!(
            "JSON of {}",
            field.data_type()
        )));
    }
    out.into_iter()
        .map(|mut line| {
            line.push(b'}');
            String::from_utf8(line).map_err(|e| ArrowError::ExternalError(Box::new(e)))
        })
        .collect()
}

/// One value in JSON, appended.
fn put<T: serde::Serialize + ?Sized>(out: &mut Vec<u8>, v: &T) -> Result<(), ArrowError> {
    serde_json::to_writer(out, v).map_err(|e| ArrowError::ExternalError(Box::new(e)))
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

    #[test]
    fn json_rows_write_the_bytes_serde_json_values_would() {
        use arrow::datatypes::{DataType, Field, Schema};
        let schema = Arc::new(Schema::new(vec![
            Field::new("t\"x", DataType::Int64, true),
            Field::new("f", DataType::Float64, false),
            Field::new("s", DataType::Utf8, false),
            Field::new("i", DataType::Int32, false),
        ]));
        let floats = [
            1.0,
            -0.0,
            f64::NAN,
            0.1 + 0.2,
            1e300,
            f64::INFINITY,
            123_456_789.125,
        ];
        let n = floats.len();
        let b = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from_iter(
                    (0..n as i64).map(|i| (i % 3 != 1).then_some(i * -7)),
                )),
                Arc::new(Float64Array::from(floats.to_vec())),
                Arc::new(StringArray::from_iter_values(
                    (0..n).map(|i| format!("a\"b\\{i}\n\u{1}é")),
                )),
                Arc::new(Int32Array::from_iter_values((0..n as i32).map(|i| i32::MIN + i))),
            ],
        )
        .unwrap();
        let rows = json_rows(&b).unwrap();
        for (r, line) in rows.iter().enumerate() {
            let mut want = serde_json::Map::new();
            let int = (r % 3 != 1).then_some(r as i64 * -7);
            want.insert("t\"x".into(), int.map_or(serde_json::Value::Null, Into::into));
            want.insert(
                "f".into(),
                serde_json::Number::from_f64(floats[r]).map_or(serde_json::Value::Null, Into::into),
            );
            want.insert("s".into(), format!("a\"b\\{r}\n\u{1}é").into());
            want.insert("i".into(), (i32::MIN + r as i32).into());
            // Key order is the schema's (serde_json's map keeps insertion order only with a
            // feature), so the line is compared as written, value by value.
            let expected = format!(
                "{{{}}}",
                ["t\"x", "f", "s", "i"]
                    .iter()
                    .map(|k| format!("{}:{}", serde_json::to_string(k).unwrap(), want[*k]))
                    .collect::<Vec<_>>()
                    .join(",")
            );
            assert_eq!(line, &expected);
        }
    }
}
