//! Authentication of the `connect` request: shared token/password and scoped
//! tokens (constant-time comparison), Ed25519 device proofs, scope grants, and
//! a per-IP limiter of failed attempts.

use crate::sync::MutexExt;
use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use ed25519_dalek::{Signature, Verifier, VerifyingKey};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::AuthConfig;
use crate::frames::{codes, ErrorShape};

pub use crate::scopes::{scope_satisfies, KNOWN_SCOPES, SCOPE_ADMIN, SCOPE_READ, SCOPE_WRITE};

/// How far a device proof's `signedAt` may be from our clock.
pub const DEVICE_SKEW_MS: i64 = 2 * 60 * 1000;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConnectAuth {
    pub token: Option<String>,
    pub bootstrap_token: Option<String>,
    pub device_token: Option<String>,
    pub password: Option<String>,
    pub approval_runtime_token: Option<String>,
    pub agent_runtime_identity_token: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DeviceProof {
    pub id: String,
    pub public_key: String,
    pub signature: String,
    pub signed_at: i64,
    pub nonce: String,
}

/// What a credential allows.
#[derive(Debug, Clone)]
pub struct Grant {
    /// Label for logs: `token`, `password`, `none`, or a scoped token's name.
    pub via: String,
    /// `None` = any role.
    pub roles: Option<Vec<String>>,
    /// `None` = any scope.
    pub scopes: Option<Vec<String>>,
    /// SHA-256 of the secret that matched (`None`: no credential needed),
    /// so that a reload can tell whether it is still accepted.
    pub secret: Option<[u8; 32]>,
}

impl Grant {
    /// The requested scopes this grant allows (never more than requested;
    /// scopes this gateway does not know are dropped, not echoed back).
    pub fn filter_scopes(&self, requested: &[String]) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for s in requested {
            if out.contains(s) || !KNOWN_SCOPES.contains(&s.as_str()) {
                continue;
            }
            let allowed = match &self.scopes {
                None => true,
                Some(allowed) => scope_satisfies(allowed, s),
            };
            if allowed {
                out.push(s.clone());
            }
        }
        out
    }

    pub fn allows_role(&self, role: &str) -> bool {
        self.roles
            .as_ref()
            .is_none_or(|r| r.iter().any(|x| x == role))
    }
}

