//! The PostgreSQL collector: one server per collector, with
//! postgres_exporter's metric and label names (`pg_up`, `pg_stat_database_*`,
//! `pg_settings_*`, `pg_database_size_bytes`, `pg_locks_count`,
//! `pg_stat_activity_count`), Herd's `pg_replication_lag_seconds` (the name
//! the seed's rules use), and the top statements of `pg_stat_statements`
//! when the extension is installed in the database the DSN names.
//!
//! One connection is kept between cycles and dropped on any error or timeout,
//! so the next cycle reconnects by itself. A cycle's queries go to the
//! server as one simple-query message (one round trip), built once, and the
//! rows are pushed as they are, borrowed, without copies per sample. Every cycle runs under the
//! instance's own timeout, below the scheduler's, so a down, slow or
//! misconfigured server is reported as `pg_up 0` instead of going silent.
//! Samples are pushed only once a cycle has fully succeeded, never half.
//!
//! TLS follows libpq's `sslmode`: `disable`; `prefer` (the default: TLS
//! when the server offers it, unverified); `require` (TLS, the chain
//! verified only when a `tls.ca_file` is set); `verify-full` (chain and host
//! name). A client certificate is presented when `tls` names one.
//!
//! Must not: log or label anything from the DSN but host and port (the
//! `server` label), keep a password in memory beyond one connection attempt
//! when it comes from a file or a variable, or run anything but read-only
//! queries.

use std::time::Duration;

use async_trait::async_trait;
use herd_common::config::agent::{DsnSource, PasswordSource, PostgresConfig, SslMode};
use herd_common::config::client_tls::ClientTls;
use tokio::sync::Mutex;
use tokio_postgres::config::Host;
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage, SimpleQueryRow, Socket};

use super::tls::{PostgresTls, Verify};

use super::{Batch, CollectError, Collector};

