//! Portcullis: a multi-tenant authentication gateway.
//!
//! One request passes through these stages, each a module, in this order:
//!
//! ```text
//!  client ─TLS─▶ tls ─▶ tenant ─▶ request ─▶ ratelimit ─▶ auth ─▶ policy ─▶ upstream ─▶ app
//!                │       │         │           │            │        │         │
//!                │       │         │           │            │        │         └ header hygiene,
//!                │       │         │           │            │        │           identity + JWT
//!                │       │         │           │            │        └ longest-prefix route,
//!                │       │         │           │            │          access decision
//!                │       │         │           │            └ /.auth/… endpoints, login state
//!                │       │         │           │              machine, session from the cookie
//!                │       │         │           └ login budgets before any hashing, request rates
//!                │       │         └ one normalized path, framing (smuggling) checks
//!                │       └ Host → tenant, SNI/Host agreement
//!                └ allowlisted suites only, certificate by SNI
//!                                                             audit ◀── every security event
//! ```
//!
//! - [`tls`]: the cipher-suite allowlist (`tls/crypto.rs`), SNI certificate resolution.
//! - [`tenant`]: resolving the tenant from the Host and checking it agrees with SNI.
//! - [`request`]: request-target normalization and message-framing checks.
//! - [`ratelimit`]: brute-force budgets (in process or Redis), request and connection rates.
//! - [`auth`]: login state machine, sessions and cookies, passwords, the upstream JWT.
//! - [`policy`]: route matching and the access decision.
//! - [`upstream`]: what the backend receives (hop-by-hop removal, spoof stripping, forwarding).
//! - [`audit`]: structured per-tenant security events.
//!
//! Beside the flow: [`config`] (file schema → validated model), [`store`] (storage traits and
//! the embedded SQLite store), [`keys`] (encryption at rest), [`admin`] (operator listener on
//! hyper), [`gateway`] (the one place that touches pingora's `Session`), [`cli`], [`clock`],
//! [`error`], [`metrics`], and the demo [`echo`] backend.
#![forbid(unsafe_code)]

// The request flow, in order (blank lines keep rustfmt from sorting it).
pub mod tls;

pub mod tenant;

pub mod request;

pub mod ratelimit;

pub mod auth;

pub mod saml;

pub mod policy;

pub mod upstream;

pub mod audit;

// Beside the flow.
pub mod admin;
pub mod cli;
pub mod clock;
pub mod config;
pub mod echo;
pub mod error;
pub mod gateway;
pub mod keys;
pub mod metrics;
pub mod store;
