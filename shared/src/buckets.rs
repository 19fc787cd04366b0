//! Users' own buckets, on the S3-compatible server the deployment names (`buckets.s3`).
//!
//! Two uses, each with its own per-project allow-list:
//! - **outputs** (`buckets.write`): a parse job with `output_s3_path_prefix` (and
//!   `outputBucket`, `output_s3_region`) also gets its outputs under `<prefix>/<file_id>/`:
//!   `<name>.json` (the whole result), `<name>.md`, `<name>.txt` and its kept images;
//! - **inputs** (`buckets.read`): a directory filled from an `s3://` prefix registers the
//!   objects it lists without copying them; their storage keys are `s3://<bucket>/<key>` and
//!   workers read them from there.
//!
//! The dispatcher refuses a place the project may not use, and the worker checks again before
//! it reads or writes, so a narrowed allow-list holds for batches already queued.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use object_store::ObjectStore;

use crate::settings::{BucketSettings, S3Settings};
use crate::store::{check_key, s3_client, spool_blocking, ByteStream, StoreError};

/// A bucket and folder of a user's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// The bucket.
    pub bucket: String,
    /// The folder in it, without slashes at either end; empty for the bucket's top.
    pub prefix: String,
    /// The region the job names, if any.
    pub region: Option<String>,
}

/// Why a place is refused: the field at fault, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The parameter, as the request names it.
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

/// What a project does with a place: each has its own allow-list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Reading inputs (`buckets.read`).
    Read,
    /// Writing outputs (`buckets.write`).
    Write,
}

const PREFIX_FIELD: &str = "output_s3_path_prefix";
const BUCKET_FIELD: &str = "outputBucket";

impl Place {
    /// The output place a parse job's parameters name, if any: `output_s3_path_prefix` is
    /// `s3://<bucket>/<folder>`, or a folder of `outputBucket`.
    pub fn from_params(params: &serde_json::Value) -> Result<Option<Self>, Refused> {
        let text = |name: &'static str| -> Result<Option<&str>, Refused> {
            match params.get(name) {
                None | Some(serde_json::Value::Null) => Ok(None),
                Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.trim())),
                Some(_) => Err(Refused {
                    field: name,
                    message: "must be a non-empty string".into(),
                }),
            }
        };
        let (prefix, bucket) = (text(PREFIX_FIELD)?, text(BUCKET_FIELD)?);
        let region = text("output_s3_region")?.map(str::to_owned);
        let place = match (prefix, bucket) {
            (None, None) => return Ok(None),
            (Some(p), given) if p.starts_with("s3://") => {
                let place = Self::from_uri(p, PREFIX_FIELD)?;
                if given.is_some_and(|g| g != place.bucket) {
                    return Err(Refused {
                        field: BUCKET_FIELD,
                        message: format!(
                            "names another bucket than {PREFIX_FIELD} ({:?})",
                            place.bucket
                        ),
                    });
                }
                place
            }
            (Some(p), Some(b)) => Self::checked(b, BUCKET_FIELD, p, PREFIX_FIELD)?,
            (Some(p), None) => {
                return Err(Refused {
                    field: PREFIX_FIELD,
                    message: format!(
                        "must be an s3://<bucket>/<folder> URI, or a folder with {BUCKET_FIELD}; got {p:?}"
                    ),
                })
            }
            (None, Some(b)) => Self::checked(b, BUCKET_FIELD, "", PREFIX_FIELD)?,
        };
        Ok(Some(Self { region, ..place }))
    }

    /// The place an `s3://<bucket>[/<folder>]` URI names; `field` is blamed when it does not.
    pub fn from_uri(uri: &str, field: &'static str) -> Result<Self, Refused> {
        let Some(rest) = uri.trim().strip_prefix("s3://") else {
            return Err(Refused {
                field,
                message: format!("must be an s3://<bucket>[/<folder>] URI, got {uri:?}"),
            });
        };
        let (bucket, folder) = rest.split_once('/').unwrap_or((rest, ""));
        Self::checked(bucket, field, folder, field)
    }

    fn checked(
        bucket: &str,
        bucket_field: &'static str,
        folder: &str,
        folder_field: &'static str,
    ) -> Result<Self, Refused> {
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.'));
        if !bucket_ok {
            return Err(Refused {
                field: bucket_field,
                message: format!("{bucket:?} is not a bucket name (3-63 of a-z, 0-9, '-', '.')"),
            });
        }
        let folder = folder.trim_matches('/');
        if !folder.is_empty() && check_key(folder).is_err() {
            return Err(Refused {
                field: folder_field,
                message: format!(
                    "the folder {folder:?} must be names of [A-Za-z0-9._-] joined by '/'"
                ),
            });
        }
        Ok(Self {
            bucket: bucket.to_owned(),
            prefix: folder.to_owned(),
            region: None,
        })
    }

    /// Whether `project` may use this place for `access`: some entry of the project in that
    /// allow-list names this bucket and this folder or one above it. `field` is blamed.
    pub fn allowed(
        &self,
        project: &str,
        access: Access,
        settings: &BucketSettings,
        field: &'static str,
    ) -> Result<(), Refused> {
        if !settings.enabled() {
            return Err(Refused {
                field,
                message: "this deployment reaches no other buckets (buckets.s3 is not configured)"
                    .into(),
            });
        }
        let (list, verb) = match access {
            Access::Read => (&settings.read, "read from"),
            Access::Write => (&settings.write, "write to"),
        };
        let within = list.iter().any(|entry| {
            let Some((who, place)) = entry.split_once('=') else {
                return false;
            };
            let place = place.trim().strip_prefix("s3://").unwrap_or(place.trim());
            let (bucket, folder) = place.split_once('/').unwrap_or((place, ""));
            let folder = folder.trim_matches('/');
            who.trim() == project
                && bucket == self.bucket
                && (folder.is_empty()
                    || self.prefix == folder
                    || self.prefix.starts_with(&format!("{folder}/")))
        });
        if within {
            Ok(())
        } else {
            let list = match access {
                Access::Read => "buckets.read",
                Access::Write => "buckets.write",
            };
            Err(Refused {
                field,
                message: format!(
                    "project {project:?} may not {verb} s3://{}/{} ({list})",
                    self.bucket, self.prefix
                ),
            })
        }
    }

    /// The key of `name` under this place, for the file `file_id`.
    pub fn key(&self, file_id: &str, name: &str) -> String {
        if self.prefix.is_empty() {
            format!("{file_id}/{name}")
        } else {
            format!("{}/{file_id}/{name}", self.prefix)
        }
    }

    /// The URI of a key of this place.
    pub fn uri(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }
}