/// A `[[collect.postgres]]` entry that cannot be used as written.
#[derive(Debug, thiserror::Error)]
pub enum PostgresSettingsError {
    #[error("collect.postgres[{index}].dsn: {detail} (expected \"postgres://user@host:port/db\")")]
    Dsn { index: usize, detail: String },
    #[error("collect.postgres[{index}].dsn_file: cannot read {path}: {source} (is it readable by the herd user?)")]
    DsnFile {
        index: usize,
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// postgres_exporter's lock modes, lower-cased: every database gets a
/// `pg_locks_count` series for each, zero when no lock is held.
const LOCK_MODES_SQL: &str = "('accesssharelock'), ('rowsharelock'), ('rowexclusivelock'), \
    ('shareupdateexclusivelock'), ('sharelock'), ('sharerowexclusivelock'), ('exclusivelock'), \
    ('accessexclusivelock'), ('sireadlock')";

/// postgres_exporter's connection states; every database gets each.
const ACTIVITY_STATES_SQL: &str = "('active'), ('idle'), ('idle in transaction'), \
    ('idle in transaction (aborted)'), ('fastpath function call'), ('disabled')";

/// The `pg_stat_database` columns exported, with postgres_exporter's names
/// (counters keep the column name, without `_total`, as it does).
const STAT_DATABASE_COLUMNS: [&str; 17] = [
    "numbackends",
    "xact_commit",
    "xact_rollback",
    "blks_read",
    "blks_hit",
    "tup_returned",
    "tup_fetched",
    "tup_inserted",
    "tup_updated",
    "tup_deleted",
    "conflicts",
    "temp_files",
    "temp_bytes",
    "deadlocks",
    "blk_read_time",
    "blk_write_time",
    "stats_reset",
];

/// `pg_stat_database_` and each column, the series names.
const STAT_DATABASE_NAMES: [&str; 17] = [
    "pg_stat_database_numbackends",
    "pg_stat_database_xact_commit",
    "pg_stat_database_xact_rollback",
    "pg_stat_database_blks_read",
    "pg_stat_database_blks_hit",
    "pg_stat_database_tup_returned",
    "pg_stat_database_tup_fetched",
    "pg_stat_database_tup_inserted",
    "pg_stat_database_tup_updated",
    "pg_stat_database_tup_deleted",
    "pg_stat_database_conflicts",
    "pg_stat_database_temp_files",
    "pg_stat_database_temp_bytes",
    "pg_stat_database_deadlocks",
    "pg_stat_database_blk_read_time",
    "pg_stat_database_blk_write_time",
    "pg_stat_database_stats_reset",
];

pub struct PostgresCollector {
    /// `herd_collector_success{collector=...}`: "postgres:" and the server.
    collector_name: String,
    /// `server` label: the configured name, or the DSN's host:port.
    server: String,
    dsn: DsnSource,
    password: PasswordSource,
    timeout: Duration,
    statements_limit: usize,
    statement_text_max_chars: usize,
    sslmode: Option<SslMode>,
    tls: ClientTls,
    interval: Duration,
    client: Mutex<Option<Connected>>,
    /// The cycle's queries, without and with `pg_stat_statements`'.
    cycle_sql: String,
    cycle_sql_with_statements: String,
}

impl PostgresCollector {
    /// `index` is the entry's position in `[[collect.postgres]]`, for errors.
    pub fn from_config(index: usize, config: &PostgresConfig) -> Result<Self, PostgresSettingsError> {
        let server = match &config.name {
            Some(name) => name.clone(),
            None => {
                let text = match &config.dsn {
                    DsnSource::Inline(dsn) => dsn.expose().to_owned(),
                    DsnSource::File(path) => std::fs::read_to_string(path).map_err(|source| {
                        PostgresSettingsError::DsnFile { index, path: path.display().to_string(), source }
                    })?,
                };
                let parsed = parse_dsn(&text).map_err(|detail| PostgresSettingsError::Dsn { index, detail })?;
                host_port(&parsed)
            }
        };
        if let DsnSource::Inline(dsn) = &config.dsn {
            parse_dsn(dsn.expose()).map_err(|detail| PostgresSettingsError::Dsn { index, detail })?;
        }
        let slow_statement_threshold_ms = config.slow_statement_threshold.as_secs_f64() * 1000.0;
        let (cycle_sql, cycle_sql_with_statements) = cycle_sql(config.statements_limit, slow_statement_threshold_ms);
        Ok(Self {
            collector_name: format!("postgres:{server}"),
            server,
            dsn: config.dsn.clone(),
            password: config.password.clone(),
            timeout: config.timeout,
            statements_limit: config.statements_limit,
            statement_text_max_chars: config.statement_text_max_chars,
            sslmode: config.sslmode,
            tls: config.tls.clone(),
            interval: config.interval,
            client: Mutex::new(None),
            cycle_sql,
            cycle_sql_with_statements,
        })
    }

    fn error(&self, detail: impl Into<String>) -> CollectError {
        CollectError::Server { server: self.server.clone(), detail: detail.into() }
    }

    async fn connect(&self) -> Result<Client, CollectError> {
        let text = match &self.dsn {
            DsnSource::Inline(dsn) => dsn.expose().to_owned(),
            DsnSource::File(path) => std::fs::read_to_string(path)
                .map_err(|err| self.error(format!("cannot read dsn_file {}: {err}", path.display())))?,
        };
        let mut config = parse_dsn(&text).map_err(|detail| self.error(format!("invalid DSN: {detail}")))?;
        match &self.password {
            PasswordSource::None => {}
            PasswordSource::Inline(secret) => {
                config.password(secret.expose());
            }
            PasswordSource::File(path) => {
                let password = std::fs::read_to_string(path)
                    .map_err(|err| self.error(format!("cannot read password_file {}: {err}", path.display())))?;
                config.password(password.trim_end_matches(['\n', '\r']));
            }
            PasswordSource::Env(var) => {
                let password =
                    std::env::var(var).map_err(|_| self.error(format!("password_env: variable {var} is not set")))?;
                config.password(password);
            }
        }
        config.connect_timeout(self.timeout);
        config.application_name("herd-agent");
        use tokio_postgres::config::SslMode as Wire;
        let mode = self.sslmode.unwrap_or(match config.get_ssl_mode() {
            Wire::Disable => SslMode::Disable,
            Wire::Require => SslMode::Require,
            _ => SslMode::Prefer,
        });
        let verify = match mode {
            SslMode::Disable => {
                config.ssl_mode(Wire::Disable);
                return self.connect_with(&config, NoTls).await;
            }
            SslMode::Prefer => Verify::Nothing,
            SslMode::Require if self.tls.ca_file.is_some() => Verify::ChainOnly,
            SslMode::Require => Verify::Nothing,
            SslMode::VerifyFull => Verify::Full,
        };
        config.ssl_mode(if mode == SslMode::Prefer { Wire::Prefer } else { Wire::Require });
        let tls = PostgresTls::new(&self.tls, verify).map_err(|err| self.error(err))?;
        self.connect_with(&config, tls).await
    }

    async fn connect_with<T>(&self, config: &tokio_postgres::Config, tls: T) -> Result<Client, CollectError>
    where
        T: MakeTlsConnect<Socket> + Send,
        T::Stream: Send + 'static,
        T::TlsConnect: Send,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        let (client, connection) = config.connect(tls).await.map_err(|err| self.error(describe(&err)))?;
        // The connection task ends when the client is dropped or the server goes away.
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// Connects if needed and runs every query, in one round trip.
    async fn scrape(&self) -> Result<Cycle, CollectError> {
        let mut slot = self.client.lock().await;
        if slot.as_ref().is_none_or(|c| c.client.is_closed()) {
            let client = self.connect().await?;
            let statements = self.statements_limit > 0 && self.statements_installed(&client).await?;
            *slot = Some(Connected { client, statements });
        }
        let connected = slot.as_mut().expect("set just above");
        let result = self.query_all(connected).await;
        if result.is_err() {
            // A broken or confused connection is not reused: the next cycle starts afresh.
            *slot = None;
        }
        result
    }

    async fn statements_installed(&self, client: &Client) -> Result<bool, CollectError> {
        let messages = client.simple_query(EXTENSION_SQL).await.map_err(|err| self.error(describe(&err)))?;
        Ok(messages.iter().any(|m| matches!(m, SimpleQueryMessage::Row(_))))
    }

    /// Every query of the cycle in one simple-query message: one round trip.
    async fn query_all(&self, connected: &mut Connected) -> Result<Cycle, CollectError> {
        let statements = connected.statements;
        let sql = if statements { &self.cycle_sql_with_statements } else { &self.cycle_sql };
        let messages = connected.client.simple_query(sql).await.map_err(|err| self.error(describe(&err)))?;
        let mut sets: Vec<Vec<SimpleQueryRow>> = Vec::with_capacity(10);
        let mut rows = Vec::new();
        for message in messages {
            match message {
                SimpleQueryMessage::Row(row) => rows.push(row),
                SimpleQueryMessage::CommandComplete(_) => sets.push(std::mem::take(&mut rows)),
                _ => {}
            }
        }
        let expected = if statements { 10 } else { 8 };
        if sets.len() != expected {
            return Err(self.error(format!("{} result sets for {expected} queries", sets.len())));
        }
        if sets[RECOVERY].is_empty() {
            return Err(self.error("pg_is_in_recovery() returned no row"));
        }
        // Seen installed (or removed) now: the next cycle's query follows.
        connected.statements = self.statements_limit > 0 && !sets[EXTENSION].is_empty();
        Ok(Cycle { sets, statements })
    }

    /// The cycle's samples, each with the `server` label first.
    fn push_cycle(&self, cycle: &Cycle, server: (&str, &str), out: &mut Batch) {
        let sets = &cycle.sets;
        for row in &sets[STAT_DATABASE] {
            let labels = [server, ("datid", text(row, 0)), ("datname", text(row, 1))];
            for (i, name) in STAT_DATABASE_NAMES.iter().enumerate() {
                if let Some(value) = number(row, i + 2) {
                    out.push(name, &labels, value);
                }
            }
        }
        let mut metric = String::new();
        for row in &sets[SETTINGS] {
            if let Some(value) = setting_sample(text(row, 0), text(row, 1), text(row, 2), text(row, 3), &mut metric) {
                out.push(&metric, &[server], value);
            }
        }
        for row in &sets[SIZES] {
            if let Some(size) = number(row, 1) {
                out.push("pg_database_size_bytes", &[server, ("datname", text(row, 0))], size);
            }
        }
        for row in &sets[LOCKS] {
            if let Some(count) = number(row, 2) {
                out.push("pg_locks_count", &[server, ("datname", text(row, 0)), ("mode", text(row, 1))], count);
            }
        }
        for row in &sets[ACTIVITY] {
            let labels = [server, ("datname", text(row, 0)), ("state", text(row, 1))];
            if let Some(count) = number(row, 2) {
                out.push("pg_stat_activity_count", &labels, count);
            }
            if let Some(seconds) = number(row, 3) {
                out.push("pg_stat_activity_max_tx_duration", &labels, seconds);
            }
        }
        // On a standby, the time since the last replayed transaction (0 when
        // replay has caught up with what was received, so an idle primary does
        // not look like lag); on a primary, 0, plus one series per replica.
        let recovery = sets[RECOVERY].first().expect("checked by query_all");
        let standby = text(recovery, 0) == "t";
        out.push("pg_replication_is_replica", &[server], if standby { 1.0 } else { 0.0 });
        out.push("pg_replication_lag_seconds", &[server], number(recovery, 1).unwrap_or(0.0));
        if !standby {
            for row in &sets[REPLICAS] {
                let labels = [
                    server,
                    ("application_name", text(row, 0)),
                    ("client_addr", text(row, 1)),
                    ("state", text(row, 2)),
                ];
                if let Some(seconds) = number(row, 3) {
                    out.push("pg_stat_replication_replay_lag_seconds", &labels, seconds);
                }
                if let Some(bytes) = number(row, 4) {
                    out.push("pg_stat_replication_pg_wal_lsn_diff", &labels, bytes);
                }
            }
        }
        if cycle.statements {
            // The top statements by total execution time, and how many have a mean above the threshold.
            for row in &sets[TOP_STATEMENTS] {
                let query = shorten_statement(text(row, 3), self.statement_text_max_chars);
                let labels = [
                    server,
                    ("datname", text(row, 1)),
                    ("user", text(row, 2)),
                    ("queryid", text(row, 0)),
                    ("query", query.as_str()),
                ];
                let values = [
                    ("pg_stat_statements_calls_total", number(row, 4)),
                    ("pg_stat_statements_seconds_total", number(row, 5).map(|ms| ms / 1000.0)),
                    ("pg_stat_statements_mean_exec_time_ms", number(row, 6)),
                    ("pg_stat_statements_max_exec_time_ms", number(row, 7)),
                    ("pg_stat_statements_rows_total", number(row, 8)),
                ];
                for (name, value) in values {
                    if let Some(value) = value {
                        out.push(name, &labels, value);
                    }
                }
            }
            if let Some(count) = sets[SLOW_STATEMENTS].first().and_then(|row| number(row, 0)) {
                out.push("pg_stat_statements_slow_statements", &[server], count);
            }
        }
    }
}

/// One cycle's result sets, in `cycle_sql`'s order (the indexes below).
struct Cycle {
    sets: Vec<Vec<SimpleQueryRow>>,
    /// Whether the `pg_stat_statements` queries were part of it.
    statements: bool,
}

const STAT_DATABASE: usize = 0;
const SETTINGS: usize = 1;
const SIZES: usize = 2;
const LOCKS: usize = 3;
const ACTIVITY: usize = 4;
const RECOVERY: usize = 5;
const REPLICAS: usize = 6;
const EXTENSION: usize = 7;
const TOP_STATEMENTS: usize = 8;
const SLOW_STATEMENTS: usize = 9;

/// The server's connection, and whether `pg_stat_statements` is in its database.
struct Connected {
    client: Client,
    statements: bool,
}

const EXTENSION_SQL: &str = "SELECT 1 FROM pg_extension WHERE extname = 'pg_stat_statements'";

/// The cycle's queries, `;`-separated, in the order `query_all` reads them.
fn cycle_sql(statements_limit: usize, slow_statement_threshold_ms: f64) -> (String, String) {
    let stat_database = format!(
        // datid 0 (shared catalogs, no datname) is kept, as postgres_exporter does.
        "SELECT datid, COALESCE(datname, ''), {} FROM pg_stat_database",
        STAT_DATABASE_COLUMNS
            .iter()
            .map(|column| {
                if *column == "stats_reset" {
                    "COALESCE(EXTRACT(EPOCH FROM stats_reset), 0)".to_owned()
                } else {
                    (*column).to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    );
    let settings = "SELECT name, setting, COALESCE(unit, ''), vartype FROM pg_settings \
                    WHERE vartype IN ('bool', 'integer', 'real') AND name != 'sync_commit_cancel_wait'";
    let sizes = "SELECT datname, pg_database_size(oid) FROM pg_database \
                 WHERE has_database_privilege(oid, 'CONNECT')";
    let locks = format!(
        "SELECT pg_database.datname, tmp.mode, COALESCE(count, 0) FROM (VALUES {LOCK_MODES_SQL}) AS tmp(mode) \
         CROSS JOIN pg_database LEFT JOIN (SELECT database, lower(mode) AS mode, count(*) AS count \
         FROM pg_locks WHERE database IS NOT NULL GROUP BY database, lower(mode)) AS tmp2 \
         ON tmp.mode = tmp2.mode AND pg_database.oid = tmp2.database"
    );
    let activity = format!(
        "SELECT pg_database.datname, tmp.state, COALESCE(count, 0), COALESCE(max_tx_duration, 0) \
         FROM (VALUES {ACTIVITY_STATES_SQL}) AS tmp(state) CROSS JOIN pg_database LEFT JOIN \
         (SELECT datname, state, count(*) AS count, \
         MAX(EXTRACT(EPOCH FROM now() - xact_start))::float8 AS max_tx_duration \
         FROM pg_stat_activity GROUP BY datname, state) AS tmp2 \
         ON tmp.state = tmp2.state AND pg_database.datname = tmp2.datname"
    );
    let recovery = "SELECT pg_is_in_recovery(), CASE WHEN NOT pg_is_in_recovery() THEN 0 \
                    WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 \
                    ELSE GREATEST(0, EXTRACT(EPOCH FROM (now() - pg_last_xact_replay_timestamp()))) END";
    // On a standby (a cascading one has rows here) the WAL position is not asked for: it is an error there.
    let replicas = "SELECT COALESCE(application_name, ''), COALESCE(client_addr::text, ''), COALESCE(state, ''), \
                    COALESCE(EXTRACT(EPOCH FROM replay_lag), 0), CASE WHEN pg_is_in_recovery() THEN NULL \
                    ELSE COALESCE(pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn), 0) END FROM pg_stat_replication";
    let base =
        [stat_database.as_str(), settings, sizes, &locks, &activity, recovery, replicas, EXTENSION_SQL].join("; ");
    // The top statements by total execution time, and how many have a mean above the slow threshold.
    let top = format!(
        "SELECT COALESCE(s.queryid::text, ''), COALESCE(d.datname, ''), COALESCE(r.rolname, ''), \
         COALESCE(s.query, ''), s.calls, s.total_exec_time, s.mean_exec_time, s.max_exec_time, s.rows \
         FROM pg_stat_statements s LEFT JOIN pg_database d ON d.oid = s.dbid \
         LEFT JOIN pg_roles r ON r.oid = s.userid ORDER BY s.total_exec_time DESC LIMIT {statements_limit}"
    );
    let slow = format!("SELECT count(*) FROM pg_stat_statements WHERE mean_exec_time > {slow_statement_threshold_ms}");
    let with_statements = format!("{base}; {top}; {slow}");
    (base, with_statements)
}

#[async_trait]
impl Collector for PostgresCollector {
    fn name(&self) -> &str {
        &self.collector_name
    }

    fn job(&self) -> &str {
        "postgres"
    }

    fn interval(&self) -> Option<Duration> {
        Some(self.interval)
    }

    async fn collect(&self, out: &mut Batch) -> Result<(), CollectError> {
        let result = match tokio::time::timeout(self.timeout, self.scrape()).await {
            Ok(result) => result,
            Err(_) => {
                // The half-done cycle's connection may be stuck mid-query: drop it.
                *self.client.lock().await = None;
                Err(self.error(format!("no answer within {} ms", self.timeout.as_millis())))
            }
        };
        let server = ("server", self.server.as_str());
        // Samples only from a cycle that fully succeeded, never half of one.
        match result {
            Ok(cycle) => {
                out.push("pg_up", &[server], 1.0);
                self.push_cycle(&cycle, server, out);
                Ok(())
            }
            Err(err) => {
                out.push("pg_up", &[server], 0.0);
                Err(err)
            }
        }
    }
}

/// tokio-postgres's `Display` says only "db error" or "error connecting to
/// server"; the cause is what an operator needs ("password authentication
/// failed for user ...", "Connection refused"). Neither holds the password.
fn describe(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        return format!("{}: {} (SQLSTATE {})", db.severity(), db.message(), db.code().code());
    }
    let mut text = err.to_string();
    let mut source = std::error::Error::source(err);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

fn parse_dsn(text: &str) -> Result<tokio_postgres::Config, String> {
    let config: tokio_postgres::Config = text.trim().parse().map_err(|err: tokio_postgres::Error| err.to_string())?;
    if config.get_hosts().is_empty() {
        return Err("names no host".to_owned());
    }
    Ok(config)
}

/// The `server` label for a parsed DSN: its first host and port.
fn host_port(config: &tokio_postgres::Config) -> String {
    let port = config.get_ports().first().copied().unwrap_or(5432);
    match config.get_hosts().first() {
        Some(Host::Tcp(host)) if host.contains(':') => format!("[{host}]:{port}"),
        Some(Host::Tcp(host)) => format!("{host}:{port}"),
        Some(Host::Unix(dir)) => format!("{}:{port}", dir.display()),
        None => format!("localhost:{port}"),
    }
}

/// Column `index` as text; NULL and a missing column are "".
fn text(row: &SimpleQueryRow, index: usize) -> &str {
    row.try_get(index).ok().flatten().unwrap_or("")
}

/// Column `index` as a number; NULL, a missing column or non-numeric text is `None`.
fn number(row: &SimpleQueryRow, index: usize) -> Option<f64> {
    row.try_get(index).ok().flatten()?.parse().ok()
}

/// postgres_exporter's `pg_settings_*`: the name with dots as underscores,
/// the value in base units (seconds, bytes) with the unit as a suffix; -1
/// ("disabled") is kept as is.
fn setting_sample(name: &str, setting: &str, unit: &str, vartype: &str, metric: &mut String) -> Option<f64> {
    metric.clear();
    metric.push_str("pg_settings_");
    metric.extend(name.chars().map(|c| if c == '.' || c == '-' { '_' } else { c }));
    if vartype == "bool" {
        return Some(if setting == "on" { 1.0 } else { 0.0 });
    }
    let value: f64 = setting.parse().ok()?;
    let (suffix, factor) = match unit {
        "" => return Some(value),
        "ms" => ("_seconds", 1e-3),
        "s" => ("_seconds", 1.0),
        "min" => ("_seconds", 60.0),
        "h" => ("_seconds", 3600.0),
        "d" => ("_seconds", 86400.0),
        "B" => ("_bytes", 1.0),
        "kB" | "1kB" => ("_bytes", 1024.0),
        "2kB" => ("_bytes", 2048.0),
        "4kB" => ("_bytes", 4096.0),
        "8kB" => ("_bytes", 8192.0),
        "16kB" => ("_bytes", 16384.0),
        "32kB" => ("_bytes", 32768.0),
        "64kB" => ("_bytes", 65536.0),
        "MB" => ("_bytes", 1048576.0),
        "16MB" => ("_bytes", 16.0 * 1048576.0),
        "32MB" => ("_bytes", 32.0 * 1048576.0),
        "64MB" => ("_bytes", 64.0 * 1048576.0),
        "GB" => ("_bytes", 1073741824.0),
        "TB" => ("_bytes", 1099511627776.0),
        _ => return None, // A unit postgres_exporter does not know either.
    };
    metric.push_str(suffix);
    Some(if value == -1.0 { value } else { value * factor })
}

/// A statement's text as a label value: whitespace runs collapsed to one
/// space, cut at `max_chars` characters with "..." appended.
fn shorten_statement(query: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(query.len().min(max_chars + 3));
    let mut chars = 0;
    for word in query.split_whitespace() {
        for c in (!out.is_empty()).then_some(' ').into_iter().chain(word.chars()) {
            if chars == max_chars {
                out.push_str("...");
                return out;
            }
            out.push(c);
            chars += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_setting(name: &str, setting: &str, unit: &str, vartype: &str, expected: Option<(&str, f64)>) {
        let mut metric = String::new();
        let got = setting_sample(name, setting, unit, vartype, &mut metric);
        assert_eq!(got.map(|v| (metric.as_str(), v)), expected, "{name}={setting}{unit}");
    }

    #[test]
    fn settings_in_base_units_with_exporter_names() {
        check_setting("max_connections", "100", "", "integer", Some(("pg_settings_max_connections", 100.0)));
        check_setting(
            "shared_buffers",
            "16384",
            "8kB",
            "integer",
            Some(("pg_settings_shared_buffers_bytes", 134217728.0)),
        );
        check_setting(
            "statement_timeout",
            "1500",
            "ms",
            "integer",
            Some(("pg_settings_statement_timeout_seconds", 1.5)),
        );
        check_setting(
            "log_min_duration_statement",
            "-1",
            "ms",
            "integer",
            Some(("pg_settings_log_min_duration_statement_seconds", -1.0)),
        );
        check_setting("fsync", "on", "", "bool", Some(("pg_settings_fsync", 1.0)));
        check_setting("pg_stat_statements.save", "off", "", "bool", Some(("pg_settings_pg_stat_statements_save", 0.0)));
        check_setting("odd", "1", "parsecs", "integer", None);
        check_setting("broken", "x", "", "integer", None);
    }

    #[test]
    fn stat_database_names_follow_the_columns() {
        for (column, name) in STAT_DATABASE_COLUMNS.iter().zip(STAT_DATABASE_NAMES) {
            assert_eq!(format!("pg_stat_database_{column}"), name);
        }
    }

    #[test]
    fn one_round_trip_holds_every_query() {
        let (base, with_statements) = cycle_sql(5, 100.0);
        assert_eq!(base.matches("SELECT ").count() - base.matches("(SELECT ").count(), 8);
        assert!(with_statements.starts_with(&base) && with_statements.ends_with("mean_exec_time > 100"));
    }

    #[test]
    fn statements_are_shortened_on_characters() {
        assert_eq!(shorten_statement("SELECT  *\n  FROM t", 120), "SELECT * FROM t");
        assert_eq!(shorten_statement("SELECT é FROM t", 8), "SELECT é...");
        assert_eq!(shorten_statement("", 8), "");
    }

    #[test]
    fn server_label_is_host_and_port_only() {
        let config = parse_dsn("postgres://herd:hunter2@db.example:6543/app").unwrap();
        assert_eq!(host_port(&config), "db.example:6543");
        let config = parse_dsn("host=127.0.0.1 user=herd password=hunter2").unwrap();
        assert_eq!(host_port(&config), "127.0.0.1:5432");
        assert!(parse_dsn("user=herd").is_err());
    }
}
