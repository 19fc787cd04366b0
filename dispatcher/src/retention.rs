//! Retention: a finished batch is forgotten `reconcile.retention_secs` after it finished.
//!
//! The reconciler moves a batch it finds terminal from `P:active` to `P:finished`, scored by
//! when it found it so, and each round forgets the batches whose time has come: their item
//! records, status sets, results and result files, webhook deliveries, and their places in
//! the project's and directories' lists. Directories and their files stay: they are the
//! user's, not the batch's. A forget cut short (a dispatcher that died) is resumed by the next
//! round, since `P:finished` lets go of a batch only once everything else is gone.

use docfleet_shared::model::ItemStatus;
use docfleet_shared::store::results_dir;
use redis::AsyncCommands;

use crate::state::AppState;

/// Batches forgotten per round, so one round stays short however much has expired.
const BATCHES_PER_ROUND: isize = 100;
/// Keys deleted per round trip.
const PAGE: isize = 1000;

/// Why forgetting a batch stopped early.
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error("result files: {0}")]
    Store(#[from] docfleet_shared::store::StoreError),
}

/// Forgets the finished batches past retention; how many.
pub async fn expire(st: &AppState, now_ms: i64) -> Result<usize, RetentionError> {
    let keep_ms = st.settings.reconcile.retention_secs.saturating_mul(1000) as i64;
    if keep_ms == 0 {
        return Ok(0);
    }
    let mut con = st.background.clone();
    let due: Vec<String> = con
        .zrangebyscore_limit(
            st.keys.finished(),
            "-inf",
            now_ms - keep_ms,
            0,
            BATCHES_PER_ROUND,
        )
        .await?;
    for batch_id in &due {
        forget(st, &mut con, batch_id).await?;
        tracing::info!(batch_id = %batch_id, "Batch forgotten after its retention.");
    }
    Ok(due.len())
}

/// Deletes everything a batch owns, the lists that name it last.
async fn forget(
    st: &AppState,
    con: &mut redis::aio::ConnectionManager,
    batch_id: &str,
) -> Result<(), RetentionError> {
    let k = &st.keys;
    let (project, job_type, single): (Option<String>, Option<String>, Option<String>) =
        redis::cmd("HMGET")
            .arg(k.batch(batch_id))
            .arg("project_id")
            .arg("job_type")
            .arg("item")
            .query_async(con)
            .await?;
    // Item records go a page at a time, each page then leaving `:items`, so a second try
    // starts where the first stopped.
    loop {
        let items: Vec<String> = con.zrange(k.batch_items(batch_id), 0, PAGE - 1).await?;
        if items.is_empty() {
            break;
        }
        let records: Vec<String> = items.iter().map(|i| k.item(batch_id, i)).collect();
        redis::pipe()
            .unlink(&records)
            .ignore()
            .zrem(k.batch_items(batch_id), &items)
            .ignore()
            .query_async::<()>(con)
            .await?;
    }
    loop {
        let ids: Vec<String> = con
            .zrange(k.batch_deliveries(batch_id), 0, PAGE - 1)
            .await?;
        if ids.is_empty() {
            break;
        }
        let records: Vec<String> = ids.iter().map(|d| k.delivery(d)).collect();
        redis::pipe()
            .unlink(&records)
            .ignore()
            .zrem(
                k.project_webhook_due(project.as_deref().unwrap_or_default()),
                &ids,
            )
            .ignore()
            .zrem(k.batch_deliveries(batch_id), &ids)
            .ignore()
            .query_async::<()>(con)
            .await?;
    }
    if let Some(project) = &project {
        st.store.remove_dir(&results_dir(project, batch_id)).await?;
    }
    let dirs: Vec<String> = con.smembers(k.batch_dirs(batch_id)).await?;
    let mut pipe = redis::pipe();
    for d in &dirs {
        pipe.zrem(k.dir_batches(d), batch_id).ignore();
    }
    if let Some(project) = &project {
        pipe.zrem(k.project_batches(project), batch_id).ignore();
        if let Some(t) = &job_type {
            pipe.zrem(k.project_jobs(project, t), batch_id).ignore();
        }
    }
    // A single-file job's file record is in no directory: it goes with its batch.
    if let Some(item) = &single {
        pipe.unlink(k.dfile(item)).ignore();
    }
    let mut owned = vec![
        k.batch(batch_id),
        k.batch_config(batch_id),
        k.batch_input(batch_id),
        k.batch_results(batch_id),
        k.batch_lease(batch_id),
        k.batch_dirs(batch_id),
    ];
    owned.extend(
        ItemStatus::ALL
            .iter()
            .map(|s| k.batch_status_set(batch_id, *s)),
    );
    pipe.unlink(&owned)
        .ignore()
        .zrem(k.expansion(), batch_id)
        .ignore()
        .zrem(k.active(), batch_id)
        .ignore()
        .zrem(k.finished(), batch_id)
        .ignore()
        .query_async::<()>(con)
        .await?;
    st.status_cache.forget(batch_id);
    Ok(())
}
