//! Leases: a key naming the replica that does a job (expanding a batch, running the
//! reconciler), with a TTL, so that another replica takes the job over when its holder dies.

use std::sync::Arc;

/// Renews a lease only if this replica still holds it.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0";

/// Releases a lease only if this replica holds it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0";

/// One lease, as this replica holds or asks for it.
pub struct Lease {
    key: String,
    holder: Arc<str>,
    /// How long a take or a renewal holds it.
    pub ms: u64,
}

impl Lease {
    /// The lease at `key`, for `holder`, `ms` at a time.
    pub fn new(key: String, holder: Arc<str>, ms: u64) -> Self {
        Self { key, holder, ms }
    }

    /// Takes the lease if nobody holds it.
    pub async fn take(&self, con: &mut redis::aio::ConnectionManager) -> redis::RedisResult<bool> {
        let got: Option<String> = redis::cmd("SET")
            .arg(&self.key)
            .arg(&*self.holder)
            .arg("NX")
            .arg("PX")
            .arg(self.ms)
            .query_async(con)
            .await?;
        Ok(got.is_some())
    }

    /// Extends the lease; false if another replica holds it now (or nobody does).
    pub async fn renew(&self, con: &mut redis::aio::ConnectionManager) -> redis::RedisResult<bool> {
        let held: i64 = redis::Script::new(RENEW)
            .key(&self.key)
            .arg(&*self.holder)
            .arg(self.ms)
            .invoke_async(con)
            .await?;
        Ok(held != 0)
    }

    /// Hands the lease back, if this replica holds it.
    pub async fn release(&self, con: &mut redis::aio::ConnectionManager) -> redis::RedisResult<()> {
        let _: i64 = redis::Script::new(RELEASE)
            .key(&self.key)
            .arg(&*self.holder)
            .invoke_async(con)
            .await?;
        Ok(())
    }
}
