//! Admin API, a project's API keys (OpenAI's
//! `/v1/organization/projects/{project_id}/api_keys`): list, get, and delete (revoke: every
//! replica stops taking the key within a NOTIFY's delay). Keys are made with a service account.

use actix_web::{delete, get, web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

use super::pagination::{list_type, PageParams, PageQuery};
use super::service_accounts::ServiceAccountObject;
use super::AppState;
use crate::domain::ApiKeyId;
use crate::error::{ApiError, ErrorResponse};
use crate::services::projects::{self as service, OwnedKey};

pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(list).service(retrieve).service(delete);
}

tag!(ApiKeyTag = "organization.project.api_key");
tag!(DeletedApiKeyTag = "organization.project.api_key.deleted");
tag!(ServiceAccountOwner = "service_account");

/// Who holds a key: always one of the project's service accounts here.
#[derive(Serialize, ToSchema)]
struct Owner {
    #[serde(rename = "type")]
    #[schema(inline)]
    kind: ServiceAccountOwner,
    service_account: ServiceAccountObject,
}

/// A project's key, never its secret.
#[derive(Serialize, ToSchema)]
#[schema(as = ProjectApiKey)]
pub(super) struct ApiKeyObject {
    #[schema(inline)]
    object: ApiKeyTag,
    id: String,
    name: String,
    /// The key's public prefix, the rest masked.
    redacted_value: String,
    created_at: i64,
    /// When a request last used it (recorded at most once a minute per replica).
    #[schema(required = true)]
    last_used_at: Option<i64>,
    /// Absent only for a key made before service accounts existed, and then always migrated.
    #[schema(required = true)]
    owner: Option<Owner>,
}

impl ApiKeyObject {
    fn new(k: &OwnedKey) -> Self {
        Self {
            object: ApiKeyTag::Tag,
            id: k.key.id.as_str().to_owned(),
            name: k.key.name.clone(),
            redacted_value: format!("{}_****", k.key.prefix),
            created_at: k.key.created_at,
            last_used_at: k.key.last_used_at,
            owner: k.owner.as_ref().map(|a| Owner {
                kind: ServiceAccountOwner::Tag,
                service_account: ServiceAccountObject::new(a),
            }),
        }
    }
}

list_type!(
    ProjectApiKeyList,
    ApiKeyObject,
    "A page of a project's API keys."
);

#[derive(Serialize, ToSchema)]
#[schema(as = ProjectApiKeyDeleteResponse)]
struct DeletedObject {
    #[schema(inline)]
    object: DeletedApiKeyTag,
    id: String,
    deleted: bool,
}

fn parse_id(raw: &str) -> Result<ApiKeyId, ApiError> {
    ApiKeyId::parse("key_id", raw).map_err(|_| ApiError::ApiKeyNotFound { id: raw.to_owned() })
}

const DEFAULT_LIMIT: u32 = 20;
const MAX_LIMIT: u32 = 100;

#[utoipa::path(
    operation_id = "listProjectApiKeys",
    tag = "organization",
    summary = "A project's live API keys, oldest first (Admin API)",
    params(("project_id" = String, Path), PageQuery<DEFAULT_LIMIT, MAX_LIMIT>),
    responses(
        (status = 200, description = "A page of keys", body = ProjectApiKeyList),
        (status = 400, response = ErrorResponse),
        (status = 403, response = ErrorResponse),
        (status = 404, response = ErrorResponse),
    )
)]
#[get("/organization/projects/{project_id}/api_keys")]
async fn list(
    path: web::Path<String>,
    page: web::Query<PageParams>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let page = page.parse(DEFAULT_LIMIT, MAX_LIMIT, |raw| {
        ApiKeyId::parse("after", raw)
    })?;
    let found = service::list_keys(&state.pool, &path, page.after.as_ref(), page.limit).await?;
    let data = found.items.iter().map(ApiKeyObject::new).collect();
    Ok(HttpResponse::Ok().json(ProjectApiKeyList::new(data, found.has_more)))
}

#[utoipa::path(
    operation_id = "retrieveProjectApiKey",
    tag = "organization",
    summary = "A project's API key (Admin API)",
    params(("project_id" = String, Path), ("key_id" = String, Path)),
    responses(
        (status = 200, description = "The key", body = ApiKeyObject),
        (status = 403, response = ErrorResponse),
        (status = 404, response = ErrorResponse),
    )
)]
#[get("/organization/projects/{project_id}/api_keys/{key_id}")]
async fn retrieve(
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (project, id) = path.into_inner();
    let key = service::get_key(&state.pool, &project, &parse_id(&id)?).await?;
    Ok(HttpResponse::Ok().json(ApiKeyObject::new(&key)))
}

#[utoipa::path(
    operation_id = "deleteProjectApiKey",
    tag = "organization",
    summary = "Revoke a project's API key (Admin API)",
    description = "Every replica stops taking the key within a NOTIFY's delay.",
    params(("project_id" = String, Path), ("key_id" = String, Path)),
    responses(
        (status = 200, description = "Deleted", body = DeletedObject),
        (status = 403, response = ErrorResponse),
        (status = 404, response = ErrorResponse),
    )
)]
#[delete("/organization/projects/{project_id}/api_keys/{key_id}")]
async fn delete(
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (project, id) = path.into_inner();
    let id = parse_id(&id)?;
    service::delete_key(&state.pool, &project, &id).await?;
    Ok(HttpResponse::Ok().json(DeletedObject {
        object: DeletedApiKeyTag::Tag,
        id: id.as_str().to_owned(),
        deleted: true,
    }))
}
