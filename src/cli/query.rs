//! `throng query "SQL"`: SQL over history, offline on a data dir or through a server.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, ValueEnum};

use super::ConfigArgs;
use crate::history::History;
use crate::query::{format, Answer, SqlEngine};

/// How answers are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// A text table.
    Table,
    /// CSV with a header.
    Csv,
    /// A JSON array of row objects.
    Json,
}

/// `throng query`.
#[derive(Debug, Args, Clone)]
#[command(
    after_help = "Tables: hex_windows, segment_windows, calibration, alerts, thresholds_audit, late_records, alert_acks.\n\
H3 functions: h3_to_string, h3_from_string, h3_parent, h3_resolution, h3_lat, h3_lng, h3_area_m2,\n\
h3_boundary_wkt, h3_latlng_to_cell.\n\n\
Example: throng query \"SELECT segment_id, max(density) FROM segment_windows GROUP BY 1 ORDER BY 2 DESC\""
)]
pub struct QueryArgs {
    /// One read-only SQL statement.
    pub sql: String,
    /// Query this data dir's files directly (the default, `./data`), or a cluster's shared folder
    /// (every partition's history as one table). Use --server instead while a server is writing.
    #[arg(long, conflicts_with = "server")]
    pub data_dir: Option<PathBuf>,
    /// Ask a running server (`http://HOST:PORT`) instead, with an analyst token.
    #[arg(long)]
    pub server: Option<String>,
    /// Analyst token for --server.
    #[arg(long, env = "THRONG_TOKEN")]
    pub token: Option<String>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
    /// Configuration (for `privacy.k` and the `[sql]` limits when querying a data dir).
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// Runs the query and prints the answer to `out`.
pub fn run(args: &QueryArgs, out: &mut dyn Write) -> anyhow::Result<usize> {
    if let Some(server) = &args.server {
        return remote(args, server, out);
    }
    let dir = args.data_dir.clone().unwrap_or_else(|| PathBuf::from("./data"));
    // A cluster's shared folder holds one folder per partition: all of them are the tables.
    let cluster = dir.join("partitions").is_dir();
    if !dir.join("history").is_dir() && !cluster {
        anyhow::bail!(
            "{} has no history: point --data-dir at a server's data dir or a cluster's shared folder (cluster.dir), or fill one with `throng replay FILE --data-dir DIR`",
            dir.display()
        );
    }
    let cfg = args.config.load()?;
    let history = Arc::new(History::open_read_only(&dir)?);
    let mut engine = SqlEngine::new(history, &dir, cfg.sql.clone(), cfg.privacy.k);
    if cluster {
        engine = engine.with_cluster(dir.clone());
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let answer = rt.block_on(engine.query(&args.sql))?;
    print(&answer, args.format, out)?;
    Ok(answer.rows())
}

fn print(answer: &Answer, f: OutputFormat, out: &mut dyn Write) -> anyhow::Result<()> {
    match f {
        OutputFormat::Table => writeln!(out, "{}", format::table(answer)?)?,
        OutputFormat::Csv => out.write_all(&format::csv(answer)?)?,
        OutputFormat::Json => writeln!(out, "{}", format::json(answer)?)?,
    }
    out.flush()?;
    Ok(())
}

fn remote(args: &QueryArgs, server: &str, out: &mut dyn Write) -> anyhow::Result<usize> {
    let base = server.trim_end_matches('/');
    if !base.starts_with("http://") {
        anyhow::bail!("--server must be an http:// URL such as http://127.0.0.1:8080, got {base:?}");
    }
    let agent = ureq::AgentBuilder::new()
        .timeout(Duration::from_secs(600))
        .build();
    let mut req = agent
        .post(&format!("{base}/api/sql"))
        .set("Accept", "application/vnd.apache.arrow.stream");
    if let Some(t) = &args.token {
        req = req.set("Authorization", &format!("Bearer {t}"));
    }
    let body = serde_json::json!({ "sql": args.sql }).to_string();
    let resp = match req.set("Content-Type", "application/json").send_string(&body) {
        Ok(r) => r,
        Err(ureq::Error::Status(code, r)) => {
            let body = r.into_string().unwrap_or_default();
            let msg = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
                .unwrap_or(body);
            anyhow::bail!("the server answered {code}: {msg}");
        }
        Err(e) => return Err(e).with_context(|| format!("reaching {base}")),
    };
    let reader = arrow::ipc::reader::StreamReader::try_new(resp.into_reader(), None)
        .context("reading the server's Arrow answer")?;
    let schema = reader.schema();
    let batches = reader.collect::<Result<Vec<_>, _>>()?;
    let answer = Answer { schema, batches };
    print(&answer, args.format, out)?;
    Ok(answer.rows())
}
