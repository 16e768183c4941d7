//! `presence` events, coalesced.

use std::time::Duration;

use serde_json::json;

use crate::broadcast::{events, Filter};
use crate::gateway::auth;
use crate::gateway::Gateway;

/// Asks [`run_presence`] for a `presence` event.
pub(super) fn broadcast_presence(gw: &Gateway) {
    gw.presence_notify.notify_one();
}

/// At most one `presence` event per this interval: a burst of connects
/// and leaves becomes one event with the latest list at each end of it.
pub const PRESENCE_COALESCE: Duration = Duration::from_millis(250);

/// Broadcasts `presence` when asked, coalescing bursts. Each event carries
/// the whole list, so one per connect would cost O(n²) bytes per n
/// connects (O(n³) for a reconnect storm of n clients); the first change
/// after a quiet spell goes out at once, later ones at most every
/// [`PRESENCE_COALESCE`], always with the current list.
pub async fn run_presence(gw: std::sync::Arc<Gateway>) {
    // Operators that may read get presence (nodes do not track it).
    let filter = Filter {
        role: Some("operator".into()),
        scope: Some(auth::SCOPE_READ.into()),
        ..Filter::default()
    };
    loop {
        gw.presence_notify.notified().await;
        gw.broadcaster.broadcast(
            events::PRESENCE,
            &json!({"presence": gw.presence()}),
            &filter,
        );
        tokio::time::sleep(PRESENCE_COALESCE).await;
    }
}
