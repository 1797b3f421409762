//! One SQL engine for HTTP, the CLI and the PostgreSQL wire: DataFusion over the history tables,
//! read-only, with a time, memory and row limit on every query.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use datafusion::error::DataFusionError;
use datafusion::execution::cache::cache_manager::{CacheManager, CacheManagerConfig};
use datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::{SQLOptions, SessionConfig, SessionContext};
use datafusion::sql::parser::{DFParser, Statement as DfStatement};
use datafusion::sql::sqlparser::ast::Statement;
use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
use futures_util::StreamExt;

use super::tables::{NdjsonTable, WindowTable};
use crate::config::SqlConfig;
use crate::durability::files::names;
use crate::history::schema::{ACKS_SCHEMA, ALERTS_SCHEMA, AUDIT_SCHEMA, LATE_SCHEMA};
use crate::history::store::{History, Table};

/// Why a query gave no answer. Each message says what to change.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    /// Not a query: history is read-only.
    #[error("{0} is refused: history is read-only; only queries run here (SELECT, WITH, EXPLAIN, SHOW)")]
    Refused(String),
    /// The text is not SQL DataFusion understands.
    #[error("SQL syntax error: {0}")]
    Syntax(String),
    /// Planning or running failed (unknown table or column, bad types, …).
    #[error("{0}")]
    Query(String),
    /// The time limit was hit.
    #[error("query cancelled after {0:?} (sql.timeout): narrow the time range, or aggregate first")]
    Timeout(Duration),
    /// The memory limit was hit.
    #[error("query needs more than {0} MiB (sql.memory_limit_mb): narrow the time range, or aggregate first ({1})")]
    Memory(usize, String),
    /// The answer has too many rows.
    #[error("the answer has more than {0} rows (sql.max_rows): add LIMIT, or aggregate")]
    TooManyRows(usize),
}

impl From<DataFusionError> for SqlError {
    fn from(e: DataFusionError) -> Self {
        match e.find_root() {
            DataFusionError::SQL(p, _) => SqlError::Syntax(p.to_string()),
            root => SqlError::Query(root.to_string()),
        }
    }
}

