//! One WebSocket connection: the `connect.challenge` → `connect` → `hello-ok`
//! handshake (read with the strict pre-auth reader), then a reader loop in
//! this task and a writer task that owns the sink and drains the bounded
//! queue of pre-serialised frames in batches.
//!
//! `handshake` (challenge, `connect`, `hello-ok`), `reader` (the
//! authenticated connection's read loop and close), `writer` (the task that
//! owns the sink), `presence` (coalesced presence events), `liveness` (pings
//! and the idle timeout, one task for all connections).
//!
//! Nothing here parses a method's params or touches channels: `methods` does.

mod handshake;
mod liveness;
mod presence;
mod reader;
mod writer;

pub use handshake::{MAX_FIELD_BYTES, MAX_LIST_ENTRIES};
pub use liveness::run_liveness;
pub use presence::{run_presence, PRESENCE_COALESCE};

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};

use super::{ConnMeta, Gateway};

/// Runs a connection from the upgrade to the close.
pub async fn run<S>(gw: Arc<Gateway>, mut io: S, meta: ConnMeta, origin: Option<String>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Boxed: the handshake's state (buffers, parsed params) is freed once it
    // is done instead of sizing the future the whole connection lives in.
    let accepted = Box::pin(handshake::accept(&gw, &mut io, &meta, origin)).await;
    if let Some(accepted) = accepted {
        meta.authenticated();
        Box::pin(reader::serve_connection(gw, io, meta, accepted)).await;
    }
}
