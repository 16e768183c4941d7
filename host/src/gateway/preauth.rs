//! A minimal, strict WebSocket frame reader/writer for the handshake phase.
//!
//! Before a client has authenticated it may send exactly one message (the
//! `connect` request). Reading it with a full WebSocket library would buffer
//! up to the post-auth payload limit (25 MiB) for anyone who can open a
//! socket. Instead this reader checks the declared length against the
//! pre-auth cap (64 KiB) *before* allocating, reads exactly the bytes of the
//! frames it consumes (never past the first message, so the socket can be
//! handed to `tokio-tungstenite` afterwards with nothing lost), and answers
//! pings. Writes are unmasked server frames.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

const OP_CONT: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

#[derive(Debug)]
pub enum PreauthRead {
    Text(String),
    /// A binary message: not a request frame.
    Binary,
    /// The client closed (or the stream ended).
    Closed,
    /// The message exceeds the cap (declared length, or fragments together).
    TooLarge(u64),
    /// A protocol violation (unmasked frame, reserved bits, bad UTF-8, ...).
    Protocol(&'static str),
}

/// Reads one complete message, answering pings on the way.
pub async fn read_message<S: AsyncRead + AsyncWrite + Unpin>(
    io: &mut S,
    max: usize,
) -> std::io::Result<PreauthRead> {
    let mut message: Vec<u8> = Vec::new();
    let mut message_op: Option<u8> = None;
    loop {
        let mut h = [0u8; 2];
        match io.read_exact(&mut h).await {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return Ok(PreauthRead::Closed)
            }
            Err(e) => return Err(e),
        }
        let fin = h[0] & 0x80 != 0;
        if h[0] & 0x70 != 0 {
            return Ok(PreauthRead::Protocol("reserved bits set"));
        }
        let op = h[0] & 0x0F;
        if h[1] & 0x80 == 0 {
            return Ok(PreauthRead::Protocol("client frames must be masked"));
        }
        let len = match h[1] & 0x7F {
            126 => {
                let mut b = [0u8; 2];
                io.read_exact(&mut b).await?;
                u16::from_be_bytes(b) as u64
            }
            127 => {
                let mut b = [0u8; 8];
                io.read_exact(&mut b).await?;
                u64::from_be_bytes(b)
            }
            n => n as u64,
        };
        let mut mask = [0u8; 4];
        io.read_exact(&mut mask).await?;
        let is_control = op & 0x08 != 0;
        if is_control {
            if len > 125 || !fin {
                return Ok(PreauthRead::Protocol("invalid control frame"));
            }
        } else {
            // The length is the peer's: never add it unchecked.
            let total = len.saturating_add(message.len() as u64);
            if total > max as u64 {
                return Ok(PreauthRead::TooLarge(total));
            }
        }
        let Ok(len) = usize::try_from(len) else {
            return Ok(PreauthRead::TooLarge(len));
        };
        let mut payload = vec![0u8; len];
        io.read_exact(&mut payload).await?;
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
        match op {
            OP_PING => {
                write_frame(io, OP_PONG, &payload).await?;
                continue;
            }
            OP_PONG => continue,
            OP_CLOSE => return Ok(PreauthRead::Closed),
            OP_TEXT | OP_BINARY => {
                if message_op.is_some() {
                    return Ok(PreauthRead::Protocol("new message inside a fragmented one"));
                }
                message_op = Some(op);
            }
            OP_CONT => {
                if message_op.is_none() {
                    return Ok(PreauthRead::Protocol("continuation without a message"));
                }
            }
            _ => return Ok(PreauthRead::Protocol("unknown opcode")),
        }
        message.extend_from_slice(&payload);
        if fin {
            return Ok(match message_op {
                Some(OP_TEXT) => match String::from_utf8(message) {
                    Ok(s) => PreauthRead::Text(s),
                    Err(_) => PreauthRead::Protocol("text frame is not UTF-8"),
                },
                _ => PreauthRead::Binary,
            });
        }
    }
}

