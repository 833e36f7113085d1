//! The embedded store: one SQLite file, one connection behind a mutex.
//!
//! Durability: WAL journal with `synchronous = FULL`, so every committed transaction is fsynced
//! before the commit returns (<https://www.sqlite.org/pragma.html#pragma_synchronous>: in WAL
//! mode `NORMAL` may lose the last commits on power loss). Writes use `BEGIN IMMEDIATE` so
//! another process on the same file (the CLI) waits on `busy_timeout` instead of failing
//! mid-transaction.
//!
//! Schema changes are numbered migrations; `PRAGMA user_version` records how many ran.

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use rusqlite::{named_params, params, Connection, OptionalExtension, Row, TransactionBehavior};
use time::OffsetDateTime;

mod accounts;
mod saml;

use super::{
    AuditQuery, AuditStore, OperatorAuditQuery, OperatorAuditStore, PositionedRecord, StoreError,
    MAX_QUERY_LIMIT,
};
use crate::audit::chain::{self, ChainHash, ChainReport, ChainVerifier, GENESIS};
use crate::audit::{
    from_unix_ms, sanitize_text, unix_ms, AuditEvent, AuditRecord, EventKind, Outcome,
};

/// How long a statement waits for another connection's lock before failing.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Schema migrations; entry `i` moves the schema from version `i` to `i + 1`. Append only.
const MIGRATIONS: &[&str] = &[
    // v1: audit log and per-tenant chain head/anchor.
    "CREATE TABLE audit_event (
        id          INTEGER PRIMARY KEY,
        tenant      TEXT    NOT NULL,
        seq         INTEGER NOT NULL,
        time_ms     INTEGER NOT NULL,
        event       TEXT    NOT NULL,
        actor       TEXT,
        subject     TEXT,
        client_ip   TEXT,
        user_agent  TEXT,
        request_id  TEXT,
        outcome     TEXT    NOT NULL,
        reason      TEXT,
        hash        BLOB    NOT NULL,
        UNIQUE (tenant, seq)
    );
    CREATE INDEX audit_event_tenant_time ON audit_event (tenant, time_ms);
    CREATE TABLE audit_chain (
        tenant      TEXT    PRIMARY KEY,
        head_seq    INTEGER NOT NULL,
        head_hash   BLOB    NOT NULL,
        anchor_seq  INTEGER NOT NULL,
        anchor_hash BLOB    NOT NULL
    ) WITHOUT ROWID;",
    // v2: local accounts and sessions (the token itself is never stored, only its SHA-256).
    "CREATE TABLE user (
        tenant              TEXT    NOT NULL,
        username            TEXT    NOT NULL,
        password_hash       TEXT,
        roles               TEXT    NOT NULL,
        disabled            INTEGER NOT NULL,
        created_at          INTEGER NOT NULL,
        password_changed_at INTEGER NOT NULL,
        PRIMARY KEY (tenant, username)
    ) WITHOUT ROWID;
    CREATE TABLE session (
        token_hash   BLOB    PRIMARY KEY,
        id           TEXT    NOT NULL UNIQUE,
        tenant       TEXT    NOT NULL,
        username     TEXT    NOT NULL,
        stage        TEXT    NOT NULL,
        amr          TEXT    NOT NULL,
        csrf         TEXT    NOT NULL,
        return_to    TEXT    NOT NULL,
        created_at   INTEGER NOT NULL,
        last_seen    INTEGER NOT NULL,
        expires_at   INTEGER NOT NULL,
        idle_timeout INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE INDEX session_user ON session (tenant, username);
    CREATE INDEX session_expiry ON session (expires_at);",
    // v3: TOTP second factor. The secret is sealed (AES-256-GCM bound to tenant, user and
    // field); `totp_last_step` makes every time step usable once (RFC 6238 §5.2); recovery
    // codes are stored only as hashes.
    "ALTER TABLE user ADD COLUMN totp_secret TEXT;
    ALTER TABLE user ADD COLUMN totp_last_step INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE session ADD COLUMN pending_totp TEXT;
    CREATE TABLE recovery_code (
        tenant    TEXT NOT NULL,
        username  TEXT NOT NULL,
        code_hash TEXT NOT NULL,
        PRIMARY KEY (tenant, username, code_hash)
    ) WITHOUT ROWID;",
    // v4: SAML. `idp` marks a user provisioned by an IdP (its entity ID; NULL for local
    // accounts), so an IdP's assertion can never sign in as a local account or one of another
    // IdP. Outstanding AuthnRequest IDs, the assertion replay cache and SP signing keys.
    "ALTER TABLE user ADD COLUMN idp TEXT;
    CREATE TABLE saml_request (
        tenant     TEXT    NOT NULL,
        id         TEXT    NOT NULL,
        return_to  TEXT    NOT NULL,
        expires_at INTEGER NOT NULL,
        browser    TEXT    NOT NULL,
        PRIMARY KEY (tenant, id)
    ) WITHOUT ROWID;
    CREATE TABLE saml_replay (
        issuer       TEXT    NOT NULL,
        assertion_id TEXT    NOT NULL,
        keep_until   INTEGER NOT NULL,
        PRIMARY KEY (issuer, assertion_id)
    ) WITHOUT ROWID;
    CREATE TABLE saml_sp_key (
        tenant     TEXT PRIMARY KEY,
        sealed_key TEXT NOT NULL,
        cert_der   BLOB NOT NULL
    ) WITHOUT ROWID;",
    // v5: outstanding AuthnRequests are bounded per tenant, oldest first.
    "CREATE INDEX saml_request_by_expiry ON saml_request (tenant, expires_at);",
];

