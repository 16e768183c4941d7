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
use std::sync::{Arc, OnceLock, RwLock};

use tokio::sync::Notify;

use crate::queue;

use crate::disconnect::Disconnect;
use crate::frames::PreparedEvent;
use crate::scopes::{scope_satisfies, Granted, Scope};

/// A frame that is one connection's own (a response, an unsequenced event:
/// bytes no other connection shares). Once queued, its bytes are counted
/// while they live — queued, being written, or dropped unwritten — in its
/// connection's [`OwnBytes`] and in the total of all connections, which
/// `gateway.limits.max_reply_bytes_total` bounds.
#[derive(Debug)]
pub struct OwnFrame {
    text: String,
    counted: Option<Arc<OwnBytes>>,
}

impl OwnFrame {
    /// Counts its bytes in `own` (once).
    fn counted(mut self, own: &Arc<OwnBytes>) -> Self {
        if self.counted.is_none() {
            own.add(self.text.len());
            self.counted = Some(own.clone());
        }
        self
    }
}

impl From<String> for OwnFrame {
    fn from(text: String) -> Self {
        Self {
            text,
            counted: None,
        }
    }
}

impl From<&str> for OwnFrame {
    fn from(text: &str) -> Self {
        String::from(text).into()
    }
}

impl std::ops::Deref for OwnFrame {
    type Target = str;
    fn deref(&self) -> &str {
        &self.text
    }
}

impl Drop for OwnFrame {
    fn drop(&mut self) {
        if let Some(own) = &self.counted {
            own.sub(self.text.len());
        }
    }
}

/// The bytes of one connection's own frames alive now, and (shared by every
/// connection) all connections' together.
#[derive(Debug, Default)]
pub struct OwnBytes {
    mine: AtomicUsize,
    all: Arc<AtomicUsize>,
}

impl OwnBytes {
    fn add(&self, n: usize) {
        self.mine.fetch_add(n, Ordering::AcqRel);
        self.all.fetch_add(n, Ordering::AcqRel);
    }

    fn sub(&self, n: usize) {
        self.mine.fetch_sub(n, Ordering::AcqRel);
        self.all.fetch_sub(n, Ordering::AcqRel);
    }
}

