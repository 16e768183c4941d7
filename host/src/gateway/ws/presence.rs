//! A connection's presence (join, refresh, leave) and the `presence`
//! events, coalesced.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::value::RawValue;

use crate::broadcast::{events, Filter};
use crate::connections::Connection;
use crate::gateway::Gateway;

/// A connection's place in the presence list: its key and when it last
/// refreshed its entry.
pub(super) struct Membership {
    key: String,
    /// Joining changed the list: an event is due once hello-ok is out.
    pub(super) joined_new: bool,
    last_refresh: Instant,
    every: Duration,
}

impl Membership {
    /// Lists `conn` (or adds a socket to its instance's entry).
    pub(super) fn join(gw: &Gateway, conn: &Connection) -> Self {
        let (key, changed) = gw.presence.join(conn.presence_entry(), crate::now_ms());
        if changed {
            gw.broadcaster.bump_presence();
        }
        Self {
            key,
            joined_new: changed,
            last_refresh: Instant::now(),
            every: gw.presence.refresh_every(),
        }
    }

    /// The connection was active: refresh its entry, at most once per
    /// [`crate::presence::PresenceBook::refresh_every`] (a clock read per frame otherwise).
    pub(super) fn active(&mut self, gw: &Gateway, conn: &Connection) {
        if self.last_refresh.elapsed() < self.every {
            return;
        }
        self.last_refresh = Instant::now();
        if gw
            .presence
            .refresh(&self.key, crate::now_ms(), || conn.presence_entry())
        {
            changed(gw);
        }
    }

    /// The connection closed.
    pub(super) fn leave(self, gw: &Gateway) {
        if gw.presence.leave(&self.key) {
            changed(gw);
        }
    }
}

/// The list's membership changed: a new state version and an event.
pub(super) fn changed(gw: &Gateway) {
    gw.broadcaster.bump_presence();
    gw.presence_notify.notify_one();
}

/// At most one `presence` event per this interval: a burst of connects
/// and leaves becomes one event with the latest list at each end of it.
pub const PRESENCE_COALESCE: Duration = Duration::from_millis(250);

/// Bytes of `presence` events per second that the coalescing aims to stay
/// under: with 200 entries (about 70 KB) and 15,000 operators one event is
/// 1 GB of writes, so a storm of connects is summed up every 10 s at most.
const PRESENCE_BYTES_PER_SECOND: f64 = 64.0 * 1024.0 * 1024.0;

#[derive(Serialize)]
struct PresencePayload<'a> {
    presence: &'a RawValue,
}

/// Broadcasts `presence` when asked, coalescing bursts, and drops expired
/// entries. The first change after a quiet spell goes out at once; later
/// ones wait [`PRESENCE_COALESCE`], or longer when the last event's bytes
/// times its recipients would pass [`PRESENCE_BYTES_PER_SECOND`]. Every
/// event carries the current list, so nothing is lost by waiting.
pub async fn run_presence(gw: Arc<Gateway>) {
    // Operators that may read get presence (nodes do not track it).
    let filter = Filter {
        role: Some("operator".into()),
        scope: Some(crate::scopes::Scope::Read),
        ..Filter::default()
    };
    let mut prune = tokio::time::interval(gw.presence.refresh_every());
    prune.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = gw.presence_notify.notified() => {}
            _ = prune.tick() => {
                if !gw.presence.prune(crate::now_ms()) {
                    continue;
                }
                gw.broadcaster.bump_presence();
            }
        }
        let list = gw.presence.list();
        let sent = gw.broadcaster.broadcast(
            events::PRESENCE,
            &PresencePayload { presence: &list },
            &filter,
        );
        let bytes = (list.get().len() * sent) as f64;
        if bytes > (1 << 20) as f64 {
            // Once written, a big event's bytes are free memory: give it back.
            crate::memory::release_soon();
        }
        let wait =
            Duration::from_secs_f64(bytes / PRESENCE_BYTES_PER_SECOND).max(PRESENCE_COALESCE);
        tokio::time::sleep(wait.min(Duration::from_secs(10))).await;
    }
}