const RECORD_COLUMNS: &str = "seq, hash, time_ms, tenant, event, actor, subject, client_ip, \
                              user_agent, request_id, outcome, reason";

/// The embedded SQLite store. Safe to share between threads (`Arc<SqliteStore>`).
#[derive(Debug)]
pub struct SqliteStore {
    conn: Mutex<Connection>,
    /// SAML requests stored so far (paces the per-tenant bound check).
    saml_puts: std::sync::atomic::AtomicU64,
}

impl SqliteStore {
    /// Opens (creating if needed, with its parent folders) the database at `path` and brings
    /// its schema up to date. A new file is made readable by its owner only.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| StoreError::CreateDir {
                path: parent.to_path_buf(),
                source,
            })?;
        }
        let is_new = !path.exists();
        let conn = Connection::open(path).ctx("open database")?;
        if is_new {
            restrict_to_owner(path);
        }
        conn.busy_timeout(BUSY_TIMEOUT).ctx("set busy timeout")?;
        let mode: String = conn
            .pragma_update_and_check(None, "journal_mode", "WAL", |row| row.get(0))
            .ctx("enable WAL")?;
        if !mode.eq_ignore_ascii_case("wal") {
            // Still durable (rollback journal + FULL sync), only slower for readers.
            tracing::warn!(journal_mode = %mode, "sqlite store could not enable WAL");
        }
        SqliteStore::init(conn)
    }

    /// A private in-memory database, for tests.
    pub fn open_in_memory() -> Result<SqliteStore, StoreError> {
        let conn = Connection::open_in_memory().ctx("open in-memory database")?;
        SqliteStore::init(conn)
    }

    fn init(mut conn: Connection) -> Result<SqliteStore, StoreError> {
        conn.pragma_update(None, "synchronous", "FULL")
            .ctx("set synchronous=FULL")?;
        migrate(&mut conn)?;
        Ok(SqliteStore {
            conn: Mutex::new(conn),
            saml_puts: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a half-done write behind: an open
        // transaction rolls back when dropped. So a poisoned lock is still safe to use.
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(unix)]
fn restrict_to_owner(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    // SQLite creates the -wal and -shm files with the main file's permissions.
    if let Err(error) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        tracing::warn!(%error, path = %path.display(), "cannot restrict store file permissions");
    }
}

#[cfg(not(unix))]
fn restrict_to_owner(_path: &Path) {}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let supported = MIGRATIONS.len() as i64;
    // IMMEDIATE: two processes opening a new file at once must not both run a migration.
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .ctx("begin migration")?;
    let found: i64 = tx
        .pragma_query_value(None, "user_version", |row| row.get(0))
        .ctx("read schema version")?;
    if found > supported {
        return Err(StoreError::SchemaTooNew { found, supported });
    }
    let done = usize::try_from(found)
        .map_err(|_| StoreError::Corrupt(format!("negative schema version {found}")))?;
    for sql in MIGRATIONS.iter().skip(done) {
        tx.execute_batch(sql).ctx("migrate schema")?;
    }
    tx.pragma_update(None, "user_version", supported)
        .ctx("write schema version")?;
    tx.commit().ctx("commit migration")
}

