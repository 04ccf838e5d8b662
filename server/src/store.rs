//! The server's durable state in an embedded SQLite database: volunteers and their
//! credentials, enrollment tokens, and the history of published generations.
//!
//! Everything else (live load, which generation a volunteer holds) is soft state rebuilt from
//! announces after a restart. The database runs in WAL mode so `mirrorswarm enroll` can write
//! while the server runs.

use std::path::Path;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use rand::RngCore;
use sha2::Digest;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::Row;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    #[error("enrollment token is unknown, already used, or expired")]
    BadToken,
    #[error("malformed enrollment token: expected <secret>.<server key fingerprint>")]
    MalformedToken,
    #[error("a volunteer named `{0}` is already enrolled")]
    NameTaken(String),
    #[error("no volunteer named `{0}` is enrolled")]
    NoSuchVolunteer(String),
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

#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
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

const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS volunteers (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL UNIQUE,
        secret_hex TEXT NOT NULL,
        url TEXT NOT NULL,
        enrolled_at INTEGER NOT NULL,
        revoked INTEGER NOT NULL DEFAULT 0,
        draining INTEGER NOT NULL DEFAULT 0)",
    "CREATE TABLE IF NOT EXISTS enrollment_tokens (
        token_hash TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        expires_at INTEGER NOT NULL,
        used_at INTEGER)",
    "CREATE TABLE IF NOT EXISTS generations (
        repo TEXT NOT NULL,
        generation INTEGER NOT NULL,
        published_at INTEGER NOT NULL,
        files INTEGER NOT NULL,
        bytes INTEGER NOT NULL,
        changed_files INTEGER NOT NULL,
        PRIMARY KEY (repo, generation))",
];

/// Columns added after the first release, for databases created before them. Adding a column
/// that exists fails with "duplicate column", which is the expected case on every later start.
const MIGRATIONS: &[&str] = &["ALTER TABLE volunteers ADD COLUMN quarantine TEXT"];

const VOLUNTEER_COLUMNS: &str =
    "id, name, secret_hex, url, enrolled_at, revoked, draining, quarantine";

fn volunteer_from_row(r: &sqlx::sqlite::SqliteRow) -> VolunteerRecord {
    VolunteerRecord {
        id: r.get(0),
        name: r.get(1),
        secret: hex::decode(r.get::<String, _>(2)).unwrap_or_default(),
        url: r.get(3),
        enrolled_at: r.get::<i64, _>(4) as u64,
        revoked: r.get::<i64, _>(5) != 0,
        draining: r.get::<i64, _>(6) != 0,
        quarantine: r.get(7),
    }
}

