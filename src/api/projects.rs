//! Admin API, projects (OpenAI's `/v1/organization/projects`): create, list, get, rename and
//! archive. Admin keys only (see `auth`).

use actix_web::{get, post, web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

use super::pagination::{list_type, PageParams, PageQuery};
use super::{body, AppState};
use crate::domain::{Invalid, ProjectName};
use crate::error::{ApiError, ErrorResponse};
use crate::services::projects::{self as service, ProjectRecord};

pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(create)
        .service(list)
        .service(retrieve)
        .service(modify)
        .service(archive);
}

tag!(ProjectTag = "organization.project");

#[derive(Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
enum ProjectStatus {
    Active,
    Archived,
}

/// A project: a tenant, whose files, batches and keys are its own.
#[derive(Serialize, ToSchema)]
#[schema(as = Project)]
pub(super) struct ProjectObject {
    id: String,
    #[schema(inline)]
    object: ProjectTag,
    name: String,
    created_at: i64,
    #[schema(required = true)]
    archived_at: Option<i64>,
    #[schema(inline)]
    status: ProjectStatus,
}

impl ProjectObject {
    fn new(p: &ProjectRecord) -> Self {
        Self {
            id: p.id.as_str().to_owned(),
            object: ProjectTag::Tag,
            name: p.name.clone(),
            created_at: p.created_at,
            archived_at: p.archived_at,
            status: match p.archived_at {
                Some(_) => ProjectStatus::Archived,
                None => ProjectStatus::Active,
            },
        }
    }
}

list_type!(ProjectList, ProjectObject, "A page of projects.");

/// `POST /v1/organization/projects` and `POST /v1/organization/projects/{project_id}`: the
/// name (OpenAI's other members, such as `geography`, are accepted and have no effect here).
#[derive(Deserialize, ToSchema)]
#[schema(as = ProjectRequest)]
struct NameBody {
    /// 1 to 128 characters, unique, not `default`.
    #[schema(required = true, min_length = 1, max_length = 128)]
    name: Option<String>,
}

impl NameBody {
    fn name(&self) -> Result<ProjectName, ApiError> {
        let raw = self
            .name
            .as_deref()
            .ok_or_else(|| Invalid::missing("name"))?;
        Ok(ProjectName::parse_param(raw)?)
    }
}

#[utoipa::path(
    operation_id = "createProject",
    tag = "organization",
    summary = "Create a project (Admin API)",
    request_body = NameBody,
    responses(
        (status = 200, description = "The new project", body = ProjectObject),
        (status = 400, response = ErrorResponse),
        (status = 403, response = ErrorResponse),
        (status = 413, response = ErrorResponse),
        (status = 415, response = ErrorResponse),
    )
)]
#[post("/organization/projects")]
async fn create(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body: NameBody = body::json(&req, payload, state.limits.max_json_body_bytes).await?;
    let project = service::create(&state.pool, &body.name()?).await?;
    Ok(HttpResponse::Ok().json(ProjectObject::new(&project)))
}

const DEFAULT_LIMIT: u32 = 20;
const MAX_LIMIT: u32 = 100;

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListParams {
    /// Whether archived projects are listed too.
    #[serde(default)]
    include_archived: bool,
}

#[utoipa::path(
    operation_id = "listProjects",
    tag = "organization",
    summary = "Projects, oldest first (Admin API)",
    params(PageQuery<DEFAULT_LIMIT, MAX_LIMIT>, ListParams),
    responses(
        (status = 200, description = "A page of projects", body = ProjectList),
        (status = 400, response = ErrorResponse),
        (status = 403, response = ErrorResponse),
    )
)]
#[get("/organization/projects")]
async fn list(
    page: web::Query<PageParams>,
    params: web::Query<ListParams>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let page = page.parse(DEFAULT_LIMIT, MAX_LIMIT, |raw| Ok::<_, ()>(raw.to_owned()))?;
    let after = page.after.as_deref();
    let found = service::list(&state.pool, after, page.limit, params.include_archived).await?;
    let data = found.items.iter().map(ProjectObject::new).collect();
    Ok(HttpResponse::Ok().json(ProjectList::new(data, found.has_more)))
}

#[utoipa::path(
    operation_id = "retrieveProject",
    tag = "organization",
    summary = "A project (Admin API)",
    params(("project_id" = String, Path)),
    responses(
        (status = 200, description = "The project", body = ProjectObject),
        (status = 403, response = ErrorResponse),
        (status = 404, response = ErrorResponse),
    )
)]
#[get("/organization/projects/{project_id}")]
async fn retrieve(
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let project = service::get(&state.pool, &path).await?;
    Ok(HttpResponse::Ok().json(ProjectObject::new(&project)))
}

#[utoipa::path(
    operation_id = "modifyProject",
    tag = "organization",
    summary = "Rename a project (Admin API)",
    description = "An archived project, and the built-in one, cannot be renamed (400).",
    params(("project_id" = String, Path)),
    request_body = NameBody,
    responses(
        (status = 200, description = "The renamed project", body = ProjectObject),
        (status = 400, response = ErrorResponse),
        (status = 403, response = ErrorResponse),
        (status = 404, response = ErrorResponse),
        (status = 413, response = ErrorResponse),
        (status = 415, response = ErrorResponse),
    )
)]
#[post("/organization/projects/{project_id}")]
async fn modify(
    req: HttpRequest,
    payload: web::Payload,
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let body: NameBody = body::json(&req, payload, state.limits.max_json_body_bytes).await?;
    let project = service::rename(&state.pool, &path, &body.name()?).await?;
    Ok(HttpResponse::Ok().json(ProjectObject::new(&project)))
}

#[utoipa::path(
    operation_id = "archiveProject",
    tag = "organization",
    summary = "Archive a project (Admin API)",
    description = "Its keys stop working at once on every replica; its files and batches stay, \
                   readable through the Admin API's listings of it. A project cannot be \
                   unarchived; the built-in project cannot be archived (400).",
    params(("project_id" = String, Path)),
    responses(
        (status = 200, description = "The archived project", body = ProjectObject),
        (status = 400, response = ErrorResponse),
        (status = 403, response = ErrorResponse),
        (status = 404, response = ErrorResponse),
    )
)]
#[post("/organization/projects/{project_id}/archive")]
async fn archive(
    path: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, ApiError> {
    let project = service::archive(&state.pool, &path).await?;
    Ok(HttpResponse::Ok().json(ProjectObject::new(&project)))
}
