//! The per-item AMQP message.
//!
//! A message names an item: the job config, the file location and the item's state live in
//! Redis, so a message is small, a duplicate is harmless and a stale one is recognised by the
//! claim script.

use serde::{Deserialize, Serialize};

/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: u32 = 1;

/// "Process this item of this batch."
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemMessage {
    /// Schema version; a worker dead-letters versions it does not know.
    pub v: u32,
    /// The batch.
    pub batch_id: String,
    /// The item (directory-file id).
    pub item_id: String,
}

/// Request identifiers that travel with every message of a batch, from the HTTP request
/// into the worker's spans (AMQP headers `x-correlation-id` and `x-session-id`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Trace {
    /// The job config's `correlation_id`.
    pub correlation_id: Option<String>,
    /// The job config's `session_id`.
    pub session_id: Option<String>,
}

impl Trace {
    /// AMQP header carrying the correlation id.
    pub const CORRELATION_HEADER: &'static str = "x-correlation-id";
    /// AMQP header carrying the session id.
    pub const SESSION_HEADER: &'static str = "x-session-id";
}

/// Why a delivery's body is not an [`ItemMessage`] this worker can act on.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON, or not the right shape.
    #[error("malformed item message: {0}")]
    Malformed(#[from] serde_json::Error),
    /// A schema version from another build.
    #[error("unknown item message schema version {0}")]
    UnknownVersion(u32),
}

impl ItemMessage {
    /// A message of the current schema version.
    pub fn new(batch_id: &str, item_id: &str) -> Self {
        Self {
            v: SCHEMA_VERSION,
            batch_id: batch_id.to_owned(),
            item_id: item_id.to_owned(),
        }
    }

    /// The body bytes.
    pub fn encode(&self) -> Vec<u8> {
        // Serialising two strings and an integer cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Reads a body, refusing unknown schema versions.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        let msg: Self = serde_json::from_slice(body)?;
        if msg.v != SCHEMA_VERSION {
            return Err(DecodeError::UnknownVersion(msg.v));
        }
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_poison() {
        let m = ItemMessage::new("bjb-1", "dfl-2");
        assert_eq!(ItemMessage::decode(&m.encode()).unwrap(), m);
        // As a platform team publishes one by hand.
        assert_eq!(
            ItemMessage::decode(br#"{"v":1,"batch_id":"bjb-1","item_id":"dfl-2"}"#).unwrap(),
            m
        );
        assert!(matches!(
            ItemMessage::decode(b"nope"),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            ItemMessage::decode(br#"{"v":9,"batch_id":"a","item_id":"b"}"#),
            Err(DecodeError::UnknownVersion(9))
        ));
    }
}
