//! The OpenAPI description of every route this server implements, generated from the handlers'
//! `#[utoipa::path]` attributes and the types they send and read, and collected by registering
//! the server's own routes (`super::routes`), so that it cannot drift from the code
//! (schemathesis checks the server against it in the test suite).

use std::sync::LazyLock;

use actix_web::dev::ResourceDef;
use actix_web::http::{header, Method};
use actix_web::{get, HttpRequest, HttpResponse};
use utoipa::openapi::extensions::ExtensionsBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{PathItem, Ref, RefOr, Response};
use utoipa::{Modify, OpenApi, ToResponse};
use utoipa_actix_web::AppExt;

use crate::error::ErrorResponse;

/// The marker on each operation (and schema) that OpenAI's API does not have.
pub const EXTENSION: &str = "x-openbatch-extension";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "OpenBatch",
        description = "OpenAI-compatible Files and Batches API. Every error is an OpenAI error \
                       envelope; every response carries an `x-request-id` header."
    ),
    servers((url = "/")),
    components(schemas(crate::services::results::ResultRecord), responses(ErrorResponse)),
    security(("bearerAuth" = []))
)]
pub struct ApiDoc;

/// The document, built once by registering every route on an app that is never served:
/// registering a handler adds its operation (`super::routes`).
static OPENAPI: LazyLock<utoipa::openapi::OpenApi> = LazyLock::new(|| {
    let (_, mut doc) = actix_web::App::new()
        .into_utoipa_app()
        .openapi(ApiDoc::openapi())
        .configure(super::register)
        .configure(super::register_metrics)
        .split_for_parts();
    Conventions.modify(&mut doc);
    doc
});

static DOCUMENT: LazyLock<String> =
    LazyLock::new(|| OPENAPI.to_json().expect("the OpenAPI document serialises"));

/// Each documented path as the router matches it, with its methods.
static DOCUMENTED: LazyLock<Vec<(ResourceDef, Vec<Method>)>> = LazyLock::new(|| {
    let methods = |item: &PathItem| {
        [
            (&item.get, Method::GET),
            (&item.post, Method::POST),
            (&item.put, Method::PUT),
            (&item.patch, Method::PATCH),
            (&item.delete, Method::DELETE),
        ]
        .into_iter()
        .filter_map(|(op, method)| op.as_ref().map(|_| method))
        .collect()
    };
    (OPENAPI.paths.paths.iter())
        .map(|(path, item)| (ResourceDef::new(path.as_str()), methods(item)))
        .collect()
});

/// What no route took: a documented path with another method is a 405 naming the methods it
/// has (each method is a route of its own, so the router alone would answer 404), anything
/// else a 404; the framework's error handler writes both as the error envelope.
pub async fn unrouted(req: HttpRequest) -> HttpResponse {
    let allowed: Vec<Method> = (DOCUMENTED.iter())
        .filter(|(path, _)| path.is_match(req.path()))
        .flat_map(|(_, methods)| methods.iter().cloned())
        .collect();
    if allowed.is_empty() {
        HttpResponse::NotFound().finish()
    } else {
        HttpResponse::MethodNotAllowed()
            .insert_header(header::Allow(allowed))
            .finish()
    }
}

/// This document.
#[utoipa::path(
    operation_id = "openapi",
    tag = "health",
    responses((status = 200, description = "This document", body = Object))
)]
#[get("/openapi.json")]
pub async fn document() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(DOCUMENT.as_str())
}

/// What holds for every operation, so that no handler has to repeat it.
struct Conventions;

/// Answered by the `/v1` scope's middleware and by the database for any route under it: 401
/// (no or a wrong key), 429 (the key's request rate) and 503 (the database is unavailable).
const V1_ERRORS: [&str; 3] = ["401", "429", "503"];

/// Schemas that only OpenBatch's extensions use.
const EXTENSION_SCHEMAS: [&str; 9] = [
    "WebhookEndpoint",
    "WebhookEndpointList",
    "DeletedWebhookEndpoint",
    "WebhookDelivery",
    "WebhookDeliveryList",
    "CreateWebhookEndpointRequest",
    "RotateWebhookSecretRequest",
    "ResultRecord",
    "RetryRequest",
];

/// Members of OpenAI's Batch object that OpenBatch adds.
const BATCH_EXTENSION_FIELDS: [&str; 3] = ["retry_of", "retries", "behind_schedule"];

