//! H3 helper functions for SQL. Cells are BIGINT (the H3 index's 64 bits; the top one is always
//! 0). An invalid cell or resolution gives NULL rather than failing the whole query.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Float64Array, Int32Array, Int64Array, StringArray};
use arrow::datatypes::DataType;
use datafusion::error::Result;
use datafusion::logical_expr::{create_udf, ColumnarValue, ScalarUDF, Volatility};
use h3o::{CellIndex, LatLng, Resolution};

fn cell(v: i64) -> Option<CellIndex> {
    u64::try_from(v).ok().and_then(|u| CellIndex::try_from(u).ok())
}

/// A resolution from SQL (0–15), or None.
fn resolution(r: i64) -> Option<Resolution> {
    Resolution::try_from(u8::try_from(r).ok()?).ok()
}

/// The parent at `r` of the cell `v` (None: not a cell, or `r` finer than the cell). On a valid
/// cell a parent is two bit operations (the resolution field set to `r`, the digits below it set
/// to 7); h3o's `parent` took a fifth of a day's roll-up, the validation another eighth.
fn parent(v: i64, r: Resolution) -> Option<i64> {
    let c = cell(v)?;
    let (own, r) = (u8::from(c.resolution()), u8::from(r));
    if r > own {
        return None;
    }
    const RES_FIELD: u64 = 0xF << 52;
    let below = (1u64 << (3 * (15 - u32::from(r)))) - 1;
    Some((((v as u64) & !RES_FIELD) | (u64::from(r) << 52) | below) as i64)
}

fn arrays(args: &[ColumnarValue]) -> Result<(Vec<ArrayRef>, bool)> {
    let scalar = args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
    Ok((ColumnarValue::values_to_arrays(args)?, scalar))
}

fn out(a: ArrayRef, scalar: bool) -> Result<ColumnarValue> {
    if scalar {
        Ok(ColumnarValue::Scalar(
            datafusion::common::ScalarValue::try_from_array(&a, 0)?,
        ))
    } else {
        Ok(ColumnarValue::Array(a))
    }
}

fn ints(a: &ArrayRef) -> Result<&Int64Array> {
    a.as_any().downcast_ref::<Int64Array>().ok_or_else(|| {
        datafusion::error::DataFusionError::Execution(format!(
            "expected a BIGINT H3 cell, got {}",
            a.data_type()
        ))
    })
}

fn floats(a: &ArrayRef) -> Result<&Float64Array> {
    a.as_any().downcast_ref::<Float64Array>().ok_or_else(|| {
        datafusion::error::DataFusionError::Execution(format!("expected a DOUBLE, got {}", a.data_type()))
    })
}

/// A one-argument function of a cell.
fn unary<T: Array + 'static>(
    name: &str,
    ret: DataType,
    f: impl Fn(&Int64Array) -> T + Send + Sync + 'static,
) -> ScalarUDF {
    create_udf(
        name,
        vec![DataType::Int64],
        ret,
        Volatility::Immutable,
        Arc::new(move |args: &[ColumnarValue]| {
            let (a, scalar) = arrays(args)?;
            out(Arc::new(f(ints(&a[0])?)), scalar)
        }),
    )
}

fn map_cells<T>(a: &Int64Array, f: impl Fn(CellIndex) -> Option<T>) -> Vec<Option<T>> {
    a.iter().map(|v| v.and_then(cell).and_then(&f)).collect()
}

fn boundary_wkt(c: CellIndex) -> String {
    let b = c.boundary();
    let mut pts: Vec<String> = b
        .iter()
        .map(|p| format!("{:.7} {:.7}", p.lng(), p.lat()))
        .collect();
    if let Some(first) = pts.first().cloned() {
        pts.push(first);
    }
    format!("POLYGON(({}))", pts.join(", "))
}

