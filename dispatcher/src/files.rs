//! Files (`client.files`): uploaded bytes with a name and a purpose, added to directories by
//! id, downloaded through signed URLs. An upload into a directory makes its file too.

use std::collections::HashMap;

use axum::body::Body;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use docfleet_shared::store::{ByteStream, Staged, StoreError};
use docfleet_shared::{now_millis, now_rfc3339};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::auth::Project;
use crate::catalog::{Owned, FILE};
use crate::error::ApiError;
use crate::http::{Cursor, QueryParams};
use crate::links;
use crate::state::AppState;

/// Longest text part of an upload form (`display_name`, `metadata`, …).
const MAX_TEXT_PART: usize = 64 * 1024;

/// What `purpose` may be (the SDK's list).
const PURPOSES: &[&str] = &[
    "user_data",
    "parse",
    "extract",
    "classify",
    "split",
    "sheet",
    "agent_app",
];

/// A file, stored as JSON.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileRecord {
    /// `fil-<uuid>`.
    pub id: String,
    /// Its name: the uploaded file's name.
    pub name: String,
    /// Owner.
    pub project_id: String,
    /// What it is for (`files.create`); none for an upload into a directory.
    pub purpose: Option<String>,
    /// The caller's id for it.
    pub external_file_id: Option<String>,
    /// Upload time.
    pub created_at: String,
    /// Where the bytes are (internal).
    pub storage_key: String,
    /// How many bytes (internal).
    pub size_bytes: u64,
}

impl Owned for FileRecord {
    fn id(&self) -> &str {
        &self.id
    }
    fn project(&self) -> &str {
        &self.project_id
    }
}

impl FileRecord {
    /// The SDK's `File` shape.
    pub fn to_api(&self) -> Value {
        let file_type = std::path::Path::new(&self.name)
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        json!({
            "id": self.id,
            "name": self.name,
            "project_id": self.project_id,
            "purpose": self.purpose,
            "external_file_id": self.external_file_id,
            "file_type": file_type,
            "expires_at": Value::Null,
            "last_modified_at": self.created_at,
            "created_at": self.created_at,
            "size_bytes": self.size_bytes,
        })
    }
}

/// An upload form read: the file part staged in the store, the text parts by name.
pub struct Received {
    /// The file's bytes, not yet committed.
    pub staged: Staged,
    /// The file part's own file name.
    pub file_name: Option<String>,
    /// Every text part that was asked for.
    pub text: HashMap<String, String>,
}

