//! Authentication: the login state machine (password → second factor → session), sessions and
//! cookies, passwords, and the signed identity sent upstream.

pub mod cookie;
pub mod flow;
pub mod jwt;
pub mod pages;
pub mod password;
pub mod reply;
pub mod return_to;
pub mod session;
pub mod totp;