impl AuditStore for SqliteStore {
    fn append(&self, events: &[AuditEvent]) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx("audit append: begin")?;
        {
            let mut head_of = tx
                .prepare_cached("SELECT head_seq, head_hash FROM audit_chain WHERE tenant = ?1")
                .ctx("audit append: prepare")?;
            let mut insert = tx
                .prepare_cached(
                    "INSERT INTO audit_event (tenant, seq, time_ms, event, actor, subject,
                        client_ip, user_agent, request_id, outcome, reason, hash)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                )
                .ctx("audit append: prepare")?;
            // Chain heads of the tenants in this batch, advanced as records are inserted.
            let mut heads: HashMap<String, (u64, ChainHash)> = HashMap::new();
            for event in events {
                let event = event.sanitized();
                let head = match heads.entry(event.tenant.clone()) {
                    Entry::Occupied(entry) => entry.into_mut(),
                    Entry::Vacant(entry) => {
                        let stored = head_of
                            .query_row([&event.tenant], |row| {
                                Ok((row.get::<_, i64>(0)?, row.get::<_, [u8; 32]>(1)?))
                            })
                            .optional()
                            .ctx("audit append: read chain head")?;
                        let head = match stored {
                            Some((seq, hash)) => (to_u64(seq)?, ChainHash(hash)),
                            None => (0, GENESIS),
                        };
                        entry.insert(head)
                    }
                };
                let seq = head.0 + 1;
                let hash = chain::link(&head.1, seq, &event);
                insert
                    .execute(params![
                        event.tenant,
                        to_i64(seq)?,
                        unix_ms(event.time),
                        event.event.as_str(),
                        event.actor,
                        event.subject,
                        event.client_ip.map(|ip| ip.to_string()),
                        event.user_agent,
                        event.request_id,
                        event.outcome.as_str(),
                        event.reason,
                        hash.0,
                    ])
                    .ctx("audit append: insert")?;
                *head = (seq, hash);
            }
            let mut save_head = tx
                .prepare_cached(
                    "INSERT INTO audit_chain (tenant, head_seq, head_hash, anchor_seq, anchor_hash)
                     VALUES (?1, ?2, ?3, 0, ?4)
                     ON CONFLICT (tenant) DO UPDATE
                     SET head_seq = excluded.head_seq, head_hash = excluded.head_hash",
                )
                .ctx("audit append: prepare")?;
            for (tenant, (seq, hash)) in &heads {
                save_head
                    .execute(params![tenant, to_i64(*seq)?, hash.0, GENESIS.0])
                    .ctx("audit append: save chain head")?;
            }
        }
        tx.commit().ctx("audit append: commit")
    }

    fn query(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        let limit = q.limit.clamp(1, MAX_QUERY_LIMIT);
        let before = q.before_seq.map(to_i64).transpose()?;
        // Stored names went through `sanitize_text`; compare like with like.
        let user = q.user.as_deref().map(sanitize_text);
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {RECORD_COLUMNS} FROM audit_event
                 WHERE tenant = :tenant
                   AND (:since IS NULL OR time_ms >= :since)
                   AND (:until IS NULL OR time_ms < :until)
                   AND (:event IS NULL OR event = :event)
                   AND (:user IS NULL OR actor = :user OR subject = :user)
                   AND (:before IS NULL OR seq < :before)
                 ORDER BY seq DESC
                 LIMIT :limit"
            ))
            .ctx("audit query: prepare")?;
        let mut rows = stmt
            .query(named_params! {
                ":tenant": q.tenant,
                ":since": q.since.map(unix_ms),
                ":until": q.until.map(unix_ms),
                ":event": q.event.map(EventKind::as_str),
                ":user": user,
                ":before": before,
                ":limit": limit,
            })
            .ctx("audit query")?;
        let mut records = Vec::new();
        while let Some(row) = rows.next().ctx("audit query: read")? {
            records.push(read_record(row)?);
        }
        Ok(records)
    }

    fn prune(&self, tenant: &str, older_than: OffsetDateTime) -> Result<u64, StoreError> {
        let mut conn = self.lock();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .ctx("audit prune: begin")?;
        // The newest record that goes: the one just before the first record to keep.
        let last_pruned = tx
            .query_row(
                "SELECT seq, hash FROM audit_event
                 WHERE tenant = ?1 AND seq < COALESCE(
                     (SELECT MIN(seq) FROM audit_event WHERE tenant = ?1 AND time_ms >= ?2),
                     9223372036854775807)
                 ORDER BY seq DESC LIMIT 1",
                params![tenant, unix_ms(older_than)],
                |row| Ok((row.get::<_, i64>(0)?, row.get::<_, [u8; 32]>(1)?)),
            )
            .optional()
            .ctx("audit prune: find cutoff")?;
        let Some((seq, hash)) = last_pruned else {
            return Ok(0);
        };
        let deleted = tx
            .execute(
                "DELETE FROM audit_event WHERE tenant = ?1 AND seq <= ?2",
                params![tenant, seq],
            )
            .ctx("audit prune: delete")?;
        tx.execute(
            "UPDATE audit_chain SET anchor_seq = ?2, anchor_hash = ?3 WHERE tenant = ?1",
            params![tenant, seq, hash],
        )
        .ctx("audit prune: move anchor")?;
        tx.commit().ctx("audit prune: commit")?;
        Ok(deleted as u64)
    }

    fn verify_chain(&self, tenant: &str) -> Result<ChainReport, StoreError> {
        let conn = self.lock();
        let chain_row = conn
            .query_row(
                "SELECT head_seq, head_hash, anchor_seq, anchor_hash
                 FROM audit_chain WHERE tenant = ?1",
                [tenant],
                |row| {
                    Ok((
                        row.get::<_, i64>(0)?,
                        row.get::<_, [u8; 32]>(1)?,
                        row.get::<_, i64>(2)?,
                        row.get::<_, [u8; 32]>(3)?,
                    ))
                },
            )
            .optional()
            .ctx("audit verify: read chain")?;
        let (head_seq, head_hash, anchor_seq, anchor_hash) = match chain_row {
            Some((hs, hh, a, ah)) => (to_u64(hs)?, ChainHash(hh), to_u64(a)?, ChainHash(ah)),
            None => (0, GENESIS, 0, GENESIS),
        };
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {RECORD_COLUMNS} FROM audit_event
                 WHERE tenant = ?1 AND seq > ?2 ORDER BY seq"
            ))
            .ctx("audit verify: prepare")?;
        let mut rows = stmt
            .query(params![tenant, to_i64(anchor_seq)?])
            .ctx("audit verify")?;
        let mut verifier = ChainVerifier::new(anchor_seq, anchor_hash);
        while let Some(row) = rows.next().ctx("audit verify: read")? {
            if let Err(broken) = verifier.check(&read_record(row)?) {
                return Ok(ChainReport::Broken(broken));
            }
        }
        Ok(verifier.finish(head_seq, &head_hash))
    }
}

