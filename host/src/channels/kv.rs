//! `kv-*` for the instances of one channel: the channel's key-value store,
//! kept in the database with the message log. Limits are checked here (the
//! contract's), before anything is written.
//!
//! It knows the store only through [`StateStore`].

use std::sync::Arc;

use crate::plugins::imports::{Kv, Writing, MAX_CLAIM_TTL_MS, MAX_KEY_BYTES, MAX_VALUE_BYTES};
use crate::store::StateStore;

pub struct ChannelKv {
    pub store: Arc<dyn StateStore>,
    pub channel: String,
}

fn key_ok(key: &str) -> Result<(), String> {
    if key.len() > MAX_KEY_BYTES {
        return Err(format!(
            "key of {} bytes is longer than {MAX_KEY_BYTES}",
            key.len()
        ));
    }
    Ok(())
}

impl Kv for ChannelKv {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        key_ok(key).ok()?;
        match self.store.kv_get(&self.channel, key) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(channel = %self.channel, "kv-get failed: {e}");
                None
            }
        }
    }

    fn set(&self, key: &str, value: Vec<u8>) -> Writing<Result<(), String>> {
        if let Err(e) = key_ok(key) {
            return Box::pin(async move { Err(e) });
        }
        if value.len() > MAX_VALUE_BYTES {
            let n = value.len();
            return Box::pin(async move {
                Err(format!("value of {n} bytes exceeds {MAX_VALUE_BYTES}"))
            });
        }
        let w = self.store.kv_set(&self.channel, key, value);
        Box::pin(async move { w.await.map_err(|e| e.to_string()) })
    }

    fn delete(&self, key: &str) -> Writing<()> {
        if key_ok(key).is_err() {
            return Box::pin(async {});
        }
        let w = self.store.kv_delete(&self.channel, key);
        let channel = self.channel.clone();
        Box::pin(async move {
            if let Err(e) = w.await {
                tracing::error!(%channel, "kv-delete failed: {e}");
            }
        })
    }

    fn claim(&self, key: &str, ttl_ms: u64) -> Writing<Result<bool, String>> {
        if let Err(e) = key_ok(key) {
            return Box::pin(async move { Err(e) });
        }
        let now = crate::now_ms();
        let w = self.store.kv_claim(
            &self.channel,
            key,
            now.saturating_add(ttl_ms.min(MAX_CLAIM_TTL_MS)),
            now,
        );
        Box::pin(async move { w.await.map_err(|e| e.to_string()) })
    }

    fn settle(&self) -> Writing<Result<(), String>> {
        let w = self.store.settle();
        Box::pin(async move { w.await.map_err(|e| e.to_string()) })
    }

    fn unclaim(&self, key: &str) -> Writing<()> {
        let w = self.store.kv_unclaim(&self.channel, key);
        let channel = self.channel.clone();
        Box::pin(async move {
            if let Err(e) = w.await {
                tracing::error!(%channel, "kv-unclaim failed: {e}");
            }
        })
    }
}
