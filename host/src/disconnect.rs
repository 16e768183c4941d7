//! Why a WebSocket connection is closed, typed, in one place (the shape of
//! Centrifuge's `disconnect.go`): each reason has its RFC 6455 close code
//! and the text sent in the close frame. Nothing else writes a bare close code.
//!
//! A leaf: it imports nothing of the crate.

/// The client closed without a status (never sent on the wire).
pub const NO_STATUS: u16 = 1005;
/// The socket ended without a close frame (never sent on the wire).
pub const ABNORMAL: u16 = 1006;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Disconnect {
    /// 1002: the peer broke the WebSocket protocol (or the gateway's).
    ProtocolError(String),
    /// 1003: a binary frame; the protocol is JSON text.
    BinaryFrame,
    /// 1007: a text frame that is not UTF-8.
    InvalidUtf8,
    /// 1008: a frame or handshake the gateway refuses, with why.
    Policy(String),
    /// 1008: the connection's queue is full (frames or bytes).
    SlowConsumer,
    /// 1008: no successful `connect` within the handshake timeout.
    HandshakeTimeout,
    /// 1009: a frame over the size limit, with the limit.
    MessageTooBig(String),
    /// 1001: nothing (no pong, no frame) arrived from the client for this
    /// many ms (`gateway.idle_timeout_ms`).
    IdleTimeout(u64),
    /// 1012: the gateway is shutting down.
    ServiceRestart,
    /// The client's own close code, echoed to complete the close handshake.
    Client(u16),
}

impl Disconnect {
    pub fn code(&self) -> u16 {
        match self {
            Disconnect::ProtocolError(_) => 1002,
            Disconnect::BinaryFrame => 1003,
            Disconnect::InvalidUtf8 => 1007,
            Disconnect::Policy(_) | Disconnect::SlowConsumer | Disconnect::HandshakeTimeout => 1008,
            Disconnect::MessageTooBig(_) => 1009,
            Disconnect::IdleTimeout(_) => 1001,
            Disconnect::ServiceRestart => 1012,
            Disconnect::Client(c) => *c,
        }
    }

    pub fn reason(&self) -> String {
        match self {
            Disconnect::ProtocolError(r) | Disconnect::Policy(r) | Disconnect::MessageTooBig(r) => {
                r.clone()
            }
            Disconnect::BinaryFrame => {
                "binary frames are not supported; send JSON text frames".into()
            }
            Disconnect::InvalidUtf8 => "invalid UTF-8 in a text frame".into(),
            Disconnect::SlowConsumer => "slow consumer".into(),
            Disconnect::HandshakeTimeout => "handshake timeout".into(),
            Disconnect::ServiceRestart => "service restart".into(),
            Disconnect::IdleTimeout(ms) => format!(
                "idle timeout: nothing received for {ms} ms (answer pings, or raise gateway.idle_timeout_ms)"
            ),
            Disconnect::Client(_) => String::new(),
        }
    }

    /// Is this code one that is never put in a close frame?
    pub fn is_local_only(code: u16) -> bool {
        code == NO_STATUS || code == ABNORMAL
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_reasons() {
        assert_eq!(Disconnect::SlowConsumer.code(), 1008);
        assert_eq!(Disconnect::SlowConsumer.reason(), "slow consumer");
        assert_eq!(Disconnect::InvalidUtf8.code(), 1007);
        assert_eq!(Disconnect::ServiceRestart.code(), 1012);
        assert_eq!(Disconnect::IdleTimeout(90_000).code(), 1001);
        assert!(Disconnect::IdleTimeout(90_000).reason().len() <= 123);
        assert_eq!(Disconnect::Client(4000).code(), 4000);
        assert!(Disconnect::is_local_only(ABNORMAL));
    }
}
