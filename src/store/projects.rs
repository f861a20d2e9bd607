//! Projects and their service accounts, for the Admin API.

use sqlx::PgPool;

use super::keys::KEYS_CHANNEL;
use super::keyset::{self, Page};
use crate::domain::{ProjectId, ProjectName, ServiceAccountId};

#[derive(Debug, Clone)]
pub struct ProjectRecord {
    pub id: ProjectId,
    pub name: String,
    pub created_at: i64,
    pub archived_at: Option<i64>,
}

/// What a write to a project named: it, none (`NotFound`), or a name another project has.
#[derive(Debug)]
pub enum Written<T> {
    Done(T),
    NotFound,
    NameTaken,
}

const UNIQUE_NAME: &str = "projects_name_key";

fn name_taken(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.constraint() == Some(UNIQUE_NAME))
}

#[tracing::instrument(skip_all, name = "db.projects.create")]
pub async fn create(
    pool: &PgPool,
    name: &ProjectName,
) -> Result<Written<ProjectRecord>, sqlx::Error> {
    let id = format!("proj_{}", uuid::Uuid::new_v4().simple());
    let made = sqlx::query_as!(
        ProjectRecord,
        r#"INSERT INTO projects (id, name) VALUES ($1, $2)
           RETURNING id AS "id: ProjectId", name, created_at, archived_at"#,
        id,
        name.as_str(),
    )
    .fetch_one(pool)
    .await;
    match made {
        Ok(p) => Ok(Written::Done(p)),
        Err(e) if name_taken(&e) => Ok(Written::NameTaken),
        Err(e) => Err(e),
    }
}

#[tracing::instrument(skip_all, name = "db.projects.get")]
pub async fn get(pool: &PgPool, id: &str) -> Result<Option<ProjectRecord>, sqlx::Error> {
    sqlx::query_as!(
        ProjectRecord,
        r#"SELECT id AS "id: ProjectId", name, created_at, archived_at FROM projects WHERE id = $1"#,
        id,
    )
    .fetch_optional(pool)
    .await
}

/// Oldest first; archived ones only when asked for.
#[tracing::instrument(skip_all, name = "db.projects.list")]
pub async fn list(
    pool: &PgPool,
    after: Option<&str>,
    limit: u32,
    include_archived: bool,
) -> Result<Option<Page<ProjectRecord>>, sqlx::Error> {
    let cursor = after.map(|id| {
        sqlx::query_scalar!("SELECT seq FROM projects WHERE id = $1", id).fetch_optional(pool)
    });
    keyset::page(cursor, limit, |after, fetch| {
        sqlx::query_as!(
            ProjectRecord,
            r#"SELECT id AS "id: ProjectId", name, created_at, archived_at FROM projects
               WHERE seq > $1 AND ($2 OR archived_at IS NULL) ORDER BY seq LIMIT $3"#,
            after.unwrap_or(0),
            include_archived,
            fetch,
        )
        .fetch_all(pool)
    })
    .await
}

/// Renames an active project.
#[tracing::instrument(skip_all, name = "db.projects.rename")]
pub async fn rename(
    pool: &PgPool,
    id: &ProjectId,
    name: &ProjectName,
) -> Result<Written<ProjectRecord>, sqlx::Error> {
    let renamed = sqlx::query_as!(
        ProjectRecord,
        r#"UPDATE projects SET name = $2 WHERE id = $1
           RETURNING id AS "id: ProjectId", name, created_at, archived_at"#,
        id.as_str(),
        name.as_str(),
    )
    .fetch_optional(pool)
    .await;
    match renamed {
        Ok(Some(p)) => Ok(Written::Done(p)),
        Ok(None) => Ok(Written::NotFound),
        Err(e) if name_taken(&e) => Ok(Written::NameTaken),
        Err(e) => Err(e),
    }
}

/// Archives a project (a second archive changes nothing). Every replica drops its keys from
/// memory on the notification, sent at commit.
#[tracing::instrument(skip_all, name = "db.projects.archive")]
pub async fn archive(pool: &PgPool, id: &ProjectId) -> Result<Option<ProjectRecord>, sqlx::Error> {
    sqlx::query_as!(
        ProjectRecord,
        r#"WITH a AS (
              UPDATE projects SET archived_at = coalesce(archived_at, unix_now()) WHERE id = $1
              RETURNING id, name, created_at, archived_at
           ), n AS (SELECT pg_notify($2, id) FROM a)
           SELECT id AS "id!: ProjectId", name AS "name!", created_at AS "created_at!", archived_at
           FROM a, (SELECT count(*) FROM n) sent"#,
        id.as_str(),
        KEYS_CHANNEL,
    )
    .fetch_optional(pool)
    .await
}

