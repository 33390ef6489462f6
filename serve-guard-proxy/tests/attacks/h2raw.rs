//! Raw HTTP/2 frames (RFC 9113) and HPACK literals (RFC 7541), for attacks a conforming client
//! library cannot send: rapid resets, endless CONTINUATION, forbidden headers.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const GOAWAY: u8 = 0x7;
pub const CONTINUATION: u8 = 0x9;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
/// RST_STREAM error code CANCEL.
pub const CANCEL: u32 = 0x8;

pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = Vec::with_capacity(9 + payload.len());
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// HPACK integer with an N-bit prefix (RFC 7541 §5.1); `first` holds the pattern bits.
fn int(out: &mut Vec<u8>, first: u8, prefix_bits: u32, mut value: usize) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// A header block of literal fields without indexing, new names (RFC 7541 §6.2.2).
pub fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0x00);
        int(&mut out, 0, 7, name.len());
        out.extend_from_slice(name.as_bytes());
        int(&mut out, 0, 7, value.len());
        out.extend_from_slice(value.as_bytes());
    }
    out
}

/// A GET's pseudo-headers plus `extra`.
pub fn request(path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut fields = vec![
        (":method", "GET"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "h"),
    ];
    fields.extend_from_slice(extra);
    block(&fields)
}

/// A connection that has sent the preface and an empty SETTINGS.
pub async fn connect(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(SETTINGS, 0, 0, &[]));
    stream.write_all(&hello).await.unwrap();
    stream
}

/// Frame types (with stream ids) the server sent until it closed, `total` passed, or `stop`
/// saw one it wants. A reset connection ends the read like a close.
pub async fn read_frames(
    stream: &mut TcpStream,
    total: Duration,
    stop: impl Fn(u8, u32) -> bool,
) -> (Vec<(u8, u32)>, bool) {
    let mut buf = Vec::new();
    let mut frames = Vec::new();
    let mut closed = false;
    let _ = tokio::time::timeout(total, async {
        let mut chunk = [0u8; 16384];
        loop {
            while buf.len() >= 9 {
                let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
                if buf.len() < 9 + len {
                    break;
                }
                let kind = buf[3];
                let id = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
                buf.drain(..9 + len);
                frames.push((kind, id));
                if stop(kind, id) {
                    return;
                }
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => {
                    closed = true;
                    return;
                }
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    (frames, closed)
}
