//! Storage for shared state, behind traits so the embedded SQLite store (single instance) and
//! a Redis store (cluster, later) are interchangeable.
//!
//! For now the only state is the audit log ([`AuditStore`]). Store calls block (file I/O under
//! a lock): call them from a dedicated thread or `tokio::task::spawn_blocking`, never directly
//! on an async worker. The audit sink ([`crate::audit::AuditSink`]) already does that.

pub mod accounts;
pub mod saml;
pub mod sqlite;

pub use accounts::{valid_username, AccountStore, Session, Stage, User};
pub use saml::{PendingRequest, SamlStore, SpKey};
pub use sqlite::SqliteStore;

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use time::OffsetDateTime;

use crate::audit::chain::ChainReport;
use crate::audit::{AuditEvent, AuditRecord, EventKind};

/// Where the store lives, parsed from the `server.store` config value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `sqlite:<path>`: an embedded SQLite database file.
    Sqlite(PathBuf),
}

/// Why a `server.store` value was refused.
///
/// Messages name at most the scheme, never the rest of the value: a Redis URL can hold a
/// password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoreUrlError {
    /// The value does not start with `<scheme>:`.
    #[error("store URL has no scheme (expected sqlite:<path>)")]
    MissingScheme,
    /// A scheme we do not know.
    #[error("unsupported store URL scheme '{0}:' (expected sqlite:<path>)")]
    UnsupportedScheme(String),
    /// `redis://` / `rediss://`, which a later release adds.
    #[error("redis store not available yet (use sqlite:<path>)")]
    RedisNotAvailable,
    /// `sqlite:` with nothing after it.
    #[error("store URL 'sqlite:' has an empty path (expected sqlite:<path>)")]
    EmptySqlitePath,
    /// `sqlite://…`, which reads as a URL authority but would silently become an absolute path.
    #[error("write sqlite:<path> without '//' (e.g. sqlite:data/portcullis.db or sqlite:/var/lib/portcullis/portcullis.db)")]
    SqliteAuthority,
}

impl StoreUrl {
    /// Parses `sqlite:<path>`; every other form is an error that says what is expected.
    pub fn parse(value: &str) -> Result<StoreUrl, StoreUrlError> {
        let (scheme, rest) = value.split_once(':').ok_or(StoreUrlError::MissingScheme)?;
        // RFC 3986 §3.1: scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
        let well_formed = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if !well_formed {
            return Err(StoreUrlError::MissingScheme);
        }
        match scheme.to_ascii_lowercase().as_str() {
            "sqlite" if rest.starts_with("//") => Err(StoreUrlError::SqliteAuthority),
            "sqlite" if rest.is_empty() => Err(StoreUrlError::EmptySqlitePath),
            "sqlite" => Ok(StoreUrl::Sqlite(PathBuf::from(rest))),
            "redis" | "rediss" => Err(StoreUrlError::RedisNotAvailable),
            _ => Err(StoreUrlError::UnsupportedScheme(scheme.to_owned())),
        }
    }

    /// The same store with a relative file path taken relative to `base` (the config file's
    /// folder); absolute paths are kept.
    pub fn resolved_against(self, base: &Path) -> StoreUrl {
        match self {
            StoreUrl::Sqlite(path) => StoreUrl::Sqlite(base.join(path)),
        }
    }
}

impl FromStr for StoreUrl {
    type Err = StoreUrlError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        StoreUrl::parse(value)
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
        }
    }
}

/// A storage failure.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The folder for the database file could not be created.
    #[error("cannot create store folder {}: {source}", path.display())]
    CreateDir {
        /// The folder.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A SQLite call failed; `context` says which operation.
    #[error("sqlite store: {context}: {source}")]
    Sqlite {
        /// What the store was doing.
        context: &'static str,
        /// The SQLite error.
        source: rusqlite::Error,
    },
    /// The database was written by a newer Portcullis with a schema this build does not know.
    #[error("store schema version {found} is newer than this build supports ({supported}); upgrade portcullis")]
    SchemaTooNew {
        /// Version found in the database.
        found: i64,
        /// Newest version this build knows.
        supported: i64,
    },
    /// The record already exists (a username taken in the tenant, say).
    #[error("already exists: {0}")]
    Conflict(String),
    /// Stored data that cannot be read back (edited outside Portcullis, or a bug).
    #[error("corrupt store data: {0}")]
    Corrupt(String),
}

