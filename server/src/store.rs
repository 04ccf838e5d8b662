//! The server's durable state: volunteers and their credentials, enrollment tokens, and the
//! history of published generations, in an embedded SQLite file (the default, in the data
//! directory) or in PostgreSQL, which several servers share as replicas of one mirror.
//!
//! Everything else (live load, which generation a volunteer holds) is soft state rebuilt from
//! announces after a restart. SQLite runs in WAL mode so `mirrorswarm enroll` can write while
//! the server runs.
//!
//! One set of queries serves both engines, through sqlx's runtime-generic driver: `$N`
//! placeholders (SQLite reads them too), 64-bit integers for every number and flag, and
//! `ON CONFLICT` rather than SQLite's `OR REPLACE`. What differs is each engine's own
//! migrations (`migrations/sqlite/`, `migrations/postgres/`, the same versions) and how a
//! connection is opened.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rand::RngCore;
use sha2::Digest;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions, AnyRow};
use sqlx::migrate::{Migration, MigrationSource, MigrationType, Migrator};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::AnyPool;
use sqlx::{ConnectOptions, Connection, Executor, Row};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("unsupported database URL `{0}`: expected sqlite://PATH or postgres://[USER[:PASSWORD]@]HOST[:PORT]/DATABASE")]
    BadUrl(String),
    #[error("cannot open the database {url}: {source}")]
    Connect {
        /// The URL without its password.
        url: String,
        source: sqlx::Error,
    },
    #[error(
        "database schema: {0} (is this database from a newer mirrorswarm, or edited by hand?)"
    )]
    Schema(#[from] sqlx::migrate::MigrateError),
    #[error("the database's schema is version {theirs}, newer than this mirrorswarm's (version {ours}): a newer mirrorswarm has used it; run that version (or newer) here too")]
    NewerSchema { theirs: i64, ours: i64 },
    /// A row that no code of ours writes: a damaged file or a hand edit. Refused rather than
    /// read as a default, so that, say, a volunteer's secret never becomes an empty HMAC key.
    #[error("the {table} row {key} is corrupt: {what}; repair or delete that row (sqlite3 <data-dir>/db)")]
    CorruptRow {
        table: &'static str,
        key: String,
        what: String,
    },
    #[error("this database belongs to the mirror whose signing key is {theirs}, and this server's key is {ours}: servers sharing a database are replicas of one mirror and must share its key (copy server.key from a replica into this server's data directory), or give this server a database of its own")]
    OtherMirror { ours: String, theirs: String },
    #[error("the database {0} already holds volunteers, tokens or generations: a store is moved only into an empty one")]
    NotEmpty(String),
    #[error("enrollment token is unknown, already used, or expired")]
    BadToken,
    #[error("malformed enrollment token: expected <secret>.<server key fingerprint>")]
    MalformedToken,
    #[error("a volunteer named `{0}` is already enrolled")]
    NameTaken(String),
    #[error("no volunteer named `{0}` is enrolled")]
    NoSuchVolunteer(String),
    #[error("generation {generation} of `{repo}` was published meanwhile by another server sharing the database")]
    GenerationTaken { repo: String, generation: u64 },
}

impl StoreError {
    /// The database is out of reach (down, restarting, the network): the same request may
    /// succeed later, and nothing was changed.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Db(e) | StoreError::Connect { source: e, .. } => {
                matches!(
                    e,
                    sqlx::Error::Io(_)
                        | sqlx::Error::PoolTimedOut
                        | sqlx::Error::PoolClosed
                        | sqlx::Error::WorkerCrashed
                ) || e
                    .as_database_error()
                    .and_then(|d| d.code())
                    // PostgreSQL shutting down or starting up: admin_shutdown, cannot_connect_now.
                    .is_some_and(|c| c == "57P01" || c == "57P03")
            }
            _ => false,
        }
    }
}

/// An enrolled volunteer as the database knows it.
#[derive(Debug, Clone)]
pub struct VolunteerRecord {
    pub id: String,
    pub name: String,
    pub secret: Vec<u8>,
    pub url: String,
    pub enrolled_at: u64,
    pub revoked: bool,
    pub draining: bool,
    /// Why the server stopped trusting its bytes (a failed spot check), until it passes again.
    pub quarantine: Option<String>,
}

/// An enrollment token as stored: only the secret's hash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub token_hash: String,
    pub name: String,
    pub created_at: i64,
    pub expires_at: i64,
    pub used_at: Option<i64>,
}

/// Everything durable in a store, to move a mirror to another database
/// (`mirrorswarm migrate-store`).
#[derive(Debug, Clone, Default)]
pub struct Dump {
    /// The fingerprint of the key the mirror signs with, if a server has opened it.
    pub mirror: Option<String>,
    pub volunteers: Vec<VolunteerRecord>,
    pub tokens: Vec<TokenRecord>,
    pub generations: Vec<GenerationRecord>,
}

/// One published generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenerationRecord {
    pub repo: String,
    pub generation: u64,
    pub published_at: u64,
    pub files: u64,
    pub bytes: u64,
    pub changed_files: u64,
}

/// The database engines a store runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// The file or the URL (without its password), for messages.
    name: String,
    /// PostgreSQL's URL, for the connection that listens for other servers' changes.
    listen_url: Option<String>,
}

/// The channel on which PostgreSQL tells every server sharing the database that a revision
/// moved (the payload names it).
pub const CHANGES_CHANNEL: &str = "mirrorswarm_changes";

/// Bump the revision `name` (see `migrations/*/0003_revisions.sql`) in the transaction
/// `tx`; on PostgreSQL every listening server is told when it commits.
async fn bump_revision(
    tx: &mut sqlx::AnyConnection,
    backend: Backend,
    name: &str,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE revisions SET revision = revision + 1 WHERE name = $1")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    if backend == Backend::Postgres {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(CHANGES_CHANNEL)
            .bind(name)
            .execute(&mut *tx)
            .await?;
    }
    Ok(())
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

fn token_hash(secret: &str) -> String {
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}

/// Record the generation `g` (again: replaced, not doubled).
async fn write_generation(
    conn: &mut sqlx::AnyConnection,
    g: &GenerationRecord,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO generations (repo, generation, published_at, files, bytes, changed_files) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (repo, generation) DO UPDATE SET published_at = excluded.published_at, files = excluded.files, bytes = excluded.bytes, changed_files = excluded.changed_files",
    )
    .bind(&g.repo)
    .bind(g.generation as i64)
    .bind(g.published_at as i64)
    .bind(g.files as i64)
    .bind(g.bytes as i64)
    .bind(g.changed_files as i64)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Claim the database for the mirror whose key has `fingerprint`: the first to claim it
/// writes it; any later claim must name the same key.
async fn claim_mirror_on(
    conn: &mut sqlx::AnyConnection,
    fingerprint: &str,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO mirror (id, key_fingerprint) VALUES (1, $1) ON CONFLICT (id) DO NOTHING",
    )
    .bind(fingerprint)
    .execute(&mut *conn)
    .await?;
    let theirs: String = sqlx::query_scalar("SELECT key_fingerprint FROM mirror WHERE id = 1")
        .fetch_one(&mut *conn)
        .await?;
    if theirs != fingerprint {
        return Err(StoreError::OtherMirror {
            ours: fingerprint.to_string(),
            theirs,
        });
    }
    Ok(())
}