/// The statements a read-only analyst may run.
pub fn allowed(s: &Statement) -> Result<(), SqlError> {
    match s {
        Statement::Query(_)
        | Statement::ShowTables { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowVariable { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowFunctions { .. }
        | Statement::ExplainTable { .. } => Ok(()),
        Statement::Explain { statement, .. } => allowed(statement),
        other => Err(SqlError::Refused(kind(&other.to_string()))),
    }
}

/// The statement's leading keywords, e.g. `CREATE TABLE`, for error messages.
fn kind(sql: &str) -> String {
    let words: Vec<String> = sql
        .split_whitespace()
        .take(2)
        .map(|w| w.to_uppercase())
        .filter(|w| w.chars().all(|c| c.is_ascii_alphabetic()))
        .collect();
    if words.is_empty() {
        "this statement".into()
    } else {
        format!("`{}`", words.join(" "))
    }
}

/// Deepest nesting of parentheses a query may have. The SQL parser backtracks through nested
/// function calls in time doubling with each level (measured, debug build: 12 levels 11 ms, 14
/// levels 48 ms; the fuzzer found one that ran for minutes), and the statement timeout only starts
/// once a query is parsed. Analysts' queries nest a handful of levels.
pub const MAX_NESTING: usize = 16;

/// Refuses text nested past [`MAX_NESTING`] before any parser sees it. Parentheses inside string
/// literals, quoted identifiers and comments do not count.
pub fn check_nesting(sql: &str) -> Result<(), SqlError> {
    let b = sql.as_bytes();
    let (mut depth, mut deepest, mut i) = (0usize, 0usize, 0usize);
    while i < b.len() {
        match b[i] {
            q @ (b'\'' | b'"') => {
                i += 1;
                while i < b.len() && b[i] != q {
                    i += 1;
                }
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 1;
            }
            b'(' | b'[' => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            b')' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    if deepest > MAX_NESTING {
        return Err(SqlError::Refused(format!(
            "a query nested {deepest} parentheses deep (at most {MAX_NESTING}; use WITH to name the inner parts)"
        )));
    }
    Ok(())
}

/// Checks every statement in `sql` before anything is planned.
pub fn check_read_only(sql: &str) -> Result<(), SqlError> {
    check_nesting(sql)?;
    let statements = DFParser::parse_sql_with_dialect(sql, &PostgreSqlDialect {})
        .map_err(|e| SqlError::Syntax(e.find_root().to_string()))?;
    if statements.is_empty() {
        return Err(SqlError::Syntax("no statement given".into()));
    }
    fn check(s: &DfStatement) -> Result<(), SqlError> {
        match s {
            DfStatement::Statement(s) => allowed(s),
            DfStatement::Explain(e) => check(&e.statement),
            DfStatement::CreateExternalTable(_) => Err(SqlError::Refused("`CREATE EXTERNAL TABLE`".into())),
            DfStatement::CopyTo(_) => Err(SqlError::Refused("`COPY`".into())),
            DfStatement::Reset(_) => Err(SqlError::Refused("`RESET`".into())),
        }
    }
    statements.iter().try_for_each(check)
}

/// A query's answer.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Column names and types.
    pub schema: SchemaRef,
    /// The rows.
    pub batches: Vec<RecordBatch>,
}

impl Answer {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }
}

/// The SQL engine of one data dir (and, in cluster mode, of every partition's folder beside it).
#[derive(Clone)]
pub struct SqlEngine {
    history: Arc<History>,
    data_dir: PathBuf,
    /// The cluster's shared folder: `partitions/*/` are read as part of every table.
    cluster: Option<PathBuf>,
    limits: SqlConfig,
    /// Smallest `people` a `hex_windows` row must have to be shown (privacy.k).
    k: u32,
    /// Parquet footers and file statistics, kept across queries: every query used to read the
    /// footer of every history file again. Files are immutable once written, and an entry is
    /// checked against the file's size and modification time before it is used.
    caches: Arc<CacheManager>,
}

impl SqlEngine {
    /// An engine over `history` and the logs of `data_dir`.
    pub fn new(history: Arc<History>, data_dir: &Path, limits: SqlConfig, k: u32) -> SqlEngine {
        SqlEngine {
            history,
            data_dir: data_dir.to_owned(),
            cluster: None,
            limits,
            k,
            caches: CacheManager::try_new(&CacheManagerConfig::default())
                .expect("the default cache configuration is valid"),
        }
    }

    /// Also reads every partition folder under the cluster folder `root` (`partitions/*/`: cells,
    /// late records) and its city stage (`city/`: segments, alerts), found afresh at each query,
    /// as part of every table.
    pub fn with_cluster(mut self, root: PathBuf) -> SqlEngine {
        self.cluster = Some(root);
        self
    }

    /// The histories and data dirs a query reads: this one, each partition's in name order, then
    /// the city stage's.
    fn sources(&self) -> Result<(Vec<Arc<History>>, Vec<PathBuf>), SqlError> {
        let mut histories = vec![self.history.clone()];
        let mut dirs = vec![self.data_dir.clone()];
        if let Some(root) = &self.cluster {
            let mut parts: Vec<PathBuf> = match std::fs::read_dir(root.join("partitions")) {
                Ok(rd) => rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect(),
                Err(_) => Vec::new(),
            };
            parts.sort();
            // The city stage's segments and alerts.
            if root.join("city").is_dir() {
                parts.push(root.join("city"));
            }
            for p in parts {
                let h = History::open_read_only(&p)
                    .map_err(|e| SqlError::Query(format!("reading the history in {}: {e}", p.display())))?;
                histories.push(Arc::new(h));
                dirs.push(p);
            }
        }
        Ok((histories, dirs))
    }

    /// The limits in force.
    pub fn limits(&self) -> &SqlConfig {
        &self.limits
    }

    /// A fresh session with its own memory pool: the memory limit holds per query over HTTP and
    /// the CLI, and per connection over the PostgreSQL wire (a connection runs one query at a time).
    pub fn context(&self) -> Result<SessionContext, SqlError> {
        // No spilling: an analyst's query may not fill the server's disk; past the pool it fails.
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_limit(self.limits.memory_limit_mb * 1024 * 1024, 1.0)
            .with_disk_manager_builder(DiskManagerBuilder::default().with_mode(DiskManagerMode::Disabled))
            .with_cache_manager(
                CacheManagerConfig::default()
                    .with_file_metadata_cache(Some(self.caches.get_file_metadata_cache()))
                    .with_file_statistics_cache(self.caches.get_file_statistic_cache()),
            )
            .build_arc()?;
        let config = SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema("datafusion", "public")
            .with_target_partitions(2);
        let ctx = SessionContext::new_with_config_rt(config, runtime);
        let k = (self.k > 1).then_some(self.k as f64);
        let (histories, dirs) = self.sources()?;
        ctx.register_table(
            "hex_windows",
            Arc::new(WindowTable::new(histories.clone(), Table::HexWindows, k)),
        )?;
        ctx.register_table(
            "segment_windows",
            Arc::new(WindowTable::new(histories.clone(), Table::SegmentWindows, None)),
        )?;
        ctx.register_table(
            "calibration",
            Arc::new(WindowTable::new(histories, Table::Calibration, None)),
        )?;
        // Alerts and late records come from every partition too; acknowledgements and the
        // thresholds audit are the serving instance's own.
        for (name, file, schema, partitions) in [
            ("alerts", names::ALERTS, &*ALERTS_SCHEMA, true),
            ("thresholds_audit", names::THRESHOLDS_AUDIT, &*AUDIT_SCHEMA, false),
            ("late_records", names::LATE_RECORDS, &*LATE_SCHEMA, true),
            ("alert_acks", names::ALERT_ACKS, &*ACKS_SCHEMA, false),
        ] {
            let n = if partitions { dirs.len() } else { 1 };
            let paths = dirs[..n].iter().map(|d| d.join(file)).collect();
            ctx.register_table(name, Arc::new(NdjsonTable::new(paths, schema.clone())))?;
        }
        for f in super::h3fn::functions() {
            ctx.register_udf(f);
        }
        Ok(ctx)
    }

    /// Runs one read-only query with the limits, collecting at most `sql.max_rows` rows.
    pub async fn query(&self, sql: &str) -> Result<Answer, SqlError> {
        check_read_only(sql)?;
        let ctx = self.context()?;
        let timeout = self.limits.timeout;
        let run = async {
            let options = SQLOptions::new()
                .with_allow_ddl(false)
                .with_allow_dml(false)
                .with_allow_statements(false);
            let df = ctx.sql_with_options(sql, options).await?;
            let stream = df.execute_stream().await?;
            self.collect(stream).await
        };
        tokio::time::timeout(timeout, run)
            .await
            .map_err(|_| SqlError::Timeout(timeout))?
    }

    /// Collects a stream, failing past the row limit.
    pub async fn collect(&self, mut stream: SendableRecordBatchStream) -> Result<Answer, SqlError> {
        let schema = stream.schema();
        let mut batches = Vec::new();
        let mut rows = 0;
        while let Some(b) = stream.next().await {
            let b = b.map_err(|e| self.classify(e))?;
            rows += b.num_rows();
            if rows > self.limits.max_rows {
                return Err(SqlError::TooManyRows(self.limits.max_rows));
            }
            batches.push(b);
        }
        Ok(Answer { schema, batches })
    }

    /// Names the memory limit when that is what stopped a query.
    pub fn classify(&self, e: DataFusionError) -> SqlError {
        match e.find_root() {
            DataFusionError::ResourcesExhausted(m) => {
                SqlError::Memory(self.limits.memory_limit_mb, m.clone())
            }
            _ => e.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_pass_and_every_other_statement_kind_is_refused() {
        for ok in [
            "SELECT 1",
            "WITH a AS (SELECT 1 AS x) SELECT x FROM a",
            "EXPLAIN SELECT * FROM hex_windows",
            "SHOW TABLES",
            "select * from hex_windows; select 2",
        ] {
            check_read_only(ok).unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        for (bad, named) in [
            ("CREATE TABLE t (a INT)", "CREATE TABLE"),
            ("CREATE VIEW v AS SELECT 1", "CREATE VIEW"),
            ("DROP TABLE hex_windows", "DROP TABLE"),
            ("INSERT INTO hex_windows SELECT * FROM hex_windows", "INSERT INTO"),
            ("DELETE FROM alerts", "DELETE FROM"),
            ("UPDATE alerts SET reason = 'x'", "UPDATE ALERTS"),
            ("COPY hex_windows TO '/tmp/x.parquet'", "COPY"),
            (
                "CREATE EXTERNAL TABLE x STORED AS PARQUET LOCATION '/etc'",
                "CREATE EXTERNAL TABLE",
            ),
            ("SELECT 1; DROP TABLE alerts", "DROP TABLE"),
            ("EXPLAIN DELETE FROM alerts", "DELETE FROM"),
            ("SET datafusion.execution.batch_size = 1", "SET"),
        ] {
            match check_read_only(bad) {
                Err(SqlError::Refused(what)) => {
                    assert!(what.contains(named), "{bad}: named {what}");
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        assert!(matches!(check_read_only("SELEC 1"), Err(SqlError::Syntax(_))));
    }

    fn hex_window(start: i64, devices: &[u64]) -> RecordBatch {
        use crate::model::{CellId, EventTime};
        use crate::window::{to_record_batch, HexRow, HexWindow};
        let rows = devices
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let cell = h3o::LatLng::new(31.24 + i as f64 * 1e-3, 121.49)
                    .expect("a valid point")
                    .to_cell(h3o::Resolution::Eleven);
                HexRow {
                    cell: CellId(u64::from(cell)),
                    lbs_devices: n,
                    lbs_people: n as f64,
                    ..HexRow::default()
                }
            })
            .collect();
        to_record_batch(&HexWindow {
            start: EventTime(start),
            end: EventTime(start + 60_000),
            rows,
            points: Vec::new(),
            segments: Default::default(),
            is_final: true,
        })
        .expect("a window batch")
    }

    #[tokio::test]
    async fn a_runaway_query_is_cancelled_at_the_time_limit_and_the_error_names_it() {
        // With room to spare in memory (512 MiB), only the time limit can stop it.
        let dir = tempfile::tempdir().unwrap();
        let h = Arc::new(History::open(dir.path(), 0, Duration::ZERO).unwrap());
        let cfg = SqlConfig {
            timeout: Duration::from_millis(500),
            ..SqlConfig::default()
        };
        let engine = SqlEngine::new(h, dir.path(), cfg, 0);
        let started = std::time::Instant::now();
        let Err(e) = engine
            .query("SELECT sum(value % 7) FROM generate_series(1, 100000000000)")
            .await
        else {
            panic!("a runaway query finished");
        };
        assert!(matches!(e, SqlError::Timeout(_)), "{e}");
        assert!(e.to_string().contains("sql.timeout"), "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn footers_are_cached_across_queries_but_a_file_written_again_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let h = Arc::new(History::open(dir.path(), 0, Duration::ZERO).unwrap());
        let t0 = 1_767_193_200_000; // 2025-12-31T15:00Z
        h.append(Table::HexWindows, t0, hex_window(t0, &[5]));
        h.flush().unwrap();
        let engine = SqlEngine::new(h.clone(), dir.path(), SqlConfig::default(), 0);
        let total = |a: Answer| {
            let b = &a.batches[0];
            let col = b
                .column(0)
                .as_any()
                .downcast_ref::<arrow::array::Int64Array>()
                .unwrap();
            (
                col.value(0),
                b.column(1)
                    .as_any()
                    .downcast_ref::<arrow::array::Int64Array>()
                    .unwrap()
                    .value(0),
            )
        };
        let q = "SELECT sum(lbs_devices), count(*) FROM hex_windows";
        assert_eq!(total(engine.query(q).await.unwrap()), (5, 1));
        assert!(
            !engine.caches.get_file_metadata_cache().is_empty(),
            "the footer was kept"
        );
        // The same path written again with other rows (a part file rewritten after a restart):
        // its size and modification time no longer match the cached footer's.
        let (files, _) = h.snapshot(Table::HexWindows);
        assert_eq!(files.len(), 1);
        std::thread::sleep(Duration::from_millis(20));
        let batch = hex_window(t0, &[7, 11]);
        let mut w = parquet::arrow::ArrowWriter::try_new(
            std::fs::File::create(&files[0]).unwrap(),
            batch.schema(),
            None,
        )
        .unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        assert_eq!(total(engine.query(q).await.unwrap()), (18, 2));
        // And a file added after the first queries is read too.
        h.append(
            Table::HexWindows,
            t0 + 3_600_000,
            hex_window(t0 + 3_600_000, &[1]),
        );
        h.flush().unwrap();
        assert_eq!(total(engine.query(q).await.unwrap()), (19, 3));
    }

    #[test]
    fn deep_nesting_is_refused_before_the_parser_backtracks_through_it() {
        let nested = |d: usize| format!("SELECT {}1{}", "f(".repeat(d), ")".repeat(d));
        assert!(check_nesting(&nested(MAX_NESTING)).is_ok());
        let t = std::time::Instant::now();
        let e = check_read_only(&nested(40)).unwrap_err().to_string();
        assert!(e.contains("40 parentheses deep") && e.contains("WITH"), "{e}");
        assert!(
            t.elapsed() < std::time::Duration::from_secs(1),
            "refused without parsing"
        );
        // Parentheses in strings and comments are text, not nesting.
        let text = format!(
            "SELECT '{}' -- {}\n, 1 /* {} */",
            "(".repeat(50),
            "(".repeat(50),
            "(".repeat(50)
        );
        assert!(check_nesting(&text).is_ok());
    }
}