impl OperatorAuditStore for SqliteStore {
    fn query_all(&self, q: &OperatorAuditQuery) -> Result<Vec<PositionedRecord>, StoreError> {
        let limit = q.limit.clamp(1, MAX_QUERY_LIMIT);
        let before = q.before_position.map(to_i64).transpose()?;
        let user = q.user.as_deref().map(sanitize_text);
        let conn = self.lock();
        // `id` is the rowid: it grows with every insert, so it orders records across tenants.
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {RECORD_COLUMNS}, id FROM audit_event
                 WHERE (:tenant IS NULL OR tenant = :tenant)
                   AND (:since IS NULL OR time_ms >= :since)
                   AND (:until IS NULL OR time_ms < :until)
                   AND (:event IS NULL OR event = :event)
                   AND (:user IS NULL OR actor = :user OR subject = :user)
                   AND (:before IS NULL OR id < :before)
                 ORDER BY id DESC
                 LIMIT :limit"
            ))
            .ctx("audit query all: prepare")?;
        let mut rows = stmt
            .query(named_params! {
                ":tenant": q.tenant,
                ":since": q.since.map(unix_ms),
                ":until": q.until.map(unix_ms),
                ":event": q.event.map(EventKind::as_str),
                ":user": user,
                ":before": before,
                ":limit": limit,
            })
            .ctx("audit query all")?;
        let mut records = Vec::new();
        while let Some(row) = rows.next().ctx("audit query all: read")? {
            let position = to_u64(row.get(12).ctx("audit query all: read")?)?;
            records.push(PositionedRecord {
                position,
                record: read_record(row)?,
            });
        }
        Ok(records)
    }
}

