//! The connection manager: every authenticated WebSocket connection, looked
//! up by id, role, scope and device id, and each one's presence entry.
//!
//! A [`Connection`] is the handle other components hold: its bounded outbound
//! queue (drained by the connection's writer task) and its close signal.
//!
//! It uses `frames`, `disconnect`, `presence`, `queue`, `scopes` and `sync`; it knows nothing of the
//! gateway, channels or plugins.

use crate::sync::RwLockExt;
use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use tokio::sync::watch;

use crate::queue;

use crate::disconnect::Disconnect;
use crate::frames::PreparedEvent;
use crate::scopes::scope_satisfies;

/// What a connection's writer task sends, in queue order.
#[derive(Debug)]
pub enum Outbound {
    /// A complete frame (a response, or an unsequenced event).
    Frame(String),
    /// The response to a request, which took one of the connection's
    /// in-flight slots: the writer gives the slot back once it is written,
    /// so a client that does not read its responses stops being read
    /// (backpressure) instead of filling its queue.
    Reply(String),
    /// A broadcast event; the writer appends this connection's next `seq`.
    Event(Arc<PreparedEvent>),
    /// The answer to the client's ping (at most 125 bytes, RFC 6455 5.5).
    Pong(Box<[u8]>),
    /// A ping of ours, with no payload (liveness: `gateway.ping_interval_ms`).
    Ping,
    /// Flush what is queued before this, then close with this code.
    Close(Box<CloseReason>),
}

