//! The database engine: SQLite in the data directory (the default) or
//! PostgreSQL, opened, migrated and spoken to through sqlx's `Any` driver.
//!
//! Every query of the pool is written once, in the SQL both engines accept:
//! `$N` parameters, `ON CONFLICT … DO NOTHING`, `RETURNING`, `CASE` rather
//! than two-argument `MAX`, sums cast to `BIGINT`, flags stored as 0/1, and
//! an explicit `rowid` column on PostgreSQL where queries order by
//! insertion. What cannot be written once lives here, and only here:
//! opening and migrating, how a write transaction begins, reading a JSON
//! array parameter as rows, and the lock that elects which process runs
//! the background loops ([`Leadership`]).

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
pub use sqlx::AnyPool;
use sqlx::{Any, AnyConnection, ConnectOptions, Connection, Decode, Type};
use std::path::Path;
use std::str::FromStr;

/// What can go wrong opening the database.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// A database URL or path the pool cannot use.
    #[error("{0}")]
    Config(String),
    /// The database server did not answer or refused the connection.
    #[error("connecting to {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A SQLite file whose rows point at rows that are not there.
    #[error("the database has {0} rows whose foreign keys point nowhere")]
    BrokenForeignKeys(usize),
}

/// Which engine a connection speaks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// The engine behind a connection pool.
    pub fn of_pool(db: &AnyPool) -> Dialect {
        let url = &db.connect_options().database_url;
        if url.scheme().starts_with("postgres") {
            Dialect::Postgres
        } else {
            Dialect::Sqlite
        }
    }

    /// How `summary.json` and `bench pool` name it.
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
        }
    }

    /// A subquery giving the text elements of the JSON array bound as
    /// parameter `param` (e.g. `$10`), one row each in a column `value`.
    pub(crate) fn json_text_elements(self, param: &str) -> String {
        match self {
            Dialect::Sqlite => format!("SELECT value FROM json_each({param})"),
            Dialect::Postgres => {
                format!(
                    "SELECT value FROM json_array_elements_text(CAST({param} AS json)) AS e(value)"
                )
            }
        }
    }
}