/// Reads a row selected with [`RECORD_COLUMNS`].
fn read_record(row: &Row<'_>) -> Result<AuditRecord, StoreError> {
    let ctx = "audit: read record";
    let seq = to_u64(row.get(0).ctx(ctx)?)?;
    let time_ms: i64 = row.get(2).ctx(ctx)?;
    let event_name: String = row.get(4).ctx(ctx)?;
    let outcome_name: String = row.get(10).ctx(ctx)?;
    let client_ip = row
        .get::<_, Option<String>>(7)
        .ctx(ctx)?
        .map(|ip| {
            ip.parse::<IpAddr>()
                .map_err(|_| StoreError::Corrupt(format!("audit record {seq}: bad client ip")))
        })
        .transpose()?;
    let event = AuditEvent {
        time: from_unix_ms(time_ms)
            .ok_or_else(|| StoreError::Corrupt(format!("audit record {seq}: bad time")))?,
        tenant: row.get(3).ctx(ctx)?,
        event: event_name
            .parse()
            .map_err(|e| StoreError::Corrupt(format!("audit record {seq}: {e}")))?,
        actor: row.get(5).ctx(ctx)?,
        subject: row.get(6).ctx(ctx)?,
        client_ip,
        user_agent: row.get(8).ctx(ctx)?,
        request_id: row.get(9).ctx(ctx)?,
        outcome: Outcome::from_name(&outcome_name)
            .ok_or_else(|| StoreError::Corrupt(format!("audit record {seq}: bad outcome")))?,
        reason: row.get(11).ctx(ctx)?,
    };
    Ok(AuditRecord {
        seq,
        hash: ChainHash(row.get(1).ctx(ctx)?),
        event,
    })
}

fn to_i64(value: u64) -> Result<i64, StoreError> {
    i64::try_from(value).map_err(|_| StoreError::Corrupt(format!("sequence {value} out of range")))
}

fn to_u64(value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("negative sequence {value}")))
}