/// An object of a user's bucket a storage key names (`s3://<bucket>/<key>`), if it names one:
/// the place is the object's folder, for the allow-list.
pub fn foreign(storage_key: &str) -> Option<(Place, String)> {
    let rest = storage_key.strip_prefix("s3://")?;
    let (bucket, key) = rest.split_once('/')?;
    let prefix = key.rsplit_once('/').map(|(dir, _)| dir).unwrap_or_default();
    Some((
        Place {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            region: None,
        },
        key.to_owned(),
    ))
}

/// A file name made safe as the last part of an object key.
pub fn object_name(display_name: &str) -> String {
    let base = display_name.rsplit(['/', '\\']).next().unwrap_or_default();
    let name: String = base
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    match name.trim_start_matches('.') {
        "" => "document".to_owned(),
        n => n.to_owned(),
    }
}

/// An object listed under a place.
#[derive(Debug, Clone)]
pub struct Listed {
    /// Its key in the bucket, as the server spells it.
    pub key: String,
    /// Its size.
    pub size: u64,
}

/// Users' buckets, reached with the deployment's credentials: one client per bucket and
/// region.
#[derive(Debug)]
pub struct UserBuckets {
    settings: S3Settings,
    runtime: tokio::runtime::Handle,
    clients: Mutex<HashMap<(String, String), Arc<dyn ObjectStore>>>,
}