/// The SQLite schema's versions, oldest first (files under `migrations/sqlite/`, built into
/// the binary). sqlx applies each once, in a transaction, and records it with its checksum in
/// `_sqlx_migrations`.
const SQLITE_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../migrations/sqlite/0001_initial.sql"),
    ),
    (
        2,
        "mirror",
        include_str!("../migrations/sqlite/0002_mirror.sql"),
    ),
    (
        3,
        "revisions",
        include_str!("../migrations/sqlite/0003_revisions.sql"),
    ),
    (
        4,
        "published",
        include_str!("../migrations/sqlite/0004_published.sql"),
    ),
];

/// PostgreSQL's: the same versions, in its types. Replicas starting at once are safe: sqlx
/// holds an advisory lock while it migrates.
const POSTGRES_MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../migrations/postgres/0001_initial.sql"),
    ),
    (
        2,
        "mirror",
        include_str!("../migrations/postgres/0002_mirror.sql"),
    ),
    (
        3,
        "revisions",
        include_str!("../migrations/postgres/0003_revisions.sql"),
    ),
    (
        4,
        "published",
        include_str!("../migrations/postgres/0004_published.sql"),
    ),
];

/// Bring the schema to this build's newest version; a database a newer build migrated
/// further is refused, naming both versions, before anything is touched.
async fn migrate(
    pool: &AnyPool,
    migrations: &'static [(i64, &'static str, &'static str)],
    backend: Backend,
) -> Result<(), StoreError> {
    let ours = migrations.iter().map(|m| m.0).max().unwrap_or(0);
    let exists = match backend {
        Backend::Sqlite => "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
        Backend::Postgres => "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = current_schema() AND table_name = '_sqlx_migrations'",
    };
    let versioned: i64 = sqlx::query_scalar(exists).fetch_one(pool).await?;
    if versioned > 0 {
        let theirs: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM _sqlx_migrations")
            .fetch_one(pool)
            .await?;
        if let Some(theirs) = theirs.filter(|&t| t > ours) {
            return Err(StoreError::NewerSchema { theirs, ours });
        }
    }
    Migrator::new(Embedded(migrations)).await?.run(pool).await?;
    Ok(())
}

/// How long a SQLite writer waits for another (an `enroll` beside the server).
const SQLITE_BUSY: Duration = Duration::from_secs(10);

/// Connections in the pool: the request path never uses the store, so a few suffice.
const POOL_SIZE: u32 = 4;

/// Migrations built into the binary, as sqlx's migrator reads them.
#[derive(Debug)]
struct Embedded(&'static [(i64, &'static str, &'static str)]);

impl MigrationSource<'static> for Embedded {
    fn resolve(
        self,
    ) -> futures_util::future::BoxFuture<'static, Result<Vec<Migration>, sqlx::error::BoxDynError>>
    {
        Box::pin(async move {
            Ok(self
                .0
                .iter()
                .map(|&(version, name, sql)| {
                    Migration::new(
                        version,
                        name.into(),
                        MigrationType::Simple,
                        sql.into(),
                        false,
                    )
                })
                .collect())
        })
    }
}

/// Columns added to a table before versioned migrations began, with their definitions: a
/// database made before them lacks them, and gets them before its first migration.
const LEGACY_COLUMNS: &[(&str, &str, &str)] = &[("volunteers", "quarantine", "TEXT")];

/// Bring a database made before versioned migrations (its tables but no `_sqlx_migrations`)
/// to the shape of version 1, by the names of the columns it has.
/// (SQLite only: PostgreSQL came after.)
async fn adopt_legacy(pool: &AnyPool) -> Result<(), StoreError> {
    let versioned: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
    )
    .fetch_optional(pool)
    .await?;
    if versioned.is_some() {
        return Ok(());
    }
    for &(table, column, definition) in LEGACY_COLUMNS {
        let columns: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info($1)")
            .bind(table)
            .fetch_all(pool)
            .await?;
        // No such table: a new database, which version 1 makes whole.
        if !columns.is_empty() && !columns.iter().any(|c| c == column) {
            sqlx::query(&format!(
                "ALTER TABLE {table} ADD COLUMN {column} {definition}"
            ))
            .execute(pool)
            .await?;
        }
    }
    Ok(())
}

const VOLUNTEER_COLUMNS: &str =
    "id, name, secret_hex, url, enrolled_at, revoked, draining, quarantine";

/// A volunteer's secret is 32 random bytes; anything much shorter was not written by us.
const MIN_SECRET_BYTES: usize = 16;

fn volunteer_from_row(r: &AnyRow) -> Result<VolunteerRecord, StoreError> {
    let id: String = r.try_get("id")?;
    let corrupt = |what: String| StoreError::CorruptRow {
        table: "volunteers",
        key: format!("id={id}"),
        what,
    };
    let secret = hex::decode(r.try_get::<String, _>("secret_hex")?)
        .map_err(|e| corrupt(format!("secret_hex is not hex ({e})")))?;
    if secret.len() < MIN_SECRET_BYTES {
        return Err(corrupt(format!(
            "secret_hex holds {} bytes, fewer than {MIN_SECRET_BYTES}",
            secret.len()
        )));
    }
    let enrolled_at = u64::try_from(r.try_get::<i64, _>("enrolled_at")?)
        .map_err(|_| corrupt("enrolled_at is negative".into()))?;
    Ok(VolunteerRecord {
        name: r.try_get("name")?,
        secret,
        url: r.try_get("url")?,
        enrolled_at,
        revoked: r.try_get::<i64, _>("revoked")? != 0,
        draining: r.try_get::<i64, _>("draining")? != 0,
        quarantine: r.try_get("quarantine")?,
        id,
    })
}

/// A published generation's record. Its counts are written from `u64`s; a negative one is a
/// damaged row.
fn generation_from_row(r: &AnyRow) -> Result<GenerationRecord, StoreError> {
    let repo: String = r.try_get("repo")?;
    let generation: i64 = r.try_get("generation")?;
    let count = |column: &str| -> Result<u64, StoreError> {
        u64::try_from(r.try_get::<i64, _>(column)?).map_err(|_| StoreError::CorruptRow {
            table: "generations",
            key: format!("repo={repo} generation={generation}"),
            what: format!("{column} is negative"),
        })
    };
    Ok(GenerationRecord {
        generation: count("generation")?,
        published_at: count("published_at")?,
        files: count("files")?,
        bytes: count("bytes")?,
        changed_files: count("changed_files")?,
        repo: repo.clone(),
    })
}

/// `url` without a password, for messages and logs.
pub fn redacted(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        _ => url.to_string(),
    }
}

