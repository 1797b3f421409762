//! SQL tables over history: the partitioned window tables (Parquet files plus the windows still
//! in memory) and the small NDJSON logs of the data dir.

use std::path::PathBuf;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use async_trait::async_trait;
use datafusion::catalog::{Session, TableProvider};
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::datasource::MemTable;
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{Expr, Operator, TableProviderFilterPushDown, TableType};
use datafusion::physical_expr::expressions::{binary, col, lit};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::union::UnionExec;
use datafusion::physical_plan::ExecutionPlan;

use crate::history::store::{History, Table};

/// `hex_windows` or `segment_windows`: every Parquet file plus the buffered windows, as one table
/// (of several histories, in cluster mode: one per partition). With `min_people`, rows with fewer
/// people are left out (k-anonymity for analysts).
#[derive(Clone)]
pub struct WindowTable {
    histories: Vec<Arc<History>>,
    table: Table,
    min_people: Option<f64>,
}

impl std::fmt::Debug for WindowTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "WindowTable({})", self.table.name())
    }
}

impl WindowTable {
    /// A table over `histories` (their rows together); `min_people` applies k-suppression.
    pub fn new(histories: Vec<Arc<History>>, table: Table, min_people: Option<f64>) -> WindowTable {
        WindowTable {
            histories,
            table,
            min_people,
        }
    }
}

#[async_trait]
impl TableProvider for WindowTable {
    fn schema(&self) -> SchemaRef {
        self.table.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    fn supports_filters_pushdown(&self, filters: &[&Expr]) -> Result<Vec<TableProviderFilterPushDown>> {
        // Used to skip files and row groups by their statistics; DataFusion still applies them.
        Ok(vec![TableProviderFilterPushDown::Inexact; filters.len()])
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let schema = self.table.schema();
        // With suppression the scan also reads `people`, filters, then projects what was asked.
        let inner_projection: Option<Vec<usize>> = match (projection, self.min_people) {
            (Some(p), Some(_)) => {
                let people = schema.index_of("people")?;
                let mut v = p.clone();
                if !v.contains(&people) {
                    v.push(people);
                }
                v.sort_unstable();
                Some(v)
            }
            (p, _) => p.cloned(),
        };
        let inner_limit = if self.min_people.is_some() { None } else { limit };
        let (mut files, mut memory) = (Vec::new(), Vec::new());
        for h in &self.histories {
            let (f, m) = h.snapshot(self.table);
            files.extend(f);
            memory.extend(m);
        }
        let mut parts: Vec<Arc<dyn ExecutionPlan>> = Vec::new();
        if !files.is_empty() {
            let urls = files
                .iter()
                .map(|p| ListingTableUrl::parse(p.to_string_lossy()))
                .collect::<Result<Vec<_>>>()?;
            let options =
                ListingOptions::new(Arc::new(ParquetFormat::default())).with_file_extension(".parquet");
            let config = ListingTableConfig::new_with_multi_paths(urls)
                .with_listing_options(options)
                .with_schema(schema.clone());
            let listing = ListingTable::try_new(config)?
                .with_cache(state.runtime_env().cache_manager.get_file_statistic_cache());
            parts.push(
                listing
                    .scan(state, inner_projection.as_ref(), filters, inner_limit)
                    .await?,
            );
        }
        if !memory.is_empty() || parts.is_empty() {
            let mem = MemTable::try_new(schema.clone(), vec![memory])?;
            parts.push(
                mem.scan(state, inner_projection.as_ref(), filters, inner_limit)
                    .await?,
            );
        }
        let plan = UnionExec::try_new(parts)?;
        let Some(k) = self.min_people else {
            return Ok(plan);
        };
        let scanned = plan.schema();
        let predicate = binary(col("people", &scanned)?, Operator::GtEq, lit(k), &scanned)?;
        let filtered: Arc<dyn ExecutionPlan> = Arc::new(FilterExec::try_new(predicate, plan)?);
        let wanted: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..schema.fields().len()).collect(),
        };
        let exprs = wanted
            .iter()
            .map(|&i| {
                let name = schema.field(i).name();
                Ok((col(name, &scanned)?, name.clone()))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Arc::new(ProjectionExec::try_new(exprs, filtered)?))
    }
}

/// A small NDJSON log of the data dir (`alerts.ndjson`, …) as a table, read at each query (in
/// cluster mode, the same log of every partition's folder too).
#[derive(Debug)]
pub struct NdjsonTable {
    paths: Vec<PathBuf>,
    schema: SchemaRef,
}

impl NdjsonTable {
    /// The table over the files at `paths`, one after another (a missing file: no rows).
    pub fn new(paths: Vec<PathBuf>, schema: SchemaRef) -> NdjsonTable {
        NdjsonTable { paths, schema }
    }
}

#[async_trait]
impl TableProvider for NdjsonTable {
    fn schema(&self) -> SchemaRef {
        self.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn Session,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let mut batches = Vec::new();
        for path in &self.paths {
            let text = match tokio::fs::read_to_string(path).await {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(DataFusionError::Execution(format!(
                        "reading {}: {e}",
                        path.display()
                    )))
                }
            };
            let (batch, skipped) = crate::history::schema::batch_from_ndjson(&self.schema, &text)?;
            if skipped > 0 {
                tracing::warn!(path = %path.display(), skipped, "Unreadable lines skipped.");
            }
            batches.push(batch);
        }
        if batches.is_empty() {
            batches.push(crate::history::schema::batch_from_ndjson(&self.schema, "")?.0);
        }
        MemTable::try_new(self.schema.clone(), vec![batches])?
            .scan(state, projection, filters, limit)
            .await
    }
}