/// Appends an unmasked, final frame header for `len` payload bytes (RFC
/// 6455 5.2: a server's frames are not masked; 7-, 16- or 64-bit length).
pub fn push_header(out: &mut Vec<u8>, op: u8, len: usize) {
    out.push(0x80 | op);
    if len < 126 {
        out.push(len as u8);
    } else if len <= u16::MAX as usize {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

async fn write_frame<S: AsyncWrite + Unpin>(
    io: &mut S,
    op: u8,
    payload: &[u8],
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(payload.len() + 10);
    push_header(&mut buf, op, payload.len());
    buf.extend_from_slice(payload);
    io.write_all(&buf).await?;
    io.flush().await
}

pub async fn write_text<S: AsyncWrite + Unpin>(io: &mut S, text: &str) -> std::io::Result<()> {
    write_frame(io, OP_TEXT, text.as_bytes()).await
}

/// Sends a close frame with `code` and `reason` (truncated to fit 123 bytes).
pub async fn write_close<S: AsyncWrite + Unpin>(
    io: &mut S,
    code: u16,
    reason: &str,
) -> std::io::Result<()> {
    let mut payload = code.to_be_bytes().to_vec();
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    payload.extend_from_slice(&reason.as_bytes()[..end]);
    write_frame(io, OP_CLOSE, &payload).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(op: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut v = vec![if fin { 0x80 } else { 0 } | op];
        if payload.len() < 126 {
            v.push(0x80 | payload.len() as u8);
        } else {
            v.push(0x80 | 126);
            v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        v.extend_from_slice(&mask);
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        v
    }

    #[tokio::test]
    async fn reads_fragmented_text_and_stops_at_message_end() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let mut bytes = masked(OP_TEXT, false, b"hel");
        bytes.extend(masked(OP_PING, true, b"p"));
        bytes.extend(masked(OP_CONT, true, b"lo"));
        bytes.extend(masked(OP_TEXT, true, b"next"));
        b.write_all(&bytes).await.unwrap();
        match read_message(&mut a, 1024).await.unwrap() {
            PreauthRead::Text(s) => assert_eq!(s, "hello"),
            other => panic!("{other:?}"),
        }
        // The following message is still unread.
        match read_message(&mut a, 1024).await.unwrap() {
            PreauthRead::Text(s) => assert_eq!(s, "next"),
            other => panic!("{other:?}"),
        }
        // The ping was answered with a pong.
        let mut pong = [0u8; 3];
        b.read_exact(&mut pong).await.unwrap();
        assert_eq!(pong, [0x80 | OP_PONG, 1, b'p']);
    }

    #[tokio::test]
    async fn rejects_oversized_before_reading_payload() {
        let (mut a, mut b) = tokio::io::duplex(64);
        // Declares 200 bytes but sends only the header: must not wait for them.
        let mut hdr = vec![0x80 | OP_TEXT, 0x80 | 126];
        hdr.extend_from_slice(&200u16.to_be_bytes());
        hdr.extend_from_slice(&[0, 0, 0, 0]);
        b.write_all(&hdr).await.unwrap();
        assert!(matches!(
            read_message(&mut a, 100).await.unwrap(),
            PreauthRead::TooLarge(200)
        ));
    }

    /// A fragment, then a continuation declaring a length that overflows
    /// `len + buffered` (it panicked with "capacity overflow" before).
    #[tokio::test]
    async fn huge_continuation_length_is_too_large_not_a_panic() {
        let (mut a, mut b) = tokio::io::duplex(4096);
        let mut bytes = masked(OP_TEXT, false, b"0123456789");
        bytes.push(OP_CONT | 0x80);
        bytes.push(0x80 | 127);
        bytes.extend_from_slice(&0xFFFF_FFFF_FFFF_FFFBu64.to_be_bytes());
        bytes.extend_from_slice(&[1, 2, 3, 4]);
        b.write_all(&bytes).await.unwrap();
        match read_message(&mut a, 64 * 1024).await.unwrap() {
            PreauthRead::TooLarge(n) => assert_eq!(n, u64::MAX),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn rejects_unmasked() {
        let (mut a, mut b) = tokio::io::duplex(64);
        b.write_all(&[0x81, 0x01, b'x']).await.unwrap();
        assert!(matches!(
            read_message(&mut a, 100).await.unwrap(),
            PreauthRead::Protocol(_)
        ));
    }
}
