//! [`AccountStore`] on SQLite.

use rusqlite::{params, OptionalExtension, Row};

use super::{Context, SqliteStore};
use crate::store::accounts::{AccountStore, Session, Stage, User};
use crate::store::StoreError;

const USER_COLUMNS: &str =
    "tenant, username, password_hash, roles, disabled, created_at, password_changed_at, totp_secret, idp";
const SESSION_COLUMNS: &str = "token_hash, id, tenant, username, stage, amr, csrf, return_to, \
                               created_at, last_seen, expires_at, idle_timeout, pending_totp";

/// Unix seconds as SQLite stores them (shared with the SAML tables).
pub(super) fn secs(v: u64) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Corrupt(format!("time {v} out of range")))
}

fn from_secs(v: i64) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| StoreError::Corrupt(format!("negative time {v}")))
}

fn list(json: &str) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(json).map_err(|_| StoreError::Corrupt("unreadable list column".into()))
}

fn to_json(items: &[String]) -> String {
    serde_json::Value::from(items.to_vec()).to_string()
}

fn user_from_row(row: &Row<'_>) -> rusqlite::Result<(User, String, i64, i64)> {
    Ok((
        User {
            tenant: row.get(0)?,
            username: row.get(1)?,
            password_hash: row.get(2)?,
            roles: Vec::new(),
            disabled: row.get(4)?,
            created_at: 0,
            password_changed_at: 0,
            totp_secret: row.get(7)?,
            idp: row.get(8)?,
        },
        row.get(3)?,
        row.get(5)?,
        row.get(6)?,
    ))
}

fn finish_user(
    (mut user, roles, created, changed): (User, String, i64, i64),
) -> Result<User, StoreError> {
    user.roles = list(&roles)?;
    user.created_at = from_secs(created)?;
    user.password_changed_at = from_secs(changed)?;
    Ok(user)
}

type SessionRow = (
    Vec<u8>,
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    i64,
    i64,
    i64,
    i64,
    Option<String>,
);

fn session_from_row(row: &Row<'_>) -> rusqlite::Result<SessionRow> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        row.get(4)?,
        row.get(5)?,
        row.get(6)?,
        row.get(7)?,
        row.get(8)?,
        row.get(9)?,
        row.get(10)?,
        row.get(11)?,
        row.get(12)?,
    ))
}

fn finish_session(r: SessionRow) -> Result<Session, StoreError> {
    let token_hash: [u8; 32] =
        r.0.try_into()
            .map_err(|_| StoreError::Corrupt("session hash is not 32 bytes".into()))?;
    Ok(Session {
        token_hash,
        id: r.1,
        tenant: r.2,
        username: r.3,
        stage: Stage::parse(&r.4)
            .ok_or_else(|| StoreError::Corrupt(format!("session stage {:?}", r.4)))?,
        amr: list(&r.5)?,
        csrf: r.6,
        return_to: r.7,
        created_at: from_secs(r.8)?,
        last_seen: from_secs(r.9)?,
        expires_at: from_secs(r.10)?,
        idle_timeout: from_secs(r.11)?,
        pending_totp: r.12,
    })
}

impl AccountStore for SqliteStore {
    fn create_user(&self, user: &User) -> Result<(), StoreError> {
        let conn = self.lock();
        let inserted = conn
            .execute(
                &format!("INSERT OR IGNORE INTO user ({USER_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
                params![
                    user.tenant,
                    user.username,
                    user.password_hash,
                    to_json(&user.roles),
                    user.disabled,
                    secs(user.created_at)?,
                    secs(user.password_changed_at)?,
                    user.totp_secret,
                    user.idp,
                ],
            )
            .ctx("create user")?;
        if inserted == 0 {
            return Err(StoreError::Conflict(format!(
                "user `{}` in tenant `{}`",
                user.username, user.tenant
            )));
        }
        Ok(())
    }

    fn user(&self, tenant: &str, username: &str) -> Result<Option<User>, StoreError> {
        let conn = self.lock();
        let row = conn
            .query_row(
                &format!("SELECT {USER_COLUMNS} FROM user WHERE tenant = ?1 AND username = ?2"),
                params![tenant, username],
                user_from_row,
            )
            .optional()
            .ctx("read user")?;
        row.map(finish_user).transpose()
    }

    fn users(&self, tenant: &str) -> Result<Vec<User>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(&format!(
                "SELECT {USER_COLUMNS} FROM user WHERE tenant = ?1 ORDER BY username"
            ))
            .ctx("list users")?;
        let rows = stmt
            .query_map(params![tenant], user_from_row)
            .ctx("list users")?
            .collect::<rusqlite::Result<Vec<_>>>()
            .ctx("list users")?;
        rows.into_iter().map(finish_user).collect()
    }

