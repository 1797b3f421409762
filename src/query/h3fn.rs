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
                let (a, scalar) = arrays(args)?;
                let (cells, res) = (ints(&a[0])?, ints(&a[1])?);
                let r: Int64Array = cells
                    .iter()
                    .zip(res.iter())
                    .map(|(c, r)| {
                        let c = cell(c?)?;
                        let r = Resolution::try_from(u8::try_from(r?).ok()?).ok()?;
                        c.parent(r).map(|p| u64::from(p) as i64)
                    })
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
