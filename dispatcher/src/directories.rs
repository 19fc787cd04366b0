//! Directories and the files uploaded into them.

use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, Path, State};
use axum::Json;
use docfleet_shared::now_rfc3339;
use redis::AsyncCommands;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::Project;
use crate::catalog::well_formed;
use crate::error::ApiError;
use crate::files;
use crate::http::{Cursor, JsonBody, QueryParams};
use crate::records::{Directory, DirectoryFile};
use crate::state::AppState;

/// `POST /api/v1/beta/directories` body.
#[derive(Debug, Deserialize)]
pub struct CreateDirectory {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    system_metadata: Option<Value>,
}

/// Creates a directory.
pub async fn create(
    State(st): State<AppState>,
    Project(project): Project,
    JsonBody(body): JsonBody<CreateDirectory>,
) -> Result<Json<Value>, ApiError> {
    let name = body.name.trim();
    if name.is_empty() || name.len() > 1024 {
        return Err(ApiError::field("name", "must be 1 to 1024 characters"));
    }
    let kind = body.kind.unwrap_or_else(|| "user".into());
    if kind != "user" && kind != "ephemeral" {
        return Err(ApiError::field(
            "type",
            format!("must be \"user\" or \"ephemeral\", got {kind:?}"),
        ));
    }
    if let Some(m) = &body.system_metadata {
        if !m.is_object() && !m.is_null() {
            return Err(ApiError::field("system_metadata", "must be an object"));
        }
    }
    let now = now_rfc3339();
    let dir = Directory {
        id: format!("dir-{}", uuid::Uuid::new_v4()),
        name: name.to_owned(),
        project_id: project.clone(),
        kind,
        description: body.description,
        system_metadata: body.system_metadata,
        created_at: now.clone(),
        updated_at: now,
        deleted_at: None,
    };
    let mut con = st.redis.clone();
    let _: () = redis::pipe()
        .atomic()
        .set(st.keys.dir(&dir.id), serde_json::to_string(&dir)?)
        .zadd(
            st.keys.project_dirs(&project),
            &dir.id,
            docfleet_shared::now_millis(),
        )
        .query_async(&mut con)
        .await?;
    Ok(Json(serde_json::to_value(dir)?))
}

/// Loads a directory of `project`, or 404.
pub async fn load(st: &AppState, project: &str, dir_id: &str) -> Result<Directory, ApiError> {
    if !well_formed("dir-", dir_id) {
        return Err(ApiError::not_found("directory", dir_id));
    }
    let mut con = st.redis.clone();
    let raw: Option<String> = con.get(st.keys.dir(dir_id)).await?;
    let dir: Directory = match raw {
        Some(r) => serde_json::from_str(&r)?,
        None => return Err(ApiError::not_found("directory", dir_id)),
    };
    if dir.project_id != project {
        return Err(ApiError::not_found("directory", dir_id));
    }
    Ok(dir)
}

/// Gets a directory.
pub async fn get(
    State(st): State<AppState>,
    Project(project): Project,
    Path(dir_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(serde_json::to_value(
        load(&st, &project, &dir_id).await?,
    )?))
}

/// Lists the project's directories, oldest first.
pub async fn list(
    State(st): State<AppState>,
    Project(project): Project,
    q: QueryParams,
) -> Result<Json<Value>, ApiError> {
    let cursor = Cursor::from_query(&q)?;
    let name = q.get("name");
    let types = q.all("types");
    let kind = q.get("type");
    let mut con = st.redis.clone();
    let ids: Vec<String> = con.zrange(st.keys.project_dirs(&project), 0, -1).await?;
    let raws: Vec<Option<String>> = if ids.is_empty() {
        Vec::new()
    } else {
        let keys: Vec<String> = ids.iter().map(|i| st.keys.dir(i)).collect();
        con.mget(keys).await?
    };
    let mut dirs = Vec::new();
    for raw in raws.into_iter().flatten() {
        let d: Directory = serde_json::from_str(&raw)?;
        if name.is_some_and(|n| n != d.name)
            || kind.is_some_and(|k| k != d.kind)
            || (!types.is_empty() && !types.contains(&d.kind.as_str()))
        {
            continue;
        }
        dirs.push(serde_json::to_value(d)?);
    }
    Ok(Json(cursor.page(dirs)))
}