    fn set_password(
        &self,
        tenant: &str,
        username: &str,
        phc: &str,
        changed_at: u64,
    ) -> Result<bool, StoreError> {
        let conn = self.lock();
        let n = conn
            .execute(
                "UPDATE user SET password_hash = ?3, password_changed_at = ?4 WHERE tenant = ?1 AND username = ?2",
                params![tenant, username, phc, secs(changed_at)?],
            )
            .ctx("set password")?;
        Ok(n == 1)
    }

    fn rebind_idp(
        &self,
        tenant: &str,
        from: &str,
        to: &str,
        username: Option<&str>,
    ) -> Result<Vec<String>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare(
                "UPDATE user SET idp = ?3
                 WHERE tenant = ?1 AND idp = ?2 AND (?4 IS NULL OR username = ?4)
                 RETURNING username",
            )
            .ctx("prepare rebind idp")?;
        let moved = stmt
            .query_map(params![tenant, from, to, username], |r| r.get(0))
            .ctx("rebind idp")?
            .collect::<Result<Vec<String>, _>>()
            .ctx("rebind idp")?;
        Ok(moved)
    }

    fn set_disabled(
        &self,
        tenant: &str,
        username: &str,
        disabled: bool,
    ) -> Result<bool, StoreError> {
        let conn = self.lock();
        let n = conn
            .execute(
                "UPDATE user SET disabled = ?3 WHERE tenant = ?1 AND username = ?2",
                params![tenant, username, disabled],
            )
            .ctx("disable user")?;
        Ok(n == 1)
    }

    fn set_roles(
        &self,
        tenant: &str,
        username: &str,
        roles: &[String],
    ) -> Result<bool, StoreError> {
        let conn = self.lock();
        let n = conn
            .execute(
                "UPDATE user SET roles = ?3 WHERE tenant = ?1 AND username = ?2",
                params![tenant, username, to_json(roles)],
            )
            .ctx("set user roles")?;
        Ok(n == 1)
    }

    fn create_session(&self, s: &Session) -> Result<(), StoreError> {
        let conn = self.lock();
        conn.execute(
            &format!(
                "INSERT INTO session ({SESSION_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)"
            ),
            params![
                s.token_hash.as_slice(),
                s.id,
                s.tenant,
                s.username,
                s.stage.as_str(),
                to_json(&s.amr),
                s.csrf,
                s.return_to,
                secs(s.created_at)?,
                secs(s.last_seen)?,
                secs(s.expires_at)?,
                secs(s.idle_timeout)?,
                s.pending_totp,
            ],
        )
        .ctx("create session")?;
        Ok(())
    }

    fn session(&self, token_hash: &[u8; 32]) -> Result<Option<Session>, StoreError> {
        let conn = self.lock();
        let row = conn
            .prepare_cached(&format!(
                "SELECT {SESSION_COLUMNS} FROM session WHERE token_hash = ?1"
            ))
            .ctx("read session")?
            .query_row(params![token_hash.as_slice()], session_from_row)
            .optional()
            .ctx("read session")?;
        row.map(finish_session).transpose()
    }

    fn touch_session(&self, token_hash: &[u8; 32], last_seen: u64) -> Result<(), StoreError> {
        let conn = self.lock();
        conn.execute(
            "UPDATE session SET last_seen = max(last_seen, ?2) WHERE token_hash = ?1",
            params![token_hash.as_slice(), secs(last_seen)?],
        )
        .ctx("touch session")?;
        Ok(())
    }

    fn delete_session(&self, token_hash: &[u8; 32]) -> Result<bool, StoreError> {
        let conn = self.lock();
        let n = conn
            .execute(
                "DELETE FROM session WHERE token_hash = ?1",
                params![token_hash.as_slice()],
            )
            .ctx("delete session")?;
        Ok(n == 1)
    }

    fn delete_user_sessions(
        &self,
        tenant: &str,
        username: &str,
        keep: Option<&[u8; 32]>,
    ) -> Result<u64, StoreError> {
        let conn = self.lock();
        let keep: &[u8] = keep.map_or(&[], |k| k.as_slice());
        let n = conn
            .execute(
                "DELETE FROM session WHERE tenant = ?1 AND username = ?2 AND token_hash != ?3",
                params![tenant, username, keep],
            )
            .ctx("delete user sessions")?;
        Ok(n as u64)
    }

    fn sessions_of(
        &self,
        tenant: &str,
        username: Option<&str>,
    ) -> Result<Vec<Session>, StoreError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached(&format!(
                "SELECT {SESSION_COLUMNS} FROM session
                 WHERE tenant = ?1 AND (?2 IS NULL OR username = ?2)
                 ORDER BY created_at, id"
            ))
            .ctx("list sessions")?;
        let rows = stmt
            .query_map(params![tenant, username], session_from_row)
            .ctx("list sessions")?
            .collect::<rusqlite::Result<Vec<_>>>()
            .ctx("list sessions")?;
        rows.into_iter().map(finish_session).collect()
    }

    fn purge_sessions(&self, now: u64) -> Result<u64, StoreError> {
        let conn = self.lock();
        let n = conn
            .execute(
                "DELETE FROM session WHERE expires_at <= ?1",
                params![secs(now)?],
            )
            .ctx("purge sessions")?;
        Ok(n as u64)
    }

    fn set_pending_totp(
        &self,
        token_hash: &[u8; 32],
        sealed: Option<&str>,
    ) -> Result<(), StoreError> {
        let conn = self.lock();
        conn.execute(
            "UPDATE session SET pending_totp = ?2 WHERE token_hash = ?1",
            params![token_hash.as_slice(), sealed],
        )
        .ctx("set pending totp")?;
        Ok(())
    }

    fn set_totp(
        &self,
        tenant: &str,
        username: &str,
        sealed: Option<&str>,
        recovery_hashes: &[String],
        step: u64,
    ) -> Result<bool, StoreError> {
        let mut conn = self.lock();
        let tx = conn.transaction().ctx("begin set totp")?;
        let n = tx
            .execute(
                "UPDATE user SET totp_secret = ?3, totp_last_step = ?4 WHERE tenant = ?1 AND username = ?2",
                params![tenant, username, sealed, secs(step)?],
            )
            .ctx("set totp")?;
        tx.execute(
            "DELETE FROM recovery_code WHERE tenant = ?1 AND username = ?2",
            params![tenant, username],
        )
        .ctx("clear recovery codes")?;
        if sealed.is_some() {
            for hash in recovery_hashes {
                tx.execute(
                    "INSERT OR IGNORE INTO recovery_code (tenant, username, code_hash) VALUES (?1, ?2, ?3)",
                    params![tenant, username, hash],
                )
                .ctx("store recovery code")?;
            }
        }
        tx.commit().ctx("commit set totp")?;
        Ok(n == 1)
    }

    fn use_totp_step(&self, tenant: &str, username: &str, step: u64) -> Result<bool, StoreError> {
        let conn = self.lock();
        // One conditional UPDATE is the check-and-set: two requests with the same code cannot
        // both see the old step.
        let n = conn
            .execute(
                "UPDATE user SET totp_last_step = ?3 \
                 WHERE tenant = ?1 AND username = ?2 AND totp_secret IS NOT NULL AND totp_last_step < ?3",
                params![tenant, username, secs(step)?],
            )
            .ctx("use totp step")?;
        Ok(n == 1)
    }

    fn use_recovery_code(
        &self,
        tenant: &str,
        username: &str,
        hash: &str,
    ) -> Result<bool, StoreError> {
        let conn = self.lock();
        let n = conn
            .execute(
                "DELETE FROM recovery_code WHERE tenant = ?1 AND username = ?2 AND code_hash = ?3",
                params![tenant, username, hash],
            )
            .ctx("use recovery code")?;
        Ok(n == 1)
    }

    fn recovery_codes_left(&self, tenant: &str, username: &str) -> Result<u64, StoreError> {
        let conn = self.lock();
        let n: i64 = conn
            .query_row(
                "SELECT count(*) FROM recovery_code WHERE tenant = ?1 AND username = ?2",
                params![tenant, username],
                |row| row.get(0),
            )
            .ctx("count recovery codes")?;
        from_secs(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(tenant: &str, name: &str) -> User {
        User {
            tenant: tenant.into(),
            username: name.into(),
            password_hash: Some("$argon2id$stub".into()),
            roles: vec!["admin".into()],
            disabled: false,
            created_at: 10,
            password_changed_at: 10,
            totp_secret: None,
            idp: None,
        }
    }

    fn session(tenant: &str, name: &str, hash: u8) -> Session {
        Session {
            token_hash: [hash; 32],
            id: format!("sid-{hash}"),
            tenant: tenant.into(),
            username: name.into(),
            stage: Stage::Active,
            amr: vec!["pwd".into()],
            csrf: "c".into(),
            return_to: "/".into(),
            created_at: 100,
            last_seen: 100,
            expires_at: 1000,
            idle_timeout: 60,
            pending_totp: None,
        }
    }

    #[test]
    fn same_username_in_two_tenants_is_two_users() {
        let store = SqliteStore::open_in_memory().expect("store");
        store
            .create_user(&user("acme", "alice"))
            .expect("acme alice");
        store
            .create_user(&user("globex", "alice"))
            .expect("globex alice");
        assert!(matches!(
            store.create_user(&user("acme", "alice")),
            Err(StoreError::Conflict(_))
        ));
        store.set_disabled("acme", "alice", true).expect("disable");
        assert!(
            store
                .user("acme", "alice")
                .expect("read")
                .expect("exists")
                .disabled
        );
        assert!(
            !store
                .user("globex", "alice")
                .expect("read")
                .expect("exists")
                .disabled
        );
        assert_eq!(store.users("acme").expect("list").len(), 1);
        assert_eq!(
            store
                .user("acme", "alice")
                .expect("read")
                .expect("exists")
                .roles,
            vec!["admin"]
        );
    }

    #[test]
    fn sessions_round_trip_and_end_per_user() {
        let store = SqliteStore::open_in_memory().expect("store");
        store
            .create_session(&session("acme", "alice", 1))
            .expect("s1");
        store
            .create_session(&session("acme", "alice", 2))
            .expect("s2");
        store
            .create_session(&session("acme", "bob", 3))
            .expect("s3");
        assert_eq!(
            store.session(&[1; 32]).expect("read"),
            Some(session("acme", "alice", 1))
        );
        store.touch_session(&[1; 32], 150).expect("touch");
        assert_eq!(
            store
                .session(&[1; 32])
                .expect("read")
                .expect("exists")
                .last_seen,
            150
        );
        assert_eq!(
            store
                .delete_user_sessions("acme", "alice", Some(&[1; 32]))
                .expect("delete"),
            1
        );
        assert!(store.session(&[2; 32]).expect("read").is_none());
        assert!(store.session(&[1; 32]).expect("read").is_some());
        assert!(store.session(&[3; 32]).expect("read").is_some());
        assert!(store.delete_session(&[1; 32]).expect("delete"));
        assert_eq!(store.purge_sessions(1000).expect("purge"), 1);
    }

    #[test]
    fn sessions_are_listed_per_tenant_and_user_only() {
        let store = SqliteStore::open_in_memory().expect("store");
        for (tenant, name, hash) in [
            ("acme", "alice", 1),
            ("acme", "alice", 2),
            ("acme", "bob", 3),
            ("globex", "alice", 4),
        ] {
            store
                .create_session(&session(tenant, name, hash))
                .expect("session");
        }
        let ids = |tenant: &str, user: Option<&str>| -> Vec<String> {
            store
                .sessions_of(tenant, user)
                .expect("list")
                .into_iter()
                .map(|s| s.id)
                .collect()
        };
        assert_eq!(ids("acme", Some("alice")), ["sid-1", "sid-2"]);
        assert_eq!(ids("acme", None), ["sid-1", "sid-2", "sid-3"]);
        assert_eq!(ids("globex", None), ["sid-4"]);
        assert!(ids("acme", Some("carol")).is_empty());
        assert!(
            ids("%", None).is_empty(),
            "no pattern matching on tenant ids"
        );
    }

    #[test]
    fn each_totp_step_is_accepted_once_and_recovery_codes_once() {
        let store = SqliteStore::open_in_memory().expect("store");
        store.create_user(&user("acme", "alice")).expect("user");
        assert!(
            !store.use_totp_step("acme", "alice", 5).expect("cas"),
            "no TOTP yet"
        );
        let codes = vec!["h1".to_string(), "h2".to_string()];
        assert!(store
            .set_totp("acme", "alice", Some("sealed"), &codes, 3)
            .expect("set"));
        assert!(store.use_totp_step("acme", "alice", 5).expect("cas"));
        assert!(
            !store.use_totp_step("acme", "alice", 5).expect("cas"),
            "replay"
        );
        assert!(
            !store.use_totp_step("acme", "alice", 4).expect("cas"),
            "older step"
        );
        assert!(store.use_totp_step("acme", "alice", 6).expect("cas"));
        assert_eq!(
            store.recovery_codes_left("acme", "alice").expect("count"),
            2
        );
        assert!(store.use_recovery_code("acme", "alice", "h1").expect("use"));
        assert!(
            !store.use_recovery_code("acme", "alice", "h1").expect("use"),
            "once"
        );
        assert!(
            !store
                .use_recovery_code("globex", "alice", "h2")
                .expect("use"),
            "other tenant"
        );
        assert!(store.set_totp("acme", "alice", None, &[], 0).expect("off"));
        assert_eq!(
            store.recovery_codes_left("acme", "alice").expect("count"),
            0
        );
        assert_eq!(
            store
                .user("acme", "alice")
                .expect("read")
                .expect("exists")
                .totp_secret,
            None
        );
    }

    #[test]
    fn liveness_follows_idle_and_absolute_timeouts() {
        let s = session("acme", "alice", 1);
        assert!(s.is_live(150));
        assert!(!s.is_live(160), "idle timeout");
        let mut busy = s.clone();
        busy.last_seen = 990;
        assert!(!busy.is_live(1000), "absolute timeout");
    }
}
