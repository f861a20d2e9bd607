//! The Admin API's rules (OpenAI's `/v1/organization/*` shapes): projects are created,
//! renamed and archived, never deleted; a project's keys belong to its service accounts; an
//! archived project keeps its data but its keys stop working at once (the key copy of every
//! replica reloads on the archive's NOTIFY) and it gets nothing new. The built-in project,
//! which holds what was created with authentication off, is neither renamed nor archived.

use sqlx::PgPool;

use crate::domain::{ApiKey, ApiKeyId, ProjectId, ProjectName, ServiceAccountId};
use crate::error::ApiError;
pub use crate::store::keys::OwnedKey;
use crate::store::keys::{self, KeyRecord};
pub use crate::store::keyset::Page;
use crate::store::projects::{self as store, Written};
pub use crate::store::projects::{ProjectRecord, ServiceAccountRecord};

fn project_not_found(id: &str) -> ApiError {
    ApiError::ProjectNotFound { id: id.to_owned() }
}

fn unknown_cursor(after: Option<&str>) -> ApiError {
    ApiError::UnknownCursor {
        raw: after.unwrap_or_default().to_owned(),
    }
}

fn written(
    w: Written<ProjectRecord>,
    id: &str,
    name: &ProjectName,
) -> Result<ProjectRecord, ApiError> {
    match w {
        Written::Done(p) => Ok(p),
        Written::NotFound => Err(project_not_found(id)),
        Written::NameTaken => Err(ApiError::ProjectNameTaken {
            name: name.as_str().to_owned(),
        }),
    }
}

pub async fn create(pool: &PgPool, name: &ProjectName) -> Result<ProjectRecord, ApiError> {
    let project = written(store::create(pool, name).await?, "", name)?;
    tracing::info!(project_id = %project.id.as_str(), "project created");
    Ok(project)
}

pub async fn get(pool: &PgPool, id: &str) -> Result<ProjectRecord, ApiError> {
    store::get(pool, id)
        .await?
        .ok_or_else(|| project_not_found(id))
}

pub async fn list(
    pool: &PgPool,
    after: Option<&str>,
    limit: u32,
    include_archived: bool,
) -> Result<Page<ProjectRecord>, ApiError> {
    store::list(pool, after, limit, include_archived)
        .await?
        .ok_or_else(|| unknown_cursor(after))
}

/// An active project other than the built-in one: what may be changed.
async fn changeable(pool: &PgPool, id: &str) -> Result<ProjectRecord, ApiError> {
    let project = get(pool, id).await?;
    if project.id == ProjectId::built_in() {
        return Err(ApiError::BuiltInProjectFixed);
    }
    if project.archived_at.is_some() {
        return Err(ApiError::ProjectArchived { id: id.to_owned() });
    }
    Ok(project)
}

/// An active project (the built-in one included): what may get service accounts and keys.
async fn active(pool: &PgPool, id: &str) -> Result<ProjectRecord, ApiError> {
    let project = get(pool, id).await?;
    if project.archived_at.is_some() {
        return Err(ApiError::ProjectArchived { id: id.to_owned() });
    }
    Ok(project)
}

pub async fn rename(
    pool: &PgPool,
    id: &str,
    name: &ProjectName,
) -> Result<ProjectRecord, ApiError> {
    let project = changeable(pool, id).await?;
    written(store::rename(pool, &project.id, name).await?, id, name)
}

/// Archives a project: its keys stop working on every replica at once; its data stays. A
/// second archive answers the archived project.
pub async fn archive(pool: &PgPool, id: &str) -> Result<ProjectRecord, ApiError> {
    let project = get(pool, id).await?;
    if project.id == ProjectId::built_in() {
        return Err(ApiError::BuiltInProjectFixed);
    }
    let archived = store::archive(pool, &project.id)
        .await?
        .ok_or_else(|| project_not_found(id))?;
    tracing::info!(project_id = %id, "project archived");
    Ok(archived)
}

/// A new service account, and its key (whose secret is only ever in this answer).
pub struct NewServiceAccount {
    pub account: ServiceAccountRecord,
    pub key: KeyRecord,
    pub secret: String,
}

pub async fn create_service_account(
    pool: &PgPool,
    project: &str,
    name: &str,
) -> Result<NewServiceAccount, ApiError> {
    let project = active(pool, project).await?;
    let key = ApiKey::generate();
    let (account, made) = keys::create_owned(pool, &project.id, name, &key).await?;
    tracing::info!(project_id = %project.id.as_str(), service_account = %account.id, "service account created");
    Ok(NewServiceAccount {
        account,
        key: made,
        secret: key.secret,
    })
}

pub async fn get_service_account(
    pool: &PgPool,
    project: &str,
    id: &ServiceAccountId,
) -> Result<ServiceAccountRecord, ApiError> {
    let project = get(pool, project).await?;
    store::get_service_account(pool, &project.id, id)
        .await?
        .ok_or_else(|| ApiError::ServiceAccountNotFound { id: id.to_string() })
}

pub async fn list_service_accounts(
    pool: &PgPool,
    project: &str,
    after: Option<&ServiceAccountId>,
    limit: u32,
) -> Result<Page<ServiceAccountRecord>, ApiError> {
    let project = get(pool, project).await?;
    store::list_service_accounts(pool, &project.id, after, limit)
        .await?
        .ok_or_else(|| unknown_cursor(after.map(ServiceAccountId::as_str)))
}

/// Deletes a service account; its keys stop working on every replica at once.
pub async fn delete_service_account(
    pool: &PgPool,
    project: &str,
    id: &ServiceAccountId,
) -> Result<(), ApiError> {
    let project = get(pool, project).await?;
    if !store::delete_service_account(pool, &project.id, id).await? {
        return Err(ApiError::ServiceAccountNotFound { id: id.to_string() });
    }
    Ok(())
}

pub async fn get_key(pool: &PgPool, project: &str, id: &ApiKeyId) -> Result<OwnedKey, ApiError> {
    let project = get(pool, project).await?;
    keys::get_in_project(pool, &project.id, id)
        .await?
        .ok_or_else(|| ApiError::ApiKeyNotFound { id: id.to_string() })
}

pub async fn list_keys(
    pool: &PgPool,
    project: &str,
    after: Option<&ApiKeyId>,
    limit: u32,
) -> Result<Page<OwnedKey>, ApiError> {
    let project = get(pool, project).await?;
    keys::list_in_project(pool, &project.id, after, limit)
        .await?
        .ok_or_else(|| unknown_cursor(after.map(ApiKeyId::as_str)))
}

/// Revokes a key; every replica stops taking it within a NOTIFY's delay.
pub async fn delete_key(pool: &PgPool, project: &str, id: &ApiKeyId) -> Result<(), ApiError> {
    let project = get(pool, project).await?;
    if !keys::revoke_in_project(pool, &project.id, id).await? {
        return Err(ApiError::ApiKeyNotFound { id: id.to_string() });
    }
    tracing::info!(project_id = %project.id.as_str(), key_id = %id, "API key revoked");
    Ok(())
}
