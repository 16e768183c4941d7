//! One WebSocket connection: the `connect.challenge` → `connect` → `hello-ok`
//! handshake (read with the strict pre-auth reader) in the upgrade's task,
//! then two tasks for the connection's life: the reader loop, and a writer
//! that owns the sink and drains the bounded queue of pre-serialised frames
//! in batches. Both futures are kept small (an idle connection's memory is
//! mostly theirs).
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

/// Runs a connection's handshake, then spawns the task that serves it to
/// the close (this task, and its state, end with the handshake).
pub async fn run<S>(gw: Arc<Gateway>, mut io: S, meta: ConnMeta, origin: Option<String>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // The authenticated connection gets a task of its own, sized by what
    // it needs for its life (`serve_connection`): this one, with the
    // handshake's state (buffers, parsed params), ends here.
    if let Some(accepted) = handshake::accept(&gw, &mut io, &meta, origin).await {
        meta.authenticated();
        let tasks = gw.tasks.clone();
        tasks.spawn(reader::serve_connection(gw, io, meta, accepted));
    }
}
