use sqlx::PgPool;

use super::keyset::{self, Page};
use super::projects::ServiceAccountRecord;
use crate::domain::{ApiKeyId, NewKey, ProjectId, ProjectName, ServiceAccountId};

/// LISTEN/NOTIFY channel: a key was created or revoked (payload: its prefix). Every replica
/// reloads its copy of the live keys on it.
pub const KEYS_CHANNEL: &str = "openbatch_keys";

/// The project named `name`, created if it does not exist yet.
#[tracing::instrument(skip_all, name = "db.keys.ensure_project")]
pub async fn ensure_project(pool: &PgPool, name: &ProjectName) -> Result<ProjectId, sqlx::Error> {
    sqlx::query_scalar!(
        r#"WITH ins AS (
            INSERT INTO projects (id, name) VALUES ($1, $2)
            ON CONFLICT (name) DO NOTHING
            RETURNING id
        )
        SELECT id AS "id!: ProjectId" FROM ins UNION ALL SELECT id FROM projects WHERE name = $2
        LIMIT 1"#,
        format!("proj_{}", uuid::Uuid::new_v4().simple()),
        name.as_str(),
    )
    .fetch_one(pool)
    .await
}

/// A project key, owned by `service_account`. The notification is sent on commit, so no
/// replica can reload before the key exists.
#[tracing::instrument(skip_all, name = "db.keys.insert")]
pub async fn insert(
    conn: &mut sqlx::PgConnection,
    project: &ProjectId,
    service_account: &ServiceAccountId,
    key: &NewKey,
) -> Result<KeyRecord, sqlx::Error> {
    sqlx::query_as!(
        KeyRecord,
        r#"WITH ins AS (
            INSERT INTO api_keys (prefix, project_id, key_hash, service_account_id)
            VALUES ($1, $2, $3, $4)
            RETURNING id, prefix, name, created_at, last_used_at
        ), n AS (SELECT pg_notify($5, prefix) FROM ins)
        SELECT id AS "id!: ApiKeyId", prefix AS "prefix!", name AS "name!",
               created_at AS "created_at!", last_used_at
        FROM ins, (SELECT count(*) FROM n) sent"#,
        key.prefix,
        project.as_str(),
        &key.hash[..],
        service_account.as_str(),
        KEYS_CHANNEL,
    )
    .fetch_one(conn)
    .await
}

/// A service account of `project` and its first key, together.
pub async fn create_owned(
    pool: &PgPool,
    project: &ProjectId,
    owner_name: &str,
    key: &NewKey,
) -> Result<(ServiceAccountRecord, KeyRecord), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let owner = super::projects::create_service_account(&mut tx, project, owner_name).await?;
    let made = insert(&mut tx, project, &owner.id, key).await?;
    tx.commit().await?;
    Ok((owner, made))
}

/// An admin key: no project, only `/v1/organization/*`.
#[tracing::instrument(skip_all, name = "db.keys.insert_admin")]
pub async fn insert_admin(pool: &PgPool, key: &NewKey, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "WITH ins AS (
            INSERT INTO api_keys (prefix, project_id, key_hash, admin, name)
            VALUES ($1, NULL, $2, true, $3)
            RETURNING prefix
        )
        SELECT pg_notify($4, prefix) FROM ins",
        key.prefix,
        &key.hash[..],
        name,
        KEYS_CHANNEL,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// What a key may do: act for its project, or (an admin key) use the Admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyScope {
    Project(ProjectId),
    Admin,
}

impl KeyScope {
    fn of(project: Option<ProjectId>) -> Self {
        project.map_or(Self::Admin, Self::Project)
    }
}

#[derive(Debug, Clone)]
pub struct StoredKey {
    pub scope: KeyScope,
    pub hash: Vec<u8>,
}

/// Every live key (unrevoked, and not of an archived project), by prefix: what a replica
/// holds in memory.
#[tracing::instrument(skip_all, name = "db.keys.load_live")]
pub async fn load_live(pool: &PgPool) -> Result<Vec<(String, StoredKey)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT k.prefix, k.project_id AS "project_id?: ProjectId", k.key_hash
           FROM api_keys k LEFT JOIN projects p ON p.id = k.project_id
           WHERE k.revoked_at IS NULL AND p.archived_at IS NULL"#
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let key = StoredKey {
                scope: KeyScope::of(r.project_id),
                hash: r.key_hash,
            };
            (r.prefix, key)
        })
        .collect())
}

/// A live key by its prefix.
#[tracing::instrument(skip_all, name = "db.keys.find")]
pub async fn find(pool: &PgPool, prefix: &str) -> Result<Option<StoredKey>, sqlx::Error> {
    let row = sqlx::query!(
        r#"SELECT k.project_id AS "project_id?: ProjectId", k.key_hash
           FROM api_keys k LEFT JOIN projects p ON p.id = k.project_id
           WHERE k.prefix = $1 AND k.revoked_at IS NULL AND p.archived_at IS NULL"#,
        prefix,
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| StoredKey {
        scope: KeyScope::of(r.project_id),
        hash: r.key_hash,
    }))
}

