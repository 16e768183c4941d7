//! The gateway's counters, a leaf that every component may bump, and their
//! Prometheus text for `GET /metrics`. It imports nothing of the crate.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// Counters exported at `GET /metrics`.
#[derive(Default)]
pub struct Metrics {
    pub frames_in: AtomicU64,
    pub frames_out: AtomicU64,
    pub broadcasts: AtomicU64,
    pub slow_consumer_closes: AtomicU64,
    pub auth_failures: AtomicU64,
    pub handshake_failures: AtomicU64,
    pub connections_rejected: AtomicU64,
    pub connections_refused_per_ip: AtomicU64,
    pub webhook_busy_per_ip: AtomicU64,
    pub connections_total: AtomicU64,
    pub origin_rejections: AtomicU64,
    pub host_rejections: AtomicU64,
    pub proxied_rejections: AtomicU64,
    pub webhook_busy: AtomicU64,
    pub body_timeouts: AtomicU64,
    pub header_timeouts: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub plugin_busy: AtomicU64,
    pub plugin_log_dropped: AtomicU64,
    pub tls_failures: AtomicU64,
    pub deliveries_rate_limited: AtomicU64,
}

impl Metrics {
    /// The Prometheus text: the connections by role, every counter (and
    /// the message log's `settles`, asked for and by its timer, which it
    /// counts itself), the bytes of responses waiting, uptime.
    pub fn render(
        &self,
        by_role: &HashMap<String, usize>,
        uptime_secs: u64,
        (settles_asked, settles_timer): (u64, u64),
        reply_bytes: usize,
        outcome_unknown: u64,
    ) -> String {
        let mut out = String::new();
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
        let counters: [(&str, &str, &AtomicU64); 21] = [
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
                "connections_refused_per_ip_total",
                "TCP connections refused because their address had max_unauthenticated_per_ip unauthenticated connections open.",
                &self.connections_refused_per_ip,
            ),
            (
                "connections_accepted_total",
                "TCP connections accepted.",
                &self.connections_total,
            ),
            (
                "origin_rejections_total",
                "WebSocket upgrades and webhooks refused for their browser Origin.",
                &self.origin_rejections,
            ),
            (
                "host_rejections_total",
                "Requests refused because their Host is not a loopback or allowed name (no credentials set).",
                &self.host_rejections,
            ),
            (
                "proxied_rejections_total",
                "Requests to the control plane refused because they came through a proxy for a client not on this machine, and the gateway has no credentials.",
                &self.proxied_rejections,
            ),
            (
                "tls_handshake_failures_total",
                "TLS handshakes that failed (a client certificate missing or not signed by gateway.tls.ca, a bad client hello).",
                &self.tls_failures,
            ),
            (
                "webhook_busy_total",
                "Webhook requests refused because max_webhook_bodies were being read.",
                &self.webhook_busy,
            ),
            (
                "webhook_busy_per_ip_total",
                "Webhook requests refused because their address had max_webhook_bodies_per_ip bodies being read.",
                &self.webhook_busy_per_ip,
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
            (
                "plugin_log_dropped_total",
                "Plugin log lines dropped over plugins.log_lines_per_second.",
                &self.plugin_log_dropped,
            ),
            (
                "deliveries_rate_limited_total",
                "New messages refused (a deliver failed, a webhook answered 429) because their channel was over channels.<name>.max_messages_per_second.",
                &self.deliveries_rate_limited,
            ),
        ];
        for (name, help, v) in counters {
            metric(&mut out, name, "counter", help, v.load(Ordering::Relaxed));
        }
        let _ = writeln!(
            out,
            "# HELP switchboard_store_settles_total fsyncs of the message log made for plugin key-value writes that nothing acknowledged had made durable: asked for (the end of a plugin call, a flush) or by the writer's 50 ms timer."
        );
        let _ = writeln!(out, "# TYPE switchboard_store_settles_total counter");
        let _ = writeln!(
            out,
            "switchboard_store_settles_total{{reason=\"asked\"}} {}",
            settles_asked
        );
        let _ = writeln!(
            out,
            "switchboard_store_settles_total{{reason=\"timer\"}} {}",
            settles_timer
        );
        metric(
            &mut out,
            "reply_bytes",
            "gauge",
            "Bytes of responses waiting to be written, all connections together (gateway.limits.max_reply_bytes_total bounds them).",
            reply_bytes,
        );
        metric(
            &mut out,
            "sends_outcome_unknown_total",
            "counter",
            "Sends whose outcome is unknown (their retries are refused with SEND_OUTCOME_UNKNOWN): those the last run left when it stopped, and those whose plugin call was ended after it reached out since this start.",
            outcome_unknown,
        );
        metric(
            &mut out,
            "uptime_seconds",
            "gauge",
            "Seconds since start.",
            uptime_secs,
        );
        out
    }
}

/// One unlabelled metric `switchboard_<name>` of `kind` with its help line.
fn metric(out: &mut String, name: &str, kind: &str, help: &str, value: impl std::fmt::Display) {
    let _ = writeln!(out, "# HELP switchboard_{name} {help}");
    let _ = writeln!(out, "# TYPE switchboard_{name} {kind}");
    let _ = writeln!(out, "switchboard_{name} {value}");
}