impl UserBuckets {
    /// Users' buckets on the current runtime, if the settings reach any.
    pub fn new(settings: &BucketSettings) -> Option<Self> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        settings.enabled().then(|| Self {
            settings: settings.s3.clone(),
            runtime,
            clients: Mutex::default(),
        })
    }

    fn client(&self, place: &Place) -> Result<Arc<dyn ObjectStore>, StoreError> {
        let region = place
            .region
            .clone()
            .unwrap_or_else(|| self.settings.region.clone());
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(&(place.bucket.clone(), region.clone())) {
            return Ok(c.clone());
        }
        let client: Arc<dyn ObjectStore> = Arc::new(
            s3_client(&self.settings, &place.bucket, &region).map_err(|e| StoreError::Io {
                key: place.uri(""),
                source: std::io::Error::other(e),
            })?,
        );
        clients.insert((place.bucket.clone(), region), client.clone());
        Ok(client)
    }

    fn error(place: &Place, key: &str, e: object_store::Error) -> StoreError {
        match e {
            object_store::Error::NotFound { .. } => StoreError::NotFound(place.uri(key)),
            e => StoreError::Io {
                key: place.uri(key),
                source: std::io::Error::other(e),
            },
        }
    }

    /// Writes one object, from a blocking thread; durable when it returns.
    pub fn put_blocking(&self, place: &Place, key: &str, bytes: Vec<u8>) -> Result<(), StoreError> {
        let client = self.client(place)?;
        let path = check_key(key)?;
        self.runtime
            .block_on(client.put(&path, bytes.into()))
            .map(|_| ())
            .map_err(|e| Self::error(place, key, e))
    }

    /// Every object under a place (its folder and below), in the server's order; more than
    /// `limit` of them is an error rather than a partial answer.
    pub async fn list(&self, place: &Place, limit: usize) -> Result<Vec<Listed>, StoreError> {
        let client = self.client(place)?;
        let prefix = (!place.prefix.is_empty())
            .then(|| object_store::path::Path::from(place.prefix.as_str()));
        let mut objects = client.list(prefix.as_ref());
        let mut listed = Vec::new();
        while let Some(meta) = objects.next().await {
            let meta = meta.map_err(|e| Self::error(place, &place.prefix, e))?;
            if listed.len() == limit {
                return Err(StoreError::TooMany {
                    place: place.uri(&place.prefix),
                    limit,
                });
            }
            listed.push(Listed {
                key: meta.location.to_string(),
                size: meta.size,
            });
        }
        Ok(listed)
    }

    fn path(place: &Place, key: &str) -> Result<object_store::path::Path, StoreError> {
        object_store::path::Path::parse(key).map_err(|_| StoreError::InvalidKey(place.uri(key)))
    }

    /// An object's bytes as they arrive.
    pub async fn read_stream(&self, place: &Place, key: &str) -> Result<ByteStream, StoreError> {
        let got = self
            .client(place)?
            .get(&Self::path(place, key)?)
            .await
            .map_err(|e| Self::error(place, key, e))?;
        Ok(got
            .into_stream()
            .map(|c| c.map_err(std::io::Error::other))
            .boxed())
    }

    /// An object copied into an unnamed temporary file, opened at its start; blocking.
    pub fn open_blocking(&self, place: &Place, key: &str) -> Result<std::fs::File, StoreError> {
        let client = self.client(place)?;
        spool_blocking(
            &self.runtime,
            client.as_ref(),
            &Self::path(place, key)?,
            &place.uri(key),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings(allow: &[&str]) -> BucketSettings {
        BucketSettings {
            s3: S3Settings {
                access_key: "k".into(),
                secret_key: "s".into(),
                ..S3Settings::default()
            },
            write: allow.iter().map(|s| s.to_string()).collect(),
            read: Vec::new(),
        }
    }

    #[test]
    fn a_destination_is_read_from_either_form_and_refused_outside_the_allow_list() {
        let d = Place::from_params(&json!({ "output_s3_path_prefix": "s3://team-a/out/q1/" }))
            .unwrap()
            .unwrap();
        assert_eq!((d.bucket.as_str(), d.prefix.as_str()), ("team-a", "out/q1"));
        let same = Place::from_params(
            &json!({ "output_s3_path_prefix": "out/q1", "outputBucket": "team-a" }),
        )
        .unwrap()
        .unwrap();
        assert_eq!(same, d);
        assert_eq!(Place::from_params(&json!({})).unwrap(), None);
        for (bad, field) in [
            (json!({ "output_s3_path_prefix": "out" }), PREFIX_FIELD),
            (
                json!({ "output_s3_path_prefix": "s3://team-a/x", "outputBucket": "other" }),
                BUCKET_FIELD,
            ),
            (
                json!({ "output_s3_path_prefix": "s3://Bad_Bucket/x" }),
                PREFIX_FIELD,
            ),
            (
                json!({ "output_s3_path_prefix": "s3://team-a/../x" }),
                PREFIX_FIELD,
            ),
            (json!({ "outputBucket": 7 }), BUCKET_FIELD),
        ] {
            assert_eq!(Place::from_params(&bad).unwrap_err().field, field, "{bad}");
        }
        let s = settings(&["proj-a=s3://team-a/out", "proj-b=s3://team-b"]);
        assert_eq!(d.allowed("proj-a", Access::Write, &s, PREFIX_FIELD), Ok(()));
        assert!(
            d.allowed("proj-b", Access::Write, &s, PREFIX_FIELD)
                .is_err(),
            "another project's bucket"
        );
        let sibling =
            Place::from_params(&json!({ "output_s3_path_prefix": "s3://team-a/outside" }))
                .unwrap()
                .unwrap();
        assert!(
            sibling
                .allowed("proj-a", Access::Write, &s, PREFIX_FIELD)
                .is_err(),
            "a folder beside the allowed one"
        );
        let anywhere = Place::from_params(&json!({ "outputBucket": "team-b" }))
            .unwrap()
            .unwrap();
        assert_eq!(
            anywhere.allowed("proj-b", Access::Write, &s, PREFIX_FIELD),
            Ok(())
        );
        assert!(
            d.allowed(
                "proj-a",
                Access::Write,
                &BucketSettings::default(),
                PREFIX_FIELD
            )
            .is_err(),
            "outputs off"
        );
        assert_eq!(d.key("dfl-1", "a.pdf.json"), "out/q1/dfl-1/a.pdf.json");
        assert_eq!(object_name("../../etc/pass wd"), "pass_wd");
        let (place, key) = foreign("s3://team-a/out/q1/a b.pdf").unwrap();
        assert_eq!(
            (place.prefix.as_str(), key.as_str()),
            ("out/q1", "out/q1/a b.pdf")
        );
        assert_eq!(place.allowed("proj-a", Access::Write, &s, "source"), Ok(()));
        assert!(
            place.allowed("proj-a", Access::Read, &s, "source").is_err(),
            "writing is not reading"
        );
        assert_eq!(foreign("projects/p/files/ab/fil-1"), None);
        assert_eq!(object_name(".."), "document");
    }
}
