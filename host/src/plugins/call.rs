//! The typed facade over a loaded plugin: `validate`, `send`,
//! `handle_webhook` (each on a fresh instance, on the plugin runtime, within
//! one of the plugin's call slots) and `run` (one long-lived instance), each
//! returning `Result<_, CallError>` with one flat error. The store /
//! instantiate / call / map-the-error sequence is written once, here.
//!
//! It may not name a generated type: `bindings` converts.

use std::sync::Arc;

use super::bindings::{self, Answer, Request};
use super::contract::{
    Account, Action, ChannelError, Delivery, HttpRequest, HttpResponse, OutboundMessage,
    MAX_ID_BYTES,
};
use super::imports::Imports;
use super::logs::plugin_event;
use super::sandbox::{call_failure, Grants, Network};
use super::Plugin;

/// Why a plugin call did not produce an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// The plugin answered with its own error.
    Channel(ChannelError),
    /// It trapped, panicked, ran past its deadline or its memory cap (one
    /// line; the whole error with its backtrace is in the log).
    Failed(String),
    /// It reached for a destination its channel is not granted.
    NetworkDenied { destination: String, how: String },
    /// All of its call slots stayed taken for `call_queue_timeout`.
    Busy(String),
    /// The call could not run at all (the plugin runtime is stopping).
    Unavailable(String),
    /// A `send` the host ended (a trap, its deadline, its memory cap, the
    /// runtime stopping) after it had been granted a connection out or had
    /// queued a message: whether the message went out is unknown.
    Interrupted(String),
}

impl CallError {
    /// The same error with `f` applied to the text that comes from the
    /// plugin (its own error, a panic's message); the host's own texts
    /// are kept.
    pub fn map_message(self, f: impl FnOnce(String) -> String) -> Self {
        match self {
            CallError::Channel(e) => CallError::Channel(e.map_message(f)),
            CallError::Failed(m) => CallError::Failed(f(m)),
            other => other,
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Channel(e) => write!(f, "{e}"),
            CallError::Failed(m)
            | CallError::Busy(m)
            | CallError::Unavailable(m)
            | CallError::Interrupted(m) => f.write_str(m),
            CallError::NetworkDenied { destination, how } => {
                write!(f, "network access to {destination} was denied; {how}")
            }
        }
    }
}

/// Who a call is for: the imports bound for its channel and account, and
/// the network it may reach (both prepared once per account).
pub struct Target {
    pub imports: Imports,
    pub network: Network,
    /// What the plugin's TLS connections trust (the channel's `tls_ca`).
    pub trust: super::Trust,
}

impl Plugin {
    /// `validate` on a fresh instance.
    pub async fn validate(self: &Arc<Self>, t: Target, account: Account) -> Result<(), CallError> {
        match self.invoke(t, Request::Validate(account)).await? {
            Answer::Validate(r) => r.map_err(channel_error),
            _ => Err(mismatch()),
        }
    }

    /// `send` on a fresh instance.
    pub async fn send(
        self: &Arc<Self>,
        t: Target,
        account: Account,
        message: OutboundMessage,
    ) -> Result<Delivery, CallError> {
        match self.invoke(t, Request::Send(account, message)).await? {
            Answer::Send(Ok(d)) => {
                let (d, cut) = d.bounded();
                if cut {
                    plugin_event!(
                        self.log,
                        tracing::Level::WARN,
                        "the plugin answered a send with an id longer than {MAX_ID_BYTES} bytes; it was cut"
                    );
                }
                Ok(d)
            }
            Answer::Send(Err(e)) => Err(channel_error(e)),
            _ => Err(mismatch()),
        }
    }

    /// `act` on a fresh instance (the caller has checked the capability).
    pub async fn act(
        self: &Arc<Self>,
        t: Target,
        account: Account,
        action: Action,
    ) -> Result<(), CallError> {
        match self.invoke(t, Request::Act(account, action)).await? {
            Answer::Act(r) => r.map_err(channel_error),
            _ => Err(mismatch()),
        }
    }

    /// `handle-webhook` on a fresh instance.
    pub async fn handle_webhook(
        self: &Arc<Self>,
        t: Target,
        account: Account,
        request: HttpRequest,
    ) -> Result<HttpResponse, CallError> {
        match self.invoke(t, Request::Webhook(account, request)).await? {
            Answer::Webhook(r) => Ok(r),
            _ => Err(mismatch()),
        }
    }