/// Which engine a database URL names, and for SQLite the file.
fn parse_url(url: &str) -> Result<(Backend, Option<PathBuf>), StoreError> {
    let bad = || StoreError::BadUrl(redacted(url));
    let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
    match scheme {
        "sqlite" => {
            let path = rest.split('?').next().unwrap_or_default();
            if path.is_empty() {
                return Err(bad());
            }
            Ok((Backend::Sqlite, Some(PathBuf::from(path))))
        }
        "postgres" | "postgresql" => {
            url::Url::parse(url).map_err(|_| bad())?;
            Ok((Backend::Postgres, None))
        }
        _ => Err(bad()),
    }
}

impl Store {
    /// Open (creating if needed) the SQLite database at `path`.
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let sqlite = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path)
            .create_if_missing(true);
        let opts = AnyConnectOptions::from_url(&sqlite.to_url_lossy())?;
        let pool = AnyPoolOptions::new()
            .max_connections(POOL_SIZE)
            // Per connection: how long a writer waits for another.
            .after_connect(|conn, _| {
                Box::pin(async move {
                    conn.execute(
                        format!("PRAGMA busy_timeout = {}", SQLITE_BUSY.as_millis()).as_str(),
                    )
                    .await?;
                    Ok(())
                })
            })
            .connect_with(opts)
            .await
            .map_err(|source| StoreError::Connect {
                url: path.display().to_string(),
                source,
            })?;
        // Persistent in the file: readers never block the writer, nor it them.
        sqlx::query("PRAGMA journal_mode = WAL")
            .execute(&pool)
            .await?;
        adopt_legacy(&pool).await?;
        migrate(&pool, SQLITE_MIGRATIONS, Backend::Sqlite).await?;
        Ok(Store {
            pool,
            backend: Backend::Sqlite,
            name: path.display().to_string(),
            listen_url: None,
        })
    }

    /// Open the database `url` names: `sqlite://PATH` (created if needed) or
    /// `postgres://…` (the database must exist; its tables are made or migrated).
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        match parse_url(url)? {
            (Backend::Sqlite, Some(path)) => Store::open(&path).await,
            _ => Store::connect_postgres(url).await,
        }
    }

    async fn connect_postgres(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let connect_error = |source| StoreError::Connect {
            url: redacted(url),
            source,
        };
        let opts = AnyConnectOptions::from_str(url).map_err(connect_error)?;
        // Fail at once with the reason (refused, no such database, bad password) rather than
        // after the pool's timeout with "pool timed out".
        sqlx::AnyConnection::connect_with(&opts)
            .await
            .map_err(connect_error)?
            .close()
            .await
            .map_err(connect_error)?;
        let pool = AnyPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(Duration::from_secs(5))
            .connect_with(opts)
            .await
            .map_err(connect_error)?;
        migrate(&pool, POSTGRES_MIGRATIONS, Backend::Postgres).await?;
        Ok(Store {
            pool,
            backend: Backend::Postgres,
            name: redacted(url),
            listen_url: Some(url.to_string()),
        })
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The database's file or URL (without a password), for messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The revision `name` now: it moves whenever any server sharing the database changes
    /// that kind of fact.
    pub async fn revision(&self, name: &str) -> Result<i64, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT revision FROM revisions WHERE name = $1")
                .bind(name)
                .fetch_one(&self.pool)
                .await?,
        )
    }

    /// On PostgreSQL, a connection that hears every revision move at once (its payload the
    /// revision's name); None on SQLite, which only a poll of [`Self::revision`] follows.
    pub async fn listen(&self) -> Option<Result<sqlx::postgres::PgListener, StoreError>> {
        let url = self.listen_url.as_deref()?;
        Some(
            async {
                let mut l = sqlx::postgres::PgListener::connect(url).await?;
                l.listen(CHANGES_CHANNEL).await?;
                Ok(l)
            }
            .await,
        )
    }

    /// Everything durable this store holds.
    pub async fn dump(&self) -> Result<Dump, StoreError> {
        let mirror = sqlx::query_scalar("SELECT key_fingerprint FROM mirror WHERE id = 1")
            .fetch_optional(&self.pool)
            .await?;
        let volunteers = self.volunteers().await?;
        let tokens = sqlx::query(
            "SELECT token_hash, name, created_at, expires_at, used_at FROM enrollment_tokens ORDER BY token_hash",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|r| {
            Ok(TokenRecord {
                token_hash: r.try_get("token_hash")?,
                name: r.try_get("name")?,
                created_at: r.try_get("created_at")?,
                expires_at: r.try_get("expires_at")?,
                used_at: r.try_get("used_at")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let generations = sqlx::query(
            "SELECT repo, generation, published_at, files, bytes, changed_files FROM generations ORDER BY repo, generation",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(generation_from_row)
        .collect::<Result<Vec<_>, _>>()?;
        Ok(Dump {
            mirror,
            volunteers,
            tokens,
            generations,
        })
    }

    /// Write `dump` into this store, which must be empty, in one transaction: all of it or
    /// nothing.
    pub async fn load(&self, dump: &Dump) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let held: i64 = sqlx::query_scalar(
            "SELECT (SELECT COUNT(*) FROM volunteers) + (SELECT COUNT(*) FROM enrollment_tokens) + (SELECT COUNT(*) FROM generations) + (SELECT COUNT(*) FROM manifests)",
        )
        .fetch_one(&mut *tx)
        .await?;
        if held > 0 {
            return Err(StoreError::NotEmpty(self.name.clone()));
        }
        if let Some(fp) = &dump.mirror {
            claim_mirror_on(&mut tx, fp).await?;
        }
        for v in &dump.volunteers {
            sqlx::query(
                "INSERT INTO volunteers (id, name, secret_hex, url, enrolled_at, revoked, draining, quarantine) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(&v.id)
            .bind(&v.name)
            .bind(hex::encode(&v.secret))
            .bind(&v.url)
            .bind(v.enrolled_at as i64)
            .bind(i64::from(v.revoked))
            .bind(i64::from(v.draining))
            .bind(v.quarantine.as_deref())
            .execute(&mut *tx)
            .await?;
        }
        for t in &dump.tokens {
            sqlx::query(
                "INSERT INTO enrollment_tokens (token_hash, name, created_at, expires_at, used_at) VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(&t.token_hash)
            .bind(&t.name)
            .bind(t.created_at)
            .bind(t.expires_at)
            .bind(t.used_at)
            .execute(&mut *tx)
            .await?;
        }
        for g in &dump.generations {
            write_generation(&mut tx, g).await?;
        }
        bump_revision(&mut tx, self.backend, "volunteers").await?;
        tx.commit().await?;
        Ok(())
    }

    /// Claim the database for the mirror whose key has `fingerprint`: the first server to
    /// open it writes it; any later one must have the same key.
    pub async fn claim_mirror(&self, fingerprint: &str) -> Result<(), StoreError> {
        claim_mirror_on(&mut *self.pool.acquire().await?, fingerprint).await
    }

    /// Create a one-time enrollment token for a volunteer called `name`. The returned token is
    /// `<secret>.<fingerprint>`; only the secret's hash is stored.
    pub async fn create_enrollment(
        &self,
        name: &str,
        fingerprint: &str,
        ttl_secs: u64,
    ) -> Result<String, StoreError> {
        let taken = sqlx::query("SELECT 1 FROM volunteers WHERE name = $1 AND revoked = 0")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        if taken.is_some() {
            return Err(StoreError::NameTaken(name.to_string()));
        }
        let secret = random_hex(16);
        let now = now_secs();
        sqlx::query("INSERT INTO enrollment_tokens (token_hash, name, created_at, expires_at) VALUES ($1, $2, $3, $4)")
            .bind(token_hash(&secret))
            .bind(name)
            .bind(now as i64)
            .bind(now.saturating_add(ttl_secs) as i64)
            .execute(&self.pool)
            .await?;
        Ok(format!("{secret}.{fingerprint}"))
    }

    /// Redeem a token: it must exist, be unused and unexpired. Creates the volunteer with a
    /// fresh secret; the token cannot be used again.
    pub async fn redeem(&self, token: &str, url: &str) -> Result<VolunteerRecord, StoreError> {
        let (secret_part, _fp) = token.split_once('.').ok_or(StoreError::MalformedToken)?;
        if secret_part.len() != 32 || !secret_part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(StoreError::MalformedToken);
        }
        let now = now_secs() as i64;
        let mut tx = self.pool.begin().await?;
        // Write first, so the transaction takes SQLite's write lock up front: a read that
        // later upgrades fails at once with "database is locked" under concurrent enrollments.
        // (On PostgreSQL the row lock does it: a second redeem of the token waits, then finds
        // it used, so a token works once whichever replica takes it.)
        let row = sqlx::query(
            "UPDATE enrollment_tokens SET used_at = $1 WHERE token_hash = $2 AND used_at IS NULL AND expires_at > $3 RETURNING name",
        )
        .bind(now)
        .bind(token_hash(secret_part))
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let name: String = match row {
            Some(r) => r.try_get("name")?,
            None => return Err(StoreError::BadToken),
        };
        // A re-enrolled name replaces a revoked record of the same name.
        sqlx::query("DELETE FROM volunteers WHERE name = $1 AND revoked = 1")
            .bind(&name)
            .execute(&mut *tx)
            .await?;
        let rec = VolunteerRecord {
            id: random_hex(8),
            name: name.clone(),
            secret: {
                let mut s = vec![0u8; 32];
                rand::rngs::OsRng.fill_bytes(&mut s);
                s
            },
            url: url.to_string(),
            enrolled_at: now as u64,
            revoked: false,
            draining: false,
            quarantine: None,
        };
        let res = sqlx::query(
            "INSERT INTO volunteers (id, name, secret_hex, url, enrolled_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(&rec.id)
        .bind(&rec.name)
        .bind(hex::encode(&rec.secret))
        .bind(&rec.url)
        .bind(now)
        .execute(&mut *tx)
        .await;
        match res {
            Ok(_) => {}
            Err(sqlx::Error::Database(e)) if e.is_unique_violation() => {
                return Err(StoreError::NameTaken(name))
            }
            Err(e) => return Err(e.into()),
        }
        bump_revision(&mut tx, self.backend, "volunteers").await?;
        tx.commit().await?;
        Ok(rec)
    }

    pub async fn volunteers(&self) -> Result<Vec<VolunteerRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {VOLUNTEER_COLUMNS} FROM volunteers ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(volunteer_from_row).collect()
    }

    /// Revoke the volunteer called `name`: its credential stops working at once and for good
    /// (it must enroll again with a new token).
    pub async fn revoke(&self, name: &str) -> Result<VolunteerRecord, StoreError> {
        self.update_by_name(name, "revoked = 1").await
    }

    /// Drain (true) or resume (false) the volunteer called `name`: a draining volunteer keeps
    /// announcing and syncing but gets no customers.
    pub async fn set_draining(
        &self,
        name: &str,
        draining: bool,
    ) -> Result<VolunteerRecord, StoreError> {
        self.update_by_name(
            name,
            if draining {
                "draining = 1"
            } else {
                "draining = 0"
            },
        )
        .await
    }

    /// Quarantine the volunteer with `id` for `reason`, or (None) lift its quarantine.
    pub async fn set_quarantine(&self, id: &str, reason: Option<&str>) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("UPDATE volunteers SET quarantine = $1 WHERE id = $2")
            .bind(reason)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        bump_revision(&mut tx, self.backend, "volunteers").await?;
        tx.commit().await?;
        Ok(())
    }

    async fn update_by_name(
        &self,
        name: &str,
        set: &'static str,
    ) -> Result<VolunteerRecord, StoreError> {
        let mut tx = self.pool.begin().await?;
        let row = sqlx::query(&format!(
            "UPDATE volunteers SET {set} WHERE name = $1 AND revoked = 0 RETURNING {VOLUNTEER_COLUMNS}"
        ))
        .bind(name)
        .fetch_optional(&mut *tx)
        .await?;
        let rec = match row {
            Some(r) => volunteer_from_row(&r)?,
            None => return Err(StoreError::NoSuchVolunteer(name.to_string())),
        };
        bump_revision(&mut tx, self.backend, "volunteers").await?;
        tx.commit().await?;
        Ok(rec)
    }

    /// Lift the quarantine of the volunteer called `name` by hand.
    pub async fn release(&self, name: &str) -> Result<VolunteerRecord, StoreError> {
        self.update_by_name(name, "quarantine = NULL").await
    }

    pub async fn record_generation(&self, g: &GenerationRecord) -> Result<(), StoreError> {
        write_generation(&mut *self.pool.acquire().await?, g).await
    }

    pub async fn latest_generation(
        &self,
        repo: &str,
    ) -> Result<Option<GenerationRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT repo, generation, published_at, files, bytes, changed_files FROM generations WHERE repo = $1 ORDER BY generation DESC LIMIT 1",
        )
        .bind(repo)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(generation_from_row).transpose()
    }

    /// Whether other servers may share this store (PostgreSQL): a generation is then
    /// published into it with its manifest and artifacts, for them to load.
    pub fn shared(&self) -> bool {
        self.backend == Backend::Postgres
    }

    /// Take or renew the lease to publish `repo` for `holder` until `ttl` from now. `None`:
    /// it is `holder`'s; `Some(other)`: another holds it and it has not lapsed.
    pub async fn lease_publish(
        &self,
        repo: &str,
        holder: &str,
        ttl: Duration,
    ) -> Result<Option<String>, StoreError> {
        let now = now_secs() as i64;
        let taken = sqlx::query(
            "INSERT INTO publish_leases (repo, holder, expires_at) VALUES ($1, $2, $3) ON CONFLICT (repo) DO UPDATE SET holder = excluded.holder, expires_at = excluded.expires_at WHERE publish_leases.holder = excluded.holder OR publish_leases.expires_at < $4",
        )
        .bind(repo)
        .bind(holder)
        .bind(now + ttl.as_secs() as i64)
        .bind(now)
        .execute(&self.pool)
        .await?
        .rows_affected();
        if taken > 0 {
            return Ok(None);
        }
        let other: Option<String> =
            sqlx::query_scalar("SELECT holder FROM publish_leases WHERE repo = $1")
                .bind(repo)
                .fetch_optional(&self.pool)
                .await?;
        // Gone between the two statements: lapsed and released; the caller may try again.
        Ok(Some(other.unwrap_or_else(|| "another server".into())))
    }

    /// Give the lease on `repo` back, if `holder` still has it.
    pub async fn release_publish(&self, repo: &str, holder: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM publish_leases WHERE repo = $1 AND holder = $2")
            .bind(repo)
            .bind(holder)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Record a generation with its signed manifest and the artifacts of its large files, in
    /// one transaction, and tell every server sharing the store. A generation already recorded
    /// with other bytes is refused ([`StoreError::GenerationTaken`]); with the same bytes it is
    /// left as it is.
    pub async fn record_published(
        &self,
        g: &GenerationRecord,
        signed: &[u8],
        published_by: &str,
        artifacts: &[Artifact],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO manifests (repo, generation, signed, published_by) VALUES ($1, $2, $3, $4) ON CONFLICT (repo, generation) DO NOTHING",
        )
        .bind(&g.repo)
        .bind(g.generation as i64)
        .bind(signed)
        .bind(published_by)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if inserted == 0 {
            let theirs: Vec<u8> = sqlx::query_scalar(
                "SELECT signed FROM manifests WHERE repo = $1 AND generation = $2",
            )
            .bind(&g.repo)
            .bind(g.generation as i64)
            .fetch_one(&mut *tx)
            .await?;
            if theirs != signed {
                return Err(StoreError::GenerationTaken {
                    repo: g.repo.clone(),
                    generation: g.generation,
                });
            }
            return Ok(());
        }
        for a in artifacts {
            sqlx::query(
                "INSERT INTO artifacts (sha256, torrent, signature) VALUES ($1, $2, $3) ON CONFLICT (sha256) DO NOTHING",
            )
            .bind(&a.sha256)
            .bind(&a.torrent[..])
            .bind(&a.signature[..])
            .execute(&mut *tx)
            .await?;
        }
        write_generation(&mut tx, g).await?;
        bump_revision(&mut tx, self.backend, "generations").await?;
        tx.commit().await?;
        Ok(())
    }

    /// Say that the server at `public_url` is alive now, with its counters (`stats`, JSON).
    pub async fn heartbeat(&self, public_url: &str, stats: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO servers (public_url, seen_at, stats) VALUES ($1, $2, $3) ON CONFLICT (public_url) DO UPDATE SET seen_at = excluded.seen_at, stats = excluded.stats",
        )
        .bind(public_url)
        .bind(now_secs() as i64)
        .bind(stats)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The servers that said they were alive within `within`, by public URL, each with the
    /// counters it said then.
    pub async fn live_servers(
        &self,
        within: Duration,
    ) -> Result<Vec<(String, String)>, StoreError> {
        let since = now_secs().saturating_sub(within.as_secs()) as i64;
        let rows = sqlx::query(
            "SELECT public_url, stats FROM servers WHERE seen_at >= $1 ORDER BY public_url",
        )
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get("public_url")?, r.try_get("stats")?)))
            .collect()
    }

    /// The newest generation of `repo` recorded with its manifest, and who published it.
    pub async fn latest_published(&self, repo: &str) -> Result<Option<(u64, String)>, StoreError> {
        let row = sqlx::query(
            "SELECT generation, published_by FROM manifests WHERE repo = $1 ORDER BY generation DESC LIMIT 1",
        )
        .bind(repo)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            let g: i64 = r.try_get("generation")?;
            let corrupt = || StoreError::CorruptRow {
                table: "manifests",
                key: format!("repo={repo}"),
                what: "generation is negative".into(),
            };
            Ok((
                u64::try_from(g).map_err(|_| corrupt())?,
                r.try_get("published_by")?,
            ))
        })
        .transpose()
    }

    /// The signed manifest of generation `generation` of `repo`, if recorded.
    pub async fn signed_manifest(
        &self,
        repo: &str,
        generation: u64,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(
            sqlx::query_scalar("SELECT signed FROM manifests WHERE repo = $1 AND generation = $2")
                .bind(repo)
                .bind(generation as i64)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// The sync artifacts of the file whose SHA-256 is `sha256` (hex), if recorded.
    pub async fn artifact(&self, sha256: &str) -> Result<Option<Artifact>, StoreError> {
        let row = sqlx::query("SELECT torrent, signature FROM artifacts WHERE sha256 = $1")
            .bind(sha256)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(Artifact {
                sha256: sha256.to_string(),
                torrent: r.try_get("torrent")?,
                signature: r.try_get("signature")?,
            })
        })
        .transpose()
    }
}

