//! Health: the `health` snapshot (channels and plugins), what `/ready`
//! reports as failing, the monitor that broadcasts a `health` event when it
//! changes, and the `tick` heartbeat. It reads the channel and plugin
//! managers it is given and never reaches back up to the gateway.

use std::sync::{Arc, Mutex};

use crate::sync::MutexExt;
use serde_json::value::RawValue;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::broadcast::{events, Broadcaster, Filter};
use crate::channels::{ChannelLabels, ChannelManager, ChannelOrder, HealthChannels};
use crate::plugins::{PluginManager, PluginsHealth};
use crate::scopes::Scope;

/// The `health` result, borrowed from where its parts live.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct HealthOut<'a> {
    ok: bool,
    ts: u64,
    channels: HealthChannels<'a>,
    channel_order: ChannelOrder<'a>,
    channel_labels: ChannelLabels<'a>,
    heartbeat_seconds: u64,
    plugins: &'a PluginsHealth,
    #[serde(skip_serializing_if = "Option::is_none")]
    delivery_queues: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    config: Option<Value>,
    duration_ms: u64,
}

/// What health is made of.
pub struct Health {
    pub channels: Arc<ChannelManager>,
    pub plugins: Arc<PluginManager>,
    /// `heartbeatSeconds` (the tick interval).
    pub heartbeat_seconds: u64,
    /// Wakes the monitor when channels or plugins change.
    pub notify: Arc<Notify>,
    /// The monitor's last snapshot, serialised once for every hello-ok.
    pub shared: Mutex<Option<Arc<RawValue>>>,
    /// Why the configuration file on disk was refused by the last reload
    /// (the running configuration keeps serving); `None` once one applies.
    pub config_error: Mutex<Option<String>>,
}

impl Health {
    /// The `health` result (also the `health` event payload and the hello-ok
    /// snapshot's `health`). Only keys of the protocol's health schema are
    /// used. Serialised straight from the status board (under its read
    /// lock, without copying it) and the plugin registry, without a `Value`
    /// tree.
    pub fn snapshot_raw(&self) -> Box<RawValue> {
        let t0 = Instant::now();
        let plugins = self.plugins.health();
        // `ok` is `true` by the schema; a failing message log is named as
        // a failed delivery queue, and so is each channel refused for its
        // share of the log.
        let failed: Vec<Value> = self
            .channels
            .store_failure()
            .map(|why| format!("message-log: {why}"))
            .into_iter()
            .chain(
                self.channels
                    .refused_shares()
                    .into_iter()
                    .map(|(channel, why)| format!("channel:{channel}: {why}")),
            )
            .map(|name| json!({"queueName": name, "count": 1}))
            .collect();
        let delivery_queues = (!failed.is_empty()).then(|| json!({ "failed": failed }));
        let config = self
            .config_error()
            .map(|why| json!({"ok": false, "error": why}));
        let raw = self.channels.with_board(|board| {
            serde_json::value::to_raw_value(&HealthOut {
                ok: true,
                ts: crate::now_ms(),
                channels: HealthChannels(board),
                channel_order: ChannelOrder(board),
                channel_labels: ChannelLabels(board),
                heartbeat_seconds: self.heartbeat_seconds,
                plugins: &plugins,
                delivery_queues,
                config,
                duration_ms: t0.elapsed().as_millis() as u64,
            })
        });
        raw.unwrap_or_else(|e| {
            tracing::error!("health snapshot: {e}");
            RawValue::from_string("{\"ok\":true}".into()).expect("a JSON object")
        })
    }

    /// The snapshot as of the last change the monitor saw, serialised once
    /// and shared (hello-ok); taken now if the monitor has not run yet.
    pub fn shared(&self) -> Arc<RawValue> {
        if let Some(s) = self.shared.guard().clone() {
            return s;
        }
        self.share(self.snapshot_raw())
    }

    fn share(&self, snapshot: Box<RawValue>) -> Arc<RawValue> {
        let raw: Arc<RawValue> = Arc::from(snapshot);
        *self.shared.guard() = Some(raw.clone());
        raw
    }

    /// Why the config file on disk was refused by the last reload, if it was.
    pub fn config_error(&self) -> Option<String> {
        self.config_error.guard().clone()
    }

    /// Records the outcome of a configuration reload and wakes the monitor
    /// when it changes what `health` shows. True when it changed.
    pub fn set_config_error(&self, why: Option<String>) -> bool {
        let mut e = self.config_error.guard();
        if *e == why {
            return false;
        }
        *e = why;
        drop(e);
        self.notify.notify_one();
        true
    }

    /// What `/ready` reports as failing: accounts in error, and the message
    /// log when it cannot be written.
    pub fn failing(&self) -> Vec<String> {
        let mut f = self.channels.snapshot().failing();
        if let Some(why) = self.channels.store_failure() {
            f.push(format!("store: {why}"));
        }
        f
    }
}

/// The part of health whose change is worth an event (no timestamps).
/// What a change of health is judged by: the snapshot without its times.
fn fingerprint(raw: &RawValue) -> Value {
    let mut v: Value = serde_json::from_str(raw.get()).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.remove("ts");
        o.remove("durationMs");
    }
    v
}

/// The least time between two `health` events: changes closer together
/// (a plugin flapping its account's state in a loop) are folded into one
/// event, so they cost every operator at most a few events a second.
pub const HEALTH_MIN_GAP: Duration = Duration::from_millis(250);

/// Re-checks health when notified (channel or plugin change) or every
/// `interval`, and broadcasts a `health` event when it changed, at most
/// one per [`HEALTH_MIN_GAP`]; ends at `stop`.
pub async fn run_monitor(
    health: Arc<Health>,
    broadcaster: Arc<Broadcaster>,
    interval: Duration,
    stop: CancellationToken,
) {
    let first = health.snapshot_raw();
    let mut last = fingerprint(&first);
    health.share(first);
    let mut sent: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = health.notify.notified() => {}
            _ = tokio::time::sleep(interval) => {}
            _ = stop.cancelled() => return,
        }
        // Within the gap of the last event: wait for its end, taking in
        // whatever changes meanwhile.
        if let Some(at) = sent {
            tokio::select! {
                _ = tokio::time::sleep_until(at + HEALTH_MIN_GAP) => {}
                _ = stop.cancelled() => return,
            }
        }
        let now = health.snapshot_raw();
        let fp = fingerprint(&now);
        if fp != last {
            last = fp;
            sent = Some(tokio::time::Instant::now());
            let now = health.share(now);
            broadcaster.bump_health();
            tracing::info!("health changed; broadcasting health event");
            broadcaster.broadcast(events::HEALTH, &*now, &Filter::scope(Scope::Read));
        }
    }
}

/// Broadcasts `tick {ts}` to every connection every `interval`; ends at `stop`.
pub async fn run_ticker(
    broadcaster: Arc<Broadcaster>,
    interval: Duration,
    stop: CancellationToken,
) {
    let mut iv = tokio::time::interval(interval);
    iv.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    iv.tick().await; // the first tick is immediate; clients just got hello-ok
    loop {
        tokio::select! {
            _ = iv.tick() => {
                broadcaster.broadcast(events::TICK, &json!({"ts": crate::now_ms()}), &Filter::default());
            }
            _ = stop.cancelled() => return,
        }
    }
}