fn marker() -> utoipa::openapi::extensions::Extensions {
    ExtensionsBuilder::new().add(EXTENSION, true).build()
}

impl Modify for Conventions {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearerAuth",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        for (name, schema) in components.schemas.iter_mut() {
            let RefOr::T(utoipa::openapi::schema::Schema::Object(object)) = schema else {
                continue;
            };
            if EXTENSION_SCHEMAS.contains(&name.as_str()) {
                object.extensions = Some(marker());
            }
            if name == "Batch" {
                for field in BATCH_EXTENSION_FIELDS {
                    if let Some(RefOr::T(utoipa::openapi::schema::Schema::Object(o))) =
                        object.properties.get_mut(field)
                    {
                        o.extensions = Some(marker());
                    } else if let Some(RefOr::T(utoipa::openapi::schema::Schema::Array(a))) =
                        object.properties.get_mut(field)
                    {
                        a.extensions = Some(marker());
                    }
                }
            }
        }
        for (path, item) in doc.paths.paths.iter_mut() {
            let operations = [
                item.get.as_mut(),
                item.post.as_mut(),
                item.delete.as_mut(),
                item.put.as_mut(),
                item.patch.as_mut(),
            ];
            let mut all_extensions = true;
            for op in operations.into_iter().flatten() {
                if let Some(body) = op.request_body.as_mut() {
                    left_out_not_null(body);
                }
                for response in op.responses.responses.values_mut() {
                    if let RefOr::T(response) = response {
                        camel_case_links(response);
                    }
                }
                if path.starts_with("/v1/") {
                    for status in V1_ERRORS {
                        op.responses
                            .responses
                            .entry(status.to_owned())
                            .or_insert_with(|| {
                                Ref::from_response_name(ErrorResponse::response().0).into()
                            });
                    }
                } else {
                    // Health, metrics and this document: no key needed.
                    op.security = Some(Vec::new());
                }
                all_extensions &= is_extension(op.extensions.as_ref());
            }
            if all_extensions {
                item.extensions = Some(marker());
            }
        }
    }
}

/// utoipa 5.5 writes a Link object's members in snake case (`operation_id`), which no client
/// reads (schemathesis refuses such a link). The links are written instead as the
/// specification spells them (`operationId`, `operationRef`, `requestBody`), through the
/// response's extension map, which is serialised into the response object as it is.
fn camel_case_links(response: &mut Response) {
    if response.links.is_empty() {
        return;
    }
    let mut links = serde_json::Map::new();
    for (name, link) in std::mem::take(&mut response.links) {
        let mut link = serde_json::to_value(link).expect("a link serialises");
        if let Some(members) = link.as_object_mut() {
            for (snake, camel) in [
                ("operation_id", "operationId"),
                ("operation_ref", "operationRef"),
                ("request_body", "requestBody"),
            ] {
                if let Some(value) = members.remove(snake) {
                    members.insert(camel.to_owned(), value);
                }
            }
        }
        links.insert(name, link);
    }
    response
        .extensions
        .get_or_insert_with(Default::default)
        .insert("links".to_owned(), links.into());
}

/// An optional body (`request_body = Option<T>`) is one that may be left out, not a JSON
/// `null` (which the server refuses): `T`'s schema, with the body not required.
fn left_out_not_null(body: &mut utoipa::openapi::request_body::RequestBody) {
    use utoipa::openapi::schema::{Schema, Type};
    for content in body.content.values_mut() {
        let Some(RefOr::T(Schema::OneOf(one_of))) = &content.schema else {
            continue;
        };
        let is_null = |s: &RefOr<Schema>| matches!(s, RefOr::T(Schema::Object(o)) if o.schema_type == Type::Null.into());
        if let [a, b] = one_of.items.as_slice() {
            let inner = match (is_null(a), is_null(b)) {
                (true, false) => b.clone(),
                (false, true) => a.clone(),
                _ => continue,
            };
            content.schema = Some(inner);
            body.required = Some(utoipa::openapi::Required::False);
        }
    }
}

