//! Connecting to RabbitMQ and Redis.

use std::time::Duration;

use lapin::{Connection, ConnectionProperties};

/// Opens an AMQP connection, retrying with backoff for up to `patience`.
pub async fn connect_amqp(url: &str, patience: Duration) -> lapin::Result<Connection> {
    let deadline = tokio::time::Instant::now() + patience;
    let mut delay = Duration::from_millis(100);
    loop {
        match Connection::connect(url, ConnectionProperties::default()).await {
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

/// A Redis connection that reconnects by itself.
pub async fn connect_redis(url: &str) -> redis::RedisResult<redis::aio::ConnectionManager> {
    let client = redis::Client::open(url)?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(30)))
        .set_number_of_retries(6);
    client.get_connection_manager_with_config(config).await
}