/// Default number of records a query returns.
pub const DEFAULT_QUERY_LIMIT: u32 = 100;
/// Most records one query returns; larger limits are clamped.
pub const MAX_QUERY_LIMIT: u32 = 1000;

/// A query over one tenant's audit log, newest first.
///
/// There is no way to query without a tenant: that is how one tenant's admins are kept from
/// reading another tenant's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditQuery {
    /// The only tenant whose records are returned.
    pub tenant: String,
    /// Only records at or after this time.
    pub since: Option<OffsetDateTime>,
    /// Only records strictly before this time.
    pub until: Option<OffsetDateTime>,
    /// Only this event type.
    pub event: Option<EventKind>,
    /// Only records whose actor or subject is this user.
    pub user: Option<String>,
    /// Paging cursor: only records with a smaller seq (pass the last seq of the previous page).
    pub before_seq: Option<u64>,
    /// Page size, clamped to `1..=MAX_QUERY_LIMIT`.
    pub limit: u32,
}

impl AuditQuery {
    /// The newest [`DEFAULT_QUERY_LIMIT`] records of `tenant`, unfiltered.
    pub fn new(tenant: impl Into<String>) -> Self {
        AuditQuery {
            tenant: tenant.into(),
            since: None,
            until: None,
            event: None,
            user: None,
            before_seq: None,
            limit: DEFAULT_QUERY_LIMIT,
        }
    }
}

/// Durable, per-tenant, hash-chained audit log.
///
/// Implementations store [`AuditEvent::sanitized`] forms and chain them with
/// [`crate::audit::chain::link`]. A successful [`append`](AuditStore::append) means the events
/// are durable: a crash right after it does not lose them.
pub trait AuditStore: Send + Sync {
    /// Stores `events` in order, all or none (one transaction).
    fn append(&self, events: &[AuditEvent]) -> Result<(), StoreError>;

    /// Records of `q.tenant` matching the filters, newest (highest seq) first.
    fn query(&self, q: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError>;

    /// Deletes the oldest records of `tenant` whose time is before `older_than`; returns how
    /// many. Pruning stops at the first record to keep, so the rest stays one verifiable chain
    /// even if caller clocks were not perfectly monotonic.
    fn prune(&self, tenant: &str, older_than: OffsetDateTime) -> Result<u64, StoreError>;

    /// Re-hashes `tenant`'s remaining records and compares them with the stored chain.
    fn verify_chain(&self, tenant: &str) -> Result<ChainReport, StoreError>;
}

/// A query over the audit logs of every tenant (or of one), newest first: for the operator
/// API only. Tenant-facing code uses [`AuditQuery`], which always names its tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OperatorAuditQuery {
    /// Only this tenant's records ([`crate::audit::OPERATOR_TENANT`] for operator events);
    /// `None` for every tenant.
    pub tenant: Option<String>,
    /// Only records at or after this time.
    pub since: Option<OffsetDateTime>,
    /// Only records strictly before this time.
    pub until: Option<OffsetDateTime>,
    /// Only this event type.
    pub event: Option<EventKind>,
    /// Only records whose actor or subject is this user.
    pub user: Option<String>,
    /// Paging cursor: only records stored before this position (pass the `position` of the
    /// last record of the previous page). Positions order records across tenants.
    pub before_position: Option<u64>,
    /// Page size, clamped to `1..=MAX_QUERY_LIMIT`.
    pub limit: u32,
}

