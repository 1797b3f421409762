//! Answers as JSON rows, CSV, Arrow IPC or a text table.

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit};
use arrow::error::ArrowError;

use super::sql::Answer;

/// A JSON array of row objects. Timestamps are epoch milliseconds (as everywhere in the HTTP
/// API), integers and floats numbers (NaN and infinities null), everything else text. Columns
/// that share a name get unique keys (`unique_names`).
pub fn json(answer: &Answer) -> Result<String, ArrowError> {
    // Written by hand so each object keeps the columns' order.
    let mut out = String::with_capacity(64 * answer.rows() + 2);
    out.push('[');
    let mut first_row = true;
    let fields: Vec<&str> = answer.schema.fields().iter().map(|f| f.name().as_str()).collect();
    let names: Vec<String> = unique_names(&fields)
        .into_iter()
        .map(|n| serde_json::Value::String(n).to_string())
        .collect();
    for batch in &answer.batches {
        let cols = batch
            .columns()
            .iter()
            .map(|c| json_values(c.as_ref()))
            .collect::<Result<Vec<_>, _>>()?;
        for r in 0..batch.num_rows() {
            if !first_row {
                out.push(',');
            }
            first_row = false;
            out.push('{');
            for (i, (name, col)) in names.iter().zip(&cols).enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(name);
                out.push(':');
                out.push_str(&col[r].to_string());
            }
            out.push('}');
        }
    }
    out.push(']');
    Ok(out)
}

/// The keys a row object uses: each column's name, and for a name already used by a column to
/// its left, the name with the first free suffix `_1`, `_2`… A JSON object with two equal keys
/// keeps only one of them in most parsers, so `SELECT a.id, b.id` would silently lose a column;
/// a 400 would refuse a query DataFusion and psql answer. CSV and Arrow keep the names as they are.
pub fn unique_names(names: &[&str]) -> Vec<String> {
    let mut taken: std::collections::HashSet<String> = names.iter().map(|n| n.to_string()).collect();
    let mut seen = std::collections::HashSet::new();
    names
        .iter()
        .map(|&n| {
            if seen.insert(n) {
                return n.to_string();
            }
            let key = (1..)
                .map(|i| format!("{n}_{i}"))
                .find(|k| !taken.contains(k))
                .unwrap_or_else(|| n.to_string());
            taken.insert(key.clone());
            key
        })
        .collect()
}

fn json_values(col: &dyn Array) -> Result<Vec<serde_json::Value>, ArrowError> {
    use serde_json::Value;
    let n = col.len();
    let dt = col.data_type();
    let out = match dt {
        DataType::Null => vec![Value::Null; n],
        DataType::Boolean => col
            .as_boolean()
            .iter()
            .map(|v| v.map_or(Value::Null, Value::Bool))
            .collect(),
        DataType::Timestamp(..) | DataType::Date32 | DataType::Date64 => {
            let ms = cast(col, &DataType::Timestamp(TimeUnit::Millisecond, None))?;
            let ms = cast(&ms, &DataType::Int64)?;
            ms.as_primitive::<Int64Type>()
                .iter()
                .map(|v| v.map_or(Value::Null, Value::from))
                .collect()
        }
        d if d.is_integer() => {
            let a = cast(col, &DataType::Int64)?;
            a.as_primitive::<Int64Type>()
                .iter()
                .map(|v| v.map_or(Value::Null, Value::from))
                .collect()
        }
        d if d.is_floating() || matches!(d, DataType::Decimal128(..) | DataType::Decimal256(..)) => {
            let a = cast(col, &DataType::Float64)?;
            a.as_primitive::<Float64Type>()
                .iter()
                .map(|v| {
                    v.and_then(serde_json::Number::from_f64)
                        .map_or(Value::Null, Value::Number)
                })
                .collect()
        }
        _ => {
            let a = cast(col, &DataType::Utf8)?;
            a.as_string::<i32>()
                .iter()
                .map(|v| v.map_or(Value::Null, |s| Value::String(s.to_owned())))
                .collect()
        }
    };
    Ok(out)
}

/// CSV with a header row; timestamps in RFC 3339.
pub fn csv(answer: &Answer) -> Result<Vec<u8>, ArrowError> {
    let mut buf = Vec::new();
    {
        let mut w = arrow::csv::WriterBuilder::new().with_header(true).build(&mut buf);
        if answer.batches.is_empty() {
            w.write(&RecordBatch::new_empty(answer.schema.clone()))?;
        }
        for b in &answer.batches {
            w.write(b)?;
        }
    }
    Ok(buf)
}

/// The Arrow IPC stream format (`application/vnd.apache.arrow.stream`).
pub fn arrow_ipc(answer: &Answer) -> Result<Vec<u8>, ArrowError> {
    let mut buf = Vec::new();
    {
        let mut w = arrow::ipc::writer::StreamWriter::try_new(&mut buf, &answer.schema)?;
        for b in &answer.batches {
            w.write(b)?;
        }
        w.finish()?;
    }
    Ok(buf)
}

/// A text table for terminals.
pub fn table(answer: &Answer) -> Result<String, ArrowError> {
    if answer.batches.is_empty() {
        let empty = RecordBatch::new_empty(answer.schema.clone());
        return Ok(arrow::util::pretty::pretty_format_batches(&[empty])?.to_string());
    }
    Ok(arrow::util::pretty::pretty_format_batches(&answer.batches)?.to_string())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Float64Array, Int32Array, StringArray, TimestampMillisecondArray};
    use arrow::datatypes::{Field, Schema};

    use super::*;

    #[test]
    fn repeated_column_names_get_the_first_free_suffix() {
        assert_eq!(unique_names(&["a", "b"]), ["a", "b"]);
        assert_eq!(
            unique_names(&["value", "value", "value"]),
            ["value", "value_1", "value_2"]
        );
        // A suffix another column already has is skipped, whichever side it is on.
        assert_eq!(unique_names(&["x", "x_1", "x"]), ["x", "x_1", "x_2"]);
        assert_eq!(unique_names(&["x", "x", "x_1"]), ["x", "x_2", "x_1"]);
    }

    #[test]
    fn json_rows_have_epoch_ms_times_numbers_and_nulls() {
        let schema = Arc::new(Schema::new(vec![
            Field::new(
                "t",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                false,
            ),
            Field::new("n", DataType::Int32, true),
            Field::new("x", DataType::Float64, true),
            Field::new("s", DataType::Utf8, true),
        ]));
        let b = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(TimestampMillisecondArray::from(vec![1000, 2000]).with_timezone("UTC")),
                Arc::new(Int32Array::from(vec![Some(3), None])),
                Arc::new(Float64Array::from(vec![1.5, f64::NAN])),
                Arc::new(StringArray::from(vec![Some("a"), None])),
            ],
        )
        .unwrap();
        let a = Answer {
            schema,
            batches: vec![b],
        };
        assert_eq!(
            json(&a).unwrap(),
            r#"[{"t":1000,"n":3,"x":1.5,"s":"a"},{"t":2000,"n":null,"x":null,"s":null}]"#
        );
        let c = String::from_utf8(csv(&a).unwrap()).unwrap();
        assert!(c.starts_with("t,n,x,s\n1970-01-01T00:00:01"), "{c}");
    }
}