/// Every H3 function: `h3_to_string`, `h3_from_string`, `h3_parent`, `h3_resolution`, `h3_lat`,
/// `h3_lng`, `h3_area_m2`, `h3_boundary_wkt`, `h3_latlng_to_cell`.
pub fn functions() -> Vec<ScalarUDF> {
    vec![
        unary("h3_to_string", DataType::Utf8, |a| {
            StringArray::from(map_cells(a, |c| Some(c.to_string())))
        }),
        unary("h3_resolution", DataType::Int32, |a| {
            Int32Array::from(map_cells(a, |c| Some(u8::from(c.resolution()) as i32)))
        }),
        unary("h3_lat", DataType::Float64, |a| {
            Float64Array::from(map_cells(a, |c| Some(LatLng::from(c).lat())))
        }),
        unary("h3_lng", DataType::Float64, |a| {
            Float64Array::from(map_cells(a, |c| Some(LatLng::from(c).lng())))
        }),
        unary("h3_area_m2", DataType::Float64, |a| {
            Float64Array::from(map_cells(a, |c| Some(c.area_m2())))
        }),
        unary("h3_boundary_wkt", DataType::Utf8, |a| {
            StringArray::from(map_cells(a, |c| Some(boundary_wkt(c))))
        }),
        create_udf(
            "h3_from_string",
            vec![DataType::Utf8],
            DataType::Int64,
            Volatility::Immutable,
            Arc::new(|args: &[ColumnarValue]| {
                let (a, scalar) = arrays(args)?;
                let s = a[0]
                    .as_any()
                    .downcast_ref::<StringArray>()
                    .ok_or_else(|| datafusion::error::DataFusionError::Execution("expected text".into()))?;
                let r: Int64Array = s
                    .iter()
                    .map(|v| {
                        v.and_then(|v| v.parse::<CellIndex>().ok())
                            .map(|c| u64::from(c) as i64)
                    })
                    .collect();
                out(Arc::new(r), scalar)
            }),
        ),
        create_udf(
            "h3_parent",
            vec![DataType::Int64, DataType::Int64],
            DataType::Int64,
            Volatility::Immutable,
            Arc::new(|args: &[ColumnarValue]| {
                // The usual call names one resolution for a whole column (`h3_parent(cell, 7)`):
                // read it once and run a tight kernel over the column instead of zipping with a
                // column of copies of it, parsing it again for every row.
                if let (ColumnarValue::Array(cells), ColumnarValue::Scalar(r)) = (&args[0], &args[1]) {
                    let cells = ints(cells)?;
                    let r = match r {
                        datafusion::common::ScalarValue::Int64(Some(r)) => resolution(*r),
                        _ => None,
                    };
                    let parents: Int64Array = match r {
                        Some(r) => cells.unary_opt::<_, arrow::datatypes::Int64Type>(|v| parent(v, r)),
                        None => Int64Array::new_null(cells.len()),
                    };
                    return Ok(ColumnarValue::Array(Arc::new(parents)));
                }
                let (a, scalar) = arrays(args)?;
                let (cells, res) = (ints(&a[0])?, ints(&a[1])?);
                let r: Int64Array = cells
                    .iter()
                    .zip(res.iter())
                    .map(|(c, r)| parent(c?, resolution(r?)?))
                    .collect();
                out(Arc::new(r), scalar)
            }),
        ),
        create_udf(
            "h3_latlng_to_cell",
            vec![DataType::Float64, DataType::Float64, DataType::Int64],
            DataType::Int64,
            Volatility::Immutable,
            Arc::new(|args: &[ColumnarValue]| {
                let (a, scalar) = arrays(args)?;
                let (lat, lng, res) = (floats(&a[0])?, floats(&a[1])?, ints(&a[2])?);
                let r: Int64Array = lat
                    .iter()
                    .zip(lng.iter())
                    .zip(res.iter())
                    .map(|((la, ln), r)| {
                        let r = Resolution::try_from(u8::try_from(r?).ok()?).ok()?;
                        let ll = LatLng::new(la?, ln?).ok()?;
                        Some(u64::from(ll.to_cell(r)) as i64)
                    })
                    .collect();
                out(Arc::new(r), scalar)
            }),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::prelude::SessionContext;

    /// `h3_parent` by column and by scalar resolution, against h3o directly, over cells of every
    /// resolution and values that are not cells.
    #[tokio::test]
    async fn h3_parent_matches_h3o_for_columns_scalars_and_non_cells() {
        let mut values = vec![-1i64, 0, 123, i64::MAX];
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for i in 0..2_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let lat = (x % 17_000) as f64 / 100.0 - 85.0;
            let lng = ((x >> 20) % 36_000) as f64 / 100.0 - 180.0;
            let res = Resolution::try_from((i % 16) as u8).unwrap();
            values.push(u64::from(LatLng::new(lat, lng).unwrap().to_cell(res)) as i64);
        }
        let ctx = SessionContext::new();
        for f in functions() {
            ctx.register_udf(f);
        }
        let cells = arrow::record_batch::RecordBatch::try_from_iter([
            ("cell", Arc::new(Int64Array::from(values.clone())) as ArrayRef),
            (
                "r",
                Arc::new(Int64Array::from(vec![7i64; values.len()])) as ArrayRef,
            ),
        ])
        .unwrap();
        ctx.register_batch("t", cells).unwrap();
        for sql in [
            "SELECT h3_parent(cell, 7) AS p FROM t",
            "SELECT h3_parent(cell, r) AS p FROM t",
        ] {
            let got: Vec<Option<i64>> = ctx
                .sql(sql)
                .await
                .unwrap()
                .collect()
                .await
                .unwrap()
                .iter()
                .flat_map(|b| {
                    let a = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap().clone();
                    a.iter().collect::<Vec<_>>()
                })
                .collect();
            let want: Vec<Option<i64>> = values
                .iter()
                .map(|v| {
                    cell(*v)
                        .and_then(|c| c.parent(Resolution::Seven))
                        .map(|p| u64::from(p) as i64)
                })
                .collect();
            assert_eq!(got, want, "{sql}");
            assert!(
                got.iter().filter(|p| p.is_some()).count() > 900,
                "{sql}: coarse cells have parents"
            );
        }
        for bad in [
            "SELECT h3_parent(cell, 16) AS p FROM t",
            "SELECT h3_parent(cell, NULL) AS p FROM t",
        ] {
            let b = ctx.sql(bad).await.unwrap().collect().await.unwrap();
            assert!(
                b.iter().all(|b| b.column(0).null_count() == b.num_rows()),
                "{bad}"
            );
        }
        // And h3o's own parent is what the bits say: a cell's parent contains it.
        let c = LatLng::new(31.2405, 121.4832)
            .unwrap()
            .to_cell(Resolution::Eleven);
        let p = parent(u64::from(c) as i64, Resolution::Seven).unwrap();
        assert_eq!(Some(p as u64), c.parent(Resolution::Seven).map(u64::from));
    }
}
