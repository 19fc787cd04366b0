//! A parse job's outputs written to the user's own bucket as well (`output_s3_path_prefix`):
//! under `<folder>/<file_id>/`, the whole result as `<name>.json`, its Markdown and text as
//! `<name>.md` and `<name>.txt`, and its kept images by their names. Every write has returned
//! before the outcome is recorded, so a completed item's exports are there.

use docfleet_shared::buckets::{object_name, Place, UserBuckets};

use super::engine::{EngineOutput, Stored};
use super::Failure;

/// Writes the exports of one file; blocking. Answers the URI of its `.json`.
pub(super) fn write(
    buckets: &UserBuckets,
    dest: &Place,
    file_id: &str,
    display_name: &str,
    output: &EngineOutput,
) -> Result<String, Failure> {
    let Stored::Parse(parsed) = &output.stored else {
        return Err(Failure::Fail(
            "only parse jobs write outputs to a bucket".into(),
        ));
    };
    let name = object_name(display_name);
    let json = serde_json::to_vec(&output.stored)
        .map_err(|e| Failure::Fail(format!("result not serialisable: {e}")))?;
    let failed = |e: docfleet_shared::store::StoreError| {
        Failure::Retry(format!(
            "writing the outputs to {}: {e}",
            dest.uri(&dest.prefix)
        ))
    };
    let json_key = dest.key(file_id, &format!("{name}.json"));
    buckets
        .put_blocking(dest, &json_key, json)
        .map_err(failed)?;
    for (ext, text) in [("md", &parsed.markdown_full), ("txt", &parsed.text_full)] {
        let key = dest.key(file_id, &format!("{name}.{ext}"));
        buckets
            .put_blocking(dest, &key, text.as_bytes().to_vec())
            .map_err(failed)?;
    }
    for (image, png) in &output.images {
        let key = dest.key(file_id, &object_name(image));
        buckets
            .put_blocking(dest, &key, png.clone())
            .map_err(failed)?;
    }
    Ok(dest.uri(&json_key))
}