/// Uploads one file (multipart part `upload_file`) into a directory; the file it makes
/// belongs to the directory file and goes with it.
pub async fn upload(
    State(st): State<AppState>,
    Project(project): Project,
    Path(dir_id): Path<String>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Json<Value>, ApiError> {
    let dir = load(&st, &project, &dir_id).await?;
    let file_id = crate::catalog::FILE.new_id();
    let storage_key = docfleet_shared::store::file_key(&project, &file_id);
    let form = files::receive(
        &st,
        multipart,
        "upload_file",
        &["display_name", "unique_id", "external_file_id", "metadata"],
        &storage_key,
    )
    .await?;
    let metadata = match form
        .text("metadata")
        .map(str::trim)
        .filter(|m| !m.is_empty())
    {
        None => None,
        Some(m) => match serde_json::from_str::<Value>(m) {
            Ok(v @ Value::Object(_)) => Some(v),
            Ok(Value::Null) => None,
            _ => {
                form.staged.abort().await;
                return Err(ApiError::field(
                    "metadata",
                    "must be a JSON object encoded as a string",
                ));
            }
        },
    };
    let display_name = form
        .text("display_name")
        .or(form.file_name.as_deref())
        .unwrap_or(&file_id)
        .to_owned();
    let unique_id = form.text("unique_id").map(str::to_owned);
    let external = form.text("external_file_id").map(str::to_owned);
    let rec = files::FileRecord::new(&project, file_id, display_name.clone(), external);
    let file = files::save(&st, rec, form.staged).await?;
    let rec = add(&st, &dir, &file, true, display_name, unique_id, metadata).await?;
    Ok(Json(rec.to_api()))
}

/// Makes `file` a file of `dir`.
async fn add(
    st: &AppState,
    dir: &Directory,
    file: &files::FileRecord,
    owns_file: bool,
    display_name: String,
    unique_id: Option<String>,
    metadata: Option<Value>,
) -> Result<DirectoryFile, ApiError> {
    let now = now_rfc3339();
    let rec = DirectoryFile {
        id: format!("dfl-{}", uuid::Uuid::new_v4()),
        directory_id: dir.id.clone(),
        unique_id: unique_id
            .or_else(|| file.external_file_id.clone())
            .unwrap_or_else(|| display_name.clone()),
        display_name,
        project_id: dir.project_id.clone(),
        file_id: file.id.clone(),
        owns_file,
        metadata,
        external_file_id: file.external_file_id.clone(),
        created_at: now.clone(),
        updated_at: now,
        deleted_at: None,
        storage_key: file.storage_key.clone(),
        size_bytes: file.size_bytes,
    };
    place(st, &rec).await?;
    Ok(rec)
}

/// Writes a directory file and puts it last in its directory.
async fn place(st: &AppState, rec: &DirectoryFile) -> Result<(), ApiError> {
    let mut con = st.redis.clone();
    let seq: i64 = con.incr(st.keys.dir_seq(&rec.directory_id), 1).await?;
    let _: () = redis::pipe()
        .atomic()
        .set(st.keys.dfile(&rec.id), serde_json::to_string(rec)?)
        .zadd(st.keys.dir_files(&rec.directory_id), &rec.id, seq)
        .query_async(&mut con)
        .await?;
    Ok(())
}

/// `directories.files.add` body.
#[derive(Debug, Deserialize)]
pub struct AddFile {
    file_id: String,
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    unique_id: Option<String>,
    #[serde(default)]
    metadata: Option<serde_json::Map<String, Value>>,
}

/// Adds an existing file to a directory (`directories.files.add`); the file stays its own.
pub async fn add_file(
    State(st): State<AppState>,
    Project(project): Project,
    Path(dir_id): Path<String>,
    JsonBody(body): JsonBody<AddFile>,
) -> Result<Json<Value>, ApiError> {
    let dir = load(&st, &project, &dir_id).await?;
    let file: files::FileRecord = crate::catalog::FILE
        .load(&st, &project, &body.file_id)
        .await
        .map_err(|e| match e {
            ApiError::NotFound(m) => ApiError::field("file_id", m),
            other => other,
        })?;
    let name = checked_name("display_name", body.display_name.as_deref())?
        .unwrap_or_else(|| file.name.clone());
    let unique = checked_name("unique_id", body.unique_id.as_deref())?;
    let rec = add(
        &st,
        &dir,
        &file,
        false,
        name,
        unique,
        body.metadata.map(Value::Object),
    )
    .await?;
    Ok(Json(rec.to_api()))
}

/// `POST /api/v1/beta/directories/{id}/files/import` body (ours).
#[derive(Debug, Deserialize)]
pub struct Import {
    /// `s3://<bucket>[/<folder>]`: every object there and below becomes a file.
    source: String,
    /// The bucket's region, when not the deployment's.
    #[serde(default)]
    region: Option<String>,
}

/// Most objects one import registers: a bigger folder is imported by its sub-folders.
pub const MAX_IMPORT: usize = 10_000;

/// Fills a directory from a user's bucket (ours): every object under `source` becomes a file
/// of the directory, registered without copying (its bytes stay in the bucket, and workers
/// read them there), named by its key below `source`. The project must be allowed to read
/// there (`buckets.read`). Answers how many files were added.
pub async fn import(
    State(st): State<AppState>,
    Project(project): Project,
    Path(dir_id): Path<String>,
    JsonBody(body): JsonBody<Import>,
) -> Result<Json<Value>, ApiError> {
    use docfleet_shared::buckets::{Access, Place};
    let dir = load(&st, &project, &dir_id).await?;
    let refused = |r: docfleet_shared::buckets::Refused| ApiError::field(r.field, r.message);
    let mut place = Place::from_uri(&body.source, "source").map_err(refused)?;
    place.region = checked_name("region", body.region.as_deref())?;
    place
        .allowed(&project, Access::Read, &st.settings.buckets, "source")
        .map_err(refused)?;
    let Some(buckets) = &st.buckets else {
        return Err(ApiError::field(
            "source",
            "users' buckets are not configured",
        ));
    };
    let listed = buckets
        .list(&place, MAX_IMPORT)
        .await
        .map_err(|e| match e {
            docfleet_shared::store::StoreError::TooMany { .. } => ApiError::field(
                "source",
                format!("holds more than {MAX_IMPORT} objects; import its folders one at a time"),
            ),
            docfleet_shared::store::StoreError::Io { .. } => ApiError::field(
                "source",
                format!("{} could not be listed: {e}", place.uri(&place.prefix)),
            ),
            other => other.into(),
        })?;
    let below = |key: &str| -> String {
        key.strip_prefix(&place.prefix)
            .unwrap_or(key)
            .trim_start_matches('/')
            .to_owned()
    };
    let mut added = 0usize;
    for object in listed.iter().filter(|o| !o.key.ends_with('/')) {
        let name = below(&object.key);
        let mut file =
            files::FileRecord::new(&project, crate::catalog::FILE.new_id(), name.clone(), None);
        file.storage_key = place.uri(&object.key);
        file.size_bytes = object.size;
        crate::catalog::FILE
            .put(&st, &file, docfleet_shared::now_millis())
            .await?;
        add(&st, &dir, &file, true, name, None, None).await?;
        added += 1;
    }
    Ok(Json(json!({
        "directory_id": dir.id,
        "source": place.uri(&place.prefix),
        "imported": added,
    })))
}

/// A name-like field, trimmed: 1 to 1,024 characters when given.
fn checked_name(field: &str, v: Option<&str>) -> Result<Option<String>, ApiError> {
    match v.map(str::trim) {
        None => Ok(None),
        Some(t) if !t.is_empty() && t.chars().count() <= 1024 => Ok(Some(t.to_owned())),
        Some(_) => Err(ApiError::field(field, "must be 1 to 1024 characters")),
    }
}

/// `directories.files.update` body.
#[derive(Debug, Deserialize)]
pub struct UpdateFile {
    #[serde(default)]
    display_name: Option<String>,
    #[serde(default)]
    unique_id: Option<String>,
    #[serde(default)]
    metadata: Option<serde_json::Map<String, Value>>,
    #[serde(default)]
    target_directory_id: Option<String>,
}

/// Renames a directory file, changes its metadata, or moves it to another directory of the
/// project, where it comes last. Batches already created keep what they registered.
pub async fn update_file(
    State(st): State<AppState>,
    Project(project): Project,
    Path((dir_id, file_id)): Path<(String, String)>,
    JsonBody(body): JsonBody<UpdateFile>,
) -> Result<Json<Value>, ApiError> {
    let mut rec = load_file(&st, &project, &dir_id, &file_id).await?;
    if let Some(n) = checked_name("display_name", body.display_name.as_deref())? {
        rec.display_name = n;
    }
    if let Some(u) = checked_name("unique_id", body.unique_id.as_deref())? {
        rec.unique_id = u;
    }
    if let Some(m) = body.metadata {
        rec.metadata = Some(Value::Object(m));
    }
    rec.updated_at = now_rfc3339();
    match body.target_directory_id.filter(|t| *t != dir_id) {
        None => {
            let mut con = st.redis.clone();
            let _: () = con
                .set(st.keys.dfile(&rec.id), serde_json::to_string(&rec)?)
                .await?;
        }
        Some(target) => {
            load(&st, &project, &target).await.map_err(|e| match e {
                ApiError::NotFound(m) => ApiError::field("target_directory_id", m),
                other => other,
            })?;
            rec.directory_id = target;
            place(&st, &rec).await?;
            let mut con = st.redis.clone();
            let _: () = con.zrem(st.keys.dir_files(&dir_id), &rec.id).await?;
        }
    }
    Ok(Json(rec.to_api()))
}

/// `directories.update` body.
#[derive(Debug, Deserialize)]
pub struct UpdateDirectory {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    description: Option<String>,
}

/// Renames a directory or changes its description.
pub async fn update(
    State(st): State<AppState>,
    Project(project): Project,
    Path(dir_id): Path<String>,
    JsonBody(body): JsonBody<UpdateDirectory>,
) -> Result<Json<Value>, ApiError> {
    let mut dir = load(&st, &project, &dir_id).await?;
    if let Some(n) = checked_name("name", body.name.as_deref())? {
        dir.name = n;
    }
    if body.description.is_some() {
        dir.description = body.description;
    }
    dir.updated_at = now_rfc3339();
    let mut con = st.redis.clone();
    let _: () = con
        .set(st.keys.dir(&dir.id), serde_json::to_string(&dir)?)
        .await?;
    Ok(Json(serde_json::to_value(dir)?))
}

/// Lists the files of a directory in upload order.
pub async fn list_files(
    State(st): State<AppState>,
    Project(project): Project,
    Path(dir_id): Path<String>,
    q: QueryParams,
) -> Result<Json<Value>, ApiError> {
    load(&st, &project, &dir_id).await?;
    let cursor = Cursor::from_query(&q)?;
    let (offset, size) = (cursor.offset as isize, cursor.size as isize);
    let filter_name = q.get("display_name");
    let contains = q.get("display_name_contains");
    let unique = q.get("unique_id");
    let file_id = q.get("file_id");
    let filtered =
        filter_name.is_some() || contains.is_some() || unique.is_some() || file_id.is_some();
    let mut con = st.redis.clone();
    let key = st.keys.dir_files(&dir_id);
    let ids: Vec<String> = if filtered {
        con.zrange(&key, 0, -1).await?
    } else {
        con.zrange(&key, offset, offset + size - 1).await?
    };
    let raws: Vec<Option<String>> = if ids.is_empty() {
        Vec::new()
    } else {
        con.mget(ids.iter().map(|i| st.keys.dfile(i)).collect::<Vec<_>>())
            .await?
    };
    let mut files = Vec::new();
    for raw in raws.into_iter().flatten() {
        let f: DirectoryFile = serde_json::from_str(&raw)?;
        if filter_name.is_some_and(|n| n != f.display_name)
            || contains.is_some_and(|c| !f.display_name.contains(c))
            || unique.is_some_and(|u| u != f.unique_id)
            || file_id.is_some_and(|id| id != f.file_id && id != f.id)
        {
            continue;
        }
        files.push(f.to_api());
    }
    let page: Vec<Value> = if filtered {
        files
            .into_iter()
            .skip(offset as usize)
            .take(size as usize)
            .collect()
    } else {
        files
    };
    let token = cursor.next_token(page.len());
    Ok(Json(json!({ "items": page, "next_page_token": token })))
}

/// Loads a file of a directory of `project`, or 404.
async fn load_file(
    st: &AppState,
    project: &str,
    dir_id: &str,
    file_id: &str,
) -> Result<DirectoryFile, ApiError> {
    load(st, project, dir_id).await?;
    if !well_formed("dfl-", file_id) {
        return Err(ApiError::not_found("directory file", file_id));
    }
    let mut con = st.redis.clone();
    let raw: Option<String> = con.get(st.keys.dfile(file_id)).await?;
    match raw.map(|r| serde_json::from_str::<DirectoryFile>(&r)) {
        Some(Ok(f)) if f.directory_id == dir_id && f.project_id == project => Ok(f),
        Some(Err(e)) => Err(e.into()),
        _ => Err(ApiError::not_found("directory file", file_id)),
    }
}

/// Gets a file of a directory.
pub async fn get_file(
    State(st): State<AppState>,
    Project(project): Project,
    Path((dir_id, file_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(
        load_file(&st, &project, &dir_id, &file_id).await?.to_api(),
    ))
}

/// Forgets files `ids` of a directory: the bytes and records of the files they own
/// (`owned`), then their records and their place in the directory, so a retry after a failure
/// still finds what is left. An item of a batch still to run fails as "stored file
/// unavailable"; its batch's counts stay exact.
async fn remove_files(
    st: &AppState,
    project: &str,
    dir_id: &str,
    ids: &[String],
    owned: &[&DirectoryFile],
) -> Result<(), ApiError> {
    for f in owned {
        files::remove_bytes(st, &f.storage_key).await?;
        crate::catalog::FILE.remove(st, project, &f.file_id).await?;
    }
    let records: Vec<String> = ids.iter().map(|id| st.keys.dfile(id)).collect();
    let mut con = st.redis.clone();
    redis::pipe()
        .atomic()
        .zrem(st.keys.dir_files(dir_id), ids)
        .ignore()
        .unlink(&records)
        .ignore()
        .query_async::<()>(&mut con)
        .await?;
    Ok(())
}

/// Deletes a file of a directory (`beta.directories.files.delete`): 204, no body.
pub async fn delete_file(
    State(st): State<AppState>,
    Project(project): Project,
    Path((dir_id, file_id)): Path<(String, String)>,
) -> Result<axum::http::StatusCode, ApiError> {
    let file = load_file(&st, &project, &dir_id, &file_id).await?;
    let owned: Vec<&DirectoryFile> = Some(&file).filter(|f| f.owns_file).into_iter().collect();
    remove_files(
        &st,
        &project,
        &dir_id,
        std::slice::from_ref(&file.id),
        &owned,
    )
    .await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}

/// Deletes a directory with its files (`beta.directories.delete`): 204, no body. Its files
/// go first and the directory last, so a retry after a failure finds it again and finishes. Batches that ran on it keep their own records until their retention.
pub async fn delete(
    State(st): State<AppState>,
    Project(project): Project,
    Path(dir_id): Path<String>,
) -> Result<axum::http::StatusCode, ApiError> {
    load(&st, &project, &dir_id).await?;
    let mut con = st.redis.clone();
    loop {
        let ids: Vec<String> = con.zrange(st.keys.dir_files(&dir_id), 0, 499).await?;
        if ids.is_empty() {
            break;
        }
        let raws: Vec<Option<String>> = con
            .mget(ids.iter().map(|i| st.keys.dfile(i)).collect::<Vec<_>>())
            .await?;
        // A listed id without a record leaves the list all the same.
        let mut files = Vec::with_capacity(ids.len());
        for raw in raws.into_iter().flatten() {
            files.push(serde_json::from_str::<DirectoryFile>(&raw)?);
        }
        let owned: Vec<&DirectoryFile> = files.iter().filter(|f| f.owns_file).collect();
        remove_files(&st, &project, &dir_id, &ids, &owned).await?;
    }
    redis::pipe()
        .atomic()
        .zrem(st.keys.project_dirs(&project), &dir_id)
        .ignore()
        .unlink(&[
            st.keys.dir(&dir_id),
            st.keys.dir_files(&dir_id),
            st.keys.dir_seq(&dir_id),
            st.keys.dir_batches(&dir_id),
        ])
        .ignore()
        .query_async::<()>(&mut con)
        .await?;
    Ok(axum::http::StatusCode::NO_CONTENT)
}