impl Store {
    /// Open (creating if needed) the database at `path`.
    pub async fn open(path: &Path) -> Result<Store, StoreError> {
        let opts = SqliteConnectOptions::from_str("sqlite:")?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(std::time::Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await?;
        for stmt in SCHEMA {
            sqlx::query(stmt).execute(&pool).await?;
        }
        for stmt in MIGRATIONS {
            match sqlx::query(stmt).execute(&pool).await {
                Ok(_) => {}
                Err(sqlx::Error::Database(e)) if e.message().contains("duplicate column") => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(Store { pool })
    }

    /// Create a one-time enrollment token for a volunteer called `name`. The returned token is
    /// `<secret>.<fingerprint>`; only the secret's hash is stored.
    pub async fn create_enrollment(
        &self,
        name: &str,
        fingerprint: &str,
        ttl_secs: u64,
    ) -> Result<String, StoreError> {
        let taken = sqlx::query("SELECT 1 FROM volunteers WHERE name = ? AND revoked = 0")
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
        if taken.is_some() {
            return Err(StoreError::NameTaken(name.to_string()));
        }
        let secret = random_hex(16);
        let now = now_secs();
        sqlx::query("INSERT INTO enrollment_tokens (token_hash, name, created_at, expires_at) VALUES (?, ?, ?, ?)")
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
        let row = sqlx::query(
            "UPDATE enrollment_tokens SET used_at = ? WHERE token_hash = ? AND used_at IS NULL AND expires_at > ? RETURNING name",
        )
        .bind(now)
        .bind(token_hash(secret_part))
        .bind(now)
        .fetch_optional(&mut *tx)
        .await?;
        let name: String = match row {
            Some(r) => r.get(0),
            None => return Err(StoreError::BadToken),
        };
        // A re-enrolled name replaces a revoked record of the same name.
        sqlx::query("DELETE FROM volunteers WHERE name = ? AND revoked = 1")
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
            "INSERT INTO volunteers (id, name, secret_hex, url, enrolled_at) VALUES (?, ?, ?, ?, ?)",
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
        tx.commit().await?;
        Ok(rec)
    }

    pub async fn volunteers(&self) -> Result<Vec<VolunteerRecord>, StoreError> {
        let rows = sqlx::query(&format!(
            "SELECT {VOLUNTEER_COLUMNS} FROM volunteers ORDER BY name"
        ))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.iter().map(volunteer_from_row).collect())
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
        sqlx::query("UPDATE volunteers SET quarantine = ? WHERE id = ?")
            .bind(reason)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn update_by_name(
        &self,
        name: &str,
        set: &'static str,
    ) -> Result<VolunteerRecord, StoreError> {
        let row = sqlx::query(&format!(
            "UPDATE volunteers SET {set} WHERE name = ? AND revoked = 0 RETURNING {VOLUNTEER_COLUMNS}"
        ))
        .bind(name)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref()
            .map(volunteer_from_row)
            .ok_or_else(|| StoreError::NoSuchVolunteer(name.to_string()))
    }

    /// Lift the quarantine of the volunteer called `name` by hand.
    pub async fn release(&self, name: &str) -> Result<VolunteerRecord, StoreError> {
        self.update_by_name(name, "quarantine = NULL").await
    }

    pub async fn record_generation(&self, g: &GenerationRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT OR REPLACE INTO generations (repo, generation, published_at, files, bytes, changed_files) VALUES (?, ?, ?, ?, ?, ?)",
        )
        .bind(&g.repo)
        .bind(g.generation as i64)
        .bind(g.published_at as i64)
        .bind(g.files as i64)
        .bind(g.bytes as i64)
        .bind(g.changed_files as i64)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn latest_generation(
        &self,
        repo: &str,
    ) -> Result<Option<GenerationRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT repo, generation, published_at, files, bytes, changed_files FROM generations WHERE repo = ? ORDER BY generation DESC LIMIT 1",
        )
        .bind(repo)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| GenerationRecord {
            repo: r.get(0),
            generation: r.get::<i64, _>(1) as u64,
            published_at: r.get::<i64, _>(2) as u64,
            files: r.get::<i64, _>(3) as u64,
            bytes: r.get::<i64, _>(4) as u64,
            changed_files: r.get::<i64, _>(5) as u64,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tokens_work_once_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db.sqlite");
        let store = Store::open(&db).await.unwrap();
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
        drop(store);
        let store = Store::open(&db).await.unwrap();
        let vs = store.volunteers().await.unwrap();
        assert_eq!(vs.len(), 1);
        assert_eq!(vs[0].secret, rec.secret);
        assert!(matches!(
            store.create_enrollment("alpha", "fp", 3600).await,
            Err(StoreError::NameTaken(_))
        ));
    }

    #[tokio::test]
    async fn standing_changes_persist() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db.sqlite");
        let store = Store::open(&db).await.unwrap();
        let token = store.create_enrollment("beta", "fp", 3600).await.unwrap();
        let rec = store.redeem(&token, "http://127.0.0.1:1").await.unwrap();
        assert!(store.set_draining("beta", true).await.unwrap().draining);
        store
            .set_quarantine(&rec.id, Some("bad bytes"))
            .await
            .unwrap();
        drop(store);
        // Reopening runs the migrations again: they must be idempotent.
        let store = Store::open(&db).await.unwrap();
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
    }

    #[tokio::test]
    async fn expired_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).await.unwrap();
        let token = store.create_enrollment("b", "fp", 0).await.unwrap();
        assert!(matches!(
            store.redeem(&token, "http://x").await,
            Err(StoreError::BadToken)
        ));
    }

    #[tokio::test]
    async fn generations_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).await.unwrap();
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
        assert_eq!(
            store
                .latest_generation("r")
                .await
                .unwrap()
                .unwrap()
                .generation,
            3
        );
    }

    #[tokio::test]
    async fn concurrent_enrollments_all_succeed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("db")).await.unwrap();
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
}
