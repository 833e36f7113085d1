//! Raw HTTP/2 frames (RFC 9113), for what a well-behaved client library will not send: resets
//! of the server's making, endless header blocks, invalid header bytes.

#![allow(dead_code)]

use std::time::Duration;

use crate::common::*;

const ACME: &str = "acme.localhost";

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const ACK: u8 = 0x1;

/// One frame (RFC 9113 §4.1).
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).expect("frame size");
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 §5.1), the prefix's other bits `flags`.
fn integer(flags: u8, n: u32, mut value: usize, out: &mut Vec<u8>) {
    let max = (1usize << n) - 1;
    if value < max {
        out.push(flags | value as u8);
        return;
    }
    out.push(flags | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// A string literal without Huffman coding (RFC 7541 §5.2): any bytes at all.
fn string(bytes: &[u8], out: &mut Vec<u8>) {
    integer(0, 7, bytes.len(), out);
    out.extend_from_slice(bytes);
}

/// A header field as a literal without indexing, with a literal name (RFC 7541 §6.2.2): any
/// bytes in name and value, which is what the tests need.
pub fn literal(name: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = vec![0x00];
    string(name, &mut out);
    string(value, &mut out);
    out
}

/// The HPACK block of a request: `:method`, `:scheme` https, `:path`, `:authority` and then
/// `fields`, every one a literal (so nothing is checked on the way out).
pub fn request_block(
    method: &[u8],
    path: &[u8],
    authority: &[u8],
    fields: &[(&[u8], &[u8])],
) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in [
        (&b":method"[..], method),
        (b":scheme", b"https"),
        (b":path", path),
        (b":authority", authority),
    ]
    .into_iter()
    .chain(fields.iter().copied())
    {
        out.extend(literal(name, value));
    }
    out
}

/// The HPACK block of `GET https://acme.localhost{path}`.
pub fn get_block(path: &str) -> Vec<u8> {
    request_block(b"GET", path.as_bytes(), ACME.as_bytes(), &[])
}

/// Whether a response HEADERS block starts with `:status: 200` as the static table's entry 8
/// (RFC 7541 Appendix A), which is how the gateway's HTTP/2 encoder sends it.
pub fn is_200(block: &[u8]) -> bool {
    block.first() == Some(&0x88)
}

/// The frames read so far from `buf`: (type, flags, stream, payload).
pub fn frames(buf: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
    let mut out = Vec::new();
    let mut at = 0;
    while buf.len() >= at + 9 {
        let len = u32::from_be_bytes([0, buf[at], buf[at + 1], buf[at + 2]]) as usize;
        if buf.len() < at + 9 + len {
            break;
        }
        let stream = u32::from_be_bytes([buf[at + 5], buf[at + 6], buf[at + 7], buf[at + 8]]);
        out.push((
            buf[at + 3],
            buf[at + 4],
            stream & 0x7fff_ffff,
            buf[at + 9..at + 9 + len].to_vec(),
        ));
        at += 9 + len;
    }
    out
}

/// The error code of the first GOAWAY in `buf`, if one came.
pub fn goaway(buf: &[u8]) -> Option<u32> {
    frames(buf)
        .into_iter()
        .find(|f| f.0 == GOAWAY)
        .and_then(|f| Some(u32::from_be_bytes(f.3.get(4..8)?.try_into().ok()?)))
}

/// A raw HTTP/2 connection past the preface and the exchange of settings.
pub async fn raw_h2(gw: &Gateway) -> RawConn {
    let mut conn = RawConn::connect(gw.https_port(), &gw.site.ca_path(), ACME, &[b"h2"])
        .await
        .expect("connect");
    assert_eq!(conn.alpn().as_deref(), Some(&b"h2"[..]));
    conn.send(&[PREFACE, &frame(SETTINGS, 0, 0, &[])].concat())
        .await;
    let got = conn
        .read_until(Duration::from_secs(5), |b| {
            frames(b).iter().any(|f| f.0 == SETTINGS && f.1 & ACK == 0)
        })
        .await;
    assert!(got, "no SETTINGS from the gateway");
    conn.send(&frame(SETTINGS, ACK, 0, &[])).await;
    conn
}
