//! [`SamlStore`] on SQLite.

use rusqlite::{params, OptionalExtension};

use super::accounts::secs;
use super::{Context, SqliteStore};
use crate::store::saml::{PendingRequest, SamlStore, SpKey};
use crate::store::StoreError;

impl SamlStore for SqliteStore {
    fn put_saml_request(
        &self,
        tenant: &str,
        id: &str,
        request: &PendingRequest,
    ) -> Result<(), StoreError> {
        let conn = self.lock();
        let inserted = conn
            .execute(
                "INSERT OR IGNORE INTO saml_request (tenant, id, return_to, expires_at, browser)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    tenant,
                    id,
                    request.return_to,
                    secs(request.expires_at)?,
                    request.browser
                ],
            )
            .ctx("store saml request")?;
        if inserted == 0 {
            return Err(StoreError::Conflict(format!(
                "saml request id in `{tenant}`"
            )));
        }
        Ok(())
    }

    fn take_saml_request(
        &self,
        tenant: &str,
        id: &str,
        now: u64,
    ) -> Result<Option<PendingRequest>, StoreError> {
        let conn = self.lock();
        // One statement: delete and read back, so two instances cannot both consume it.
        let row: Option<(String, i64, String)> = conn
            .query_row(
                "DELETE FROM saml_request WHERE tenant = ?1 AND id = ?2
                 RETURNING return_to, expires_at, browser",
                params![tenant, id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()
            .ctx("take saml request")?;
        Ok(row.and_then(|(return_to, expires_at, browser)| {
            let expires_at = u64::try_from(expires_at).unwrap_or(0);
            (now < expires_at).then_some(PendingRequest {
                return_to,
                expires_at,
                browser,
            })
        }))
    }

    fn remember_assertion(
        &self,
        issuer: &str,
        assertion_id: &str,
        keep_until: u64,
        now: u64,
    ) -> Result<bool, StoreError> {
        let conn = self.lock();
        // An entry past its time no longer protects anything (the assertion itself is
        // expired by then); replace it rather than refuse.
        conn.execute(
            "DELETE FROM saml_replay WHERE issuer = ?1 AND assertion_id = ?2 AND keep_until <= ?3",
            params![issuer, assertion_id, secs(now)?],
        )
        .ctx("expire saml replay entry")?;
        let inserted = conn
            .execute(
                "INSERT OR IGNORE INTO saml_replay (issuer, assertion_id, keep_until)
                 VALUES (?1, ?2, ?3)",
                params![issuer, assertion_id, secs(keep_until)?],
            )
            .ctx("remember saml assertion")?;
        Ok(inserted == 1)
    }

    fn purge_saml(&self, now: u64) -> Result<u64, StoreError> {
        let conn = self.lock();
        let now = secs(now)?;
        let requests = conn
            .execute(
                "DELETE FROM saml_request WHERE expires_at <= ?1",
                params![now],
            )
            .ctx("purge saml requests")?;
        let replays = conn
            .execute(
                "DELETE FROM saml_replay WHERE keep_until <= ?1",
                params![now],
            )
            .ctx("purge saml replay cache")?;
        Ok((requests + replays) as u64)
    }

    fn saml_sp_key(&self, tenant: &str) -> Result<Option<SpKey>, StoreError> {
        let conn = self.lock();
        conn.query_row(
            "SELECT sealed_key, cert_der FROM saml_sp_key WHERE tenant = ?1",
            params![tenant],
            |r| {
                Ok(SpKey {
                    sealed_key: r.get(0)?,
                    cert_der: r.get(1)?,
                })
            },
        )
        .optional()
        .ctx("read saml sp key")
    }

    fn put_saml_sp_key(&self, tenant: &str, key: &SpKey) -> Result<SpKey, StoreError> {
        self.lock()
            .execute(
                "INSERT OR IGNORE INTO saml_sp_key (tenant, sealed_key, cert_der) VALUES (?1, ?2, ?3)",
                params![tenant, key.sealed_key, key.cert_der],
            )
            .ctx("store saml sp key")?;
        self.saml_sp_key(tenant)?
            .ok_or_else(|| StoreError::Corrupt(format!("saml sp key of `{tenant}` vanished")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> SqliteStore {
        SqliteStore::open_in_memory().expect("in-memory store")
    }

    fn pending(expires_at: u64) -> PendingRequest {
        PendingRequest {
            return_to: "/app".into(),
            expires_at,
            browser: "b".into(),
        }
    }

    #[test]
    fn a_request_is_consumed_exactly_once() {
        let s = store();
        s.put_saml_request("acme", "_id1", &pending(100)).unwrap();
        assert_eq!(
            s.take_saml_request("acme", "_id1", 50).unwrap(),
            Some(pending(100))
        );
        assert_eq!(s.take_saml_request("acme", "_id1", 50).unwrap(), None);
    }

    #[test]
    fn a_request_belongs_to_its_tenant_and_expires() {
        let s = store();
        s.put_saml_request("acme", "_id1", &pending(100)).unwrap();
        assert_eq!(s.take_saml_request("globex", "_id1", 50).unwrap(), None);
        s.put_saml_request("acme", "_id2", &pending(100)).unwrap();
        assert_eq!(s.take_saml_request("acme", "_id2", 100).unwrap(), None);
        // The expired one is gone too, not left for later.
        assert_eq!(s.take_saml_request("acme", "_id2", 10).unwrap(), None);
        assert!(s.put_saml_request("acme", "_id1", &pending(100)).is_err());
    }

    #[test]
    fn an_assertion_id_is_accepted_once_until_it_expires() {
        let s = store();
        assert!(s.remember_assertion("idp", "_a", 100, 10).unwrap());
        assert!(!s.remember_assertion("idp", "_a", 100, 20).unwrap());
        assert!(!s.remember_assertion("idp", "_a", 200, 99).unwrap());
        assert!(s.remember_assertion("other-idp", "_a", 100, 20).unwrap());
        assert_eq!(s.purge_saml(100).unwrap(), 2);
        assert!(s.remember_assertion("idp", "_a", 300, 100).unwrap());
    }

    #[test]
    fn the_first_sp_key_stored_wins() {
        let s = store();
        assert_eq!(s.saml_sp_key("acme").unwrap(), None);
        let a = SpKey {
            sealed_key: "a".into(),
            cert_der: vec![1],
        };
        let b = SpKey {
            sealed_key: "b".into(),
            cert_der: vec![2],
        };
        assert_eq!(s.put_saml_sp_key("acme", &a).unwrap(), a);
        assert_eq!(s.put_saml_sp_key("acme", &b).unwrap(), a);
        assert_eq!(s.saml_sp_key("acme").unwrap(), Some(a));
        assert_eq!(s.saml_sp_key("globex").unwrap(), None);
    }
}
