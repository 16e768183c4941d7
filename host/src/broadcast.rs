//! The broadcaster: serialises each event once, hands the same bytes to every
//! connection that matches the filter, and closes slow consumers.
//!
//! Delivery never blocks: each connection has a bounded queue drained by its
//! own writer task. A connection whose queue is full is closed with 1008
//! "slow consumer" (never silently skipped), so a client that sees no `seq`
//! gap has seen every event. `seq` is assigned by the writer as it writes,
//! so it counts exactly the events that connection received. Broadcasts are
//! serialised by one lock so every connection sees events in the same order;
//! no per-connection lock is taken.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::connections::{ConnectionManager, EnqueueError, Outbound};
use crate::gateway::frames::{PreparedEvent, StateVersion};
use crate::health::Metrics;

/// Names of the events this gateway emits (advertised in `hello-ok`).
pub mod events {
    pub const TICK: &str = "tick";
    pub const PRESENCE: &str = "presence";
    pub const HEALTH: &str = "health";
    pub const SHUTDOWN: &str = "shutdown";
    pub const ALL: &[&str] = &[TICK, PRESENCE, HEALTH, SHUTDOWN];
}

/// Which connections receive an event. Empty = all.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub role: Option<String>,
    pub scope: Option<String>,
    /// Only these connection ids.
    pub include: Option<Vec<String>>,
    /// Never these connection ids.
    pub exclude: Vec<String>,
}

impl Filter {
    pub fn scope(scope: &str) -> Self {
        Self {
            scope: Some(scope.to_string()),
            ..Self::default()
        }
    }
}

pub struct Broadcaster {
    conns: Arc<ConnectionManager>,
    metrics: Arc<Metrics>,
    order: Mutex<()>,
    presence_version: AtomicU64,
    health_version: AtomicU64,
}

impl Broadcaster {
    pub fn new(conns: Arc<ConnectionManager>, metrics: Arc<Metrics>) -> Self {
        Self {
            conns,
            metrics,
            order: Mutex::new(()),
            presence_version: AtomicU64::new(1),
            health_version: AtomicU64::new(1),
        }
    }

    pub fn state_version(&self) -> StateVersion {
        StateVersion {
            presence: self.presence_version.load(Ordering::SeqCst),
            health: self.health_version.load(Ordering::SeqCst),
        }
    }

    pub fn bump_presence(&self) {
        self.presence_version.fetch_add(1, Ordering::SeqCst);
    }

    pub fn bump_health(&self) {
        self.health_version.fetch_add(1, Ordering::SeqCst);
    }

    /// Sends `event` to every matching connection; returns how many got it.
    pub fn broadcast(&self, event: &str, payload: &Value, filter: &Filter) -> usize {
        let prepared = Arc::new(PreparedEvent::new(
            event,
            payload,
            Some(self.state_version()),
        ));
        let _order = self.order.lock().unwrap_or_else(|p| p.into_inner());
        let mut sent = 0;
        self.conns.for_each(|c| {
            if let Some(r) = &filter.role {
                if &c.role != r {
                    return;
                }
            }
            if let Some(s) = &filter.scope {
                if !c.has_scope(s) {
                    return;
                }
            }
            if let Some(inc) = &filter.include {
                if !inc.iter().any(|i| i == &c.id) {
                    return;
                }
            }
            if filter.exclude.iter().any(|i| i == &c.id) {
                return;
            }
            match c.try_send(Outbound::Event(prepared.clone())) {
                Ok(()) => sent += 1,
                Err(EnqueueError::Full) => {
                    self.metrics.slow_consumer_closes.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(conn_id = %c.id, client = %c.client.id, event, "closing slow consumer: send queue full");
                    c.close_now(1008, "slow consumer");
                }
                Err(EnqueueError::Closed) => {}
            }
        });
        self.metrics.broadcasts.fetch_add(1, Ordering::Relaxed);
        sent
    }
}