/// What a connection's writer task sends, in queue order.
#[derive(Debug)]
pub enum Outbound {
    /// A complete frame (a response, or an unsequenced event).
    Frame(OwnFrame),
    /// The response to a request, which took one of the connection's
    /// in-flight slots: the writer gives the slot back once it is written,
    /// so a client that does not read its responses stops being read
    /// (backpressure) instead of filling its queue.
    Reply(OwnFrame),
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
    /// Who it is, as its handshake established.
    pub who: ConnIdentity,
    /// Its scopes as the broadcaster filters on them.
    granted: Granted,
    tx: queue::Sender<Outbound>,
    /// The close asked for: set once, the first one wins.
    close: OnceLock<CloseReason>,
    /// Wakes the writer when a close is asked for while it waits for the
    /// socket to take a write (an idle writer is woken through its queue).
    close_asked: Notify,
    /// Bytes queued and not yet written (the writer subtracts what it has
    /// written, [`Connection::written`]).
    queued: AtomicUsize,
    /// Bound on `queued` (`gateway.limits.max_buffered_bytes`).
    max_queued_bytes: usize,
    /// The bytes of its own frames alive now (and of all connections').
    own: Arc<OwnBytes>,
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
    pub fn new(identity: ConnIdentity, tx: queue::Sender<Outbound>) -> Self {
        Self {
            last_heard: AtomicU64::new(identity.connected_at_ms),
            granted: Granted::of(&identity.scopes),
            who: identity,
            tx,
            close: OnceLock::new(),
            close_asked: Notify::new(),
            queued: AtomicUsize::new(0),
            max_queued_bytes: usize::MAX,
            own: Arc::new(OwnBytes::default()),
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

    /// Counts its own frames' bytes in `all` too (the manager's total,
    /// [`ConnectionManager::own_total`]).
    pub fn with_own_total(mut self, all: Arc<AtomicUsize>) -> Self {
        self.own = Arc::new(OwnBytes {
            mine: AtomicUsize::new(0),
            all,
        });
        self
    }

    /// The bytes of its own frames (responses) alive now.
    pub fn own_bytes(&self) -> usize {
        self.own.mine.load(Ordering::Acquire)
    }

    /// The writer has written (or dropped) `bytes` of what was queued.
    pub fn written(&self, bytes: usize) {
        self.queued.fetch_sub(bytes, Ordering::AcqRel);
    }

    pub fn has_scope(&self, scope: &str) -> bool {
        scope_satisfies(&self.who.scopes, scope)
    }

    /// [`Connection::has_scope`] for a scope as a value, without comparing
    /// a string (the broadcaster's filter).
    pub fn allows(&self, scope: Scope) -> bool {
        self.granted.allows(scope)
    }

    /// Queues without waiting; refuses when the queue is full in frames or bytes.
    pub fn try_send(&self, item: Outbound) -> Result<(), EnqueueError> {
        let item = match item {
            Outbound::Frame(f) => Outbound::Frame(f.counted(&self.own)),
            Outbound::Reply(f) => Outbound::Reply(f.counted(&self.own)),
            other => other,
        };
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
        self.close.get().is_some()
    }

    /// The close asked for, if one was.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.close.get().cloned()
    }

    /// Completes once a close has been asked for (at once if one was).
    /// For the writer alone: one waiter, woken by a stored permit, so a
    /// close asked for just before the wait is not missed.
    pub async fn close_asked(&self) {
        while !self.is_closing() {
            self.close_asked.notified().await;
        }
    }

    /// Closes at once, dropping whatever is still queued (slow consumers).
    /// Returns false when a close was already under way.
    pub fn close_now(&self, why: Disconnect) -> bool {
        let first = self
            .close
            .set(CloseReason {
                code: why.code(),
                reason: why.reason(),
            })
            .is_ok();
        // The writer waits on its queue, or on a write the socket has not
        // taken: wake it either way.
        if first {
            self.tx.wake();
            self.close_asked.notify_one();
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
        let w = &self.who;
        let host = w
            .client
            .display_name
            .clone()
            .unwrap_or_else(|| w.client.id.clone());
        let text = format!(
            "{} ({}) · {} · mode {} · {}",
            host, w.remote_ip, w.client.version, w.client.mode, w.role
        );
        crate::presence::Entry {
            host,
            ip: w.remote_ip.to_string(),
            version: w.client.version.clone(),
            platform: w.client.platform.clone(),
            mode: w.client.mode.clone(),
            reason: "connect",
            instance_id: w.client.instance_id.clone(),
            text,
            ts: w.connected_at_ms,
            online_since: w.connected_at_ms,
            device_id: w.device_id.clone(),
            device_family: w.client.device_family.clone(),
            model_identifier: w.client.model_identifier.clone(),
            roles: vec![w.role.clone()],
            scopes: Some(w.scopes.clone()),
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
pub struct ConnectionManager {
    inner: RwLock<Registry>,
    /// The bytes of every connection's own frames alive now.
    own_total: Arc<AtomicUsize>,
    /// `gateway.limits.max_reply_bytes_total`.
    own_budget: AtomicUsize,
    /// One [`ConnectionManager::shed_own_bytes`] at a time.
    shedding: std::sync::Mutex<()>,
}

impl Default for ConnectionManager {
    fn default() -> Self {
        Self {
            inner: RwLock::default(),
            own_total: Arc::default(),
            own_budget: AtomicUsize::new(usize::MAX),
            shedding: std::sync::Mutex::default(),
        }
    }
}

impl ConnectionManager {
    pub fn new() -> Self {
        Self::default()
    }

    /// The total each connection's own frames count in
    /// ([`Connection::with_own_total`]).
    pub fn own_total(&self) -> Arc<AtomicUsize> {
        self.own_total.clone()
    }

    /// The bytes of all connections' own frames alive now.
    pub fn own_bytes(&self) -> usize {
        self.own_total.load(Ordering::Acquire)
    }

    /// Sets `gateway.limits.max_reply_bytes_total`.
    pub fn set_own_budget(&self, bytes: usize) {
        self.own_budget.store(bytes, Ordering::Relaxed);
    }

    /// When all connections' own frames (responses waiting to be written)
    /// hold more than the budget: the connections holding the most, largest
    /// first, until what the others hold is within it, for the caller to
    /// close. Connections already closing count as gone. Empty (one atomic
    /// load) within the budget, or while another call is choosing.
    pub fn over_own_budget(&self) -> Vec<Arc<Connection>> {
        let total = self.own_bytes();
        let budget = self.own_budget.load(Ordering::Relaxed);
        if total <= budget {
            return Vec::new();
        }
        let Ok(_one) = self.shedding.try_lock() else {
            return Vec::new();
        };
        let mut holders = Vec::new();
        let mut leaving = 0usize;
        for c in self.read().by_id.values() {
            let n = c.own_bytes();
            if n == 0 {
                continue;
            }
            if c.is_closing() {
                leaving = leaving.saturating_add(n);
            } else {
                holders.push((n, c.clone()));
            }
        }
        let mut left = total.saturating_sub(leaving);
        holders.sort_unstable_by_key(|h| std::cmp::Reverse(h.0));
        let mut chosen = Vec::new();
        for (n, c) in holders {
            if left <= budget {
                break;
            }
            left = left.saturating_sub(n);
            chosen.push(c);
        }
        chosen
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        self.inner.reader()
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Registry> {
        self.inner.writer()
    }

    pub fn register(&self, conn: Arc<Connection>) {
        let mut r = self.write();
        if let Some(d) = &conn.who.device_id {
            r.by_device
                .entry(d.clone())
                .or_default()
                .insert(conn.who.id.clone());
        }
        r.by_id.insert(conn.who.id.clone(), conn);
    }

    pub fn unregister(&self, id: &str) -> Option<Arc<Connection>> {
        let mut r = self.write();
        let conn = r.by_id.remove(id)?;
        if let Some(d) = &conn.who.device_id {
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
        self.filter(|c| c.who.role == role)
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
            *m.entry(c.who.role.clone()).or_insert(0) += 1;
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
        Arc::new(Connection::new(
            ConnIdentity::for_test(id, role, scopes, device),
            tx,
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

    /// The first close wins; a wait for it ends whether the close came
    /// before the wait began or during it.
    #[tokio::test]
    async fn close_asked_is_not_missed() {
        let c = conn("a", "operator", &[], None);
        let waiting = tokio::spawn({
            let c = c.clone();
            async move { c.close_asked().await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!waiting.is_finished());
        assert!(c.close_now(Disconnect::SlowConsumer));
        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("the waiting writer is woken")
            .unwrap();
        assert!(!c.close_now(Disconnect::Policy("later".into())));
        assert_eq!(c.close_reason().map(|r| r.code), Some(1008));
        // Asked for before the wait: it ends at once.
        let d = conn("b", "operator", &[], None);
        d.close_now(Disconnect::SlowConsumer);
        tokio::time::timeout(std::time::Duration::from_secs(5), d.close_asked())
            .await
            .expect("a close asked for before the wait is seen");
    }

    #[test]
    fn queue_is_bounded_by_bytes() {
        let (tx, mut rx) = queue::channel(100);
        let c = Connection::new(ConnIdentity::for_test("a", "operator", &[], None), tx)
            .with_byte_limit(1000);
        // One item always fits an empty queue, however large.
        c.try_send(Outbound::Frame("x".repeat(5000).into()))
            .unwrap();
        assert_eq!(
            c.try_send(Outbound::Frame("y".into())),
            Err(EnqueueError::Full)
        );
        let first = rx.try_recv().unwrap();
        c.written(first.size());
        for _ in 0..9 {
            c.try_send(Outbound::Frame("z".repeat(100).into())).unwrap();
        }
        assert_eq!(
            c.try_send(Outbound::Frame("z".repeat(101).into())),
            Err(EnqueueError::Full)
        );
        c.try_send(Outbound::Frame("z".repeat(100).into())).unwrap();
    }

    /// Responses count while they live, in their connection and in the
    /// manager's total; past the budget the largest holders are chosen
    /// until the rest fit, and a closing connection counts as gone.
    #[test]
    fn own_frames_are_counted_while_they_live_and_the_largest_holders_shed() {
        let m = ConnectionManager::new();
        m.set_own_budget(1000);
        let mut queues = Vec::new();
        let mut conns = Vec::new();
        for id in ["a", "b", "c"] {
            let (tx, rx) = queue::channel(100);
            let c = Arc::new(
                Connection::new(ConnIdentity::for_test(id, "operator", &[], None), tx)
                    .with_own_total(m.own_total()),
            );
            m.register(c.clone());
            queues.push(rx);
            conns.push(c);
        }
        // Events are shared: not counted.
        let ev = Arc::new(PreparedEvent::new("tick", &serde_json::json!({}), None));
        conns[0].try_send(Outbound::Event(ev)).unwrap();
        assert_eq!(m.own_bytes(), 0);
        for (c, n) in conns.iter().zip([300, 600, 500]) {
            c.try_send(Outbound::Reply("r".repeat(n).into())).unwrap();
        }
        assert_eq!(conns[1].own_bytes(), 600);
        assert_eq!(m.own_bytes(), 1400);
        // 1400 > 1000: "b" (600) goes, and the other 800 fit.
        let chosen: Vec<_> = m
            .over_own_budget()
            .iter()
            .map(|c| c.who.id.clone())
            .collect();
        assert_eq!(chosen, ["b"]);
        conns[1].close_now(Disconnect::SlowConsumer);
        // Closing, it counts as gone: nobody more is chosen.
        assert!(m.over_own_budget().is_empty());
        // Written (taken and dropped) or dropped unwritten, the bytes go.
        let written = queues[0].try_recv();
        assert!(matches!(written, Some(Outbound::Event(_))));
        drop(queues[0].try_recv());
        assert_eq!(conns[0].own_bytes(), 0);
        drop(queues.remove(1));
        assert_eq!(m.own_bytes(), 500);
        // A refused push is not counted either.
        drop(queues.remove(0));
        assert_eq!(
            conns[0].try_send(Outbound::Reply("x".into())),
            Err(EnqueueError::Closed)
        );
        assert_eq!(m.own_bytes(), 500);
    }
}
