//! The PostgreSQL wire protocol on `--pg-listen`: psql, Grafana, DBeaver and psycopg run the
//! same SQL over the same tables as `POST /api/sql`.
//!
//! Login: the password is an analyst's (or admin's) token; the user name is that token's holder
//! name or its role (`psql -U analyst`). With no tokens configured (demo mode) anyone may log in.
//! Every connection gets its own DataFusion session (its own memory pool); statements are checked
//! read-only before they run, and each answer is cut off at `sql.timeout` and `sql.max_rows`.

use std::fmt::Debug;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::sql::sqlparser::ast::{Set, Statement};
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::setup_pg_catalog;
use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use datafusion_postgres::{DfSessionService, Parser};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use pgwire::api::auth::{
    finish_authentication, protocol_negotiation, save_startup_parameters_to_metadata,
    DefaultServerParameterProvider, StartupHandler,
};
use pgwire::api::portal::Portal;
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::Response;
use pgwire::api::store::PortalStore;
use pgwire::api::{
    ClientInfo, ClientPortalStore, PgWireConnectionState, PgWireServerHandlers, PidSecretKeyGenerator,
    RandomPidSecretKeyGenerator,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;
use pgwire::messages::startup::Authentication;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::sql::{allowed, SqlEngine, SqlError};
use crate::config::AuthConfig;
use crate::model::Role;

fn user_error(severity: &str, code: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        severity.to_owned(),
        code.to_owned(),
        message.into(),
    )))
}

fn sql_error(e: SqlError) -> PgWireError {
    let code = match e {
        SqlError::Refused(_) => "25006", // read_only_sql_transaction
        SqlError::Syntax(_) => "42601",
        SqlError::Timeout(_) => "57014",     // query_canceled
        SqlError::Memory(..) => "53200",     // out_of_memory
        SqlError::TooManyRows(_) => "54000", // program_limit_exceeded
        SqlError::Query(_) => "XX000",
    };
    user_error("ERROR", code, e.to_string())
}

/// Session statements the wire's own hooks answer (client setup, transactions, cursors).
fn session_statement(s: &Statement) -> Result<bool, SqlError> {
    Ok(match s {
        Statement::Set(set) => {
            // DataFusion's own settings (memory, parallelism) are the server's to choose.
            if let Set::SingleAssignment { variable, .. } = set {
                if variable.to_string().to_lowercase().starts_with("datafusion.") {
                    return Err(SqlError::Refused("`SET datafusion.…`".into()));
                }
            }
            true
        }
        Statement::ShowVariable { .. }
        | Statement::ShowStatus { .. }
        | Statement::ShowCatalogs { .. }
        | Statement::StartTransaction { .. }
        | Statement::Commit { .. }
        | Statement::Rollback { .. }
        | Statement::Declare { .. }
        | Statement::Fetch { .. }
        | Statement::Close { .. } => true,
        _ => false,
    })
}

fn check(s: &Statement) -> PgWireResult<()> {
    if session_statement(s).map_err(sql_error)? {
        return Ok(());
    }
    allowed(s).map_err(sql_error)
}

/// Ends a row stream with an error at the deadline or past the row limit.
fn bounded(
    rows: impl Stream<Item = PgWireResult<DataRow>> + Send + Unpin + 'static,
    deadline: tokio::time::Instant,
    timeout: Duration,
    max_rows: usize,
) -> impl Stream<Item = PgWireResult<DataRow>> + Send + 'static {
    let sleep = Box::pin(tokio::time::sleep_until(deadline));
    futures_util::stream::unfold(
        (rows, sleep, 0usize, false),
        move |(mut rows, mut sleep, n, done)| async move {
            if done {
                return None;
            }
            tokio::select! {
                item = rows.next() => match item {
                    None => None,
                    Some(Ok(_)) if n + 1 > max_rows => {
                        Some((Err(sql_error(SqlError::TooManyRows(max_rows))), (rows, sleep, n, true)))
                    }
                    Some(Ok(r)) => Some((Ok(r), (rows, sleep, n + 1, false))),
                    Some(Err(e)) => Some((Err(e), (rows, sleep, n, true))),
                },
                _ = &mut sleep => Some((Err(sql_error(SqlError::Timeout(timeout))), (rows, sleep, n, true))),
            }
        },
    )
}

fn bound_response(r: Response, deadline: tokio::time::Instant, engine: &SqlEngine) -> Response {
    match r {
        Response::Query(mut q) => {
            let rows = std::mem::replace(&mut q.data_rows, Box::pin(futures_util::stream::empty()));
            let limits = engine.limits();
            q.data_rows = Box::pin(bounded(rows, deadline, limits.timeout, limits.max_rows));
            Response::Query(q)
        }
        other => other,
    }
}

/// One connection's query handlers: the read-only check and limits around DataFusion's service.
/// Counts a query answered over the wire (its rows stream after this).
fn answered(started: std::time::Instant) {
    metrics::counter!("throng_sql_queries_total").increment(1);
    metrics::histogram!("throng_sql_query_duration_seconds", "interface" => "pgwire")
        .record(started.elapsed().as_secs_f64());
}

struct Guarded {
    inner: DfSessionService,
    engine: SqlEngine,
    parser: PostgresCompatibilityParser,
}