impl Outbound {
    /// The bytes this item puts on the wire (what the queue's byte bound counts).
    pub fn size(&self) -> usize {
        match self {
            Outbound::Frame(s) | Outbound::Reply(s) => s.len(),
            Outbound::Event(e) => e.len() + 24,
            Outbound::Pong(p) => p.len() + 2,
            Outbound::Ping => 2,
            Outbound::Close(r) => r.reason.len() + 2,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    pub code: u16,
    pub reason: String,
}

/// The client's self-description from `connect.client`.
#[derive(Debug, Clone, Default)]
pub struct ClientInfo {
    pub id: String,
    pub display_name: Option<String>,
    pub version: String,
    pub platform: String,
    pub device_family: Option<String>,
    pub model_identifier: Option<String>,
    pub mode: String,
    pub instance_id: Option<String>,
}

/// Who a connection is, as established by its handshake.
pub struct ConnIdentity {
    pub id: String,
    pub role: String,
    pub scopes: Vec<String>,
    pub device_id: Option<String>,
    pub client: ClientInfo,
    pub remote_ip: IpAddr,
    pub connected_at_ms: u64,
    /// SHA-256 of the token or password it authenticated with (`None`:
    /// none was needed); a reload that no longer accepts it closes it.
    pub credential: Option<[u8; 32]>,
}

#[cfg(test)]
impl ConnIdentity {
    /// A loopback identity for unit tests.
    pub fn for_test(id: &str, role: &str, scopes: &[&str], device: Option<&str>) -> Self {
        ConnIdentity {
            id: id.into(),
            role: role.into(),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
            device_id: device.map(Into::into),
            client: ClientInfo::default(),
            remote_ip: std::net::Ipv4Addr::LOCALHOST.into(),
            connected_at_ms: 0,
            credential: None,
        }
    }
}

pub struct Connection {
    pub id: String,
    pub role: String,
    pub scopes: Vec<String>,
    pub device_id: Option<String>,
    pub client: ClientInfo,
    pub remote_ip: IpAddr,
    pub connected_at_ms: u64,
    tx: queue::Sender<Outbound>,
    close: watch::Sender<Option<CloseReason>>,
    /// Bytes queued and not yet written (shared with the writer, which
    /// subtracts what it has written).
    queued: Arc<AtomicUsize>,
    /// Bound on `queued` (`gateway.limits.max_buffered_bytes`).
    max_queued_bytes: usize,
    /// SHA-256 of the token or password it authenticated with.
    pub credential: Option<[u8; 32]>,
    /// When a frame (of any kind) last arrived from the client, in ms since
    /// the Unix epoch: the liveness check closes a connection silent for
    /// `gateway.idle_timeout_ms`.
    last_heard: AtomicU64,
}

/// Why an enqueue did not happen.
#[derive(Debug, PartialEq, Eq)]
pub enum EnqueueError {
    /// The queue is full: the client is not reading fast enough.
    Full,
    /// The connection is gone.
    Closed,
}

impl Connection {
    pub fn new(
        identity: ConnIdentity,
        tx: queue::Sender<Outbound>,
        close: watch::Sender<Option<CloseReason>>,
    ) -> Self {
        let ConnIdentity {
            id,
            role,
            scopes,
            device_id,
            client,
            remote_ip,
            connected_at_ms,
            credential,
        } = identity;
        Self {
            id,
            role,
            scopes,
            device_id,
            client,
            remote_ip,
            connected_at_ms,
            tx,
            close,
            queued: Arc::new(AtomicUsize::new(0)),
            max_queued_bytes: usize::MAX,
            last_heard: AtomicU64::new(connected_at_ms),
            credential,
        }
    }

    /// Records that a frame arrived from the client now.
    pub fn heard(&self, now_ms: u64) {
        self.last_heard.store(now_ms, Ordering::Relaxed);
    }

    /// When a frame last arrived from the client (ms since the Unix epoch;
    /// the connect time until the first one after `hello-ok`).
    pub fn last_heard(&self) -> u64 {
        self.last_heard.load(Ordering::Relaxed)
    }

    /// Bounds the queue by bytes as well as frames: an item that would take
    /// the queued bytes past `max` is refused as [`EnqueueError::Full`]
    /// (one item is always accepted into an empty queue, whatever its size).
    pub fn with_byte_limit(mut self, max: usize) -> Self {
        self.max_queued_bytes = max;
        self
    }

    /// The queued-bytes counter, for the writer to subtract what it wrote.
    pub fn queued_bytes(&self) -> Arc<AtomicUsize> {
        self.queued.clone()
    }

    pub fn has_scope(&self, scope: &str) -> bool {
        scope_satisfies(&self.scopes, scope)
    }

    /// Queues without waiting; refuses when the queue is full in frames or bytes.
    pub fn try_send(&self, item: Outbound) -> Result<(), EnqueueError> {
        let size = item.size();
        let before = self.queued.fetch_add(size, Ordering::AcqRel);
        if before > 0 && before.saturating_add(size) > self.max_queued_bytes {
            self.queued.fetch_sub(size, Ordering::AcqRel);
            return Err(EnqueueError::Full);
        }
        self.tx.try_send(item).map_err(|e| {
            self.queued.fetch_sub(size, Ordering::AcqRel);
            match e {
                queue::TrySendError::Full(_) => EnqueueError::Full,
                queue::TrySendError::Closed(_) => EnqueueError::Closed,
            }
        })
    }

    /// (frames, bytes) queued and not yet written.
    pub fn queued(&self) -> (usize, usize) {
        (self.tx.len(), self.queued.load(Ordering::Acquire))
    }

    /// Has a close been requested?
    pub fn is_closing(&self) -> bool {
        self.close.borrow().is_some()
    }

    /// Closes at once, dropping whatever is still queued (slow consumers).
    /// Returns false when a close was already under way.
    pub fn close_now(&self, why: Disconnect) -> bool {
        let first = self.close.send_if_modified(|cur| {
            if cur.is_none() {
                *cur = Some(CloseReason {
                    code: why.code(),
                    reason: why.reason(),
                });
                true
            } else {
                false
            }
        });
        // The writer waits on its queue, not on the close: wake it.
        if first {
            self.tx.wake();
        }
        first
    }

    /// Closes after the frames already queued (shutdown); falls back to an
    /// immediate close when the queue is full.
    pub fn close_after_queue(&self, why: Disconnect) {
        let close = Outbound::Close(Box::new(CloseReason {
            code: why.code(),
            reason: why.reason(),
        }));
        if self.try_send(close) == Err(EnqueueError::Full) {
            let _ = self.close_now(why);
        }
    }

    /// This connection's entry in `system-presence`.
    pub fn presence_entry(&self) -> crate::presence::Entry {
        let host = self
            .client
            .display_name
            .clone()
            .unwrap_or_else(|| self.client.id.clone());
        let text = format!(
            "{} ({}) · {} · mode {} · {}",
            host, self.remote_ip, self.client.version, self.client.mode, self.role
        );
        crate::presence::Entry {
            host,
            ip: self.remote_ip.to_string(),
            version: self.client.version.clone(),
            platform: self.client.platform.clone(),
            mode: self.client.mode.clone(),
            reason: "connect",
            instance_id: self.client.instance_id.clone(),
            text,
            ts: self.connected_at_ms,
            online_since: self.connected_at_ms,
            device_id: self.device_id.clone(),
            device_family: self.client.device_family.clone(),
            model_identifier: self.client.model_identifier.clone(),
            roles: vec![self.role.clone()],
            scopes: Some(self.scopes.clone()),
            refreshed: 0,
            json: None,
        }
    }
}

#[derive(Default)]
struct Registry {
    by_id: HashMap<String, Arc<Connection>>,
    by_device: HashMap<String, HashSet<String>>,
}

/// Every authenticated connection. Registration order is kept for presence.
#[derive(Default)]
pub struct ConnectionManager {
    inner: RwLock<Registry>,
}

impl ConnectionManager {
    pub fn new() -> Self {
        Self::default()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.inner.reader()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Registry> {
        self.inner.writer()
    }

    pub fn register(&self, conn: Arc<Connection>) {
        let mut r = self.write();
        if let Some(d) = &conn.device_id {
            r.by_device
                .entry(d.clone())
                .or_default()
                .insert(conn.id.clone());
        }
        r.by_id.insert(conn.id.clone(), conn);
    }

    pub fn unregister(&self, id: &str) -> Option<Arc<Connection>> {
        let mut r = self.write();
        let conn = r.by_id.remove(id)?;
        if let Some(d) = &conn.device_id {
            if let Some(set) = r.by_device.get_mut(d) {
                set.remove(id);
                if set.is_empty() {
                    r.by_device.remove(d);
                }
            }
        }
        Some(conn)
    }

    pub fn get(&self, id: &str) -> Option<Arc<Connection>> {
        self.read().by_id.get(id).cloned()
    }

    pub fn count(&self) -> usize {
        self.read().by_id.len()
    }

    pub fn by_role(&self, role: &str) -> Vec<Arc<Connection>> {
        self.filter(|c| c.role == role)
    }

    pub fn by_scope(&self, scope: &str) -> Vec<Arc<Connection>> {
        self.filter(|c| c.has_scope(scope))
    }

    pub fn by_device(&self, device_id: &str) -> Vec<Arc<Connection>> {
        let r = self.read();
        r.by_device
            .get(device_id)
            .map(|ids| {
                ids.iter()
                    .filter_map(|id| r.by_id.get(id).cloned())
                    .collect()
            })
            .unwrap_or_default()
    }

    pub fn count_by_role(&self) -> HashMap<String, usize> {
        let mut m = HashMap::new();
        for c in self.read().by_id.values() {
            *m.entry(c.role.clone()).or_insert(0) += 1;
        }
        m
    }

    /// Runs `f` over every connection under the registry's read lock. `f`
    /// must not block (the broadcaster only does `try_send`).
    pub fn for_each(&self, mut f: impl FnMut(&Arc<Connection>)) {
        for c in self.read().by_id.values() {
            f(c);
        }
    }

    pub fn all(&self) -> Vec<Arc<Connection>> {
        self.read().by_id.values().cloned().collect()
    }

    fn filter(&self, pred: impl Fn(&Connection) -> bool) -> Vec<Arc<Connection>> {
        self.read()
            .by_id
            .values()
            .filter(|c| pred(c))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(id: &str, role: &str, scopes: &[&str], device: Option<&str>) -> Arc<Connection> {
        let (tx, _rx) = queue::channel(1);
        let (close, _) = watch::channel(None);
        Arc::new(Connection::new(
            ConnIdentity::for_test(id, role, scopes, device),
            tx,
            close,
        ))
    }

    #[test]
    fn lookups() {
        let m = ConnectionManager::new();
        m.register(conn("a", "operator", &["operator.admin"], Some("d1")));
        m.register(conn("b", "operator", &["operator.read"], Some("d1")));
        m.register(conn("c", "node", &[], None));
        assert_eq!(m.count(), 3);
        assert_eq!(m.by_role("node").len(), 1);
        assert_eq!(m.by_scope("operator.write").len(), 1);
        assert_eq!(m.by_scope("operator.read").len(), 2);
        assert_eq!(m.by_device("d1").len(), 2);
        m.unregister("a");
        assert_eq!(m.by_device("d1").len(), 1);
        assert!(m.get("a").is_none());
        assert_eq!(m.count_by_role()["operator"], 1);
    }

    #[test]
    fn queue_is_bounded_by_bytes() {
        let (tx, mut rx) = queue::channel(100);
        let (close, _) = watch::channel(None);
        let c = Connection::new(
            ConnIdentity::for_test("a", "operator", &[], None),
            tx,
            close,
        )
        .with_byte_limit(1000);
        // One item always fits an empty queue, however large.
        c.try_send(Outbound::Frame("x".repeat(5000))).unwrap();
        assert_eq!(
            c.try_send(Outbound::Frame("y".into())),
            Err(EnqueueError::Full)
        );
        let first = rx.try_recv().unwrap();
        c.queued_bytes().fetch_sub(first.size(), Ordering::AcqRel);
        for _ in 0..9 {
            c.try_send(Outbound::Frame("z".repeat(100))).unwrap();
        }
        assert_eq!(
            c.try_send(Outbound::Frame("z".repeat(101))),
            Err(EnqueueError::Full)
        );
        c.try_send(Outbound::Frame("z".repeat(100))).unwrap();
    }
}
