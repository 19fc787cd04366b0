//! Directories and the files uploaded into them.

use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, Path, State};
use axum::Json;
use docfleet_shared::now_rfc3339;
use redis::AsyncCommands;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::Project;
use crate::error::ApiError;
use crate::http::{JsonBody, QueryParams};
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

/// Cursor paging over a sorted set: the token is the offset of the next page.
fn page_window(q: &QueryParams) -> Result<(isize, isize), ApiError> {
    let size = q.int("page_size", 50, 1, 1000)? as isize;
    let offset = match q.get("page_token") {
        None => 0,
        Some(t) => t
            .parse::<isize>()
            .ok()
            .filter(|o| *o >= 0)
            .ok_or_else(|| ApiError::field("page_token", "not a token this server issued"))?,
    };
    Ok((offset, size))
}

fn next_token(offset: isize, got: usize, size: isize) -> Value {
    if got as isize == size {
        json!((offset + size).to_string())
    } else {
        Value::Null
    }
}

/// Lists the project's directories, oldest first.
pub async fn list(
    State(st): State<AppState>,
    Project(project): Project,
    q: QueryParams,
) -> Result<Json<Value>, ApiError> {
    let (offset, size) = page_window(&q)?;
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
    let total = dirs.len();
    let page: Vec<Value> = dirs
        .into_iter()
        .skip(offset as usize)
        .take(size as usize)
        .collect();
    let token = next_token(offset, page.len(), size);
    Ok(Json(
        json!({ "items": page, "next_page_token": token, "total_size": total }),
    ))
}

/// Uploads one file (multipart part `upload_file`) into a directory.
pub async fn upload(
    State(st): State<AppState>,
    Project(project): Project,
    Path(dir_id): Path<String>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Json<Value>, ApiError> {
    let dir = load(&st, &project, &dir_id).await?;
    let mut multipart = multipart
        .map_err(|e| ApiError::BadRequest(format!("body: expected multipart/form-data: {e}")))?;
    let file_id = format!("dfl-{}", uuid::Uuid::new_v4());
    let storage_key = docfleet_shared::store::file_key(&project, &file_id);
    let mut staged = None;
    let mut original_name = None;
    let mut text: std::collections::HashMap<String, String> = Default::default();
    let bad = |e: axum::extract::multipart::MultipartError| {
        ApiError::BadRequest(format!("body: malformed multipart: {e}"))
    };
    let result: Result<(), ApiError> = async {
        while let Some(mut field) = multipart.next_field().await.map_err(bad)? {
            let name = field.name().unwrap_or("").to_owned();
            if name == "upload_file" {
                if staged.is_some() {
                    return Err(ApiError::field("upload_file", "sent more than once"));
                }
                original_name = field.file_name().map(str::to_owned);
                let mut s = st.store.stage(&storage_key).await?;
                while let Some(chunk) = field.chunk().await.map_err(bad)? {
                    if s.written() + chunk.len() as u64 > st.settings.max_upload_bytes {
                        s.abort().await;
                        return Err(ApiError::TooLarge(format!(
                            "upload_file: larger than {} bytes",
                            st.settings.max_upload_bytes
                        )));
                    }
                    s.write(&chunk).await?;
                }
                staged = Some(s);
            } else if matches!(
                name.as_str(),
                "display_name" | "unique_id" | "external_file_id" | "metadata"
            ) {
                let v = field.text().await.map_err(bad)?;
                text.insert(name, v);
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = result {
        if let Some(s) = staged {
            s.abort().await;
        }
        return Err(e);
    }
    let Some(staged) = staged else {
        return Err(ApiError::field("upload_file", "missing file part"));
    };
    let metadata = match text
        .get("metadata")
        .map(|m| m.trim())
        .filter(|m| !m.is_empty())
    {
        None => None,
        Some(m) => match serde_json::from_str::<Value>(m) {
            Ok(v @ Value::Object(_)) => Some(v),
            Ok(Value::Null) => None,
            _ => {
                staged.abort().await;
                return Err(ApiError::field(
                    "metadata",
                    "must be a JSON object encoded as a string",
                ));
            }
        },
    };
    let display_name = text
        .get("display_name")
        .filter(|v| !v.is_empty())
        .cloned()
        .or(original_name)
        .unwrap_or_else(|| file_id.clone());
    let size_bytes = staged.commit().await?;
    let now = now_rfc3339();
    let rec = DirectoryFile {
        id: file_id.clone(),
        directory_id: dir.id.clone(),
        unique_id: text
            .get("unique_id")
            .filter(|v| !v.is_empty())
            .cloned()
            .unwrap_or_else(|| display_name.clone()),
        display_name,
        project_id: project.clone(),
        file_id: format!("fil-{}", uuid::Uuid::new_v4()),
        metadata,
        external_file_id: text.get("external_file_id").cloned(),
        created_at: now.clone(),
        updated_at: now,
        deleted_at: None,
        storage_key,
        size_bytes,
    };
    let mut con = st.redis.clone();
    let seq: i64 = con.incr(st.keys.dir_seq(&dir.id), 1).await?;
    let _: () = redis::pipe()
        .atomic()
        .set(st.keys.dfile(&file_id), serde_json::to_string(&rec)?)
        .zadd(st.keys.dir_files(&dir.id), &file_id, seq)
        .query_async(&mut con)
        .await?;
    Ok(Json(rec.to_api()))
}

/// Lists the files of a directory in upload order.
pub async fn list_files(
    State(st): State<AppState>,
    Project(project): Project,
    Path(dir_id): Path<String>,
    q: QueryParams,
) -> Result<Json<Value>, ApiError> {
    load(&st, &project, &dir_id).await?;
    let (offset, size) = page_window(&q)?;
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
    let token = next_token(offset, page.len(), size);
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

/// Forgets files `ids` of a directory: their bytes (`stored`), then their records and their
/// place in the directory, so a retry after a failure still finds what is left. An item of a
/// batch still to run fails as "stored file unavailable"; its batch's counts stay exact.
async fn remove_files(
    st: &AppState,
    dir_id: &str,
    ids: &[String],
    stored: &[String],
) -> Result<(), ApiError> {
    for key in stored {
        st.store.remove(key).await?;
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
    remove_files(&st, &dir_id, &[file.id], &[file.storage_key]).await?;
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
        let mut stored = Vec::with_capacity(ids.len());
        for raw in raws.into_iter().flatten() {
            stored.push(serde_json::from_str::<DirectoryFile>(&raw)?.storage_key);
        }
        remove_files(&st, &dir_id, &ids, &stored).await?;
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