/// Attaches what the store was doing to a SQLite error.
trait Context<T> {
    fn ctx(self, context: &'static str) -> Result<T, StoreError>;
}

impl<T> Context<T> for rusqlite::Result<T> {
    fn ctx(self, context: &'static str) -> Result<T, StoreError> {
        self.map_err(|source| StoreError::Sqlite { context, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::chain::ChainBreak;
    use crate::audit::OPERATOR_TENANT;
    use std::net::Ipv4Addr;

    fn at(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(secs).expect("valid test time")
    }

    fn denied(tenant: &str, secs: i64, reason: &str) -> AuditEvent {
        AuditEvent {
            reason: Some(reason.to_owned()),
            ..AuditEvent::new(at(secs), tenant, EventKind::RequestDenied, Outcome::Denied)
        }
    }

    fn reasons(records: &[AuditRecord]) -> Vec<&str> {
        records
            .iter()
            .map(|r| r.event.reason.as_deref().unwrap_or(""))
            .collect()
    }

    fn file_store() -> (tempfile::TempDir, SqliteStore) {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = SqliteStore::open(&dir.path().join("p.db")).expect("open");
        (dir, store)
    }

    fn intact(store: &SqliteStore, tenant: &str) -> u64 {
        match store.verify_chain(tenant).expect("verify") {
            ChainReport::Intact { records } => records,
            ChainReport::Broken(b) => panic!("chain of {tenant} broken: {b}"),
        }
    }

    #[test]
    fn appended_event_reads_back_with_every_field() {
        let (_dir, store) = file_store();
        let event = AuditEvent {
            actor: Some("alice".into()),
            subject: Some("route:admin".into()),
            client_ip: Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))),
            user_agent: Some("curl/8.5".into()),
            request_id: Some("req-1".into()),
            reason: Some("unauthenticated".into()),
            ..AuditEvent::new(
                at(1_700_000_000) + Duration::from_millis(250),
                "acme",
                EventKind::RequestDenied,
                Outcome::Denied,
            )
        };
        store.append(std::slice::from_ref(&event)).expect("append");

        let records = store.query(&AuditQuery::new("acme")).expect("query");
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].seq, 1);
        assert_eq!(records[0].event, event);
        assert_eq!(records[0].hash, chain::link(&GENESIS, 1, &event));
    }

    #[test]
    fn stored_free_text_is_escaped_and_truncated() {
        let store = SqliteStore::open_in_memory().expect("open");
        let event = AuditEvent {
            user_agent: Some(format!("evil\r\nfake: entry{}", "x".repeat(2000))),
            ..denied("acme", 1, "bell\u{7}")
        };
        store.append(&[event]).expect("append");
        let stored = &store.query(&AuditQuery::new("acme")).expect("query")[0].event;
        assert_eq!(stored.reason.as_deref(), Some("bell\\x07"));
        let ua = stored.user_agent.as_deref().expect("user agent");
        assert!(ua.starts_with("evil\\x0d\\x0afake: entry"));
        assert!(ua.len() <= crate::audit::MAX_FIELD_BYTES && ua.ends_with('…'));
    }

    #[test]
    fn query_never_returns_other_tenants_events() {
        let store = SqliteStore::open_in_memory().expect("open");
        store
            .append(&[
                denied("acme", 1, "a1"),
                denied("globex", 2, "g1"),
                denied("acme", 3, "a2"),
                AuditEvent::new(
                    at(4),
                    OPERATOR_TENANT,
                    EventKind::ConfigReloaded,
                    Outcome::Success,
                ),
            ])
            .expect("append");

        let acme = store.query(&AuditQuery::new("acme")).expect("query");
        assert_eq!(reasons(&acme), ["a2", "a1"]);
        assert!(acme.iter().all(|r| r.event.tenant == "acme"));
        let globex = store.query(&AuditQuery::new("globex")).expect("query");
        assert_eq!(reasons(&globex), ["g1"]);
        // Each tenant has its own chain, numbered from 1.
        assert_eq!(globex[0].seq, 1);
        assert!(store.query(&AuditQuery::new("")).expect("query").is_empty());
        assert!(store
            .query(&AuditQuery::new("%"))
            .expect("query")
            .is_empty());
        let operator = store
            .query(&AuditQuery::new(OPERATOR_TENANT))
            .expect("query");
        assert_eq!(operator.len(), 1);
    }

    #[test]
    fn operator_query_reads_across_tenants_and_pages_by_position() {
        let store = SqliteStore::open_in_memory().expect("open");
        store
            .append(&[
                denied("acme", 1, "a1"),
                denied("globex", 2, "g1"),
                AuditEvent {
                    actor: Some("alice".into()),
                    ..denied("acme", 3, "a2")
                },
                AuditEvent::new(
                    at(4),
                    OPERATOR_TENANT,
                    EventKind::ConfigReloaded,
                    Outcome::Success,
                ),
            ])
            .expect("append");
        let all = |q: &OperatorAuditQuery| -> Vec<(String, u64)> {
            store
                .query_all(q)
                .expect("query all")
                .into_iter()
                .map(|p| (p.record.event.tenant, p.record.seq))
                .collect()
        };
        let mut q = OperatorAuditQuery {
            tenant: None,
            since: None,
            until: None,
            event: None,
            user: None,
            before_position: None,
            limit: 3,
        };
        assert_eq!(
            all(&q),
            [
                (OPERATOR_TENANT.to_string(), 1),
                ("acme".to_string(), 2),
                ("globex".to_string(), 1)
            ]
        );
        let last = store.query_all(&q).expect("page")[2].position;
        q.before_position = Some(last);
        assert_eq!(all(&q), [("acme".to_string(), 1)]);

        let one = OperatorAuditQuery {
            tenant: Some("globex".into()),
            before_position: None,
            ..q.clone()
        };
        assert_eq!(all(&one), [("globex".to_string(), 1)]);
        let by_user = OperatorAuditQuery {
            user: Some("alice".into()),
            before_position: None,
            ..q.clone()
        };
        assert_eq!(all(&by_user), [("acme".to_string(), 2)]);
        let by_event = OperatorAuditQuery {
            event: Some(EventKind::ConfigReloaded),
            before_position: None,
            ..q
        };
        assert_eq!(all(&by_event), [(OPERATOR_TENANT.to_string(), 1)]);
    }

    #[test]
    fn query_pages_newest_first_with_before_seq() {
        let store = SqliteStore::open_in_memory().expect("open");
        let events: Vec<_> = (1..=5)
            .map(|i| denied("acme", i, &format!("e{i}")))
            .collect();
        store.append(&events).expect("append");

        let mut q = AuditQuery {
            limit: 2,
            ..AuditQuery::new("acme")
        };
        let mut pages = Vec::new();
        loop {
            let page = store.query(&q).expect("query");
            let Some(last) = page.last() else { break };
            q.before_seq = Some(last.seq);
            pages.push(reasons(&page).join(","));
        }
        assert_eq!(pages, ["e5,e4", "e3,e2", "e1"]);
    }

    #[test]
    fn query_filters_by_time_range_event_type_and_user() {
        let store = SqliteStore::open_in_memory().expect("open");
        store
            .append(&[
                denied("acme", 10, "t10"),
                AuditEvent {
                    actor: Some("alice".into()),
                    ..denied("acme", 20, "t20")
                },
                AuditEvent {
                    subject: Some("alice".into()),
                    reason: Some("t30".into()),
                    ..AuditEvent::new(
                        at(30),
                        "acme",
                        EventKind::BadRequestRejected,
                        Outcome::Denied,
                    )
                },
            ])
            .expect("append");
        let run = |q: AuditQuery| reasons(&store.query(&q).expect("query")).join(",");

        let since_until = AuditQuery {
            since: Some(at(20)),
            until: Some(at(30)),
            ..AuditQuery::new("acme")
        };
        assert_eq!(run(since_until), "t20", "since inclusive, until exclusive");
        let by_type = AuditQuery {
            event: Some(EventKind::BadRequestRejected),
            ..AuditQuery::new("acme")
        };
        assert_eq!(run(by_type), "t30");
        let by_user = AuditQuery {
            user: Some("alice".into()),
            ..AuditQuery::new("acme")
        };
        assert_eq!(run(by_user), "t30,t20", "actor or subject");

        store
            .append(&[AuditEvent {
                actor: Some("CORP\\bob".into()),
                ..denied("acme", 40, "t40")
            }])
            .expect("append");
        let escaped_name = AuditQuery {
            user: Some("CORP\\bob".into()),
            ..AuditQuery::new("acme")
        };
        assert_eq!(
            run(escaped_name),
            "t40",
            "filter is escaped like stored names"
        );
    }

    #[test]
    fn query_limit_is_clamped_to_at_least_one_and_at_most_the_maximum() {
        let store = SqliteStore::open_in_memory().expect("open");
        let events: Vec<_> = (0..1005).map(|i| denied("acme", i, "x")).collect();
        store.append(&events).expect("append");
        let count = |limit| {
            store
                .query(&AuditQuery {
                    limit,
                    ..AuditQuery::new("acme")
                })
                .expect("query")
                .len()
        };
        assert_eq!(count(0), 1);
        assert_eq!(count(u32::MAX), MAX_QUERY_LIMIT as usize);
    }

    #[test]
    fn prune_removes_only_that_tenants_events_older_than_the_cutoff() {
        let store = SqliteStore::open_in_memory().expect("open");
        store
            .append(&[
                denied("acme", 100, "old1"),
                denied("globex", 100, "globex-old"),
                denied("acme", 200, "old2"),
                denied("acme", 300, "new"),
            ])
            .expect("append");

        assert_eq!(store.prune("acme", at(300)).expect("prune"), 2);
        assert_eq!(
            reasons(&store.query(&AuditQuery::new("acme")).expect("query")),
            ["new"]
        );
        assert_eq!(
            store
                .query(&AuditQuery::new("globex"))
                .expect("query")
                .len(),
            1
        );
        assert_eq!(store.prune("acme", at(300)).expect("prune again"), 0);
        assert_eq!(
            intact(&store, "acme"),
            1,
            "chain still verifies after pruning"
        );

        store
            .append(&[denied("acme", 400, "later")])
            .expect("append");
        assert_eq!(intact(&store, "acme"), 2);
    }

    #[test]
    fn prune_stops_at_the_first_record_to_keep() {
        let store = SqliteStore::open_in_memory().expect("open");
        // A clock that stepped back: record 3 is older than record 2.
        store
            .append(&[
                denied("acme", 100, "a"),
                denied("acme", 500, "b"),
                denied("acme", 150, "c"),
            ])
            .expect("append");
        assert_eq!(store.prune("acme", at(200)).expect("prune"), 1);
        assert_eq!(
            reasons(&store.query(&AuditQuery::new("acme")).expect("query")),
            ["c", "b"]
        );
        assert_eq!(intact(&store, "acme"), 2);
    }

    #[test]
    fn appended_events_survive_reopening_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("data/p.db");
        {
            let store = SqliteStore::open(&path).expect("open");
            store.append(&[denied("acme", 1, "kept")]).expect("append");
        }
        let store = SqliteStore::open(&path).expect("reopen");
        let records = store.query(&AuditQuery::new("acme")).expect("query");
        assert_eq!(reasons(&records), ["kept"]);
        store.append(&[denied("acme", 2, "next")]).expect("append");
        assert_eq!(intact(&store, "acme"), 2, "chain continues across reopen");
    }

    #[test]
    fn open_creates_folders_and_a_private_wal_database() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("a/b/p.db");
        let store = SqliteStore::open(&path).expect("open");
        let conn = store.lock();
        let mode: String = conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .expect("journal_mode");
        assert_eq!(mode, "wal");
        let sync: i64 = conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .expect("synchronous");
        assert_eq!(sync, 2, "synchronous = FULL");
        let version: i64 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("user_version");
        assert_eq!(version, MIGRATIONS.len() as i64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path)
                .expect("metadata")
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "no group/other access: {mode:o}");
        }
    }

    #[test]
    fn database_from_a_newer_version_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("p.db");
        drop(SqliteStore::open(&path).expect("open"));
        Connection::open(&path)
            .and_then(|c| c.pragma_update(None, "user_version", 99))
            .expect("bump version");
        match SqliteStore::open(&path) {
            Err(StoreError::SchemaTooNew { found: 99, .. }) => {}
            other => panic!("expected SchemaTooNew, got {other:?}"),
        }
    }

    /// Runs raw SQL against the store, as an attacker with file access would.
    fn tamper(store: &SqliteStore, sql: &str) {
        store.lock().execute_batch(sql).expect("tamper");
    }

    fn three_records() -> SqliteStore {
        let store = SqliteStore::open_in_memory().expect("open");
        let events: Vec<_> = (1..=3)
            .map(|i| denied("acme", i, &format!("e{i}")))
            .collect();
        store.append(&events).expect("append");
        assert_eq!(intact(&store, "acme"), 3);
        store
    }

    #[test]
    fn chain_detects_an_edited_record() {
        let store = three_records();
        tamper(
            &store,
            "UPDATE audit_event SET reason = 'nothing' WHERE seq = 2",
        );
        assert_eq!(
            store.verify_chain("acme").expect("verify"),
            ChainReport::Broken(ChainBreak::Altered { seq: 2 })
        );
    }

    #[test]
    fn chain_detects_a_removed_record() {
        let store = three_records();
        tamper(&store, "DELETE FROM audit_event WHERE seq = 2");
        assert_eq!(
            store.verify_chain("acme").expect("verify"),
            ChainReport::Broken(ChainBreak::Gap {
                expected: 2,
                found: 3
            })
        );
    }

    #[test]
    fn chain_detects_removal_of_the_newest_record() {
        let store = three_records();
        tamper(&store, "DELETE FROM audit_event WHERE seq = 3");
        assert_eq!(
            store.verify_chain("acme").expect("verify"),
            ChainReport::Broken(ChainBreak::HeadMismatch { head: 3, last: 2 })
        );
    }

    #[test]
    fn chain_detects_reordered_records() {
        let store = three_records();
        // Swap the positions of records 1 and 2 (hashes travel with their rows).
        tamper(
            &store,
            "UPDATE audit_event SET seq = -seq WHERE seq IN (1, 2);
             UPDATE audit_event SET seq = CASE seq WHEN -1 THEN 2 ELSE 1 END WHERE seq < 0;",
        );
        assert_eq!(
            store.verify_chain("acme").expect("verify"),
            ChainReport::Broken(ChainBreak::Altered { seq: 1 })
        );
    }
}