#[derive(Debug, Clone)]
pub struct ServiceAccountRecord {
    pub id: ServiceAccountId,
    pub name: String,
    pub created_at: i64,
}

/// A service account, and its key (`insert` a [`crate::domain::NewKey`] in the same
/// transaction: see `keys::insert_in`).
#[tracing::instrument(skip_all, name = "db.projects.create_service_account")]
pub async fn create_service_account(
    conn: &mut sqlx::PgConnection,
    project: &ProjectId,
    name: &str,
) -> Result<ServiceAccountRecord, sqlx::Error> {
    let id = ServiceAccountId::generate();
    sqlx::query_as!(
        ServiceAccountRecord,
        r#"INSERT INTO service_accounts (id, project_id, name) VALUES ($1, $2, $3)
           RETURNING id AS "id: ServiceAccountId", name, created_at"#,
        id.as_str(),
        project.as_str(),
        name,
    )
    .fetch_one(conn)
    .await
}

#[tracing::instrument(skip_all, name = "db.projects.get_service_account")]
pub async fn get_service_account(
    pool: &PgPool,
    project: &ProjectId,
    id: &ServiceAccountId,
) -> Result<Option<ServiceAccountRecord>, sqlx::Error> {
    sqlx::query_as!(
        ServiceAccountRecord,
        r#"SELECT id AS "id: ServiceAccountId", name, created_at FROM service_accounts
           WHERE project_id = $1 AND id = $2 AND deleted_at IS NULL"#,
        project.as_str(),
        id.as_str(),
    )
    .fetch_optional(pool)
    .await
}

#[tracing::instrument(skip_all, name = "db.projects.list_service_accounts")]
pub async fn list_service_accounts(
    pool: &PgPool,
    project: &ProjectId,
    after: Option<&ServiceAccountId>,
    limit: u32,
) -> Result<Option<Page<ServiceAccountRecord>>, sqlx::Error> {
    let cursor = after.map(|id| {
        sqlx::query_scalar!(
            "SELECT seq FROM service_accounts
             WHERE project_id = $1 AND id = $2 AND deleted_at IS NULL",
            project.as_str(),
            id.as_str(),
        )
        .fetch_optional(pool)
    });
    keyset::page(cursor, limit, |after, fetch| {
        sqlx::query_as!(
            ServiceAccountRecord,
            r#"SELECT id AS "id: ServiceAccountId", name, created_at FROM service_accounts
               WHERE project_id = $1 AND deleted_at IS NULL AND seq > $2 ORDER BY seq LIMIT $3"#,
            project.as_str(),
            after.unwrap_or(0),
            fetch,
        )
        .fetch_all(pool)
    })
    .await
}

/// Deletes a service account and revokes its keys, in one statement: every replica drops them
/// from memory on the notification, sent at commit. False when there was none.
#[tracing::instrument(skip_all, name = "db.projects.delete_service_account")]
pub async fn delete_service_account(
    pool: &PgPool,
    project: &ProjectId,
    id: &ServiceAccountId,
) -> Result<bool, sqlx::Error> {
    let deleted = sqlx::query_scalar!(
        r#"WITH d AS (
              UPDATE service_accounts SET deleted_at = unix_now()
              WHERE project_id = $1 AND id = $2 AND deleted_at IS NULL
              RETURNING id
           ), r AS (
              UPDATE api_keys SET revoked_at = unix_now()
              WHERE service_account_id IN (SELECT id FROM d) AND revoked_at IS NULL
              RETURNING prefix
           ), n AS (SELECT pg_notify($3, prefix) FROM r)
           SELECT id AS "id!" FROM d, (SELECT count(*) FROM n) sent"#,
        project.as_str(),
        id.as_str(),
        KEYS_CHANNEL,
    )
    .fetch_optional(pool)
    .await?;
    Ok(deleted.is_some())
}
