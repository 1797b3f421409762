//! The PostgreSQL wire protocol on `--pg-listen`: psql, Grafana, DBeaver and psycopg run the
//! same SQL over the same tables as `POST /api/sql`.
//!
//! Login: the password is an analyst's (or admin's) token; the user name is that token's holder
//! name or its role (`psql -U analyst`). With no tokens configured (demo mode) anyone may log in.
//! Every connection gets its own DataFusion session (its own memory pool); statements are checked
//! read-only before they run, and each answer is cut off at `sql.timeout` and `sql.max_rows`.

use std::fmt::Debug;
use std::net::IpAddr;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use datafusion::sql::sqlparser::ast::{Set, Statement};
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use datafusion_postgres::datafusion_pg_catalog::pg_catalog::setup_pg_catalog;
use datafusion_postgres::datafusion_pg_catalog::sql::PostgresCompatibilityParser;
use datafusion_postgres::{DfSessionService, Parser};
use futures_util::{FutureExt, Sink, SinkExt, Stream, StreamExt};
use pgwire::api::auth::{
    finish_authentication, protocol_negotiation, save_startup_parameters_to_metadata,
    DefaultServerParameterProvider, StartupHandler,
};
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler};
use pgwire::api::results::{FieldInfo, Response};
use pgwire::api::stmt::QueryParser;
use pgwire::api::store::PortalStore;
use pgwire::api::Type;
use pgwire::api::{
    ClientInfo, ClientPortalStore, PgWireConnectionState, PgWireServerHandlers, PidSecretKeyGenerator,
    RandomPidSecretKeyGenerator,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;
use pgwire::messages::startup::Authentication;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::sql::{allowed, check_nesting, SqlEngine, SqlError};
use crate::config::{AuthConfig, Config};
use crate::model::Role;
use crate::net::{Activity, Admission, AuthThrottle, Refusal};

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
    /// Marked at each query's start and end (the idle timeout counts from it).
    activity: Arc<Activity>,
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
        check_nesting(query).map_err(sql_error)?;
        let statements = self
            .parser
            .parse(query)
            .map_err(|e| sql_error(SqlError::Syntax(e.to_string())))?;
        statements.iter().try_for_each(check)?;
        self.activity.touch();
        let started = std::time::Instant::now();
        let timeout = self.engine.limits().timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let responses =
            tokio::time::timeout_at(deadline, SimpleQueryHandler::do_query(&self.inner, client, query))
                .await
                .map_err(|_| sql_error(SqlError::Timeout(timeout)))??;
        answered(started);
        self.activity.touch();
        Ok(responses
            .into_iter()
            .map(|r| bound_response(r, deadline, &self.engine))
            .collect())
    }
}

#[async_trait]
impl ExtendedQueryHandler for Guarded {
    type Statement = <DfSessionService as ExtendedQueryHandler>::Statement;
    type QueryParser = Bounded;

    fn query_parser(&self) -> Arc<Self::QueryParser> {
        Arc::new(Bounded(self.inner.query_parser()))
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
        self.activity.touch();
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
        self.activity.touch();
        Ok(bound_response(response, deadline, &self.engine))
    }
}

/// DataFusion's parser for the extended protocol (Parse messages), behind the nesting bound the
/// simple protocol and HTTP have, so no client can make the parser backtrack for minutes.
struct Bounded(Arc<Parser>);

#[async_trait]
impl QueryParser for Bounded {
    type Statement = <Parser as QueryParser>::Statement;

    async fn parse_sql<C>(
        &self,
        client: &C,
        sql: &str,
        types: &[Option<Type>],
    ) -> PgWireResult<Option<Self::Statement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        check_nesting(sql).map_err(sql_error)?;
        self.0.parse_sql(client, sql, types).await
    }

    fn get_parameter_types(&self, stmt: &Self::Statement) -> PgWireResult<Vec<Type>> {
        self.0.get_parameter_types(stmt)
    }

    fn get_result_schema(
        &self,
        stmt: &Self::Statement,
        column_format: Option<&Format>,
    ) -> PgWireResult<Vec<FieldInfo>> {
        self.0.get_result_schema(stmt, column_format)
    }
}

/// Cleartext-password login against the analyst and admin tokens (constant-time comparison).
struct TokenLogin {
    auth: Arc<AuthConfig>,
    params: DefaultServerParameterProvider,
    peer: IpAddr,
    throttle: Arc<AuthThrottle>,
    logged_in: Arc<AtomicBool>,
    activity: Arc<Activity>,
}

impl TokenLogin {
    fn new(guards: &Guards, peer: IpAddr, activity: Arc<Activity>) -> TokenLogin {
        let mut params = DefaultServerParameterProvider::default();
        params.default_transaction_read_only = true;
        params.is_superuser = false;
        TokenLogin {
            auth: guards.auth.clone(),
            params,
            peer,
            throttle: guards.throttle.clone(),
            logged_in: Arc::new(AtomicBool::new(false)),
            activity,
        }
    }

