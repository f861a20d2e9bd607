//! Admin API, a project's service accounts (OpenAI's
//! `/v1/organization/projects/{project_id}/service_accounts`): the owners of its keys. Creating
//! one answers its key, once; deleting one revokes its keys on every replica at once.

use actix_web::{delete, get, post, web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

use super::pagination::{list_type, PageParams, PageQuery};
use super::{body, AppState};
use crate::domain::{Invalid, ServiceAccountId};
use crate::error::{ApiError, ErrorResponse};
use crate::services::projects::{self as service, NewServiceAccount, ServiceAccountRecord};

pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(create)
        .service(list)
        .service(retrieve)
        .service(delete);
}

tag!(ServiceAccountTag = "organization.project.service_account");
tag!(ServiceAccountKeyTag = "organization.project.service_account.api_key");
tag!(DeletedServiceAccountTag = "organization.project.service_account.deleted");
tag!(MemberRole = "member");

/// A bot user of a project, owning its keys. Its role is always `member`.
#[derive(Serialize, ToSchema)]
#[schema(as = ProjectServiceAccount)]
pub(super) struct ServiceAccountObject {
    #[schema(inline)]
    object: ServiceAccountTag,
    id: String,
    name: String,
    #[schema(inline)]
    role: MemberRole,
    created_at: i64,
}

impl ServiceAccountObject {
    pub(super) fn new(a: &ServiceAccountRecord) -> Self {
        Self {
            object: ServiceAccountTag::Tag,
            id: a.id.as_str().to_owned(),
            name: a.name.clone(),
            role: MemberRole::Tag,
            created_at: a.created_at,
        }
    }
}

list_type!(
    ProjectServiceAccountList,
    ServiceAccountObject,
    "A page of a project's service accounts."
);

/// The new account's key, with its secret `value`: shown only here.
#[derive(Serialize, ToSchema)]
struct NewKeyObject {
    #[schema(inline)]
    object: ServiceAccountKeyTag,
    value: String,
    name: String,
    created_at: i64,
    id: String,
}

#[derive(Serialize, ToSchema)]
#[schema(as = ProjectServiceAccountCreateResponse)]
struct CreatedObject {
    #[serde(flatten)]
    account: ServiceAccountObject,
    api_key: NewKeyObject,
}

impl CreatedObject {
    fn new(made: NewServiceAccount) -> Self {
        Self {
            account: ServiceAccountObject::new(&made.account),
            api_key: NewKeyObject {
                object: ServiceAccountKeyTag::Tag,
                value: made.secret,
                name: made.key.name,
                created_at: made.key.created_at,
                id: made.key.id.as_str().to_owned(),
            },
        }
    }
}

#[derive(Serialize, ToSchema)]
#[schema(as = ProjectServiceAccountDeleteResponse)]
struct DeletedObject {
    #[schema(inline)]
    object: DeletedServiceAccountTag,
    id: String,
    deleted: bool,
}

#[derive(Deserialize, ToSchema)]
#[schema(as = ProjectServiceAccountCreateRequest)]
struct CreateBody {
    /// 1 to 256 characters.
    #[schema(required = true, min_length = 1, max_length = 256)]
    name: Option<String>,
}

impl CreateBody {
    fn name(&self) -> Result<&str, Invalid> {
        let name = self
            .name
            .as_deref()
            .ok_or_else(|| Invalid::missing("name"))?;
        // Any text, as OpenAI takes it; shown only as JSON and through the console's text nodes.
        if name.is_empty() || name.chars().count() > 256 {
            return Err(Invalid::new(
                "name",
                "invalid_value",
                "Invalid 'name': expected 1 to 256 characters.",
            ));
        }
        Ok(name)
    }
}

fn parse_id(raw: &str) -> Result<ServiceAccountId, ApiError> {
    ServiceAccountId::parse("service_account_id", raw)
        .map_err(|_| ApiError::ServiceAccountNotFound { id: raw.to_owned() })
}

