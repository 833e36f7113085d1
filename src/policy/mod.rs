//! Route matching and the access decision.
//!
//! The path given here is the one normalized path (see [`crate::request::target`]); the same
//! string is what the upstream receives, so what is decided is what is forwarded.

use crate::config::{Access, Route, Tenant};
use crate::error::RequestError;
use crate::request::target::path_has_prefix;

/// The route with the longest prefix matching `path` on whole segments.
pub fn route<'t>(tenant: &'t Tenant, path: &str) -> Result<&'t Route, RequestError> {
    // Routes are kept longest-prefix first, so the first match is the most specific.
    tenant
        .routes
        .iter()
        .find(|r| path_has_prefix(path, &r.prefix))
        .ok_or(RequestError::NoRoute)
}

/// May a caller with `roles` (None: not signed in) use a route with this access rule?
/// Fails closed: anything not explicitly allowed is refused.
pub fn authorize(access: &Access, roles: Option<&[String]>) -> Result<(), RequestError> {
    match (access, roles) {
        (Access::Public, _) => Ok(()),
        (Access::Authenticated | Access::Roles(_), None) => Err(RequestError::Unauthenticated),
        (Access::Authenticated, Some(_)) => Ok(()),
        (Access::Roles(needed), Some(held)) if needed.iter().any(|r| held.contains(r)) => Ok(()),
        (Access::Roles(_), Some(_)) => Err(RequestError::Forbidden),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Upstream;

    fn tenant(prefixes: &[&str]) -> Tenant {
        let mut routes: Vec<Route> = prefixes
            .iter()
            .map(|p| Route {
                id: p.to_string(),
                prefix: p.to_string(),
                upstream: Upstream {
                    tls: false,
                    host: "127.0.0.1".into(),
                    addr: "127.0.0.1:1".parse().expect("addr"),
                },
                access: Access::Public,
                rate: None,
            })
            .collect();
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Tenant {
            id: "t".into(),
            display_name: "T".into(),
            hosts: vec![],
            routes,
            session: Default::default(),
            password: Default::default(),
            mfa: Default::default(),
            audit_retention: std::time::Duration::from_secs(90 * 86_400),
            login: Default::default(),
            saml: None,
            source: "t.toml".into(),
        }
    }

    #[test]
    fn longest_prefix_wins_on_whole_segments() {
        let t = tenant(&["/", "/api", "/api/admin"]);
        assert_eq!(
            route(&t, "/api/admin/x").map(|r| r.id.as_str()),
            Ok("/api/admin")
        );
        assert_eq!(route(&t, "/api/x").map(|r| r.id.as_str()), Ok("/api"));
        assert_eq!(route(&t, "/apix").map(|r| r.id.as_str()), Ok("/"));
    }

    #[test]
    fn no_matching_route_is_not_found() {
        let t = tenant(&["/api"]);
        assert_eq!(route(&t, "/other"), Err(RequestError::NoRoute));
    }

    #[test]
    fn protected_routes_fail_closed_without_identity() {
        assert_eq!(authorize(&Access::Public, None), Ok(()));
        assert_eq!(
            authorize(&Access::Authenticated, None),
            Err(RequestError::Unauthenticated)
        );
        let admin = Access::Roles(vec!["admin".into()]);
        assert_eq!(authorize(&admin, None), Err(RequestError::Unauthenticated));
        assert_eq!(
            authorize(&admin, Some(&["user".into()])),
            Err(RequestError::Forbidden)
        );
        assert_eq!(authorize(&admin, Some(&["admin".into()])), Ok(()));
        assert_eq!(
            authorize(&Access::Roles(vec![]), Some(&[])),
            Err(RequestError::Forbidden)
        );
    }
}
