//! The gateway's counters, a leaf that every component may bump; `health`
//! renders them as Prometheus text at `GET /metrics`.

use std::sync::atomic::AtomicU64;

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
    pub connections_total: AtomicU64,
    pub origin_rejections: AtomicU64,
    pub host_rejections: AtomicU64,
    pub webhook_busy: AtomicU64,
    pub body_timeouts: AtomicU64,
    pub header_timeouts: AtomicU64,
    pub protocol_errors: AtomicU64,
    pub plugin_busy: AtomicU64,
}
