//! Health: the `health` snapshot, the monitor that broadcasts a `health` event
//! when it changes, the `tick` heartbeat, and the Prometheus metrics.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};
use tokio::sync::Notify;

use crate::broadcast::{events, Filter};
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::scopes::SCOPE_READ;

impl Metrics {
    pub fn render(&self, gw: &Gateway) -> String {
        let mut out = String::new();
        let by_role = gw.conns.count_by_role();
        let _ = writeln!(
            out,
            "# HELP switchboard_connections Authenticated WebSocket connections by role."
        );
        let _ = writeln!(out, "# TYPE switchboard_connections gauge");
        for role in ["operator", "node"] {
            let _ = writeln!(
                out,
                "switchboard_connections{{role=\"{role}\"}} {}",
                by_role.get(role).copied().unwrap_or(0)
            );
        }
        let counters: [(&str, &str, &AtomicU64); 15] = [
            (
                "frames_in_total",
                "WebSocket frames received from clients.",
                &self.frames_in,
            ),
            (
                "frames_out_total",
                "WebSocket frames sent to clients.",
                &self.frames_out,
            ),
            ("broadcasts_total", "Events broadcast.", &self.broadcasts),
            (
                "slow_consumer_closes_total",
                "Connections closed because their send queue was full.",
                &self.slow_consumer_closes,
            ),
            (
                "auth_failures_total",
                "Failed authentications (token, password, device proof, rate limit).",
                &self.auth_failures,
            ),
            (
                "handshake_failures_total",
                "Handshakes that failed for any reason.",
                &self.handshake_failures,
            ),
            (
                "connections_rejected_total",
                "TCP connections refused because max_connections was reached.",
                &self.connections_rejected,
            ),
            (
                "connections_accepted_total",
                "TCP connections accepted.",
                &self.connections_total,
            ),
            (
                "origin_rejections_total",
                "WebSocket upgrades refused for their Origin.",
                &self.origin_rejections,
            ),
            (
                "host_rejections_total",
                "Requests refused because their Host is not a loopback or allowed name (no credentials set).",
                &self.host_rejections,
            ),
            (
                "webhook_busy_total",
                "Webhook requests refused because max_webhook_bodies were being read.",
                &self.webhook_busy,
            ),
            (
                "body_timeouts_total",
                "Requests answered 408 because their body was not received in time.",
                &self.body_timeouts,
            ),
            (
                "header_timeouts_total",
                "Connections answered 408 because their request headers were not received in time.",
                &self.header_timeouts,
            ),
            (
                "protocol_errors_total",
                "WebSocket connections closed for a protocol violation (1002, 1007).",
                &self.protocol_errors,
            ),
            (
                "plugin_busy_total",
                "Plugin calls refused because the plugin had max_concurrent_calls running.",
                &self.plugin_busy,
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(out, "# HELP switchboard_{name} {help}");
            let _ = writeln!(out, "# TYPE switchboard_{name} counter");
            let _ = writeln!(out, "switchboard_{name} {}", v.load(Ordering::Relaxed));
        }
        let _ = writeln!(
            out,
            "# HELP switchboard_uptime_seconds Seconds since start."
        );
        let _ = writeln!(out, "# TYPE switchboard_uptime_seconds gauge");
        let _ = writeln!(
            out,
            "switchboard_uptime_seconds {}",
            gw.started.elapsed().as_secs()
        );
        out
    }
}

/// The `health` result (also the `health` event payload and the hello-ok
/// snapshot's `health`). Only keys of the protocol's health schema are used.
pub fn snapshot(gw: &Gateway) -> Value {
    let t0 = Instant::now();
    let channels = gw.channels.snapshot();
    let mut v = json!({
        "ok": true,
        "ts": crate::now_ms(),
        "channels": channels.health_payload(),
        "channelOrder": channels.order(),
        "channelLabels": channels.labels(),
        "heartbeatSeconds": gw.config.gateway.tick_interval_ms / 1000,
        "plugins": gw.plugins.health_payload(),
    });
    v["durationMs"] = json!(t0.elapsed().as_millis() as u64);
    v
}

/// What `/ready` reports as failing.
pub fn failing(gw: &Gateway) -> Vec<String> {
    let mut f = Vec::new();
    if gw.is_shutting_down() {
        f.push("shutting-down".to_string());
    }
    f.extend(gw.channels.snapshot().failing());
    f
}

/// The part of health whose change is worth an event (no timestamps).
fn fingerprint(v: &Value) -> Value {
    let mut v = v.clone();
    if let Some(o) = v.as_object_mut() {
        o.remove("ts");
        o.remove("durationMs");
    }
    v
}

/// Re-checks health when notified (channel or plugin change) or every
/// `health_check_interval_ms`, and broadcasts a `health` event when it changed.
pub async fn run_monitor(gw: Arc<Gateway>, notify: Arc<Notify>) {
    let interval = std::time::Duration::from_millis(gw.config.gateway.health_check_interval_ms);
    let mut last = fingerprint(&snapshot(&gw));
    loop {
        tokio::select! {
            _ = notify.notified() => {}
            _ = tokio::time::sleep(interval) => {}
            _ = gw.shutdown_started() => return,
        }
        let now = snapshot(&gw);
        let fp = fingerprint(&now);
        if fp != last {
            last = fp;
            gw.broadcaster.bump_health();
            tracing::info!("health changed; broadcasting health event");
            gw.broadcaster
                .broadcast(events::HEALTH, &now, &Filter::scope(SCOPE_READ));
        }
    }
}

/// Broadcasts `tick {ts}` to every connection every `tick_interval_ms`.
pub async fn run_ticker(gw: Arc<Gateway>) {
    let mut iv = tokio::time::interval(gw.config.tick_interval());
    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    iv.tick().await; // the first tick is immediate; clients just got hello-ok
    loop {
        tokio::select! {
            _ = iv.tick() => {
                gw.broadcaster.broadcast(events::TICK, &json!({"ts": crate::now_ms()}), &Filter::default());
            }
            _ = gw.shutdown_started() => return,
        }
    }
}
