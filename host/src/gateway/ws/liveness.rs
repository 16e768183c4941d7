//! Liveness after the handshake: one task for every connection (not a
//! timer per connection). Each sweep pings the connections from which
//! nothing arrived since the last ping round, and closes with 1001 those
//! silent for `gateway.idle_timeout_ms` (a laptop that slept, a half-open
//! TCP connection). A connection that keeps talking costs no ping.
//!
//! The reader records every frame it reads (`Connection::heard`); a pong
//! is a frame like any other.

use std::sync::Arc;
use std::time::Duration;

use crate::connections::Outbound;
use crate::disconnect::Disconnect;
use crate::gateway::Gateway;

/// Runs until the gateway stops.
pub async fn run_liveness(gw: Arc<Gateway>) {
    let mut last_ping_round = crate::now_ms();
    loop {
        // Read each round: a configuration reload changes them live.
        let (ping, idle) = {
            let c = gw.config();
            (c.gateway.ping_interval_ms, c.gateway.idle_timeout_ms)
        };
        // Sweeps often enough that a silent connection goes at most a
        // quarter of its timeout late.
        let sweep = ping.min(idle / 4).max(25);
        tokio::time::sleep(Duration::from_millis(sweep)).await;
        let now = crate::now_ms();
        let ping_round = now.saturating_sub(last_ping_round) >= ping;
        if ping_round {
            last_ping_round = now;
        }
        let (mut pinged, mut closed) = (0usize, 0usize);
        gw.conns.for_each(|c| {
            if c.is_closing() {
                return;
            }
            let silent = now.saturating_sub(c.last_heard());
            if silent >= idle {
                if c.close_now(Disconnect::IdleTimeout(idle)) {
                    closed += 1;
                }
            } else if ping_round && silent >= ping {
                // A full queue means a close for a slow consumer is on its way.
                if c.try_send(Outbound::Ping).is_ok() {
                    pinged += 1;
                }
            }
        });
        if closed > 0 {
            tracing::info!(
                closed,
                idle_timeout_ms = idle,
                "closed silent connections (1001)"
            );
        }
        if pinged > 0 {
            tracing::debug!(pinged, "pinged quiet connections");
        }
    }
}