#[utoipa::path(
    operation_id = "createProjectServiceAccount",
    tag = "organization",
    summary = "Create a service account and its key (Admin API)",
    description = "The answer carries the new key in `api_key.value`, shown only here. An \
                   archived project gets none (400).",
    params(("project_id" = String, Path)),
    request_body = CreateBody,
    responses(
        (status = 200, description = "The account and its key", body = CreatedObject),
        (status = 400, response = ErrorResponse),
        (status = 403, response = ErrorResponse),
        (status = 404, response = ErrorResponse),
        (status = 413, response = ErrorResponse),
        (status = 415, response = ErrorResponse),
    )
)]
#[post("/organization/projects/{project_id}/service_accounts")]
async fn create(
    req: HttpRequest,
    payload: web::Payload,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body: CreateBody = body::json(&req, payload, state.limits.max_json_body_bytes).await?;
    let made = service::create_service_account(&state.pool, &path, body.name()?).await?;
    Ok(HttpResponse::Ok().json(CreatedObject::new(made)))
}

const DEFAULT_LIMIT: u32 = 20;
const MAX_LIMIT: u32 = 100;

#[utoipa::path(
    operation_id = "listProjectServiceAccounts",
    tag = "organization",
    summary = "A project's service accounts, oldest first (Admin API)",
    params(("project_id" = String, Path), PageQuery<DEFAULT_LIMIT, MAX_LIMIT>),
    responses(
        (status = 200, description = "A page of service accounts", body = ProjectServiceAccountList),
        (status = 400, response = ErrorResponse),
        (status = 403, response = ErrorResponse),
        (status = 404, response = ErrorResponse),
    )
)]
#[get("/organization/projects/{project_id}/service_accounts")]
async fn list(
    path: web::Path<String>,
    page: web::Query<PageParams>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let page = page.parse(DEFAULT_LIMIT, MAX_LIMIT, |raw| {
        ServiceAccountId::parse("after", raw)
    })?;
    let found =
        service::list_service_accounts(&state.pool, &path, page.after.as_ref(), page.limit).await?;
    let data = found.items.iter().map(ServiceAccountObject::new).collect();
    Ok(HttpResponse::Ok().json(ProjectServiceAccountList::new(data, found.has_more)))
}

#[utoipa::path(
    operation_id = "retrieveProjectServiceAccount",
    tag = "organization",
    summary = "A service account (Admin API)",
    params(("project_id" = String, Path), ("service_account_id" = String, Path)),
    responses(
        (status = 200, description = "The service account", body = ServiceAccountObject),
        (status = 403, response = ErrorResponse),
        (status = 404, response = ErrorResponse),
    )
)]
#[get("/organization/projects/{project_id}/service_accounts/{service_account_id}")]
async fn retrieve(
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (project, id) = path.into_inner();
    let id = parse_id(&id)?;
    let account = service::get_service_account(&state.pool, &project, &id).await?;
    Ok(HttpResponse::Ok().json(ServiceAccountObject::new(&account)))
}

#[utoipa::path(
    operation_id = "deleteProjectServiceAccount",
    tag = "organization",
    summary = "Delete a service account; its keys stop working at once (Admin API)",
    params(("project_id" = String, Path), ("service_account_id" = String, Path)),
    responses(
        (status = 200, description = "Deleted", body = DeletedObject),
        (status = 403, response = ErrorResponse),
        (status = 404, response = ErrorResponse),
    )
)]
#[delete("/organization/projects/{project_id}/service_accounts/{service_account_id}")]
async fn delete(
    path: web::Path<(String, String)>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let (project, id) = path.into_inner();
    let id = parse_id(&id)?;
    service::delete_service_account(&state.pool, &project, &id).await?;
    Ok(HttpResponse::Ok().json(DeletedObject {
        object: DeletedServiceAccountTag::Tag,
        id: id.as_str().to_owned(),
        deleted: true,
    }))
}
