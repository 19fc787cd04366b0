//! What a project saves by name and id: files, product configurations, webhook
//! configurations. Each record is one JSON string under its id, listed in a per-project sorted
//! set by creation time, and another project's record is never found.

use docfleet_shared::keys::Keys;
use redis::AsyncCommands;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::ApiError;
use crate::state::AppState;

/// A kind of saved record: its noun in errors and where it is kept.
pub struct Kind {
    /// How errors name it (`"file"`).
    pub noun: &'static str,
    /// What every id of it starts with (`"fil-"`).
    pub prefix: &'static str,
    record: fn(&Keys, &str) -> String,
    index: fn(&Keys, &str) -> String,
}

/// Files (`files.create`, or made by an upload into a directory).
pub const FILE: Kind = Kind {
    noun: "file",
    prefix: "fil-",
    record: Keys::file,
    index: Keys::project_files,
};

/// Saved product configurations.
pub const CONFIGURATION: Kind = Kind {
    noun: "configuration",
    prefix: "cfg-",
    record: Keys::configuration,
    index: Keys::project_configurations,
};

/// Saved webhook configurations.
pub const WEBHOOK_CONFIGURATION: Kind = Kind {
    noun: "webhook configuration",
    prefix: "whc-",
    record: Keys::webhook_configuration,
    index: Keys::project_webhook_configurations,
};

/// Whether `id` could be an id we issued with `prefix`: checked before Redis is asked, so an
/// id that is a key fragment (`x:files`) is simply not found.
pub fn well_formed(prefix: &str, id: &str) -> bool {
    id.len() <= 80
        && id.starts_with(prefix)
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A record that belongs to one project.
pub trait Owned: Serialize + DeserializeOwned {
    /// Its id.
    fn id(&self) -> &str;
    /// Its project.
    fn project(&self) -> &str;
}

impl Kind {
    /// A new id of this kind.
    pub fn new_id(&self) -> String {
        format!("{}{}", self.prefix, uuid::Uuid::new_v4())
    }

    /// Whether `id` could be one of this kind.
    pub fn well_formed(&self, id: &str) -> bool {
        well_formed(self.prefix, id)
    }

    /// Stores `rec`, new or changed; a new one joins its project's list at `created_ms`.
    pub async fn put<T: Owned>(
        &self,
        st: &AppState,
        rec: &T,
        created_ms: i64,
    ) -> Result<(), ApiError> {
        let mut con = st.redis.clone();
        redis::pipe()
            .atomic()
            .set(
                (self.record)(&st.keys, rec.id()),
                serde_json::to_string(rec)?,
            )
            .ignore()
            .cmd("ZADD")
            .arg((self.index)(&st.keys, rec.project()))
            .arg("NX")
            .arg(created_ms)
            .arg(rec.id())
            .ignore()
            .query_async::<()>(&mut con)
            .await?;
        Ok(())
    }

    /// The record `id` of `project`, or 404.
    pub async fn load<T: Owned>(
        &self,
        st: &AppState,
        project: &str,
        id: &str,
    ) -> Result<T, ApiError> {
        if !self.well_formed(id) {
            return Err(ApiError::not_found(self.noun, id));
        }
        let mut con = st.redis.clone();
        let raw: Option<String> = con.get((self.record)(&st.keys, id)).await?;
        match raw.map(|r| serde_json::from_str::<T>(&r)) {
            Some(Ok(rec)) if rec.project() == project => Ok(rec),
            Some(Err(e)) => Err(e.into()),
            _ => Err(ApiError::not_found(self.noun, id)),
        }
    }

    /// Every record of `project`, oldest first.
    pub async fn all<T: Owned>(&self, st: &AppState, project: &str) -> Result<Vec<T>, ApiError> {
        let mut con = st.redis.clone();
        let ids: Vec<String> = con.zrange((self.index)(&st.keys, project), 0, -1).await?;
        let mut out = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(500) {
            let keys: Vec<String> = chunk.iter().map(|i| (self.record)(&st.keys, i)).collect();
            let raws: Vec<Option<String>> = con.mget(keys).await?;
            for raw in raws.into_iter().flatten() {
                out.push(serde_json::from_str(&raw)?);
            }
        }
        Ok(out)
    }

    /// Forgets the record `id` of `project`.
    pub async fn remove(&self, st: &AppState, project: &str, id: &str) -> Result<(), ApiError> {
        let mut con = st.redis.clone();
        redis::pipe()
            .atomic()
            .zrem((self.index)(&st.keys, project), id)
            .ignore()
            .del((self.record)(&st.keys, id))
            .ignore()
            .query_async::<()>(&mut con)
            .await?;
        Ok(())
    }
}