/// Records that a key was used (each replica does so at most once a minute per key).
#[tracing::instrument(skip_all, name = "db.keys.mark_used")]
pub async fn mark_used(pool: &PgPool, prefix: &str) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "UPDATE api_keys SET last_used_at = unix_now() WHERE prefix = $1",
        prefix
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// A project key as the Admin API shows it.
#[derive(Debug, Clone)]
pub struct KeyRecord {
    pub id: ApiKeyId,
    pub prefix: String,
    pub name: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

/// A project's live key and the service account that owns it.
#[derive(Debug, Clone)]
pub struct OwnedKey {
    pub key: KeyRecord,
    pub owner: Option<ServiceAccountRecord>,
}

struct OwnedKeyRow {
    id: ApiKeyId,
    prefix: String,
    name: String,
    created_at: i64,
    last_used_at: Option<i64>,
    sa_id: Option<ServiceAccountId>,
    sa_name: Option<String>,
    sa_created_at: Option<i64>,
}

impl From<OwnedKeyRow> for OwnedKey {
    fn from(r: OwnedKeyRow) -> Self {
        let owner = match (r.sa_id, r.sa_name, r.sa_created_at) {
            (Some(id), Some(name), Some(created_at)) => Some(ServiceAccountRecord {
                id,
                name,
                created_at,
            }),
            _ => None,
        };
        Self {
            key: KeyRecord {
                id: r.id,
                prefix: r.prefix,
                name: r.name,
                created_at: r.created_at,
                last_used_at: r.last_used_at,
            },
            owner,
        }
    }
}

#[tracing::instrument(skip_all, name = "db.keys.get_in_project")]
pub async fn get_in_project(
    pool: &PgPool,
    project: &ProjectId,
    id: &ApiKeyId,
) -> Result<Option<OwnedKey>, sqlx::Error> {
    let row = sqlx::query_as!(
        OwnedKeyRow,
        r#"SELECT k.id AS "id!: ApiKeyId", k.prefix, k.name, k.created_at, k.last_used_at,
                  s.id AS "sa_id?: ServiceAccountId", s.name AS "sa_name?",
                  s.created_at AS "sa_created_at?"
           FROM api_keys k LEFT JOIN service_accounts s ON s.id = k.service_account_id
           WHERE k.project_id = $1 AND k.id = $2 AND k.revoked_at IS NULL"#,
        project.as_str(),
        id.as_str(),
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(OwnedKey::from))
}

/// A project's live keys, oldest first.
#[tracing::instrument(skip_all, name = "db.keys.list_in_project")]
pub async fn list_in_project(
    pool: &PgPool,
    project: &ProjectId,
    after: Option<&ApiKeyId>,
    limit: u32,
) -> Result<Option<Page<OwnedKey>>, sqlx::Error> {
    let cursor = after.map(|id| {
        sqlx::query_scalar!(
            r#"SELECT seq AS "seq!" FROM api_keys
               WHERE project_id = $1 AND id = $2 AND revoked_at IS NULL"#,
            project.as_str(),
            id.as_str(),
        )
        .fetch_optional(pool)
    });
    let page = keyset::page(cursor, limit, |after, fetch| {
        sqlx::query_as!(
            OwnedKeyRow,
            r#"SELECT k.id AS "id!: ApiKeyId", k.prefix, k.name, k.created_at, k.last_used_at,
                      s.id AS "sa_id?: ServiceAccountId", s.name AS "sa_name?",
                      s.created_at AS "sa_created_at?"
               FROM api_keys k LEFT JOIN service_accounts s ON s.id = k.service_account_id
               WHERE k.project_id = $1 AND k.revoked_at IS NULL AND k.seq > $2
               ORDER BY k.seq LIMIT $3"#,
            project.as_str(),
            after.unwrap_or(0),
            fetch,
        )
        .fetch_all(pool)
    })
    .await?;
    Ok(page.map(|p| Page {
        items: p.items.into_iter().map(OwnedKey::from).collect(),
        has_more: p.has_more,
    }))
}

/// Revokes a project's key by its id; every replica drops it on the notification. False when
/// the project has no such live key.
#[tracing::instrument(skip_all, name = "db.keys.revoke_in_project")]
pub async fn revoke_in_project(
    pool: &PgPool,
    project: &ProjectId,
    id: &ApiKeyId,
) -> Result<bool, sqlx::Error> {
    let revoked = sqlx::query_scalar!(
        r#"WITH r AS (
            UPDATE api_keys SET revoked_at = unix_now()
            WHERE project_id = $1 AND id = $2 AND revoked_at IS NULL
            RETURNING prefix
        )
        SELECT prefix AS "prefix!" FROM r, LATERAL (SELECT pg_notify($3, r.prefix)) n"#,
        project.as_str(),
        id.as_str(),
        KEYS_CHANNEL,
    )
    .fetch_optional(pool)
    .await?;
    Ok(revoked.is_some())
}

#[derive(Debug)]
pub struct KeyListing {
    pub prefix: String,
    pub project: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

#[tracing::instrument(skip_all, name = "db.keys.list")]
pub async fn list(pool: &PgPool) -> Result<Vec<KeyListing>, sqlx::Error> {
    sqlx::query_as!(
        KeyListing,
        r#"SELECT k.prefix, coalesce(p.name, '(admin)') AS "project!", k.created_at, k.revoked_at
           FROM api_keys k LEFT JOIN projects p ON p.id = k.project_id
           ORDER BY k.created_at, k.prefix"#
    )
    .fetch_all(pool)
    .await
}

/// False when no live key has this prefix.
#[tracing::instrument(skip_all, name = "db.keys.revoke")]
pub async fn revoke(pool: &PgPool, prefix: &str) -> Result<bool, sqlx::Error> {
    // Every replica hears of it on commit and drops the key from memory at once.
    let notified: Option<String> = sqlx::query_scalar!(
        r#"WITH r AS (
            UPDATE api_keys SET revoked_at = unix_now()
            WHERE prefix = $1 AND revoked_at IS NULL
            RETURNING prefix
        )
        SELECT prefix AS "prefix!" FROM r, LATERAL (SELECT pg_notify($2, r.prefix)) n"#,
        prefix,
        KEYS_CHANNEL,
    )
    .fetch_optional(pool)
    .await?;
    Ok(notified.is_some())
}
