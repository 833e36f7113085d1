//! What the backend receives: hop-by-hop headers removed, spoofable identity and forwarding
//! headers stripped, the gateway's own forwarding and identity headers set.

pub mod headers;