/// A large file's sync artifacts as a shared store keeps them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// The file's SHA-256, hex.
    pub sha256: String,
    pub torrent: Vec<u8>,
    pub signature: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database for one test, on either engine; reopened as the server would after a
    /// restart. PostgreSQL's is a throwaway cluster of the test's own, stopped on drop.
    enum Db {
        Sqlite(tempfile::TempDir),
        /// The cluster is held for its drop, which stops and removes it.
        Postgres(#[allow(dead_code)] pgtest::Cluster, String),
    }

    impl Db {
        fn sqlite() -> Db {
            Db::Sqlite(tempfile::tempdir().unwrap())
        }

        fn postgres() -> Db {
            let cluster = pgtest::Cluster::start();
            let url = cluster.create_database("store");
            Db::Postgres(cluster, url)
        }

        async fn open(&self) -> Store {
            match self {
                Db::Sqlite(dir) => Store::open(&dir.path().join("db")).await.unwrap(),
                Db::Postgres(_, url) => Store::connect(url).await.unwrap(),
            }
        }

        async fn try_open(&self) -> Result<Store, StoreError> {
            match self {
                Db::Sqlite(dir) => Store::open(&dir.path().join("db")).await,
                Db::Postgres(_, url) => Store::connect(url).await,
            }
        }
    }

    /// `$case(Db)` as two tests, `…::sqlite` and `…::postgres`.
    macro_rules! on_both_engines {
        ($($case:ident),* $(,)?) => {$(
            mod $case {
                #[tokio::test(flavor = "multi_thread")]
                async fn sqlite() {
                    super::$case(super::Db::sqlite()).await
                }
                #[tokio::test(flavor = "multi_thread")]
                async fn postgres() {
                    super::$case(super::Db::postgres()).await
                }
            }
        )*};
    }

    on_both_engines!(
        tokens_work_once_and_survive_reopen,
        standing_changes_persist,
        expired_tokens_are_refused,
        generations_are_kept,
        concurrent_enrollments_all_succeed,
        a_token_redeemed_at_once_through_two_stores_works_once,
        a_corrupt_secret_is_an_error_naming_its_row_not_an_empty_key,
        a_database_from_a_newer_build_is_refused,
        a_database_is_one_mirrors_and_a_server_with_another_key_is_refused,
        every_change_of_a_volunteers_standing_moves_the_revision_and_is_heard,
        a_published_generation_is_recorded_once_with_its_manifest_and_artifacts,
        one_server_at_a_time_holds_the_publish_lease,
        servers_that_stop_saying_they_are_alive_drop_out_of_the_list,
        a_database_of_an_older_schema_is_migrated_with_its_rows,
    );

    /// The newest generation recorded for `repo`.
    async fn latest(store: &Store, repo: &str) -> u64 {
        let rec = store.latest_generation(repo).await.unwrap();
        rec.expect("a generation recorded").generation
    }

    async fn tokens_work_once_and_survive_reopen(db: Db) {
        let store = db.open().await;
        let token = store.create_enrollment("alpha", "fp", 3600).await.unwrap();
        assert!(token.ends_with(".fp"));
        let rec = store.redeem(&token, "http://127.0.0.1:1").await.unwrap();
        assert_eq!(rec.name, "alpha");
        assert_eq!(rec.secret.len(), 32);
        assert!(matches!(
            store.redeem(&token, "http://x").await,
            Err(StoreError::BadToken)
        ));
        assert!(matches!(
            store.redeem("nodot", "http://x").await,
            Err(StoreError::MalformedToken)
        ));
        assert!(matches!(
            store
                .redeem(&format!("{}.fp", "0".repeat(32)), "http://x")
                .await,
            Err(StoreError::BadToken)
        ));
        store.pool.close().await;
        let store = db.open().await;
        let vs = store.volunteers().await.unwrap();
        assert_eq!(vs.len(), 1);
        assert_eq!(vs[0].secret, rec.secret);
        assert!(matches!(
            store.create_enrollment("alpha", "fp", 3600).await,
            Err(StoreError::NameTaken(_))
        ));
    }

    async fn standing_changes_persist(db: Db) {
        let store = db.open().await;
        let token = store.create_enrollment("beta", "fp", 3600).await.unwrap();
        let rec = store.redeem(&token, "http://127.0.0.1:1").await.unwrap();
        assert!(store.set_draining("beta", true).await.unwrap().draining);
        store
            .set_quarantine(&rec.id, Some("bad bytes"))
            .await
            .unwrap();
        store.pool.close().await;
        // Reopening finds every migration applied and runs none.
        let store = db.open().await;
        let v = &store.volunteers().await.unwrap()[0];
        assert!(v.draining);
        assert_eq!(v.quarantine.as_deref(), Some("bad bytes"));
        assert!(store.release("beta").await.unwrap().quarantine.is_none());
        assert!(!store.set_draining("beta", false).await.unwrap().draining);
        assert!(store.revoke("beta").await.unwrap().revoked);
        // A revoked volunteer is gone for every later change.
        assert!(matches!(
            store.revoke("beta").await,
            Err(StoreError::NoSuchVolunteer(_))
        ));
        assert!(matches!(
            store.set_draining("nobody", true).await,
            Err(StoreError::NoSuchVolunteer(_))
        ));
        // Its name can be enrolled again.
        let token = store.create_enrollment("beta", "fp", 3600).await.unwrap();
        assert!(!store.redeem(&token, "http://y").await.unwrap().revoked);
    }

    async fn expired_tokens_are_refused(db: Db) {
        let store = db.open().await;
        let token = store.create_enrollment("b", "fp", 0).await.unwrap();
        assert!(matches!(
            store.redeem(&token, "http://x").await,
            Err(StoreError::BadToken)
        ));
    }

    async fn generations_are_kept(db: Db) {
        let store = db.open().await;
        assert_eq!(store.latest_generation("r").await.unwrap(), None);
        for g in 1..=3 {
            let rec = GenerationRecord {
                repo: "r".into(),
                generation: g,
                published_at: g,
                files: 1,
                bytes: 2,
                changed_files: 1,
            };
            store.record_generation(&rec).await.unwrap();
        }
        assert_eq!(latest(&store, "r").await, 3);
        // Recorded again (a publish retried): replaced, not doubled.
        let again = GenerationRecord {
            repo: "r".into(),
            generation: 3,
            published_at: 30,
            files: 5,
            bytes: 6,
            changed_files: 2,
        };
        store.record_generation(&again).await.unwrap();
        assert_eq!(store.latest_generation("r").await.unwrap(), Some(again));
    }

    async fn concurrent_enrollments_all_succeed(db: Db) {
        let store = db.open().await;
        let mut set = tokio::task::JoinSet::new();
        for i in 0..6 {
            let token = store
                .create_enrollment(&format!("v{i}"), "fp", 60)
                .await
                .unwrap();
            let s = store.clone();
            set.spawn(async move { s.redeem(&token, "http://x").await.map(|r| r.name) });
        }
        let mut names = Vec::new();
        while let Some(r) = set.join_next().await {
            names.push(r.unwrap().unwrap());
        }
        assert_eq!(names.len(), 6);
        assert_eq!(store.volunteers().await.unwrap().len(), 6);
    }

    /// Two servers on one database (replicas, or `enroll` beside a server) take the same
    /// token at the same moment: one gets the volunteer, the other is refused.
    async fn a_token_redeemed_at_once_through_two_stores_works_once(db: Db) {
        let (a, b) = (db.open().await, db.open().await);
        for i in 0..8 {
            let token = a
                .create_enrollment(&format!("w{i}"), "fp", 60)
                .await
                .unwrap();
            let (ra, rb) = tokio::join!(a.redeem(&token, "http://a"), b.redeem(&token, "http://b"));
            let won = [&ra, &rb].iter().filter(|r| r.is_ok()).count();
            assert_eq!(won, 1, "{ra:?} {rb:?}");
            for r in [ra, rb] {
                assert!(matches!(r, Ok(_) | Err(StoreError::BadToken)), "{r:?}");
            }
        }
        assert_eq!(b.volunteers().await.unwrap().len(), 8);
    }

    async fn a_corrupt_secret_is_an_error_naming_its_row_not_an_empty_key(db: Db) {
        let store = db.open().await;
        let token = store.create_enrollment("gamma", "fp", 60).await.unwrap();
        let rec = store.redeem(&token, "http://x").await.unwrap();
        for bad in ["not hex", ""] {
            sqlx::query("UPDATE volunteers SET secret_hex = $1 WHERE id = $2")
                .bind(bad)
                .bind(&rec.id)
                .execute(&store.pool)
                .await
                .unwrap();
            let err = store.volunteers().await.unwrap_err();
            assert!(
                matches!(&err, StoreError::CorruptRow { table: "volunteers", key, .. } if key == &format!("id={}", rec.id)),
                "{err}"
            );
            assert!(err.to_string().contains("secret_hex"), "{err}");
        }
    }

    async fn a_database_from_a_newer_build_is_refused(db: Db) {
        let store = db.open().await;
        // What a later build's migration 999 would leave behind.
        sqlx::query(
            "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (999, 'later', $1, $2, 0)",
        )
        .bind(true)
        .bind(vec![0u8])
        .execute(&store.pool)
        .await
        .unwrap();
        store.pool.close().await;
        let err = db.try_open().await.err().expect("refused");
        assert!(
            matches!(err, StoreError::NewerSchema { theirs: 999, ours } if ours == SQLITE_MIGRATIONS.len() as i64),
            "{err}"
        );
        assert!(
            err.to_string()
                .contains("version 999, newer than this mirrorswarm's (version 4)"),
            "{err}"
        );
    }

    async fn a_published_generation_is_recorded_once_with_its_manifest_and_artifacts(db: Db) {
        let (a, b) = (db.open().await, db.open().await);
        let record = |generation| GenerationRecord {
            repo: "r".into(),
            generation,
            published_at: 5,
            files: 2,
            bytes: 9,
            changed_files: 1,
        };
        let art = Artifact {
            sha256: "ab".repeat(32),
            torrent: vec![1, 2, 0, 3],
            signature: vec![0xff; 300],
        };
        assert_eq!(b.latest_published("r").await.unwrap(), None);
        let before = b.revision("generations").await.unwrap();
        a.record_published(
            &record(1),
            b"signed one",
            "http://a",
            std::slice::from_ref(&art),
        )
        .await
        .unwrap();
        assert!(b.revision("generations").await.unwrap() > before);
        assert_eq!(
            b.latest_published("r").await.unwrap(),
            Some((1, "http://a".to_string()))
        );
        assert_eq!(latest(&b, "r").await, 1);
        assert_eq!(
            b.signed_manifest("r", 1).await.unwrap().as_deref(),
            Some(&b"signed one"[..])
        );
        assert_eq!(b.signed_manifest("r", 2).await.unwrap(), None);
        assert_eq!(b.artifact(&art.sha256).await.unwrap(), Some(art.clone()));
        assert_eq!(b.artifact(&"cd".repeat(32)).await.unwrap(), None);
        // The same generation again with the same bytes (a republish recording it): fine;
        // with other bytes (two servers racing to publish): refused, the first kept.
        a.record_published(&record(1), b"signed one", "http://a", &[])
            .await
            .unwrap();
        let err = b
            .record_published(&record(1), b"signed other", "http://b", &[])
            .await
            .unwrap_err();
        assert!(
            matches!(err, StoreError::GenerationTaken { generation: 1, .. }),
            "{err}"
        );
        assert_eq!(
            a.signed_manifest("r", 1).await.unwrap().as_deref(),
            Some(&b"signed one"[..])
        );
        b.record_published(
            &record(2),
            b"signed two",
            "http://b",
            std::slice::from_ref(&art),
        )
        .await
        .unwrap();
        assert_eq!(
            a.latest_published("r").await.unwrap(),
            Some((2, "http://b".to_string()))
        );
    }

    async fn a_database_of_an_older_schema_is_migrated_with_its_rows(db: Db) {
        // A database as version 3 left it: version 4 undone by hand.
        let store = db.open().await;
        let token = store.create_enrollment("alpha", "fp", 3600).await.unwrap();
        for undo in [
            "DROP TABLE manifests",
            "DROP TABLE artifacts",
            "DROP TABLE publish_leases",
            "DROP TABLE servers",
            "DELETE FROM revisions WHERE name = 'generations'",
            "DELETE FROM _sqlx_migrations WHERE version = 4",
        ] {
            sqlx::query(undo).execute(&store.pool).await.unwrap();
        }
        store.pool.close().await;
        let store = db.open().await;
        assert_eq!(store.revision("generations").await.unwrap(), 0);
        assert_eq!(store.latest_published("r").await.unwrap(), None);
        assert!(store.redeem(&token, "http://v").await.is_ok());
    }

    async fn servers_that_stop_saying_they_are_alive_drop_out_of_the_list(db: Db) {
        let (a, b) = (db.open().await, db.open().await);
        let within = Duration::from_secs(1);
        let urls = |l: Vec<(String, String)>| l.into_iter().map(|(u, _)| u).collect::<Vec<_>>();
        assert!(a.live_servers(within).await.unwrap().is_empty());
        a.heartbeat("http://b:1", "{}").await.unwrap();
        b.heartbeat("http://a:1", r#"{"n":1}"#).await.unwrap();
        b.heartbeat("http://a:1", r#"{"n":2}"#).await.unwrap();
        let live = b.live_servers(within).await.unwrap();
        assert_eq!(
            live[0],
            ("http://a:1".to_string(), r#"{"n":2}"#.to_string())
        );
        assert_eq!(urls(live), ["http://a:1", "http://b:1"]);
        tokio::time::sleep(Duration::from_millis(2100)).await;
        a.heartbeat("http://a:1", "{}").await.unwrap();
        assert_eq!(urls(b.live_servers(within).await.unwrap()), ["http://a:1"]);
    }

    async fn one_server_at_a_time_holds_the_publish_lease(db: Db) {
        let (a, b) = (db.open().await, db.open().await);
        let ttl = Duration::from_secs(60);
        assert_eq!(a.lease_publish("r", "http://a", ttl).await.unwrap(), None);
        // Renewed by its holder, refused to another, whatever the repository's neighbours do.
        assert_eq!(a.lease_publish("r", "http://a", ttl).await.unwrap(), None);
        assert_eq!(
            b.lease_publish("r", "http://b", ttl).await.unwrap(),
            Some("http://a".to_string())
        );
        assert_eq!(b.lease_publish("s", "http://b", ttl).await.unwrap(), None);
        // Given back: the other takes it; only the holder gives it back.
        a.release_publish("s", "http://a").await.unwrap();
        a.release_publish("r", "http://a").await.unwrap();
        assert_eq!(b.lease_publish("r", "http://b", ttl).await.unwrap(), None);
        // A holder that died: its lease lapses by itself.
        b.release_publish("r", "http://b").await.unwrap();
        assert_eq!(
            b.lease_publish("r", "http://b", Duration::ZERO)
                .await
                .unwrap(),
            None
        );
        tokio::time::sleep(Duration::from_millis(1100)).await;
        assert_eq!(a.lease_publish("r", "http://a", ttl).await.unwrap(), None);
    }

    async fn a_database_is_one_mirrors_and_a_server_with_another_key_is_refused(db: Db) {
        let (a, b) = (db.open().await, db.open().await);
        a.claim_mirror("key-a").await.unwrap();
        // The same key again (a restart, a replica with the key copied): accepted.
        b.claim_mirror("key-a").await.unwrap();
        let err = b.claim_mirror("key-b").await.unwrap_err();
        assert!(
            matches!(&err, StoreError::OtherMirror { ours, theirs } if ours == "key-b" && theirs == "key-a"),
            "{err}"
        );
        assert!(err.to_string().contains("server.key"), "{err}");
    }

    async fn every_change_of_a_volunteers_standing_moves_the_revision_and_is_heard(db: Db) {
        let (a, b) = (db.open().await, db.open().await);
        let mut heard = match b.listen().await {
            Some(l) => Some(l.unwrap()),
            None => {
                assert_eq!(b.backend(), Backend::Sqlite);
                None
            }
        };
        let mut last = b.revision("volunteers").await.unwrap();
        let token = a.create_enrollment("delta", "fp", 60).await.unwrap();
        // A token alone changes no standing.
        assert_eq!(b.revision("volunteers").await.unwrap(), last);
        let rec = a.redeem(&token, "http://d").await.unwrap();
        let changes: [&str; 6] = [
            "redeem",
            "drain",
            "resume",
            "quarantine",
            "release",
            "revoke",
        ];
        for (i, change) in changes.iter().enumerate() {
            match i {
                0 => {}
                1 => drop(a.set_draining("delta", true).await.unwrap()),
                2 => drop(a.set_draining("delta", false).await.unwrap()),
                3 => a.set_quarantine(&rec.id, Some("bad")).await.unwrap(),
                4 => drop(a.release("delta").await.unwrap()),
                _ => drop(a.revoke("delta").await.unwrap()),
            }
            let now = b.revision("volunteers").await.unwrap();
            assert!(now > last, "{change}: revision {last} → {now}");
            last = now;
            if let Some(l) = heard.as_mut() {
                let n = tokio::time::timeout(Duration::from_secs(5), l.recv())
                    .await
                    .unwrap_or_else(|_| panic!("{change}: no notification"))
                    .unwrap();
                assert_eq!(n.payload(), "volunteers");
            }
        }
        // A change refused (no such volunteer) moves nothing.
        assert!(a.revoke("delta").await.is_err());
        assert_eq!(b.revision("volunteers").await.unwrap(), last);
    }

    /// `migrate-store`: everything a SQLite store holds moves into an empty PostgreSQL one,
    /// and not into one that holds anything.
    #[tokio::test(flavor = "multi_thread")]
    async fn a_sqlite_store_moves_whole_into_an_empty_postgresql_one_and_only_an_empty_one() {
        let from = Db::sqlite();
        let src = from.open().await;
        src.claim_mirror("key-m").await.unwrap();
        let t = src.create_enrollment("eps", "fp", 3600).await.unwrap();
        let rec = src.redeem(&t, "http://e").await.unwrap();
        src.set_quarantine(&rec.id, Some("bad")).await.unwrap();
        src.create_enrollment("zeta", "fp", 3600).await.unwrap();
        let g = GenerationRecord {
            repo: "r".into(),
            generation: 7,
            published_at: 9,
            files: 3,
            bytes: 4,
            changed_files: 1,
        };
        src.record_generation(&g).await.unwrap();
        let dump = src.dump().await.unwrap();
        let to = Db::postgres();
        let dst = to.open().await;
        dst.load(&dump).await.unwrap();
        let moved = dst.dump().await.unwrap();
        assert_eq!(moved.mirror.as_deref(), Some("key-m"));
        assert_eq!(moved.tokens, dump.tokens);
        assert_eq!(moved.generations, vec![g]);
        let v = &moved.volunteers[0];
        assert_eq!((v.id.as_str(), &v.secret), (rec.id.as_str(), &rec.secret));
        assert_eq!(v.quarantine.as_deref(), Some("bad"));
        // The moved token still works once; the used one does not.
        assert!(matches!(
            dst.redeem(&t, "http://e").await,
            Err(StoreError::BadToken)
        ));
        dst.claim_mirror("key-m").await.unwrap();
        // Into a store that holds anything: refused, nothing written.
        let err = dst.load(&dump).await.unwrap_err();
        assert!(matches!(err, StoreError::NotEmpty(_)), "{err}");
        assert_eq!(dst.volunteers().await.unwrap().len(), 1);
    }

    /// A database made before versioned migrations (SQLite only: PostgreSQL came after):
    /// the first tables, without `quarantine`.
    async fn legacy_database(path: &Path) {
        let opts = SqliteConnectOptions::from_str("sqlite:")
            .unwrap()
            .filename(path)
            .create_if_missing(true);
        let pool = sqlx::SqlitePool::connect_with(opts).await.unwrap();
        for stmt in [
            "CREATE TABLE volunteers (id TEXT PRIMARY KEY, name TEXT NOT NULL UNIQUE, secret_hex TEXT NOT NULL, url TEXT NOT NULL, enrolled_at INTEGER NOT NULL, revoked INTEGER NOT NULL DEFAULT 0, draining INTEGER NOT NULL DEFAULT 0)",
            "CREATE TABLE enrollment_tokens (token_hash TEXT PRIMARY KEY, name TEXT NOT NULL, created_at INTEGER NOT NULL, expires_at INTEGER NOT NULL, used_at INTEGER)",
            "CREATE TABLE generations (repo TEXT NOT NULL, generation INTEGER NOT NULL, published_at INTEGER NOT NULL, files INTEGER NOT NULL, bytes INTEGER NOT NULL, changed_files INTEGER NOT NULL, PRIMARY KEY (repo, generation))",
            "INSERT INTO volunteers (id, name, secret_hex, url, enrolled_at, draining) VALUES ('v1', 'old', '0101010101010101010101010101010101010101010101010101010101010101', 'http://x', 7, 1)",
            "INSERT INTO generations VALUES ('r', 4, 9, 1, 2, 1)",
        ] {
            sqlx::query(stmt).execute(&pool).await.unwrap();
        }
        pool.close().await;
    }

    #[tokio::test]
    async fn a_database_from_before_versioned_migrations_is_adopted_with_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        legacy_database(&db).await;
        for _ in 0..2 {
            let store = Store::open(&db).await.unwrap();
            let v = &store.volunteers().await.unwrap()[0];
            assert_eq!(
                (v.name.as_str(), v.enrolled_at, v.draining),
                ("old", 7, true)
            );
            assert_eq!(v.secret, vec![1u8; 32]);
            store.set_quarantine("v1", Some("why")).await.unwrap();
            assert_eq!(latest(&store, "r").await, 4);
        }
    }

    #[tokio::test]
    async fn urls_name_their_engine_and_bad_ones_are_refused_without_their_password() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("by-url.db");
        let store = Store::connect(&format!("sqlite://{}", path.display()))
            .await
            .unwrap();
        assert_eq!(store.backend(), Backend::Sqlite);
        assert!(path.is_file());
        for bad in [
            "mysql://u:secret@h/db",
            "sqlite://",
            "just-a-path",
            "postgres//x",
        ] {
            let err = Store::connect(bad).await.err().expect("refused");
            assert!(matches!(err, StoreError::BadUrl(_)), "{bad}: {err}");
            assert!(!err.to_string().contains("secret"), "{err}");
        }
        // Nothing listens there: refused at once, the reason given, the password hidden.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("postgres://u:hunter2@127.0.0.1:{port}/db");
        let err = Store::connect(&url).await.err().expect("refused");
        assert!(matches!(err, StoreError::Connect { .. }), "{err}");
        let text = err.to_string();
        assert!(
            !text.contains("hunter2") && text.contains("127.0.0.1"),
            "{text}"
        );
    }

    #[test]
    fn a_wrong_database_name_is_refused_with_the_reason() {
        let cluster = pgtest::Cluster::start();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let err = rt
            .block_on(Store::connect(&cluster.url("no_such_db")))
            .err()
            .expect("refused");
        assert!(err.to_string().contains("no_such_db"), "{err}");
    }
}