fn is_extension(extensions: Option<&utoipa::openapi::extensions::Extensions>) -> bool {
    extensions.and_then(|e| e.get(EXTENSION)) == Some(&serde_json::Value::Bool(true))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::*;

    fn document() -> Value {
        serde_json::from_str(&DOCUMENT).unwrap()
    }

    /// `(method, path)` of every operation in the document.
    fn documented(doc: &Value) -> BTreeSet<(String, String)> {
        let mut found = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                    found.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        found
    }

    /// The operation ids the tests and clients use, and which operations are OpenBatch's own.
    const OPERATIONS: [(&str, &str, &str, bool); 41] = [
        ("GET", "/healthz", "healthz", false),
        ("GET", "/readyz", "readyz", false),
        ("GET", "/openapi.json", "openapi", false),
        ("GET", "/metrics", "metrics", false),
        ("POST", "/v1/files", "createFile", false),
        ("GET", "/v1/files", "listFiles", false),
        ("GET", "/v1/files/{file_id}", "retrieveFile", false),
        ("DELETE", "/v1/files/{file_id}", "deleteFile", false),
        ("GET", "/v1/files/{file_id}/content", "downloadFile", false),
        ("POST", "/v1/batches", "createBatch", false),
        ("GET", "/v1/batches", "listBatches", false),
        ("GET", "/v1/batches/{batch_id}", "retrieveBatch", false),
        (
            "POST",
            "/v1/batches/{batch_id}/cancel",
            "cancelBatch",
            false,
        ),
        (
            "GET",
            "/v1/batches/{batch_id}/results",
            "batchResults",
            true,
        ),
        ("GET", "/v1/batches/{batch_id}/events", "batchEvents", true),
        ("POST", "/v1/batches/{batch_id}/retry", "retryBatch", true),
        (
            "POST",
            "/v1/webhook_endpoints",
            "createWebhookEndpoint",
            true,
        ),
        ("GET", "/v1/webhook_endpoints", "listWebhookEndpoints", true),
        (
            "GET",
            "/v1/webhook_endpoints/{endpoint_id}",
            "retrieveWebhookEndpoint",
            true,
        ),
        (
            "DELETE",
            "/v1/webhook_endpoints/{endpoint_id}",
            "deleteWebhookEndpoint",
            true,
        ),
        (
            "POST",
            "/v1/webhook_endpoints/{endpoint_id}/rotate_secret",
            "rotateWebhookEndpointSecret",
            true,
        ),
        (
            "POST",
            "/v1/webhook_endpoints/{endpoint_id}/enable",
            "enableWebhookEndpoint",
            true,
        ),
        (
            "GET",
            "/v1/webhook_endpoints/{endpoint_id}/deliveries",
            "listWebhookDeliveries",
            true,
        ),
        // OpenAI's Admin API: not extensions.
        ("POST", "/v1/organization/projects", "createProject", false),
        ("GET", "/v1/organization/projects", "listProjects", false),
        (
            "GET",
            "/v1/organization/projects/{project_id}",
            "retrieveProject",
            false,
        ),
        (
            "POST",
            "/v1/organization/projects/{project_id}",
            "modifyProject",
            false,
        ),
        (
            "POST",
            "/v1/organization/projects/{project_id}/archive",
            "archiveProject",
            false,
        ),
        (
            "POST",
            "/v1/organization/projects/{project_id}/service_accounts",
            "createProjectServiceAccount",
            false,
        ),
        (
            "GET",
            "/v1/organization/projects/{project_id}/service_accounts",
            "listProjectServiceAccounts",
            false,
        ),
        (
            "GET",
            "/v1/organization/projects/{project_id}/service_accounts/{service_account_id}",
            "retrieveProjectServiceAccount",
            false,
        ),
        (
            "DELETE",
            "/v1/organization/projects/{project_id}/service_accounts/{service_account_id}",
            "deleteProjectServiceAccount",
            false,
        ),
        (
            "GET",
            "/v1/organization/projects/{project_id}/api_keys",
            "listProjectApiKeys",
            false,
        ),
        (
            "GET",
            "/v1/organization/projects/{project_id}/api_keys/{key_id}",
            "retrieveProjectApiKey",
            false,
        ),
        (
            "DELETE",
            "/v1/organization/projects/{project_id}/api_keys/{key_id}",
            "deleteProjectApiKey",
            false,
        ),
        (
            "GET",
            "/v1/organization/usage/completions",
            "usageCompletions",
            false,
        ),
        (
            "GET",
            "/v1/organization/usage/embeddings",
            "usageEmbeddings",
            false,
        ),
        ("POST", "/v1/uploads", "createUpload", false),
        (
            "POST",
            "/v1/uploads/{upload_id}/parts",
            "addUploadPart",
            false,
        ),
        (
            "POST",
            "/v1/uploads/{upload_id}/complete",
            "completeUpload",
            false,
        ),
        (
            "POST",
            "/v1/uploads/{upload_id}/cancel",
            "cancelUpload",
            false,
        ),
    ];

    #[test]
    fn operations_keep_their_ids_and_extensions_are_marked() {
        let doc = document();
        let mut expected = BTreeSet::new();
        for (method, path, id, extension) in OPERATIONS {
            let op = &doc["paths"][path][method.to_lowercase()];
            assert_eq!(op["operationId"], id, "{method} {path}");
            let marked = op[EXTENSION] == Value::Bool(true);
            assert_eq!(marked, extension, "{EXTENSION} on {method} {path}");
            expected.insert((method.to_owned(), path.to_owned()));
        }
        assert_eq!(documented(&doc), expected);
    }

    #[test]
    fn every_v1_operation_documents_the_common_errors_and_needs_a_key() {
        let doc = document();
        assert_eq!(doc["security"], serde_json::json!([{"bearerAuth": []}]));
        assert_eq!(
            doc["components"]["securitySchemes"]["bearerAuth"],
            serde_json::json!({"type": "http", "scheme": "bearer"})
        );
        let error = &doc["components"]["responses"]["Error"]["content"]["application/json"];
        assert_eq!(error["schema"]["$ref"], "#/components/schemas/Error");
        for (method, path, _, _) in OPERATIONS {
            let op = &doc["paths"][path][method.to_lowercase()];
            let responses = op["responses"].as_object().unwrap();
            assert!(responses.contains_key("200"), "{method} {path}");
            if path.starts_with("/v1/") {
                assert_eq!(op.get("security"), None, "{method} {path}");
                for status in V1_ERRORS {
                    assert_eq!(
                        responses[status]["$ref"], "#/components/responses/Error",
                        "{status} of {method} {path}"
                    );
                }
            } else {
                assert_eq!(op["security"], serde_json::json!([]), "{method} {path}");
            }
        }
    }

    #[test]
    fn extension_schemas_and_members_are_marked() {
        let doc = document();
        let schemas = &doc["components"]["schemas"];
        for name in EXTENSION_SCHEMAS {
            assert_eq!(schemas[name][EXTENSION], true, "{name}");
        }
        for field in BATCH_EXTENSION_FIELDS {
            assert_eq!(
                schemas["Batch"]["properties"][field][EXTENSION], true,
                "{field}"
            );
        }
        let marked = schemas
            .as_object()
            .unwrap()
            .values()
            .filter(|s| s[EXTENSION] == true)
            .count();
        assert_eq!(marked, EXTENSION_SCHEMAS.len());
        // A path is marked when all its operations are OpenBatch's own.
        for (path, item) in doc["paths"].as_object().unwrap() {
            let all = OPERATIONS
                .iter()
                .filter(|(_, p, _, _)| p == path)
                .all(|(_, _, _, extension)| *extension);
            assert_eq!(item[EXTENSION] == true, all, "{path}");
        }
    }

    #[test]
    fn links_name_operations_that_exist() {
        let doc = document();
        let ids: BTreeSet<_> = OPERATIONS.iter().map(|(_, _, id, _)| *id).collect();
        let mut links = 0;
        for (method, path, _, _) in OPERATIONS {
            let op = &doc["paths"][path][method.to_lowercase()];
            for response in op["responses"].as_object().unwrap().values() {
                let Some(found) = response.get("links") else {
                    continue;
                };
                for (name, link) in found.as_object().unwrap() {
                    let target = link["operationId"].as_str().unwrap_or_default();
                    assert!(
                        ids.contains(target),
                        "link {name} of {method} {path}: {link}"
                    );
                    assert!(link["parameters"].is_object(), "link {name}: {link}");
                    links += 1;
                }
            }
        }
        assert_eq!(links, 7);
    }

    #[test]
    fn the_error_envelope_is_described_as_sent() {
        let doc = document();
        let error = &doc["components"]["schemas"]["Error"];
        assert_eq!(error["required"], serde_json::json!(["error"]));
        assert_eq!(error["additionalProperties"], false);
        let inner = &error["properties"]["error"];
        assert_eq!(
            inner["required"],
            serde_json::json!(["message", "type", "param", "code"])
        );
        let sample = crate::error::ApiError::Internal.to_json();
        let members: BTreeSet<_> = sample["error"].as_object().unwrap().keys().collect();
        let documented: BTreeSet<_> = inner["properties"].as_object().unwrap().keys().collect();
        assert_eq!(members, documented);
    }
}
