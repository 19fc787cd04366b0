//! Outputs written to the user's own bucket: a parse job with `output_s3_path_prefix` (and
//! `outputBucket`, `output_s3_region`) also gets its outputs there, under
//! `<prefix>/<file_id>/`: `<name>.json` (the whole result), `<name>.md`, `<name>.txt` and its
//! kept images, `<name>` being the file's. The deployment says which buckets and folders each
//! project may write to (`outputs.allow`); the dispatcher refuses a job that names any other
//! place, and the worker checks again before it writes, so a narrowed allow-list holds for
//! batches already queued.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use object_store::ObjectStore;

use crate::settings::{OutputSettings, S3Settings};
use crate::store::{check_key, s3_client, StoreError};

/// A bucket and folder a job's outputs go to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The bucket.
    pub bucket: String,
    /// The folder in it, without slashes at either end; empty for the bucket's top.
    pub prefix: String,
    /// The region the job names, if any.
    pub region: Option<String>,
}

/// Why a job's output destination is refused: the field at fault, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The parameter, as the job config names it.
    pub field: &'static str,
    /// What is wrong.
    pub message: String,
}

const PREFIX_FIELD: &str = "output_s3_path_prefix";
const BUCKET_FIELD: &str = "outputBucket";

impl Destination {
    /// The destination a parse job's parameters name, if any: `output_s3_path_prefix` is
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
        let (bucket, folder) = match (prefix, bucket) {
            (None, None) => return Ok(None),
            (Some(p), given) => match p.strip_prefix("s3://") {
                Some(rest) => {
                    let (b, f) = rest.split_once('/').unwrap_or((rest, ""));
                    if given.is_some_and(|g| g != b) {
                        return Err(Refused {
                            field: BUCKET_FIELD,
                            message: format!("names another bucket than {PREFIX_FIELD} ({b:?})"),
                        });
                    }
                    (b, f)
                }
                None => match given {
                    Some(b) => (b, p),
                    None => {
                        return Err(Refused {
                            field: PREFIX_FIELD,
                            message: format!(
                                "must be an s3://<bucket>/<folder> URI, or a folder with {BUCKET_FIELD}; got {p:?}"
                            ),
                        })
                    }
                },
            },
            (None, Some(b)) => (b, ""),
        };
        let bucket_ok = (3..=63).contains(&bucket.len())
            && bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.'));
        if !bucket_ok {
            return Err(Refused {
                field: if prefix.is_some_and(|p| p.starts_with("s3://")) {
                    PREFIX_FIELD
                } else {
                    BUCKET_FIELD
                },
                message: format!("{bucket:?} is not a bucket name (3-63 of a-z, 0-9, '-', '.')"),
            });
        }
        let folder = folder.trim_matches('/');
        if !folder.is_empty() && check_key(folder).is_err() {
            return Err(Refused {
                field: PREFIX_FIELD,
                message: format!(
                    "the folder {folder:?} must be names of [A-Za-z0-9._-] joined by '/'"
                ),
            });
        }
        Ok(Some(Self {
            bucket: bucket.to_owned(),
            prefix: folder.to_owned(),
            region,
        }))
    }

    /// Whether `project` may write here: some `outputs.allow` entry of the project names this
    /// bucket and this folder or one above it.
    pub fn allowed(&self, project: &str, settings: &OutputSettings) -> Result<(), Refused> {
        if !settings.enabled() {
            return Err(Refused {
                field: PREFIX_FIELD,
                message: "this deployment writes no outputs to other buckets (outputs.s3 is not configured)".into(),
            });
        }
        let within = settings.allow.iter().any(|entry| {
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
            Err(Refused {
                field: PREFIX_FIELD,
                message: format!(
                    "project {project:?} may not write to s3://{}/{} (outputs.allow)",
                    self.bucket, self.prefix
                ),
            })
        }
    }

    /// The key of `name` under this destination, for the file `file_id`.
    pub fn key(&self, file_id: &str, name: &str) -> String {
        if self.prefix.is_empty() {
            format!("{file_id}/{name}")
        } else {
            format!("{}/{file_id}/{name}", self.prefix)
        }
    }

    /// The URI of a key of this destination.
    pub fn uri(&self, key: &str) -> String {
        format!("s3://{}/{key}", self.bucket)
    }
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

/// Writes outputs to users' buckets with the deployment's credentials, one client per bucket
/// and region.
#[derive(Debug)]
pub struct Exporter {
    settings: S3Settings,
    runtime: tokio::runtime::Handle,
    clients: Mutex<HashMap<(String, String), Arc<dyn ObjectStore>>>,
}

impl Exporter {
    /// An exporter on the current runtime, if the settings enable outputs.
    pub fn new(settings: &OutputSettings) -> Option<Self> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        settings.enabled().then(|| Self {
            settings: settings.s3.clone(),
            runtime,
            clients: Mutex::default(),
        })
    }

    fn client(&self, dest: &Destination) -> Result<Arc<dyn ObjectStore>, StoreError> {
        let region = dest
            .region
            .clone()
            .unwrap_or_else(|| self.settings.region.clone());
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = clients.get(&(dest.bucket.clone(), region.clone())) {
            return Ok(c.clone());
        }
        let client: Arc<dyn ObjectStore> = Arc::new(
            s3_client(&self.settings, &dest.bucket, &region).map_err(|e| StoreError::Io {
                key: dest.uri(""),
                source: std::io::Error::other(e),
            })?,
        );
        clients.insert((dest.bucket.clone(), region), client.clone());
        Ok(client)
    }

    /// Writes one object, from a blocking thread; durable when it returns.
    pub fn put_blocking(
        &self,
        dest: &Destination,
        key: &str,
        bytes: Vec<u8>,
    ) -> Result<(), StoreError> {
        let client = self.client(dest)?;
        let path = check_key(key)?;
        self.runtime
            .block_on(client.put(&path, bytes.into()))
            .map(|_| ())
            .map_err(|e| StoreError::Io {
                key: dest.uri(key),
                source: std::io::Error::other(e),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn settings(allow: &[&str]) -> OutputSettings {
        OutputSettings {
            s3: S3Settings {
                access_key: "k".into(),
                secret_key: "s".into(),
                ..S3Settings::default()
            },
            allow: allow.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_destination_is_read_from_either_form_and_refused_outside_the_allow_list() {
        let d =
            Destination::from_params(&json!({ "output_s3_path_prefix": "s3://team-a/out/q1/" }))
                .unwrap()
                .unwrap();
        assert_eq!((d.bucket.as_str(), d.prefix.as_str()), ("team-a", "out/q1"));
        let same = Destination::from_params(
            &json!({ "output_s3_path_prefix": "out/q1", "outputBucket": "team-a" }),
        )
        .unwrap()
        .unwrap();
        assert_eq!(same, d);
        assert_eq!(Destination::from_params(&json!({})).unwrap(), None);
        for (bad, field) in [
            (json!({ "output_s3_path_prefix": "out" }), PREFIX_FIELD),
            (
                json!({ "output_s3_path_prefix": "s3://a/x", "outputBucket": "other" }),
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
            assert_eq!(
                Destination::from_params(&bad).unwrap_err().field,
                field,
                "{bad}"
            );
        }
        let s = settings(&["proj-a=s3://team-a/out", "proj-b=s3://team-b"]);
        assert_eq!(d.allowed("proj-a", &s), Ok(()));
        assert!(d.allowed("proj-b", &s).is_err(), "another project's bucket");
        let sibling =
            Destination::from_params(&json!({ "output_s3_path_prefix": "s3://team-a/outside" }))
                .unwrap()
                .unwrap();
        assert!(
            sibling.allowed("proj-a", &s).is_err(),
            "a folder beside the allowed one"
        );
        let anywhere = Destination::from_params(&json!({ "outputBucket": "team-b" }))
            .unwrap()
            .unwrap();
        assert_eq!(anywhere.allowed("proj-b", &s), Ok(()));
        assert!(
            d.allowed("proj-a", &OutputSettings::default()).is_err(),
            "outputs off"
        );
        assert_eq!(d.key("dfl-1", "a.pdf.json"), "out/q1/dfl-1/a.pdf.json");
        assert_eq!(object_name("../../etc/pass wd"), "pass_wd");
        assert_eq!(object_name(".."), "document");
    }
}