/// A stored record with its position in the whole store (the cross-tenant paging cursor).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PositionedRecord {
    /// Increases with every stored record, whatever its tenant.
    pub position: u64,
    /// The record.
    #[serde(flatten)]
    pub record: AuditRecord,
}

/// Reading every tenant's audit log at once: the operator's view. Kept apart from
/// [`AuditStore`] so code handed only an audit store cannot reach across tenants.
pub trait OperatorAuditStore: Send + Sync {
    /// Records matching the filters, newest (highest position) first.
    fn query_all(&self, q: &OperatorAuditQuery) -> Result<Vec<PositionedRecord>, StoreError>;
}

/// Everything the gateway keeps: audit trail, accounts and sessions.
pub trait Store: AuditStore + OperatorAuditStore + AccountStore + SamlStore {}

impl<T: AuditStore + OperatorAuditStore + AccountStore + SamlStore> Store for T {}

/// Opens the store `url` points at.
pub fn open(url: &StoreUrl) -> Result<Arc<dyn Store>, StoreError> {
    match url {
        StoreUrl::Sqlite(path) => Ok(Arc::new(SqliteStore::open(path)?)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_url_parses_to_its_path() {
        assert_eq!(
            StoreUrl::parse("sqlite:data/portcullis.db"),
            Ok(StoreUrl::Sqlite(PathBuf::from("data/portcullis.db")))
        );
        assert_eq!(
            "sqlite:/var/lib/p.db".parse::<StoreUrl>(),
            Ok(StoreUrl::Sqlite(PathBuf::from("/var/lib/p.db")))
        );
        assert_eq!(
            StoreUrl::parse("sqlite:data/p.db").map(|u| u.to_string()),
            Ok("sqlite:data/p.db".to_owned())
        );
    }

    #[test]
    fn relative_sqlite_path_is_resolved_against_the_config_folder() {
        let base = Path::new("/etc/portcullis");
        let url = StoreUrl::parse("sqlite:data/p.db").expect("valid");
        assert_eq!(
            url.resolved_against(base),
            StoreUrl::Sqlite(PathBuf::from("/etc/portcullis/data/p.db"))
        );
        let abs = StoreUrl::parse("sqlite:/srv/p.db").expect("valid");
        assert_eq!(
            abs.resolved_against(base),
            StoreUrl::Sqlite(PathBuf::from("/srv/p.db"))
        );
    }

    #[test]
    fn unknown_store_scheme_is_rejected_with_what_is_expected() {
        let err = StoreUrl::parse("foo:bar").expect_err("unknown scheme");
        assert_eq!(
            err.to_string(),
            "unsupported store URL scheme 'foo:' (expected sqlite:<path>)"
        );
        assert_eq!(
            StoreUrl::parse("data/portcullis.db"),
            Err(StoreUrlError::MissingScheme)
        );
        assert_eq!(
            StoreUrl::parse("sqlite:"),
            Err(StoreUrlError::EmptySqlitePath)
        );
        assert_eq!(
            StoreUrl::parse("sqlite://data/p.db"),
            Err(StoreUrlError::SqliteAuthority)
        );
    }

    #[test]
    fn redis_url_is_refused_for_now_without_echoing_credentials() {
        for url in ["redis://:hunter2@10.0.0.1:6379/0", "rediss://u:hunter2@h"] {
            let err = StoreUrl::parse(url).expect_err("redis not available");
            assert_eq!(err, StoreUrlError::RedisNotAvailable);
            assert!(!err.to_string().contains("hunter2"));
        }
        // Not a scheme at all: still never echoed.
        let err = StoreUrl::parse("user:hunter2@host").expect_err("unknown");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn open_creates_the_sqlite_store_named_by_the_url() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nested/p.db");
        let store = open(&StoreUrl::Sqlite(path.clone())).expect("open");
        assert!(path.exists());
        assert!(store
            .query(&AuditQuery::new("acme"))
            .expect("query")
            .is_empty());
    }
}
