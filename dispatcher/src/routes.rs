//! The API's routes, listed once: the router and the OpenAPI document served at
//! `/openapi.json` are both made from these lists, so the document names every route there is.

use axum::Router;
use serde_json::{json, Map, Value};

use crate::state::AppState;
use crate::{
    auth, batch, batch_v2, configurations, directories, exports, files, job_results, jobs,
    processing_results, webhook,
};

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// A project's key.
    Project,
    /// An operator's key.
    Operator,
    /// Anyone holding a signed link (no key).
    Signed,
}

/// What a route reads from its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    None,
    Json,
    /// A multipart form: its file part, then its text parts.
    Form(&'static str, &'static [&'static str]),
}

/// One route as the OpenAPI document describes it.
#[derive(Debug)]
pub struct RouteDoc {
    pub method: &'static str,
    pub path: &'static str,
    pub caller: Caller,
    pub body: Body,
    /// The SDK call it serves (ours where none).
    pub summary: &'static str,
}

/// Builds, from one list, a router of the routes and the table of their documentation.
macro_rules! routes {
    ($router:ident, $docs:ident;
     $( $method:ident $path:literal => $handler:expr, $caller:ident, $body:expr, $summary:literal; )*) => {
        /// The routes of this list.
        pub fn $router() -> Router<AppState> {
            Router::new() $( .route($path, axum::routing::$method($handler)) )*
        }
        /// What the OpenAPI document says of them.
        pub const $docs: &[RouteDoc] = &[ $( RouteDoc {
            method: stringify!($method),
            path: $path,
            caller: Caller::$caller,
            body: $body,
            summary: $summary,
        }, )* ];
    };
}

routes! { api, API;
    post "/api/v1/beta/directories" => directories::create, Project, Body::Json, "beta.directories.create";
    get "/api/v1/beta/directories" => directories::list, Project, Body::None, "beta.directories.list";
    get "/api/v1/beta/directories/{directory_id}" => directories::get, Project, Body::None, "beta.directories.get";
    patch "/api/v1/beta/directories/{directory_id}" => directories::update, Project, Body::Json, "beta.directories.update";
    delete "/api/v1/beta/directories/{directory_id}" => directories::delete, Project, Body::None, "beta.directories.delete";
    get "/api/v1/beta/directories/{directory_id}/files" => directories::list_files, Project, Body::None, "beta.directories.files.list";
    post "/api/v1/beta/directories/{directory_id}/files" => directories::add_file, Project, Body::Json, "beta.directories.files.add";
    post "/api/v1/beta/directories/{directory_id}/files/import" => directories::import, Project, Body::Json, "fills a directory with the objects under an s3:// prefix, without copying them (ours)";
    get "/api/v1/beta/directories/{directory_id}/files/{directory_file_id}" => directories::get_file, Project, Body::None, "beta.directories.files.get";
    patch "/api/v1/beta/directories/{directory_id}/files/{directory_file_id}" => directories::update_file, Project, Body::Json, "beta.directories.files.update";
    delete "/api/v1/beta/directories/{directory_id}/files/{directory_file_id}" => directories::delete_file, Project, Body::None, "beta.directories.files.delete";
    get "/api/v1/beta/files" => files::list, Project, Body::None, "files.list";
    get "/api/v1/beta/files/{file_id}" => files::get, Project, Body::None, "files.retrieve";
    delete "/api/v1/beta/files/{file_id}" => files::delete, Project, Body::None, "files.delete";
    get "/api/v1/beta/files/{file_id}/content" => files::content, Project, Body::None, "files.content (2.19.0), files.get (2.13.0): a signed link";
    get "/api/v1/beta/files/{file_id}/download" => files::download, Signed, Body::None, "the signed link (expires, signature)";
    post "/api/v1/beta/configurations" => configurations::create, Project, Body::Json, "configurations.create";
    get "/api/v1/beta/configurations" => configurations::list, Project, Body::None, "configurations.list";
    get "/api/v1/beta/configurations/{config_id}" => configurations::get, Project, Body::None, "configurations.retrieve";
    put "/api/v1/beta/configurations/{config_id}" => configurations::update, Project, Body::Json, "configurations.update";
    delete "/api/v1/beta/configurations/{config_id}" => configurations::delete, Project, Body::None, "configurations.delete";
    post "/api/v1/beta/webhook-configs" => webhook::saved::create, Project, Body::Json, "webhook_configs.create";
    get "/api/v1/beta/webhook-configs" => webhook::saved::list, Project, Body::None, "webhook_configs.list";
    get "/api/v1/beta/webhook-configs/{config_id}" => webhook::saved::get, Project, Body::None, "webhook_configs.retrieve";
    put "/api/v1/beta/webhook-configs/{config_id}" => webhook::saved::update, Project, Body::Json, "webhook_configs.update";
    delete "/api/v1/beta/webhook-configs/{config_id}" => webhook::saved::delete, Project, Body::None, "webhook_configs.delete";
    get "/api/v2/webhook-configs" => webhook::saved::list_paginated, Project, Body::None, "webhook_configs.list_paginated";
    post "/api/v1/admin/keys" => auth::create_route, Operator, Body::Json, "a new key for a project (ours)";
    get "/api/v1/admin/keys" => auth::list_route, Operator, Body::None, "a project's keys, as digest prefixes (ours)";
    delete "/api/v1/admin/keys/{digest}" => auth::revoke_route, Operator, Body::None, "revokes a key (ours)";
    post "/api/v1/admin/keys/{digest}/rotate" => auth::rotate_route, Operator, Body::Json, "rotates a key with an overlap (ours)";
    post "/api/v2/batches" => batch_v2::create, Project, Body::Json, "batches.create";
    get "/api/v2/batches" => batch_v2::list, Project, Body::None, "batches.list";
    get "/api/v2/batches/{batch_id}" => batch_v2::get, Project, Body::None, "batches.get";
    post "/api/v2/batches/{batch_id}/cancel" => batch_v2::cancel, Project, Body::None, "batches.cancel";
    post "/api/v1/beta/batch-processing" => batch::create, Project, Body::Json, "beta.batch.create";
    get "/api/v1/beta/batch-processing" => batch::list, Project, Body::None, "beta.batch.list";
    get "/api/v1/beta/batch-processing/{job_id}" => batch::status, Project, Body::None, "beta.batch.get_status";
    post "/api/v1/beta/batch-processing/{job_id}/cancel" => batch::cancel, Project, Body::None, "beta.batch.cancel";
    get "/api/v1/beta/batch-processing/{job_id}/items" => batch::items, Project, Body::None, "beta.batch.job_items.list";
    get "/api/v1/beta/batch-processing/{job_id}/results" => exports::results, Project, Body::None, "every item with its result, as one streamed JSON Lines download (ours)";
    post "/api/v1/beta/batch-processing/{job_id}/retry-failed" => batch::retry_failed, Operator, Body::None, "re-runs a batch's failed items (ours)";
    get "/api/v1/beta/batch-processing/items/{item_id}/processing-results" => processing_results::processing_results, Project, Body::None, "beta.batch.job_items.get_processing_results";
    get "/api/v1/beta/batch-processing/{job_id}/webhook-deliveries" => webhook::api::list, Project, Body::None, "a batch's webhook deliveries (ours)";
    post "/api/v1/beta/batch-processing/{job_id}/webhook-deliveries/{delivery_id}/redeliver" => webhook::api::redeliver, Operator, Body::None, "sends a delivery again (ours)";
    post "/api/v2/parse" => jobs::create_parse, Project, Body::Json, "parsing.create (file_id)";
    get "/api/v2/parse" => jobs::list_parse, Project, Body::None, "parsing.list";
    get "/api/v2/parse/{job_id}" => job_results::parse, Project, Body::None, "parsing.get";
    get "/api/v2/parse/{job_id}/content/{name}" => job_results::content, Signed, Body::None, "a signed link to one output of a parse job (json, markdown, text, or a kept image), from its *_content_metadata";
    post "/api/v2/parse/{job_id}/cancel" => jobs::cancel_parse, Project, Body::None, "parsing.cancel";
    post "/api/v2/classify" => jobs::create_classify, Project, Body::Json, "classify.create";
    get "/api/v2/classify" => jobs::list_classify, Project, Body::None, "classify.list";
    get "/api/v2/classify/{job_id}" => job_results::classify, Project, Body::None, "classify.get";
    post "/api/v2/classify/{job_id}/cancel" => jobs::cancel_classify, Project, Body::None, "classify.cancel";
}

routes! { uploads, UPLOADS;
    post "/api/v1/beta/directories/{directory_id}/files/upload" => directories::upload, Project, Body::Form("upload_file", &["unique_id", "display_name", "metadata"]), "beta.directories.files.upload";
    post "/api/v1/beta/files" => files::create, Project, Body::Form("file", &["purpose", "external_file_id"]), "files.create";
    post "/api/v2/parse/upload" => jobs::upload_parse, Project, Body::Form("file", &["configuration"]), "parsing.create (upload_file)";
}

/// The OpenAPI 3.1 document of every route of [`API`] and [`UPLOADS`]: paths, path
/// parameters, who may call, what body it takes. Bodies and answers are JSON objects whose
/// fields `dispatcher/API.md` and the SDK's models describe; errors are `{"detail": …}`.
pub fn openapi() -> Value {
    let mut paths: Map<String, Value> = Map::new();
    for r in API.iter().chain(UPLOADS) {
        let mut op = json!({
            "summary": r.summary,
            "operationId": format!("{}_{}", r.method, r.path.trim_matches('/').replace(['/', '{', '}', '-'], "_")),
            "responses": {
                "2XX": { "description": "the answer", "content": { "application/json": { "schema": {} } } },
                "default": { "description": "an error", "content": { "application/json": { "schema": {
                    "type": "object", "required": ["detail"], "properties": { "detail": {} }
                } } } },
            },
        });
        let params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
            .map(|name| json!({ "name": name, "in": "path", "required": true, "schema": { "type": "string" } }))
            .collect();
        if !params.is_empty() {
            op["parameters"] = Value::Array(params);
        }
        op["security"] = match r.caller {
            Caller::Project => json!([{ "projectKey": [] }]),
            Caller::Operator => json!([{ "operatorKey": [] }]),
            Caller::Signed => json!([]),
        };
        match r.body {
            Body::None => {}
            Body::Json => {
                op["requestBody"] = json!({ "required": true, "content": {
                    "application/json": { "schema": { "type": "object" } } } });
            }
            Body::Form(file, texts) => {
                let mut props = Map::new();
                props.insert(file.into(), json!({ "type": "string", "format": "binary" }));
                for t in texts {
                    props.insert((*t).into(), json!({ "type": "string" }));
                }
                op["requestBody"] = json!({ "required": true, "content": {
                    "multipart/form-data": { "schema": {
                        "type": "object", "required": [file], "properties": props } } } });
            }
        }
        let entry = paths.entry(r.path).or_insert_with(|| json!({}));
        entry[r.method] = op;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "docfleet",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Batch document processing; the llama-cloud SDK's batch, files and parse/classify API (dispatcher/API.md).",
        },
        "components": { "securitySchemes": {
            "projectKey": { "type": "http", "scheme": "bearer", "description": "a project's API key" },
            "operatorKey": { "type": "http", "scheme": "bearer", "description": "an operator's key" },
        } },
        "paths": paths,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_names_each_route_once_with_its_path_parameters() {
        let doc = openapi();
        let ops: usize = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|p| p.as_object().unwrap().len())
            .sum();
        assert_eq!(ops, API.len() + UPLOADS.len(), "a route listed twice");
        let get = &doc["paths"]
            ["/api/v1/beta/directories/{directory_id}/files/{directory_file_id}"]["get"];
        assert_eq!(get["parameters"].as_array().unwrap().len(), 2);
        let upload = &doc["paths"]["/api/v1/beta/files"]["post"]["requestBody"]["content"]
            ["multipart/form-data"];
        assert_eq!(upload["schema"]["required"], json!(["file"]));
    }
}