fn ct_eq(a: &str, b: &str) -> bool {
    // Hash first so that the comparison time does not depend on the length either.
    let ha = Sha256::digest(a.as_bytes());
    let hb = Sha256::digest(b.as_bytes());
    ha.ct_eq(&hb).into()
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// Would `cfg` still accept the credential whose digest is `secret` (as
/// [`Grant::secret`] recorded it)? A reload closes connections for which
/// it would not: their token or password was removed or changed, or a
/// gateway that needed none now needs one.
pub fn still_accepts(cfg: &AuthConfig, secret: &Option<[u8; 32]>) -> bool {
    let configured = cfg.token.is_some() || cfg.password.is_some() || !cfg.tokens.is_empty();
    match secret {
        None => !configured,
        Some(h) => cfg
            .token
            .iter()
            .chain(cfg.password.iter())
            .chain(cfg.tokens.iter().map(|t| &t.token))
            .any(|s| bool::from(digest(s).ct_eq(h))),
    }
}

fn auth_error(detail: &str, message: &str) -> ErrorShape {
    ErrorShape::invalid(format!("unauthorized: {message}")).with_details(json!({"code": detail}))
}

/// Checks the credential in `auth` against the configuration.
pub fn authenticate(cfg: &AuthConfig, auth: &ConnectAuth) -> Result<Grant, ErrorShape> {
    let configured = cfg.token.is_some() || cfg.password.is_some() || !cfg.tokens.is_empty();
    if !configured {
        // Loopback-only gateway without a secret (config validation refuses
        // anything else): every local client is trusted.
        return Ok(Grant {
            via: "none".into(),
            roles: None,
            scopes: None,
            secret: None,
        });
    }
    if let Some(t) = auth.token.as_deref().filter(|t| !t.is_empty()) {
        // Compare against every configured token so timing does not reveal which matched.
        let mut found: Option<Grant> = None;
        if let Some(shared) = &cfg.token {
            if ct_eq(t, shared) {
                found = Some(Grant {
                    via: "token".into(),
                    roles: None,
                    scopes: None,
                    secret: Some(digest(t)),
                });
            }
        }
        for st in &cfg.tokens {
            if ct_eq(t, &st.token) && found.is_none() {
                found = Some(Grant {
                    via: st.name.clone(),
                    roles: Some(st.roles.clone()),
                    scopes: Some(st.scopes.clone()),
                    secret: Some(digest(t)),
                });
            }
        }
        return found.ok_or_else(|| auth_error("AUTH_TOKEN_MISMATCH", "gateway token mismatch"));
    }
    if let Some(p) = auth.password.as_deref().filter(|p| !p.is_empty()) {
        return match &cfg.password {
            Some(expected) if ct_eq(p, expected) => Ok(Grant {
                via: "password".into(),
                roles: None,
                scopes: None,
                secret: Some(digest(p)),
            }),
            Some(_) => Err(auth_error(
                "AUTH_PASSWORD_MISMATCH",
                "gateway password mismatch",
            )),
            None => Err(auth_error(
                "AUTH_PASSWORD_NOT_CONFIGURED",
                "this gateway does not accept passwords; connect with its token",
            )),
        };
    }
    let hint = if cfg.token.is_some() || !cfg.tokens.is_empty() {
        "gateway token missing (send auth.token)"
    } else {
        "gateway password missing (send auth.password)"
    };
    Err(auth_error("AUTH_REQUIRED", hint))
}

/// The metadata a device proof signs besides the key.
pub struct SignedFields<'a> {
    pub client_id: &'a str,
    pub client_mode: &'a str,
    pub role: &'a str,
    pub scopes: &'a [String],
    pub token: &'a str,
    pub platform: &'a str,
    pub device_family: &'a str,
}

fn lower_trim(s: &str) -> String {
    s.trim().to_ascii_lowercase()
}

fn device_error(detail: &str, message: &str) -> ErrorShape {
    ErrorShape::new(
        codes::INVALID_REQUEST,
        format!("device auth failed: {message}"),
    )
    .with_details(json!({"code": detail}))
}

fn b64url_decode(s: &str) -> Option<Vec<u8>> {
    let trimmed = s.trim_end_matches('=');
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(trimmed)
        .ok()
        .or_else(|| base64::engine::general_purpose::STANDARD.decode(s).ok())
}

