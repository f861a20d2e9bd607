//! The rules of the API, one module per resource, between the HTTP handlers (`api`), which
//! only extract, call one function here and render, and the engine and the store below.

pub mod batches;
pub mod files;
pub mod keys;
pub mod projects;
pub mod results;
pub mod uploads;
pub mod usage;
pub mod webhooks;

/// Whether the database answers within `within`: what a replica's readiness means.
pub async fn database_answers(pool: &sqlx::PgPool, within: std::time::Duration) -> bool {
    tokio::time::timeout(within, crate::store::ping(pool))
        .await
        .unwrap_or(false)
}

pub use crate::store::content::Content;