    /// `run` on one long-lived instance with no deadline, in the calling
    /// task (which must be on the plugin runtime); it ends when the plugin
    /// returns or the task is aborted (which drops the store).
    pub async fn run(&self, t: Target, account: Account) -> Result<(), CallError> {
        let grants = Arc::new(Grants::new(
            &t.imports.channel,
            t.network,
            t.trust,
            self.sockets.clone(),
        ));
        let mut store = self
            .runtime
            .store(self.log.clone(), Some(t.imports), grants.clone(), None);
        let result = bindings::run(&self.loaded.pre, &mut store, account)
            .await
            .map_err(|e| call_failure(&self.log, &e, store.data()));
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(denied(&grants).unwrap_or_else(|| channel_error(e))),
            Err(m) => Err(denied(&grants).unwrap_or(CallError::Failed(m))),
        }
    }

    /// Waits (at most `call_queue_timeout`) for a call slot.
    async fn slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit, CallError> {
        let limits = &self.runtime.limits;
        match tokio::time::timeout(
            limits.call_queue_timeout,
            self.calls.clone().acquire_owned(),
        )
        .await
        {
            Ok(Ok(p)) => Ok(p),
            _ => {
                self.metrics
                    .plugin_busy
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Err(CallError::Busy(format!(
                    "plugin `{}` is busy: {} calls already running (plugins.max_concurrent_calls), none finished within {} ms; retry later",
                    self.id(),
                    limits.max_concurrent_calls,
                    limits.call_queue_timeout.as_millis()
                )))
            }
        }
    }

    /// One call on a fresh instance, on the plugin runtime, in a call slot.
    async fn invoke(self: &Arc<Self>, t: Target, req: Request) -> Result<Answer, CallError> {
        let slot = self.slot().await?;
        let grants = Arc::new(Grants::new(
            &t.imports.channel,
            t.network,
            t.trust,
            self.sockets.clone(),
        ));
        let (me, imports, g) = (self.clone(), t.imports, grants.clone());
        let kv = imports.kv.clone();
        let sending = matches!(req, Request::Send(..));
        let task = self.exec.spawn(async move {
            let _slot = slot;
            let rt = &me.runtime;
            let timeout = Some(rt.limits.call_timeout);
            let mut store = rt.store(me.log.clone(), Some(imports), g, timeout);
            let result = bindings::invoke(&me.loaded.pre, &mut store, req)
                .await
                .map_err(|e| call_failure(&me.log, &e, store.data()));
            // The call's key-value writes reach the disk before its result
            // is used (answered, recorded): almost always free, since the
            // `deliver` that usually follows them made them durable.
            (result, kv.settle().await)
        });
        // A send the host ended after it reached outside the sandbox may
        // have gone out: saying it failed would have it sent again.
        let cut_off = || sending && grants.has_reached_out();
        let (result, settled) = match task.await {
            Ok(done) => done,
            Err(e) => {
                let m = format!("plugin call task failed: {e}");
                return Err(match cut_off() {
                    true => CallError::Interrupted(m),
                    false => CallError::Unavailable(m),
                });
            }
        };
        if let Err(m) = &result {
            if cut_off() {
                return Err(CallError::Interrupted(m.clone()));
            }
        }
        if let Err(e) = settled {
            let why = format!(
                "plugin `{}`: its key-value writes could not be made durable: {e}",
                self.id()
            );
            // It went out: the plugin's own state is what is at risk.
            if !matches!(result, Ok(Answer::Send(Ok(_)))) {
                return Err(CallError::Unavailable(why));
            }
            tracing::error!("{why}; the message it sent is answered as sent");
        }
        let failed = !matches!(
            &result,
            Ok(Answer::Validate(Ok(_))
                | Answer::Send(Ok(_))
                | Answer::Webhook(_)
                | Answer::Act(Ok(_)))
        );
        // A refused destination is the operator's to fix, whatever the
        // plugin made of the failed connection.
        if failed {
            if let Some(d) = denied(&grants) {
                return Err(d);
            }
        }
        result.map_err(CallError::Failed)
    }
}

fn denied(grants: &Grants) -> Option<CallError> {
    grants.denied().map(|destination| CallError::NetworkDenied {
        how: grants.how_to_allow(&destination),
        destination,
    })
}

/// A plugin's own error, its message cut to `MAX_MESSAGE_BYTES`: it
/// reaches operators, the log and every `health` event.
fn channel_error(e: ChannelError) -> CallError {
    CallError::Channel(e.bounded())
}

fn mismatch() -> CallError {
    CallError::Unavailable("internal error: the answer does not match the call".into())
}