/// Where the pool's database lives: a `postgres://` URL, or `None` for
/// SQLite in the data directory. Its `Debug` hides any password.
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// Accepts `postgres://…` and `postgresql://…` URLs.
    pub fn parse(s: &str) -> Result<DatabaseUrl, DbError> {
        let url = url::Url::parse(s)
            .map_err(|e| DbError::Config(format!("--database {s:?}: not a URL ({e})")))?;
        match url.scheme() {
            "postgres" | "postgresql" => Ok(DatabaseUrl(s.to_string())),
            other => Err(DbError::Config(format!(
                "--database: `{other}://` is not supported; give a postgres:// URL \
                 (without --database the pool keeps SQLite in its data directory)"
            ))),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***`, for logs.
    pub fn redacted(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(mut u) if u.password().is_some() => {
                let _ = u.set_password(Some("***"));
                u.to_string()
            }
            _ => self.0.clone(),
        }
    }
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// The most connections one pool process opens to PostgreSQL: several
/// processes share the server's `max_connections` (100 by default).
const POSTGRES_CONNECTIONS: u32 = 16;

/// Opens the database, brings its schema up to date and returns a
/// connection pool to it: SQLite at `sqlite_path` unless `url` names a
/// PostgreSQL database ([`Dialect::of_pool`] tells which).
pub async fn open(sqlite_path: &Path, url: Option<&DatabaseUrl>) -> Result<AnyPool, DbError> {
    sqlx::any::install_default_drivers();
    match url {
        None => open_sqlite(sqlite_path).await,
        Some(url) => open_postgres(url).await,
    }
}

/// Set on every SQLite connection.
const SQLITE_PRAGMAS: [&str; 4] = [
    "PRAGMA journal_mode = WAL",
    "PRAGMA synchronous = NORMAL",
    "PRAGMA busy_timeout = 10000",
    "PRAGMA foreign_keys = ON",
];

/// SQLite with WAL, a busy timeout and foreign keys.
async fn open_sqlite(path: &Path) -> Result<AnyPool, DbError> {
    let url = sqlite_url(path)?;
    migrate_sqlite(&url).await?;
    let db = AnyPoolOptions::new()
        .max_connections(8)
        .after_connect(set_pragmas)
        .connect_with(AnyConnectOptions::from_str(&url)?.disable_statement_logging())
        .await?;
    Ok(db)
}

fn set_pragmas(
    conn: &mut AnyConnection,
    _: sqlx::pool::PoolConnectionMetadata,
) -> futures::future::BoxFuture<'_, Result<(), sqlx::Error>> {
    Box::pin(async move {
        for pragma in SQLITE_PRAGMAS {
            sqlx::query(pragma).execute(&mut *conn).await?;
        }
        Ok(())
    })
}

fn sqlite_url(path: &Path) -> Result<String, DbError> {
    let path = path.to_str().ok_or_else(|| {
        DbError::Config(format!(
            "{}: the data directory's path is not UTF-8",
            path.display()
        ))
    })?;
    // The path is a URL's path: keep `?` and `#` in directory names from
    // being read as its query or fragment.
    let path = path
        .replace('%', "%25")
        .replace('?', "%3F")
        .replace('#', "%23");
    Ok(format!("sqlite://{path}?mode=rwc"))
}

/// Brings SQLite's schema up to date on a connection of its own, with
/// foreign keys off: a migration that rebuilds a table (SQLite's only way
/// to add a `CHECK`) drops the old one while others still reference it by
/// name. Every foreign key is checked once the migrations are done.
async fn migrate_sqlite(url: &str) -> Result<(), DbError> {
    let mut conn = AnyConnection::connect(url).await?;
    for pragma in ["PRAGMA journal_mode = WAL", "PRAGMA foreign_keys = OFF"] {
        sqlx::query(pragma).execute(&mut conn).await?;
    }
    sqlx::migrate!("./migrations/sqlite").run(&mut conn).await?;
    pin_held_out(&mut conn).await?;
    let broken = sqlx::query("PRAGMA foreign_key_check")
        .fetch_all(&mut conn)
        .await?;
    conn.close().await?;
    if broken.is_empty() {
        Ok(())
    } else {
        Err(DbError::BrokenForeignKeys(broken.len()))
    }
}

/// Writes `data.eval_fraction = 0.0` into the text specs of the jobs
/// migration 0012 listed that do not say, so that they keep holding
/// nothing out now that a text's default is a tenth; then forgets the list.
async fn pin_held_out(conn: &mut AnyConnection) -> Result<(), sqlx::Error> {
    let listed: Vec<(String, String)> = sqlx::query_as(
        "SELECT j.id, j.spec_toml FROM held_out_pins p JOIN jobs j ON j.id = p.job_id",
    )
    .fetch_all(&mut *conn)
    .await?;
    for (id, spec) in listed {
        if let Some(pinned) = pinned_held_out(&spec) {
            sqlx::query("UPDATE jobs SET spec_toml = $1 WHERE id = $2")
                .bind(pinned)
                .bind(&id)
                .execute(&mut *conn)
                .await?;
        }
    }
    sqlx::query("DELETE FROM held_out_pins")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// The spec with `eval_fraction = 0.0` in its `[data]`, when it is a text
/// spec that does not say; `None` when nothing needs writing.
fn pinned_held_out(spec: &str) -> Option<String> {
    let mut doc: toml_edit::DocumentMut = spec.parse().ok()?;
    let data = doc.get_mut("data")?.as_table_like_mut()?;
    let text = data.get("format").and_then(|f| f.as_str()) == Some("text");
    if !text || data.contains_key("eval_fraction") {
        return None;
    }
    data.insert("eval_fraction", toml_edit::value(0.0));
    Some(doc.to_string())
}

/// PostgreSQL, migrated under sqlx's migration lock (several pool
/// processes may start at once).
async fn open_postgres(url: &DatabaseUrl) -> Result<AnyPool, DbError> {
    let options = AnyConnectOptions::from_str(url.as_str())?.disable_statement_logging();
    let mut conn = AnyConnection::connect_with(&options)
        .await
        .map_err(|source| DbError::Connect {
            url: url.redacted(),
            source,
        })?;
    sqlx::migrate!("./migrations/postgres")
        .run(&mut conn)
        .await?;
    conn.close().await?;
    Ok(AnyPoolOptions::new()
        .max_connections(POSTGRES_CONNECTIONS)
        .connect_with(options)
        .await?)
}

/// The advisory-lock key every write transaction takes on PostgreSQL, so
/// that writers in several pool processes take turns as SQLite's single
/// writer does ("gradpool" in ASCII).
const WRITE_LOCK_KEY: i64 = 0x6772_6164_706f_6f6c;

/// Begins a write transaction: on SQLite `BEGIN IMMEDIATE` (its write lock
/// now, not at the first write of a transaction that read first); on
/// PostgreSQL a transaction that first takes the pool's write lock, held
/// until it commits or rolls back.
pub(crate) async fn begin_write(
    db: &AnyPool,
) -> Result<sqlx::Transaction<'static, Any>, sqlx::Error> {
    match Dialect::of_pool(db) {
        Dialect::Sqlite => db.begin_with("BEGIN IMMEDIATE").await,
        Dialect::Postgres => {
            let mut tx = db.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(WRITE_LOCK_KEY)
                .execute(&mut *tx)
                .await?;
            Ok(tx)
        }
    }
}

/// The advisory-lock key of the background loops ("gradloop").
const LOOPS_KEY: i64 = 0x6772_6164_6c6f_6f70;

/// Whether this process runs the background loops (the lease reaper, the
/// deposit watcher, payouts, audit deadlines). On SQLite, one process owns
/// the database and always leads. On PostgreSQL, the leader is the process
/// whose dedicated connection holds a session advisory lock: when it dies
/// its connection closes, the lock is released and the next process to
/// try takes over.
pub struct Leadership {
    url: Option<DatabaseUrl>,
    conn: tokio::sync::Mutex<Option<AnyConnection>>,
    /// What the last [`Leadership::lead`] found.
    leading: std::sync::atomic::AtomicBool,
}

impl Leadership {
    pub(crate) fn new(url: Option<DatabaseUrl>) -> Leadership {
        Leadership {
            leading: std::sync::atomic::AtomicBool::new(url.is_none()),
            url,
            conn: tokio::sync::Mutex::new(None),
        }
    }

    /// Whether this process led the background loops when last asked.
    pub(crate) fn leading(&self) -> bool {
        self.leading.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Whether this process leads now, trying to become the leader if it
    /// does not. A lost connection loses the lead (another process may
    /// have it by now).
    pub(crate) async fn lead(&self) -> bool {
        let leading = self.try_lead().await;
        self.leading
            .store(leading, std::sync::atomic::Ordering::Relaxed);
        leading
    }

    async fn try_lead(&self) -> bool {
        let Some(url) = &self.url else {
            return true;
        };
        let mut held = self.conn.lock().await;
        if let Some(conn) = held.as_mut() {
            if conn.ping().await.is_ok() {
                return true;
            }
            tracing::warn!("lost the connection that held the lead of the background loops");
            *held = None;
            return false;
        }
        match take_lead(url).await {
            Ok(Some(conn)) => {
                tracing::info!("leading the background loops");
                *held = Some(conn);
                true
            }
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(error = %e, "could not try for the lead of the background loops");
                false
            }
        }
    }
}

async fn take_lead(url: &DatabaseUrl) -> Result<Option<AnyConnection>, sqlx::Error> {
    let options = AnyConnectOptions::from_str(url.as_str())?.disable_statement_logging();
    let mut conn = AnyConnection::connect_with(&options).await?;
    let got: Flag = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(LOOPS_KEY)
        .fetch_one(&mut conn)
        .await?;
    if got.0 {
        Ok(Some(conn))
    } else {
        conn.close().await?;
        Ok(None)
    }
}

/// A truth value as either engine returns it: PostgreSQL's `boolean`, or
/// SQLite's 0/1 integer (its comparisons, `EXISTS` and flag columns).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flag(pub bool);

impl From<Flag> for bool {
    fn from(f: Flag) -> bool {
        f.0
    }
}

impl Type<Any> for Flag {
    fn type_info() -> sqlx::any::AnyTypeInfo {
        <bool as Type<Any>>::type_info()
    }

    fn compatible(ty: &sqlx::any::AnyTypeInfo) -> bool {
        <bool as Type<Any>>::compatible(ty) || <i64 as Type<Any>>::compatible(ty)
    }
}

impl<'r> Decode<'r, Any> for Flag {
    fn decode(value: sqlx::any::AnyValueRef<'r>) -> Result<Flag, sqlx::error::BoxDynError> {
        use sqlx::{Value, ValueRef};
        let owned = ValueRef::to_owned(&value);
        if <bool as Type<Any>>::compatible(&owned.type_info()) {
            Ok(Flag(<bool as Decode<Any>>::decode(owned.as_ref())?))
        } else {
            Ok(Flag(<i64 as Decode<Any>>::decode(owned.as_ref())? != 0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gradpool_core::state::*;

    /// The schema's `CHECK` on each state column lists exactly the
    /// spellings of its enum: a state added to one but not the other fails
    /// here, not in production.
    #[tokio::test]
    async fn every_state_column_checks_exactly_its_enums_spellings() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir.path().join("pool.db"), None).await.unwrap();
        let columns: [(&str, &str, String); 18] = [
            ("jobs", "status", JobStatus::check_list()),
            ("jobs", "runtime", Runtime::check_list()),
            ("job_blobs", "role", JobBlobRole::check_list()),
            ("certifications", "tier", ProviderTier::check_list()),
            (
                "jobs",
                "verification",
                "'none', 'standard', 'paranoid'".into(),
            ),
            ("jobs", "device", "'any', 'cpu', 'cuda'".into()),
            ("tasks", "status", TaskStatus::check_list()),
            ("tasks", "kind", TaskKind::check_list()),
            ("commitments", "status", CommitmentStatus::check_list()),
            (
                "discarded_commitments",
                "status",
                CommitmentStatus::check_list(),
            ),
            ("audits", "reason", AuditReason::check_list()),
            ("audits", "status", AuditStatus::check_list()),
            ("payouts", "kind", PayoutKind::check_list()),
            ("payouts", "status", PayoutStatus::check_list()),
            ("proofs", "status", ProofStatus::check_list()),
            // `active` is shown, never stored.
            (
                "bookings",
                "status",
                "'reserved', 'ended', 'cancelled'".into(),
            ),
            ("provider_status", "status", ProviderChange::check_list()),
            (
                "blob_transfers",
                "direction",
                TransferDirection::check_list(),
            ),
        ];
        let postgres = include_str!("../migrations/postgres/0001_schema.sql");
        for (table, column, list) in columns {
            let sql: String = sqlx::query_scalar(
                "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = $1",
            )
            .bind(table)
            .fetch_one(&db)
            .await
            .unwrap();
            let check = format!("CHECK ({column} IN ({list}))");
            assert!(
                sql.contains(&check),
                "{table}.{column} lacks {check}:\n{sql}"
            );
            assert!(
                postgres.contains(&check),
                "{table}.{column} lacks {check} in the PostgreSQL schema"
            );
        }
    }

    /// A text spec that does not say what it holds out is pinned to
    /// nothing, the old default; others are left as they are.
    #[test]
    fn specs_from_before_the_held_out_default_keep_holding_nothing_out() {
        let old = "name = \"x\"\n[data]\nformat = \"text\" # chars\n[train]\nsteps = 1\n";
        let pinned = pinned_held_out(old).unwrap();
        assert!(pinned.contains("# chars"), "{pinned}");
        let v: toml::Table = pinned.parse().unwrap();
        assert_eq!(v["data"]["eval_fraction"].as_float(), Some(0.0));
        let inline = "[train]\nsteps = 1\n[model]\nkind = \"gpt\"\ndata = 1\n";
        assert_eq!(pinned_held_out(inline), None);
        assert_eq!(pinned_held_out(&pinned), None);
        let csv = "[data]\nformat = \"csv\"\n";
        assert_eq!(pinned_held_out(csv), None);
        let inline_table = "data = { format = \"text\" }\n";
        let v: toml::Table = pinned_held_out(inline_table).unwrap().parse().unwrap();
        assert_eq!(v["data"]["eval_fraction"].as_float(), Some(0.0));
    }

    /// A job listed by migration 0012 is pinned when the database opens,
    /// once; a job submitted after keeps the new default.
    #[tokio::test]
    async fn listed_jobs_are_pinned_when_the_database_opens() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pool.db");
        let db = open(&path, None).await.unwrap();
        let spec = "name = \"x\"\n[data]\nformat = \"text\"\n";
        sqlx::query(
            "INSERT INTO accounts (id, name, key_hash, created_at) VALUES ('a', 'a', 'h', 0)",
        )
        .execute(&db)
        .await
        .unwrap();
        sqlx::query("INSERT INTO blobs (sha256, size, created_at) VALUES ('d', 1, 0)")
            .execute(&db)
            .await
            .unwrap();
        for id in ["old", "new"] {
            sqlx::query(
                "INSERT INTO jobs (id, account_id, name, spec_toml, data_sha256, device, min_memory_bytes, \
                 status, steps, checkpoint_every, segments_total, commitment, created_at, updated_at) \
                 VALUES ($1, 'a', 'x', $2, 'd', 'any', 0, 'queued', 1, 1, 1, 'c', 0, 0)",
            )
            .bind(id)
            .bind(spec)
            .execute(&db)
            .await
            .unwrap();
        }
        // As migration 0012 lists the jobs it found.
        sqlx::query("INSERT INTO held_out_pins (job_id) VALUES ('old')")
            .execute(&db)
            .await
            .unwrap();
        db.close().await;
        let db = open(&path, None).await.unwrap();
        let stored = |id: &'static str| {
            let db = db.clone();
            async move {
                sqlx::query_scalar::<_, String>("SELECT spec_toml FROM jobs WHERE id = $1")
                    .bind(id)
                    .fetch_one(&db)
                    .await
                    .unwrap()
            }
        };
        assert!(stored("old").await.contains("eval_fraction = 0.0"));
        assert_eq!(stored("new").await, spec);
        let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM held_out_pins")
            .fetch_one(&db)
            .await
            .unwrap();
        assert_eq!(left, 0);
    }

    /// A state no enum has is refused by the database itself.
    #[tokio::test]
    async fn the_database_refuses_a_state_no_enum_has() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(&dir.path().join("pool.db"), None).await.unwrap();
        let err = sqlx::query(
            "INSERT INTO payouts (id, kind, status, created_at, updated_at) \
             VALUES ('p1', 'withdrawal', 'sent', 0, 0)",
        )
        .execute(&db)
        .await
        .unwrap_err();
        assert!(err.to_string().contains("CHECK constraint failed"), "{err}");
        sqlx::query(
            "INSERT INTO payouts (id, kind, status, created_at, updated_at) \
             VALUES ('p1', 'withdrawal', 'reserved', 0, 0)",
        )
        .execute(&db)
        .await
        .unwrap();
    }
}
