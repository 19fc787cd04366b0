//! Webhook credentials at rest: signing secrets and custom header values are stored sealed
//! with ChaCha20-Poly1305 under `webhook.secrets_key`, so a Redis dump or a replica does not
//! hand them out. They are opened only to sign and send, and no route returns them.
//!
//! A sealed value is `sealed:v1:<base64 of nonce ‖ ciphertext>`; anything else is a value
//! stored before a key was configured, and is read as it is.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Nonce};
use serde_json::Value;

use crate::webhook::subscription::Endpoint;

const TAG: &str = "sealed:v1:";

/// Why a stored value could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// Sealed under another key, or damaged.
    #[error("a stored webhook secret cannot be opened with webhook.secrets_key (another key, or damaged)")]
    Unreadable,
    /// Sealed, and no key is configured.
    #[error("a stored webhook secret is sealed and webhook.secrets_key is not set")]
    NoKey,
}

/// The deployment's sealing key, if any.
pub struct Seal(Option<ChaCha20Poly1305>);

impl Seal {
    /// From `webhook.secrets_key` (validated with the settings: 32 bytes of base64).
    pub fn new(key: Option<&str>) -> Self {
        let cipher = key
            .and_then(|k| B64.decode(k.trim()).ok())
            .and_then(|k| ChaCha20Poly1305::new_from_slice(&k).ok());
        if cipher.is_none() {
            tracing::warn!(
                "webhook.secrets_key is not set: webhook signing secrets and headers are stored \
                 as sent."
            );
        }
        Self(cipher)
    }

    /// `plain`, sealed (as is without a key).
    pub fn seal(&self, plain: &str) -> String {
        let Some(cipher) = &self.0 else {
            return plain.to_owned();
        };
        // A v4 UUID's bytes come from the system's CSPRNG: a fresh 96-bit nonce per value.
        let nonce_bytes = uuid::Uuid::new_v4().into_bytes();
        let nonce = Nonce::from_slice(&nonce_bytes[..12]);
        match cipher.encrypt(nonce, plain.as_bytes()) {
            Ok(ct) => {
                let mut out = nonce_bytes[..12].to_vec();
                out.extend_from_slice(&ct);
                format!("{TAG}{}", B64.encode(out))
            }
            // Encrypting a short string in memory cannot fail; never store it in clear.
            Err(_) => String::new(),
        }
    }

    /// A stored value, opened.
    pub fn open(&self, stored: &str) -> Result<String, SealError> {
        let Some(body) = stored.strip_prefix(TAG) else {
            return Ok(stored.to_owned());
        };
        let cipher = self.0.as_ref().ok_or(SealError::NoKey)?;
        let raw = B64.decode(body).map_err(|_| SealError::Unreadable)?;
        if raw.len() < 12 {
            return Err(SealError::Unreadable);
        }
        let (nonce, ct) = raw.split_at(12);
        let plain = cipher
            .decrypt(Nonce::from_slice(nonce), ct)
            .map_err(|_| SealError::Unreadable)?;
        String::from_utf8(plain).map_err(|_| SealError::Unreadable)
    }

    /// An endpoint with its secret and header values sealed, for storing.
    pub fn seal_endpoint(&self, e: &Endpoint) -> Endpoint {
        let mut out = e.clone();
        out.secret = e.secret.as_deref().map(|s| self.seal(s));
        for v in out.headers.values_mut() {
            *v = self.seal(v);
        }
        out
    }

    /// A stored endpoint, opened.
    pub fn open_endpoint(&self, e: &Endpoint) -> Result<Endpoint, SealError> {
        let mut out = e.clone();
        out.secret = e.secret.as_deref().map(|s| self.open(s)).transpose()?;
        for v in out.headers.values_mut() {
            *v = self.open(v)?;
        }
        Ok(out)
    }

    /// A `WebhookConfiguration` object (or a list of them) with its credentials sealed or
    /// opened in place.
    pub fn seal_config(&self, cfg: &mut Value) {
        let _ = self.each_credential(cfg, &mut |v| Ok(self.seal(v)));
    }

    /// See [`Seal::seal_config`].
    pub fn open_config(&self, cfg: &mut Value) -> Result<(), SealError> {
        self.each_credential(cfg, &mut |v| self.open(v))
    }

    fn each_credential(
        &self,
        cfg: &mut Value,
        f: &mut dyn FnMut(&str) -> Result<String, SealError>,
    ) -> Result<(), SealError> {
        if let Some(list) = cfg.as_array_mut() {
            for c in list {
                self.each_credential(c, f)?;
            }
            return Ok(());
        }
        if let Some(Value::String(s)) = cfg.get_mut("webhook_signing_secret") {
            *s = f(s)?;
        }
        if let Some(h) = cfg
            .get_mut("webhook_headers")
            .and_then(Value::as_object_mut)
        {
            for v in h.values_mut() {
                if let Value::String(s) = v {
                    *s = f(s)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn seals_and_opens_credentials() {
        let key = B64.encode([7u8; 32]);
        let seal = Seal::new(Some(&key));
        let sealed = seal.seal("whsec_abc");
        assert!(sealed.starts_with(TAG) && !sealed.contains("abc"));
        assert_ne!(sealed, seal.seal("whsec_abc"), "a fresh nonce each time");
        assert_eq!(seal.open(&sealed).unwrap(), "whsec_abc");
        assert_eq!(seal.open("plain").unwrap(), "plain");
        let other = Seal::new(Some(&B64.encode([8u8; 32])));
        assert!(matches!(other.open(&sealed), Err(SealError::Unreadable)));
        assert!(matches!(
            Seal::new(None).open(&sealed),
            Err(SealError::NoKey)
        ));
        let mut cfg = json!([{ "webhook_url": "https://a", "webhook_signing_secret": "s",
            "webhook_headers": { "Authorization": "Bearer t" } }]);
        seal.seal_config(&mut cfg);
        assert!(!cfg.to_string().contains("Bearer t"));
        seal.open_config(&mut cfg).unwrap();
        assert_eq!(cfg[0]["webhook_headers"]["Authorization"], "Bearer t");
        assert_eq!(cfg[0]["webhook_signing_secret"], "s");
    }
}
