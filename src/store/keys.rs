use sqlx::PgPool;

use crate::domain::{NewKey, ProjectId, ProjectName};

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

#[tracing::instrument(skip_all, name = "db.keys.insert")]
pub async fn insert(pool: &PgPool, project: &ProjectId, key: &NewKey) -> Result<(), sqlx::Error> {
    // The notification is sent on commit, so no replica can reload before the key exists.
    sqlx::query!(
        "WITH ins AS (
            INSERT INTO api_keys (prefix, project_id, key_hash) VALUES ($1, $2, $3)
            RETURNING prefix
        )
        SELECT pg_notify($4, prefix) FROM ins",
        key.prefix,
        project.as_str(),
        &key.hash[..],
        KEYS_CHANNEL,
    )
    .execute(pool)
    .await?;
    Ok(())
}

#[derive(Debug, Clone)]
pub struct StoredKey {
    pub project: ProjectId,
    pub hash: Vec<u8>,
}

/// Every live (unrevoked) key, by prefix: what a replica holds in memory.
#[tracing::instrument(skip_all, name = "db.keys.load_live")]
pub async fn load_live(pool: &PgPool) -> Result<Vec<(String, StoredKey)>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"SELECT prefix, project_id AS "project_id: ProjectId", key_hash FROM api_keys
           WHERE revoked_at IS NULL"#
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let key = StoredKey {
                project: r.project_id,
                hash: r.key_hash,
            };
            (r.prefix, key)
        })
        .collect())
}

/// A live (unrevoked) key by its prefix.
#[tracing::instrument(skip_all, name = "db.keys.find")]
pub async fn find(pool: &PgPool, prefix: &str) -> Result<Option<StoredKey>, sqlx::Error> {
    let row = sqlx::query!(
        r#"SELECT project_id AS "project_id: ProjectId", key_hash FROM api_keys
           WHERE prefix = $1 AND revoked_at IS NULL"#,
        prefix,
    )
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|r| StoredKey {
        project: r.project_id,
        hash: r.key_hash,
    }))
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
        "SELECT k.prefix, p.name AS project, k.created_at, k.revoked_at
         FROM api_keys k JOIN projects p ON p.id = k.project_id
         ORDER BY k.created_at, k.prefix"
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