#[async_trait]
impl SimpleQueryHandler for Guarded {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let statements = self
            .parser
            .parse(query)
            .map_err(|e| sql_error(SqlError::Syntax(e.to_string())))?;
        statements.iter().try_for_each(check)?;
        let started = std::time::Instant::now();
        let timeout = self.engine.limits().timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let responses =
            tokio::time::timeout_at(deadline, SimpleQueryHandler::do_query(&self.inner, client, query))
                .await
                .map_err(|_| sql_error(SqlError::Timeout(timeout)))??;
        answered(started);
        Ok(responses
            .into_iter()
            .map(|r| bound_response(r, deadline, &self.engine))
            .collect())
    }
}

#[async_trait]
impl ExtendedQueryHandler for Guarded {
    type Statement = <DfSessionService as ExtendedQueryHandler>::Statement;
    type QueryParser = Parser;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        self.inner.query_parser()
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<Self::Statement>,
        max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if let (_, Some((statement, _))) = &portal.statement.statement {
            check(statement)?;
        }
        let started = std::time::Instant::now();
        let timeout = self.engine.limits().timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let response = tokio::time::timeout_at(
            deadline,
            ExtendedQueryHandler::do_query(&self.inner, client, portal, max_rows),
        )
        .await
        .map_err(|_| sql_error(SqlError::Timeout(timeout)))??;
        answered(started);
        Ok(bound_response(response, deadline, &self.engine))
    }
}

/// Cleartext-password login against the analyst and admin tokens (constant-time comparison).
struct TokenLogin {
    auth: Arc<AuthConfig>,
    params: DefaultServerParameterProvider,
}

impl TokenLogin {
    fn new(auth: Arc<AuthConfig>) -> TokenLogin {
        let mut params = DefaultServerParameterProvider::default();
        params.default_transaction_read_only = true;
        params.is_superuser = false;
        TokenLogin { auth, params }
    }

    fn verify(&self, user: &str, password: &str) -> Result<(), String> {
        let holder = self.auth.resolve(password).ok_or_else(|| {
            format!("password authentication failed for user \"{user}\": the password is an analyst token")
        })?;
        if user != holder.name && user != holder.role.as_str() {
            return Err(format!(
                "password authentication failed for user \"{user}\": log in as the token's holder (\"{}\") or its role",
                holder.name
            ));
        }
        if !matches!(holder.role, Role::Analyst | Role::Admin) {
            return Err(format!(
                "role `{}` may not query history (needs one of: analyst, admin)",
                holder.role
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl StartupHandler for TokenLogin {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                if self.auth.tokens.is_empty() {
                    let (pid, key) = RandomPidSecretKeyGenerator::default().generate(client);
                    client.set_pid_and_secret_key(pid, key);
                    finish_authentication(client, &self.params).await?;
                } else {
                    client.set_state(PgWireConnectionState::AuthenticationInProgress);
                    client
                        .send(PgWireBackendMessage::Authentication(
                            Authentication::CleartextPassword,
                        ))
                        .await?;
                }
            }
            PgWireFrontendMessage::PasswordMessageFamily(pwd) => {
                let pwd = pwd.into_password()?;
                let user = client.metadata().get("user").cloned().unwrap_or_default();
                match self.verify(&user, &pwd.password) {
                    Ok(()) => {
                        tracing::info!(user, "PostgreSQL-wire login.");
                        let (pid, key) = RandomPidSecretKeyGenerator::default().generate(client);
                        client.set_pid_and_secret_key(pid, key);
                        finish_authentication(client, &self.params).await?;
                    }
                    Err(reason) => {
                        tracing::warn!(user, %reason, "PostgreSQL-wire login refused.");
                        return Err(user_error("FATAL", "28P01", reason));
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

struct Handlers {
    query: Arc<Guarded>,
    login: Arc<TokenLogin>,
}

impl PgWireServerHandlers for Handlers {
    fn simple_query_handler(&self) -> Arc<impl SimpleQueryHandler> {
        self.query.clone()
    }

    fn extended_query_handler(&self) -> Arc<impl ExtendedQueryHandler> {
        self.query.clone()
    }

    fn startup_handler(&self) -> Arc<impl StartupHandler> {
        self.login.clone()
    }
}

fn handlers(engine: &SqlEngine, auth: &Arc<AuthConfig>) -> anyhow::Result<Handlers> {
    let ctx = engine.context()?;
    setup_pg_catalog(&ctx, "datafusion", EmptyContextProvider)
        .map_err(|e| anyhow::anyhow!("setting up pg_catalog: {e}"))?;
    Ok(Handlers {
        query: Arc::new(Guarded {
            inner: DfSessionService::new(Arc::new(ctx)),
            engine: engine.clone(),
            parser: PostgresCompatibilityParser::new(),
        }),
        login: Arc::new(TokenLogin::new(auth.clone())),
    })
}

/// Accepts PostgreSQL connections on `listener` until `stop`, each in its own task on `tracker`;
/// with `tls`, clients that ask for SSL get it (psql's `sslmode=require`).
pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    engine: SqlEngine,
    auth: Arc<AuthConfig>,
    stop: CancellationToken,
    tracker: TaskTracker,
) {
    loop {
        let (socket, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "PostgreSQL-wire accept failed.");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let h = match handlers(&engine, &auth) {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "Could not set up a SQL session.");
                continue;
            }
        };
        let stop = stop.clone();
        let tls = tls.clone();
        tracker.spawn(async move {
            tokio::select! {
                r = pgwire::tokio::process_socket(socket, tls, h) => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "PostgreSQL-wire connection ended with an error.");
                    }
                }
                _ = stop.cancelled() => {}
            }
        });
    }
}