/// Verifies an Ed25519 device proof over the `v3|…` string (or the older
/// `v2|…`); returns the device id.
pub fn verify_device(
    proof: &DeviceProof,
    challenge_nonce: &str,
    now_ms: i64,
    f: &SignedFields<'_>,
) -> Result<String, ErrorShape> {
    if proof.nonce.is_empty() {
        return Err(device_error("DEVICE_AUTH_NONCE_REQUIRED", "nonce required"));
    }
    if !ct_eq(&proof.nonce, challenge_nonce) {
        return Err(device_error(
            "DEVICE_AUTH_NONCE_MISMATCH",
            "nonce does not match this connection's challenge",
        ));
    }
    if (now_ms - proof.signed_at).abs() > DEVICE_SKEW_MS {
        return Err(device_error(
            "DEVICE_AUTH_SIGNATURE_EXPIRED",
            "signedAt is more than 2 minutes from the gateway's clock",
        ));
    }
    let key_bytes = b64url_decode(&proof.public_key).ok_or_else(|| {
        device_error(
            "DEVICE_AUTH_PUBLIC_KEY_INVALID",
            "publicKey is not base64url",
        )
    })?;
    let key_arr: [u8; 32] = key_bytes.as_slice().try_into().map_err(|_| {
        device_error(
            "DEVICE_AUTH_PUBLIC_KEY_INVALID",
            "publicKey must be a raw 32-byte Ed25519 key",
        )
    })?;
    let key = VerifyingKey::from_bytes(&key_arr).map_err(|_| {
        device_error(
            "DEVICE_AUTH_PUBLIC_KEY_INVALID",
            "publicKey is not a valid Ed25519 point",
        )
    })?;
    let derived = hex::encode(Sha256::digest(key_arr));
    if !proof.id.eq_ignore_ascii_case(&derived) {
        return Err(device_error(
            "DEVICE_AUTH_DEVICE_ID_MISMATCH",
            "device id is not the SHA-256 of its public key",
        ));
    }
    let sig_bytes = b64url_decode(&proof.signature).ok_or_else(|| {
        device_error(
            "DEVICE_AUTH_SIGNATURE_INVALID",
            "signature is not base64url",
        )
    })?;
    let sig = Signature::from_slice(&sig_bytes).map_err(|_| {
        device_error(
            "DEVICE_AUTH_SIGNATURE_INVALID",
            "signature must be 64 bytes",
        )
    })?;
    let scopes = f.scopes.join(",");
    let v2 = format!(
        "v2|{}|{}|{}|{}|{}|{}|{}|{}",
        proof.id, f.client_id, f.client_mode, f.role, scopes, proof.signed_at, f.token, proof.nonce
    );
    let v3 = format!(
        "{}|{}|{}",
        v2.replacen("v2|", "v3|", 1),
        lower_trim(f.platform),
        lower_trim(f.device_family)
    );
    if key.verify(v3.as_bytes(), &sig).is_ok() || key.verify(v2.as_bytes(), &sig).is_ok() {
        Ok(derived)
    } else {
        Err(device_error(
            "DEVICE_AUTH_SIGNATURE_INVALID",
            "signature does not verify for this connect request",
        ))
    }
}

/// Failed handshakes per remote IP in a sliding one-minute window.
pub struct FailureLimiter {
    max: u32,
    window: Duration,
    failures: Mutex<HashMap<LimitKey, VecDeque<Instant>>>,
}

/// Who a failure counts against: the remote address and, for a browser,
/// its origin. So a hostile page that burns the budget of 127.0.0.1 locks
/// out only itself, not the user's own control page or CLI on that address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct LimitKey {
    pub ip: IpAddr,
    pub origin: Option<Box<str>>,
}

impl LimitKey {
    pub fn new(ip: IpAddr, origin: Option<&str>) -> Self {
        // Origins are bounded by the header size; keep at most 256 bytes of one.
        let origin = origin.map(|o| {
            let mut end = o.len().min(256);
            while !o.is_char_boundary(end) {
                end -= 1;
            }
            Box::from(&o[..end])
        });
        Self { ip, origin }
    }
}