    fn logged_in(&self) {
        self.logged_in.store(true, Ordering::Relaxed);
        self.activity.touch();
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
                    self.logged_in();
                } else if let Some(wait) = self.throttle.wait(self.peer) {
                    return Err(user_error(
                        "FATAL",
                        "28000",
                        format!(
                            "too many failed logins from {} in a minute (limits.auth_failures_per_minute): wait {} s",
                            self.peer,
                            wait.as_secs().max(1)
                        ),
                    ));
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
                        self.logged_in();
                    }
                    Err(reason) => {
                        self.throttle.failed(self.peer);
                        tracing::warn!(user, peer = %self.peer, %reason, "PostgreSQL-wire login refused.");
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

fn handlers(engine: &SqlEngine, login: TokenLogin) -> anyhow::Result<Handlers> {
    let ctx = engine.context()?;
    setup_pg_catalog(&ctx, "datafusion", EmptyContextProvider)
        .map_err(|e| anyhow::anyhow!("setting up pg_catalog: {e}"))?;
    Ok(Handlers {
        query: Arc::new(Guarded {
            inner: DfSessionService::new(Arc::new(ctx)),
            engine: engine.clone(),
            parser: PostgresCompatibilityParser::new(),
            activity: login.activity.clone(),
        }),
        login: Arc::new(login),
    })
}

/// What guards the PostgreSQL port: the tokens, the failed-login throttle (shared with HTTP),
/// the connection caps, the login and idle timeouts (`[limits]`).
pub struct Guards {
    auth: Arc<AuthConfig>,
    throttle: Arc<AuthThrottle>,
    admission: Arc<Admission>,
    login_timeout: Duration,
    idle_timeout: Duration,
}

impl Guards {
    /// From the config; the idle timeout never cuts a query that `sql.timeout` still allows.
    pub fn new(cfg: &Config, throttle: Arc<AuthThrottle>) -> Guards {
        let l = &cfg.limits;
        Guards {
            auth: Arc::new(cfg.auth.clone()),
            throttle,
            admission: Admission::new("pgwire", l.max_connections, l.connections_per_address),
            login_timeout: l.header_timeout,
            idle_timeout: l.idle_timeout.max(cfg.sql.timeout + Duration::from_secs(5)),
        }
    }
}

/// A FATAL ErrorResponse (SQLSTATE 53300 too_many_connections) for a client not let in, as a
/// PostgreSQL server sends one when it is full.
fn refusal_message(r: &Refusal) -> Vec<u8> {
    let mut fields = Vec::new();
    for (tag, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', "53300"),
        (b'M', &r.to_string()),
    ] {
        fields.push(tag);
        fields.extend_from_slice(value.as_bytes());
        fields.push(0);
    }
    fields.push(0);
    let mut out = vec![b'E'];
    out.extend_from_slice(&((fields.len() + 4) as u32).to_be_bytes());
    out.extend_from_slice(&fields);
    out
}

/// Accepts PostgreSQL connections on `listener` until `stop`, each in its own task on `tracker`;
/// with `tls`, clients that ask for SSL get it (psql's `sslmode=require`).
pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    engine: SqlEngine,
    guards: Guards,
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
        let slot = match guards.admission.admit(peer.ip()) {
            Ok(s) => s,
            Err(refusal) => {
                let mut socket = socket;
                let msg = refusal_message(&refusal);
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(Duration::from_secs(1), async {
                        socket.write_all(&msg).await?;
                        socket.shutdown().await
                    })
                    .await;
                });
                continue;
            }
        };
        let activity = Activity::new();
        let login = TokenLogin::new(&guards, peer.ip(), activity.clone());
        let logged_in = login.logged_in.clone();
        let h = match handlers(&engine, login) {
            Ok(h) => h,
            Err(e) => {
                tracing::error!(error = %e, "Could not set up a SQL session.");
                continue;
            }
        };
        let stop = stop.clone();
        let tls = tls.clone();
        let admission = guards.admission.clone();
        let (login_timeout, idle_timeout) = (guards.login_timeout, guards.idle_timeout);
        tracker.spawn(async move {
            let _slot = slot;
            let started = tokio::time::Instant::now();
            let mut ticks = tokio::time::interval(Duration::from_millis(250).max(login_timeout / 8));
            // pgwire 0.41's decoder panics on some malformed Parse/Bind frames (out-of-bounds
            // slicing; found by tests/it/fuzz.rs): such a client loses its connection, no one else.
            let served = AssertUnwindSafe(pgwire::tokio::process_socket(socket, tls, h)).catch_unwind();
            tokio::pin!(served);
            loop {
                tokio::select! {
                    r = &mut served => {
                        match r {
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => tracing::debug!(%peer, error = %e, "PostgreSQL-wire connection ended with an error."),
                            Err(_) => admission.closed("malformed", "a PostgreSQL client sent a frame the wire decoder could not read"),
                        }
                        return;
                    }
                    _ = stop.cancelled() => return,
                    _ = ticks.tick() => {
                        if !logged_in.load(Ordering::Relaxed) {
                            if started.elapsed() >= login_timeout {
                                admission.closed("login_timeout", "a PostgreSQL client did not log in within limits.header_timeout");
                                return;
                            }
                        } else if activity.idle() >= idle_timeout {
                            admission.closed("idle_timeout", "a PostgreSQL session ran no query for limits.idle_timeout");
                            return;
                        }
                    }
                }
            }
        });
    }
}
