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
//!
//! It uses `connections`, `frames`, `disconnect`, `memory` and `metrics`; it
//! knows nothing of channels, plugins or the gateway.

use crate::sync::MutexExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::connections::{ConnectionManager, EnqueueError, Outbound};
use crate::frames::{PreparedEvent, StateVersion};
use crate::metrics::Metrics;
use crate::scopes::Scope;

/// Names of the events this gateway emits (advertised in `hello-ok`).
pub mod events {
    pub const TICK: &str = "tick";
    pub const PRESENCE: &str = "presence";
    pub const HEALTH: &str = "health";
    pub const SHUTDOWN: &str = "shutdown";
    pub const MESSAGE: &str = "message";
    pub const PLUGINS: &str = "plugins";
    /// A configuration reload: applied (what changed) or refused (why).
    pub const CONFIG: &str = "config";
    pub const ALL: &[&str] = &[TICK, PRESENCE, HEALTH, SHUTDOWN, MESSAGE, PLUGINS, CONFIG];
}

/// Which connections receive an event. Empty = all.
#[derive(Debug, Default, Clone)]
pub struct Filter {
    pub role: Option<String>,
    pub scope: Option<Scope>,
    /// Only these connection ids.
    pub include: Option<Vec<String>>,
    /// Never these connection ids.
    pub exclude: Vec<String>,
}

impl Filter {
    pub fn scope(scope: Scope) -> Self {
        Self {
            scope: Some(scope),
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

    /// The counters it bumps, for the parts that broadcast through it.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
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
    pub fn broadcast<P: serde::Serialize + ?Sized>(
        &self,
        event: &str,
        payload: &P,
        filter: &Filter,
    ) -> usize {
        let prepared = Arc::new(PreparedEvent::new(
            event,
            payload,
            Some(self.state_version()),
        ));
        let _order = self.order.guard();
        let mut sent = 0;
        self.conns.for_each(|c| {
            if let Some(r) = &filter.role {
                if &c.who.role != r {
                    return;
                }
            }
            if let Some(s) = filter.scope {
                if !c.allows(s) {
                    return;
                }
            }
            if let Some(inc) = &filter.include {
                if !inc.iter().any(|i| i == &c.who.id) {
                    return;
                }
            }
            if filter.exclude.iter().any(|i| i == &c.who.id) || c.is_closing() {
                return;
            }
            match c.try_send(Outbound::Event(prepared.clone())) {
                Ok(()) => sent += 1,
                Err(EnqueueError::Full) => close_slow_consumer(&self.metrics, c),
                Err(EnqueueError::Closed) => {}
            }
        });
        self.metrics.broadcasts.fetch_add(1, Ordering::Relaxed);
        sent
    }
}

/// While the responses waiting for all connections pass
/// `gateway.limits.max_reply_bytes_total`, closes those holding the most
/// with 1008 "slow consumer" (their queues are dropped).
pub fn shed_replies(metrics: &Metrics, conns: &ConnectionManager) {
    for c in conns.over_own_budget() {
        if c.close_now(crate::disconnect::Disconnect::SlowConsumer) {
            metrics.slow_consumer_closes.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                conn_id = %c.who.id,
                client = %c.who.client.id,
                holds = c.own_bytes(),
                all = conns.own_bytes(),
                "closing slow consumer: the responses waiting for all connections pass gateway.limits.max_reply_bytes_total, and it holds the most"
            );
        }
    }
}

/// Closes `c` with 1008 "slow consumer", counting each connection once.
pub fn close_slow_consumer(metrics: &Metrics, c: &crate::connections::Connection) {
    if c.close_now(crate::disconnect::Disconnect::SlowConsumer) {
        metrics.slow_consumer_closes.fetch_add(1, Ordering::Relaxed);
        // Its queue is dropped when the writer ends: give that memory back.
        crate::memory::release_soon();
        let (frames, bytes) = c.queued();
        tracing::warn!(conn_id = %c.who.id, client = %c.who.client.id, queued_frames = frames, queued_bytes = bytes, "closing slow consumer: send queue full");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connections::{ConnIdentity, Connection};
    use crate::queue;

    fn add(
        m: &ConnectionManager,
        id: &str,
        role: &str,
        scopes: &[&str],
        cap: usize,
    ) -> queue::Receiver<Outbound> {
        let (tx, rx) = queue::channel(cap);
        m.register(Arc::new(Connection::new(
            ConnIdentity::for_test(id, role, scopes, None),
            tx,
        )));
        rx
    }

    #[test]
    fn filters_include_exclude_and_shares_bytes() {
        let conns = Arc::new(ConnectionManager::new());
        let metrics = Arc::new(Metrics::default());
        let b = Broadcaster::new(conns.clone(), metrics.clone());
        let mut a = add(&conns, "a", "operator", &["operator.read"], 8);
        let mut n = add(&conns, "n", "node", &[], 8);
        let mut c = add(&conns, "c", "operator", &["operator.admin"], 8);
        let v = serde_json::json!({});
        assert_eq!(b.broadcast("x", &v, &Filter::default()), 3);
        let only_c = Filter {
            include: Some(vec!["c".into()]),
            ..Filter::default()
        };
        assert_eq!(b.broadcast("y", &v, &only_c), 1);
        let not_a = Filter {
            exclude: vec!["a".into()],
            role: Some("operator".into()),
            ..Filter::default()
        };
        assert_eq!(b.broadcast("z", &v, &not_a), 1);
        let names = |rx: &mut queue::Receiver<Outbound>| {
            let mut out = Vec::new();
            while let Some(Outbound::Event(e)) = rx.try_recv() {
                out.push(e);
            }
            out
        };
        let (ea, en, ec) = (names(&mut a), names(&mut n), names(&mut c));
        assert_eq!(
            ea.iter().map(|e| e.event.as_str()).collect::<Vec<_>>(),
            ["x"]
        );
        assert_eq!(en.len(), 1);
        assert_eq!(
            ec.iter().map(|e| e.event.as_str()).collect::<Vec<_>>(),
            ["x", "y", "z"]
        );
        // Serialised once: every recipient holds the same allocation.
        assert!(Arc::ptr_eq(&ea[0], &ec[0]) && Arc::ptr_eq(&ea[0], &en[0]));
    }

    #[test]
    fn full_queue_closes_once() {
        let conns = Arc::new(ConnectionManager::new());
        let metrics = Arc::new(Metrics::default());
        let b = Broadcaster::new(conns.clone(), metrics.clone());
        let _rx = add(&conns, "s", "operator", &[], 1);
        let v = serde_json::json!({});
        assert_eq!(b.broadcast("1", &v, &Filter::default()), 1);
        assert_eq!(b.broadcast("2", &v, &Filter::default()), 0);
        assert_eq!(b.broadcast("3", &v, &Filter::default()), 0);
        assert_eq!(metrics.slow_consumer_closes.load(Ordering::Relaxed), 1);
        assert!(conns.get("s").unwrap().is_closing());
    }
}
