//! Connecting to RabbitMQ and Redis.

use std::time::Duration;

use lapin::tcp::OwnedTLSConfig;
use lapin::{Connection, ConnectionProperties, DefaultConnectionBuilder};

use crate::settings::BrokerSettings;

/// Opens an AMQP connection, retrying with backoff for up to `patience`. An `amqps://` URL
/// trusts the system's CAs and `broker.tls_ca_file`'s.
pub async fn connect_amqp(
    broker: &BrokerSettings,
    patience: Duration,
) -> lapin::Result<Connection> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut delay = Duration::from_millis(100);
    loop {
        match connect_amqp_once(broker).await {
            Ok(c) => return Ok(c),
            Err(error) if tokio::time::Instant::now() + delay < deadline => {
                tracing::warn!(%error, "RabbitMQ not reachable yet; retrying.");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(error) => return Err(error),
        }
    }
}

async fn connect_amqp_once(broker: &BrokerSettings) -> lapin::Result<Connection> {
    // Read at every connect, so a renewed CA file is taken without a restart.
    let cert_chain = match &broker.tls_ca_file {
        Some(path) => Some(std::fs::read_to_string(path)?),
        None => None,
    };
    DefaultConnectionBuilder::new()?
        .with_uri_str(broker.url.clone())
        .with_properties(ConnectionProperties::default())
        .with_tls_config(OwnedTLSConfig {
            identity: None,
            cert_chain,
        })
        .connect()
        .await
}

/// A Redis connection that reconnects by itself.
pub async fn connect_redis(url: &str) -> redis::RedisResult<redis::aio::ConnectionManager> {
    let client = redis::Client::open(url)?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(30)))
        .set_number_of_retries(6);
    client.get_connection_manager_with_config(config).await
}

/// What Redis's persistence settings promise about an outcome it acknowledged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Durability {
    /// AOF synced on every write: an acknowledged write survives a crash of the host.
    AofAlways,
    /// AOF synced each second: a crash of the host can lose up to a second of writes.
    AofEverySec,
    /// AOF left to the OS to sync: a crash of the host can lose tens of seconds of writes.
    AofNo,
    /// Snapshots only: a crash loses what was written since the last snapshot.
    Snapshots,
    /// Nothing on disk: a restart loses everything.
    None,
    /// Redis does not say (`CONFIG` is refused, as on some managed services).
    Unknown,
}

impl Durability {
    /// From `appendonly`, `appendfsync` and `save`.
    pub fn from_config(appendonly: &str, appendfsync: &str, save: &str) -> Self {
        match (appendonly, appendfsync) {
            ("yes", "always") => Self::AofAlways,
            ("yes", "everysec") => Self::AofEverySec,
            ("yes", _) => Self::AofNo,
            _ if !save.trim().is_empty() => Self::Snapshots,
            _ => Self::None,
        }
    }

    /// What it means for docfleet's batches.
    pub fn meaning(&self) -> &'static str {
        match self {
            Self::AofAlways => "AOF fsync always: a recorded outcome survives a crash",
            Self::AofEverySec => {
                "AOF fsync everysec: a host crash can forget up to a second of recorded outcomes; \
                 the reconciler publishes those items again"
            }
            Self::AofNo => {
                "AOF without fsync: a host crash can forget the outcomes of the last tens of \
                 seconds; the reconciler publishes those items again"
            }
            Self::Snapshots => {
                "snapshots only: a crash forgets what changed since the last snapshot; the \
                 reconciler publishes those items again"
            }
            Self::None => "no persistence: a Redis restart loses every batch; development only",
            Self::Unknown => "persistence unknown: CONFIG GET is not allowed on this Redis",
        }
    }
}

/// A Redis without persistence, which the settings do not allow.
#[derive(Debug, thiserror::Error)]
#[error(
    "Redis has no persistence (appendonly no, no snapshots): a restart loses every batch. \
     Turn on AOF (appendonly yes) or snapshots, or set redis.allow_no_persistence = true \
     (DOCFLEET__REDIS__ALLOW_NO_PERSISTENCE=true) for a development setup"
)]
pub struct NoPersistence;

/// Reads Redis's persistence settings and logs what they guarantee, once at start-up; refuses
/// a Redis without persistence unless `allow_none` (a development setup). A Redis that does
/// not say (`CONFIG` refused) is taken with a warning.
pub async fn check_durability(
    con: &mut redis::aio::ConnectionManager,
    allow_none: bool,
) -> Result<Durability, NoPersistence> {
    let read = |name: &'static str| {
        let mut con = con.clone();
        async move {
            let pair: redis::RedisResult<Vec<String>> = redis::cmd("CONFIG")
                .arg("GET")
                .arg(name)
                .query_async(&mut con)
                .await;
            pair.ok().and_then(|p| p.get(1).cloned())
        }
    };
    let durability = match (
        read("appendonly").await,
        read("appendfsync").await,
        read("save").await,
    ) {
        (Some(a), Some(f), Some(s)) => Durability::from_config(&a, &f, &s),
        _ => Durability::Unknown,
    };
    match durability {
        Durability::None if !allow_none => return Err(NoPersistence),
        Durability::None | Durability::Unknown => {
            tracing::warn!(durability = ?durability, "Redis: {}.", durability.meaning())
        }
        _ => tracing::info!(durability = ?durability, "Redis: {}.", durability.meaning()),
    }
    Ok(durability)
}

/// How long one `WAITAOF` may wait; `appendfsync everysec` answers within about a second.
const WAIT_AOF_MS: u64 = 5_000;

/// Waits until every write sent on `con` so far is in Redis's AOF on disk (`WAITAOF 1 0`).
/// Only this connection's writes are covered: the caller writes and waits on the same one.
pub async fn wait_aof(con: &mut redis::aio::ConnectionManager) -> redis::RedisResult<()> {
    let (local, _replicas): (u64, u64) = redis::cmd("WAITAOF")
        .arg(1)
        .arg(0)
        .arg(WAIT_AOF_MS)
        .query_async(con)
        .await?;
    if local >= 1 {
        Ok(())
    } else {
        Err(redis::RedisError::from((
            redis::ErrorKind::Io,
            "WAITAOF: the outcome was not on disk within its timeout",
        )))
    }
}

/// `redis.wait_aof` asked of a Redis that cannot honour it.
#[derive(Debug, thiserror::Error)]
#[error(
    "redis.wait_aof needs Redis 7.2 or later with appendonly yes; this Redis answered WAITAOF \
     with: {0}. Turn on the AOF, upgrade Redis, or turn redis.wait_aof off (the reconciler \
     then publishes again what a crash forgets)"
)]
pub struct WaitAofUnsupported(String);

/// Checks once at start-up that `WAITAOF` works here, so that a worker set to wait never
/// fails every outcome instead.
pub async fn check_wait_aof(
    con: &mut redis::aio::ConnectionManager,
) -> Result<(), WaitAofUnsupported> {
    wait_aof(con)
        .await
        .map_err(|e| WaitAofUnsupported(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn persistence_settings_say_what_survives() {
        assert_eq!(
            Durability::from_config("yes", "always", ""),
            Durability::AofAlways
        );
        assert_eq!(
            Durability::from_config("yes", "everysec", "3600 1"),
            Durability::AofEverySec
        );
        assert_eq!(Durability::from_config("yes", "no", ""), Durability::AofNo);
        assert_eq!(
            Durability::from_config("no", "everysec", "3600 1 300 100"),
            Durability::Snapshots
        );
        assert_eq!(
            Durability::from_config("no", "everysec", ""),
            Durability::None
        );
    }
}
