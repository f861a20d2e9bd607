//! The rules of webhook endpoints (an OpenBatch extension), per project: registration (a public
//! URL, known event types, at most `webhooks.max_endpoints_per_project`), secret rotation with a
//! grace period, re-enabling, and the delivery log. Delivery itself is `crate::webhooks`.

use serde_json::Value;
use sqlx::PgPool;

use crate::config::WebhookSettings;
use crate::domain::{EventTypes, Invalid, ProjectId, WebhookEndpointId, WebhookSecret, WebhookUrl};
use crate::error::ApiError;
use crate::store::webhooks as store;

pub use crate::store::keyset::Page;
pub use crate::store::webhooks::{DeliveryRecord, EndpointRecord};

/// The longest grace period of a rotated secret, a week: the old secret is meant to be retired.
pub const MAX_GRACE_SECS: i64 = 7 * 24 * 3600;

fn not_found(id: &WebhookEndpointId) -> ApiError {
    ApiError::WebhookEndpointNotFound { id: id.to_string() }
}

fn unknown_cursor(after: Option<&str>) -> ApiError {
    ApiError::UnknownCursor {
        raw: after.unwrap_or_default().to_owned(),
    }
}

/// Registers an endpoint; the answer carries its new secret. `events` is the request's value
/// (absent: every event type).
pub async fn create(
    pool: &PgPool,
    settings: &WebhookSettings,
    project: &ProjectId,
    url: Option<&str>,
    events: &Value,
) -> Result<EndpointRecord, ApiError> {
    let raw = url.ok_or_else(|| Invalid::missing("url"))?;
    let url = WebhookUrl::parse(raw, settings.allow_private_networks)?;
    let events = EventTypes::from_json(events)?;
    let secret = WebhookSecret::generate();
    let max = settings.max_endpoints_per_project;
    let endpoint = store::create(pool, project, &url, &events, &secret, max)
        .await?
        .ok_or(ApiError::WebhookEndpointLimit { max })?;
    tracing::info!(endpoint_id = %endpoint.id, "webhook endpoint created");
    Ok(endpoint)
}

pub async fn get(
    pool: &PgPool,
    project: &ProjectId,
    id: &WebhookEndpointId,
) -> Result<EndpointRecord, ApiError> {
    store::get(pool, project, id)
        .await?
        .ok_or_else(|| not_found(id))
}

/// Deletes the endpoint, its pending deliveries and its log.
pub async fn delete(
    pool: &PgPool,
    project: &ProjectId,
    id: &WebhookEndpointId,
) -> Result<(), ApiError> {
    if !store::delete(pool, project, id).await? {
        return Err(not_found(id));
    }
    Ok(())
}

/// Issues a new secret; the previous one still signs for `grace` seconds (default:
/// `webhooks.rotation_grace_secs`, at most [`MAX_GRACE_SECS`]).
pub async fn rotate(
    pool: &PgPool,
    settings: &WebhookSettings,
    project: &ProjectId,
    id: &WebhookEndpointId,
    grace: Option<i64>,
) -> Result<EndpointRecord, ApiError> {
    let grace = match grace {
        None => settings.rotation_grace_secs.min(MAX_GRACE_SECS as u64) as i64,
        Some(g) if (0..=MAX_GRACE_SECS).contains(&g) => g,
        Some(g) => {
            return Err(Invalid::new(
                "grace_period_seconds",
                "invalid_value",
                format!("Invalid 'grace_period_seconds': expected 0 to {MAX_GRACE_SECS}, got {g}."),
            )
            .into())
        }
    };
    let secret = WebhookSecret::generate();
    let endpoint = store::rotate(pool, project, id, &secret, grace)
        .await?
        .ok_or_else(|| not_found(id))?;
    tracing::info!(endpoint_id = %endpoint.id, grace, "webhook secret rotated");
    Ok(endpoint)
}

/// Re-enables an endpoint disabled after failed deliveries; its pending ones go out at once.
pub async fn enable(
    pool: &PgPool,
    project: &ProjectId,
    id: &WebhookEndpointId,
) -> Result<EndpointRecord, ApiError> {
    store::enable(pool, project, id)
        .await?
        .ok_or_else(|| not_found(id))
}

/// A page of the project's endpoints, newest first.
pub async fn list(
    pool: &PgPool,
    project: &ProjectId,
    after: Option<&WebhookEndpointId>,
    limit: u32,
) -> Result<Page<EndpointRecord>, ApiError> {
    store::list(pool, project, after, limit)
        .await?
        .ok_or_else(|| unknown_cursor(after.map(WebhookEndpointId::as_str)))
}

/// A page of an endpoint's delivery log, newest first; `after` is an event id of that log.
pub async fn deliveries(
    pool: &PgPool,
    project: &ProjectId,
    id: &WebhookEndpointId,
    after: Option<&str>,
    limit: u32,
) -> Result<Page<DeliveryRecord>, ApiError> {
    // The endpoint must be the project's before its log is read.
    get(pool, project, id).await?;
    store::deliveries(pool, id, after, limit)
        .await?
        .ok_or_else(|| unknown_cursor(after))
}