impl FailureLimiter {
    pub fn new(max_per_minute: u32) -> Self {
        Self {
            max: max_per_minute,
            window: Duration::from_secs(60),
            failures: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<LimitKey, VecDeque<Instant>>> {
        self.failures.guard()
    }

    /// `Some(retry_after)` when `key` has used up its failures.
    pub fn check(&self, key: &LimitKey) -> Option<Duration> {
        let now = Instant::now();
        let mut map = self.lock();
        let q = map.get_mut(key)?;
        while q
            .front()
            .is_some_and(|t| now.duration_since(*t) >= self.window)
        {
            q.pop_front();
        }
        if q.is_empty() {
            map.remove(key);
            return None;
        }
        if q.len() as u32 >= self.max {
            q.front()
                .map(|t| self.window.saturating_sub(now.duration_since(*t)))
        } else {
            None
        }
    }

    pub fn record_failure(&self, key: LimitKey) {
        let mut map = self.lock();
        // Bound memory under a flood of distinct addresses.
        if map.len() > 100_000 {
            let now = Instant::now();
            map.retain(|_, q| {
                q.back()
                    .is_some_and(|t| now.duration_since(*t) < self.window)
            });
        }
        let q = map.entry(key).or_default();
        q.push_back(Instant::now());
        // Only the last `max` failures matter.
        while q.len() > self.max.max(1) as usize {
            q.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, SigningKey};

    #[test]
    fn scope_implications() {
        let admin = vec![SCOPE_ADMIN.to_string()];
        let write = vec![SCOPE_WRITE.to_string()];
        let read = vec![SCOPE_READ.to_string()];
        assert!(scope_satisfies(&admin, SCOPE_WRITE));
        assert!(scope_satisfies(&write, SCOPE_READ));
        assert!(!scope_satisfies(&read, SCOPE_WRITE));
        assert!(!scope_satisfies(&write, SCOPE_ADMIN));
    }

    #[test]
    fn scoped_token_cannot_gain_scopes() {
        let g = Grant {
            secret: None,
            via: "ro".into(),
            roles: None,
            scopes: Some(vec![SCOPE_READ.into()]),
        };
        let req = vec![SCOPE_ADMIN.to_string(), SCOPE_READ.to_string()];
        assert_eq!(g.filter_scopes(&req), vec![SCOPE_READ.to_string()]);
    }

    #[test]
    fn token_checks() {
        let cfg = AuthConfig {
            token: Some("abc".into()),
            ..AuthConfig::default()
        };
        let good = ConnectAuth {
            token: Some("abc".into()),
            ..Default::default()
        };
        assert!(authenticate(&cfg, &good).is_ok());
        let bad = ConnectAuth {
            token: Some("abd".into()),
            ..Default::default()
        };
        let e = authenticate(&cfg, &bad).unwrap_err();
        assert_eq!(e.details.unwrap()["code"], "AUTH_TOKEN_MISMATCH");
        let e = authenticate(&cfg, &ConnectAuth::default()).unwrap_err();
        assert_eq!(e.details.unwrap()["code"], "AUTH_REQUIRED");
    }

    #[test]
    fn device_proof_v3_and_v2() {
        let sk = SigningKey::from_bytes(&[7u8; 32]);
        let pk = sk.verifying_key().to_bytes();
        let id = hex::encode(Sha256::digest(pk));
        let pub_b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(pk);
        let scopes = vec![SCOPE_READ.to_string()];
        let f = SignedFields {
            client_id: "cli",
            client_mode: "cli",
            role: "operator",
            scopes: &scopes,
            token: "tok",
            platform: "Linux",
            device_family: "",
        };
        for msg in [
            format!("v3|{id}|cli|cli|operator|operator.read|1000|tok|n1|linux|"),
            format!("v2|{id}|cli|cli|operator|operator.read|1000|tok|n1"),
        ] {
            let sig = base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(sk.sign(msg.as_bytes()).to_bytes());
            let proof = DeviceProof {
                id: id.clone(),
                public_key: pub_b64.clone(),
                signature: sig,
                signed_at: 1000,
                nonce: "n1".into(),
            };
            assert_eq!(verify_device(&proof, "n1", 2000, &f).unwrap(), id);
            let e = verify_device(&proof, "n2", 2000, &f).unwrap_err();
            assert_eq!(e.details.unwrap()["code"], "DEVICE_AUTH_NONCE_MISMATCH");
            let e = verify_device(&proof, "n1", 1000 + DEVICE_SKEW_MS + 1, &f).unwrap_err();
            assert_eq!(e.details.unwrap()["code"], "DEVICE_AUTH_SIGNATURE_EXPIRED");
        }
    }

    #[test]
    fn limiter_blocks_after_max() {
        let l = FailureLimiter::new(3);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let key = LimitKey::new(ip, None);
        for _ in 0..3 {
            assert!(l.check(&key).is_none());
            l.record_failure(key.clone());
        }
        let retry = l.check(&key).unwrap();
        assert!(retry <= Duration::from_secs(60) && retry > Duration::from_secs(50));
        // Another origin on the same address is not locked out.
        let page = LimitKey::new("127.0.0.1".parse().unwrap(), Some("http://localhost:3000"));
        let ui = LimitKey::new("127.0.0.1".parse().unwrap(), Some("http://127.0.0.1:18789"));
        for _ in 0..5 {
            l.record_failure(page.clone());
        }
        assert!(l.check(&page).is_some());
        assert!(l.check(&ui).is_none());
    }
}
