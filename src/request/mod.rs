//! Request hygiene before any decision: one unambiguous target and one unambiguous framing.
//!
//! Both checks run before routing and are pure functions of the request head, so the gateway
//! can answer 400 early and the same normalized path serves the route decision and the
//! upstream request.
//!
//! - [`framing`]: refuse conflicting or obfuscated Content-Length / Transfer-Encoding
//!   (request smuggling, RFC 9112 §6).
//! - [`target`]: refuse ambiguous request targets and normalize the rest (RFC 3986 §6).

pub mod framing;
pub mod target;

pub use framing::FramingError;
pub use target::{normalize, path_has_prefix, Target, TargetError};