impl Received {
    /// A text part, if sent and not empty.
    pub fn text(&self, name: &str) -> Option<&str> {
        self.text
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

/// Reads an upload form: the part `file_part` streamed into the store at `storage_key` (at
/// most `max_upload_bytes`), and the parts named in `text_parts`, each capped. Nothing stays
/// staged when it fails.
pub async fn receive(
    st: &AppState,
    multipart: Result<Multipart, MultipartRejection>,
    file_part: &str,
    text_parts: &[&str],
    storage_key: &str,
) -> Result<Received, ApiError> {
    let mut multipart = multipart
        .map_err(|e| ApiError::BadRequest(format!("body: expected multipart/form-data: {e}")))?;
    let bad = |e: axum::extract::multipart::MultipartError| {
        ApiError::BadRequest(format!("body: malformed multipart: {e}"))
    };
    let mut staged: Option<Staged> = None;
    let mut file_name = None;
    let mut text = HashMap::new();
    let read: Result<(), ApiError> = async {
        while let Some(mut field) = multipart.next_field().await.map_err(bad)? {
            let name = field.name().unwrap_or("").to_owned();
            if name == file_part {
                if staged.is_some() {
                    return Err(ApiError::field(file_part, "sent more than once"));
                }
                file_name = field.file_name().map(str::to_owned);
                let s = staged.insert(st.store.stage(storage_key).await?);
                while let Some(chunk) = field.chunk().await.map_err(bad)? {
                    if s.written() + chunk.len() as u64 > st.settings.max_upload_bytes {
                        return Err(ApiError::TooLarge(format!(
                            "{file_part}: larger than {} bytes",
                            st.settings.max_upload_bytes
                        )));
                    }
                    s.write(&chunk).await?;
                }
            } else if text_parts.contains(&name.as_str()) {
                let mut value = Vec::new();
                while let Some(chunk) = field.chunk().await.map_err(bad)? {
                    if value.len() + chunk.len() > MAX_TEXT_PART {
                        return Err(ApiError::field(
                            &name,
                            format!("longer than {MAX_TEXT_PART} bytes"),
                        ));
                    }
                    value.extend_from_slice(&chunk);
                }
                let value = String::from_utf8(value)
                    .map_err(|_| ApiError::field(&name, "not UTF-8 text"))?;
                text.insert(name, value);
            }
        }
        Ok(())
    }
    .await;
    match (read, staged) {
        (Ok(()), Some(staged)) => Ok(Received {
            staged,
            file_name,
            text,
        }),
        (Ok(()), None) => Err(ApiError::field(file_part, "missing file part")),
        (Err(e), staged) => {
            if let Some(s) = staged {
                s.abort().await;
            }
            Err(e)
        }
    }
}

/// Commits a received file and records it as `rec`, with the size it has.
pub async fn save(
    st: &AppState,
    mut rec: FileRecord,
    staged: Staged,
) -> Result<FileRecord, ApiError> {
    rec.size_bytes = staged.commit().await?;
    FILE.put(st, &rec, now_millis()).await?;
    Ok(rec)
}

impl FileRecord {
    /// A file of `project` about to be stored under `id`'s key.
    pub fn new(project: &str, id: String, name: String, external_file_id: Option<String>) -> Self {
        Self {
            storage_key: docfleet_shared::store::file_key(project, &id),
            id,
            name,
            project_id: project.to_owned(),
            purpose: None,
            external_file_id,
            created_at: now_rfc3339(),
            size_bytes: 0,
        }
    }
}

/// `files.create`: a multipart form with `file`, `purpose` and `external_file_id`.
pub async fn create(
    State(st): State<AppState>,
    Project(project): Project,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = FILE.new_id();
    let key = docfleet_shared::store::file_key(&project, &id);
    let form = receive(
        &st,
        multipart,
        "file",
        &["purpose", "external_file_id"],
        &key,
    )
    .await?;
    let purpose = form.text("purpose").map(str::to_owned);
    let Some(purpose) = purpose.filter(|p| PURPOSES.contains(&p.as_str())) else {
        form.staged.abort().await;
        return Err(ApiError::field(
            "purpose",
            format!("is required, one of {}", PURPOSES.join(", ")),
        ));
    };
    let name = form.file_name.clone().unwrap_or_else(|| id.clone());
    let external = form.text("external_file_id").map(str::to_owned);
    let mut rec = FileRecord::new(&project, id, name, external);
    rec.purpose = Some(purpose);
    Ok(Json(save(&st, rec, form.staged).await?.to_api()))
}

/// `files.list`: filters by name, ids and external id; ordered by `name`, `id` or
/// `created_at` (newest first, the default).
pub async fn list(
    State(st): State<AppState>,
    Project(project): Project,
    q: QueryParams,
) -> Result<Json<Value>, ApiError> {
    let cursor = Cursor::from_query(&q)?;
    let name = q.get("file_name");
    let ids = q.all("file_ids");
    let external = q.get("external_file_id");
    let mut files: Vec<FileRecord> = FILE.all(&st, &project).await?;
    files.retain(|f| {
        name.is_none_or(|n| n == f.name)
            && (ids.is_empty() || ids.contains(&f.id.as_str()))
            && external.is_none_or(|e| f.external_file_id.as_deref() == Some(e))
    });
    match q.get("order_by").unwrap_or("created_at") {
        "created_at" => files.reverse(),
        "name" => files.sort_by(|a, b| a.name.cmp(&b.name)),
        "id" => files.sort_by(|a, b| a.id.cmp(&b.id)),
        other => {
            return Err(ApiError::field(
                "order_by",
                format!("must be name, id or created_at, got {other:?}"),
            ))
        }
    }
    Ok(Json(
        cursor.page(files.iter().map(FileRecord::to_api).collect()),
    ))
}

/// `files.retrieve`.
pub async fn get(
    State(st): State<AppState>,
    Project(project): Project,
    Path(file_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let rec: FileRecord = FILE.load(&st, &project, &file_id).await?;
    Ok(Json(rec.to_api()))
}

/// `files.delete`: the bytes, then the record; 204. A directory file made from it stays
/// listed, and an item of it fails as "stored file unavailable".
pub async fn delete(
    State(st): State<AppState>,
    Project(project): Project,
    Path(file_id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let rec: FileRecord = FILE.load(&st, &project, &file_id).await?;
    remove_bytes(&st, &rec.storage_key).await?;
    FILE.remove(&st, &project, &file_id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `files.content` (2.19.0) / `files.get` (2.13.0): a URL that downloads the bytes without a
/// key until `expires_at_seconds` (default an hour, at most a week) from now.
pub async fn content(
    State(st): State<AppState>,
    Project(project): Project,
    Path(file_id): Path<String>,
    headers: HeaderMap,
    q: QueryParams,
) -> Result<Json<Value>, ApiError> {
    let rec: FileRecord = FILE.load(&st, &project, &file_id).await?;
    let secs = q.int("expires_at_seconds", 3600, 1, links::MAX_SECS)?;
    let (expires, signature) = links::sign(&st, &rec.id, secs).await?;
    let url = format!(
        "{}/api/v1/beta/files/{}/download?expires={expires}&signature={signature}",
        links::public_base(&headers),
        rec.id
    );
    let expires_at = chrono::DateTime::from_timestamp(expires, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    Ok(Json(json!({ "url": url, "expires_at": expires_at })))
}

/// The signed download itself (no key: the signature is the permission).
pub async fn download(
    State(st): State<AppState>,
    Path(file_id): Path<String>,
    q: QueryParams,
) -> Result<Response, ApiError> {
    if !FILE.well_formed(&file_id) {
        return Err(links::refused());
    }
    links::verify(&st, &file_id, &q).await?;
    let mut con = st.redis.clone();
    let raw: Option<String> = con.get(st.keys.file(&file_id)).await?;
    let rec: FileRecord = serde_json::from_str(&raw.ok_or_else(links::refused)?)?;
    let bytes = read_stream(&st, &rec.storage_key)
        .await
        .map_err(|_| ApiError::NotFound(format!("file {file_id:?} has no stored bytes")))?;
    let body = Body::from_stream(bytes);
    let disposition = format!(
        "attachment; filename=\"{}\"",
        rec.name.replace(['"', '\\', '\r', '\n'], "_")
    );
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_owned()),
            (header::CONTENT_LENGTH, rec.size_bytes.to_string()),
            (header::CONTENT_DISPOSITION, disposition),
        ],
        body,
    )
        .into_response())
}

/// A file's bytes as they arrive: from the store, or from the user's bucket for an imported
/// file.
pub async fn read_stream(st: &AppState, storage_key: &str) -> Result<ByteStream, StoreError> {
    match (docfleet_shared::buckets::foreign(storage_key), &st.buckets) {
        (None, _) => st.store.read_stream(storage_key).await,
        (Some((place, key)), Some(buckets)) => buckets.read_stream(&place, &key).await,
        (Some(_), None) => Err(StoreError::NotFound(storage_key.to_owned())),
    }
}

/// Removes a file's bytes from the store; an imported file's stay in the user's bucket, which
/// docfleet only reads.
pub async fn remove_bytes(st: &AppState, storage_key: &str) -> Result<(), StoreError> {
    match docfleet_shared::buckets::foreign(storage_key) {
        None => st.store.remove(storage_key).await,
        Some(_) => Ok(()),
    }
}
