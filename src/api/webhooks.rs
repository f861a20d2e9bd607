//! Webhook endpoints (an OpenBatch extension): register, list, get, delete, rotate the signing
//! secret, re-enable, and read the delivery log. Everything is per project.

use actix_web::{web, HttpRequest, HttpResponse};
use serde::Deserialize;
use serde_json::{json, Value};

use super::pagination::{list_page, PageParams};
use super::{body, AppState, Project};
use crate::domain::{EventTypes, Invalid, WebhookEndpointId, WebhookSecret, WebhookUrl};
use crate::error::ApiError;
use crate::store::webhooks::{self as store, DeliveryRecord, EndpointRecord};

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/webhook_endpoints")
            .route(web::post().to(create))
            .route(web::get().to(list)),
    )
    .service(
        web::resource("/webhook_endpoints/{endpoint_id}")
            .route(web::get().to(retrieve))
            .route(web::delete().to(delete)),
    )
    .service(
        web::resource("/webhook_endpoints/{endpoint_id}/rotate_secret")
            .route(web::post().to(rotate)),
    )
    .service(web::resource("/webhook_endpoints/{endpoint_id}/enable").route(web::post().to(enable)))
    .service(
        web::resource("/webhook_endpoints/{endpoint_id}/deliveries")
            .route(web::get().to(deliveries)),
    );
}

#[derive(Deserialize)]
struct CreateEndpoint {
    url: Option<String>,
    #[serde(default)]
    events: Value,
}

async fn create(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    Project(project): Project,
) -> Result<HttpResponse, ApiError> {
    let body: CreateEndpoint = body::json(&req, payload, state.limits.max_json_body_bytes).await?;
    let raw = body.url.as_deref().ok_or_else(|| Invalid::missing("url"))?;
    let url = WebhookUrl::parse(raw, state.webhooks.allow_private_networks)?;
    let events = EventTypes::from_json(&body.events)?;
    let secret = WebhookSecret::generate();
    let max = state.webhooks.max_endpoints_per_project;
    let endpoint = store::create(&state.pool, &project, &url, &events, &secret, max)
        .await?
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "This project already has {max} webhook endpoints, the most it may have. \
                 Delete one before registering another."
            ))
            .with_code("webhook_endpoint_limit_exceeded")
        })?;
    tracing::info!(endpoint_id = %endpoint.id, "webhook endpoint created");
    Ok(HttpResponse::Ok().json(endpoint_object(&endpoint)))
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("No webhook endpoint found with id '{id}'."))
        .with_param("endpoint_id")
        .with_code("webhook_endpoint_not_found")
}

fn parse_id(raw: &str) -> Result<WebhookEndpointId, ApiError> {
    WebhookEndpointId::parse("endpoint_id", raw).map_err(|_| not_found(raw))
}

async fn retrieve(
    path: web::Path<String>,
    state: web::Data<AppState>,
    Project(project): Project,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let endpoint = store::get(&state.pool, &project, &id)
        .await?
        .ok_or_else(|| not_found(id.as_str()))?;
    Ok(HttpResponse::Ok().json(endpoint_object(&endpoint)))
}

async fn delete(
    path: web::Path<String>,
    state: web::Data<AppState>,
    Project(project): Project,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    if !store::delete(&state.pool, &project, &id).await? {
        return Err(not_found(id.as_str()));
    }
    Ok(HttpResponse::Ok().json(json!({
        "id": id.as_str(),
        "object": "webhook_endpoint.deleted",
        "deleted": true,
    })))
}

#[derive(Deserialize)]
struct Rotate {
    #[serde(default, deserialize_with = "crate::domain::deserialize_whole_number")]
    grace_period_seconds: Option<i64>,
}

/// At most a week: the old secret is meant to be retired.
const MAX_GRACE_SECS: i64 = 7 * 24 * 3600;

async fn rotate(
    req: HttpRequest,
    payload: web::Payload,
    path: web::Path<String>,
    state: web::Data<AppState>,
    Project(project): Project,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    // The body is optional; clients that send none (or `{}`) get the configured grace period.
    let raw = body::read_limited(&req, payload, state.limits.max_json_body_bytes).await?;
    let grace = if raw.iter().all(u8::is_ascii_whitespace) {
        None
    } else {
        body::parse::<Rotate>(&raw)?.grace_period_seconds
    };
    let grace = match grace {
        None => state
            .webhooks
            .rotation_grace_secs
            .min(MAX_GRACE_SECS as u64) as i64,
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
    let endpoint = store::rotate(&state.pool, &project, &id, &secret, grace)
        .await?
        .ok_or_else(|| not_found(id.as_str()))?;
    tracing::info!(endpoint_id = %endpoint.id, grace, "webhook secret rotated");
    Ok(HttpResponse::Ok().json(endpoint_object(&endpoint)))
}

async fn enable(
    path: web::Path<String>,
    state: web::Data<AppState>,
    Project(project): Project,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let endpoint = store::enable(&state.pool, &project, &id)
        .await?
        .ok_or_else(|| not_found(id.as_str()))?;
    Ok(HttpResponse::Ok().json(endpoint_object(&endpoint)))
}

const DEFAULT_LIMIT: u32 = 20;
const MAX_LIMIT: u32 = 100;

async fn list(
    query: web::Query<PageParams>,
    state: web::Data<AppState>,
    Project(project): Project,
) -> Result<HttpResponse, ApiError> {
    let page = query.parse(DEFAULT_LIMIT, MAX_LIMIT, |raw| {
        WebhookEndpointId::parse("after", raw)
    })?;
    let found = store::list(&state.pool, &project, page.after.as_ref(), page.limit)
        .await?
        .ok_or_else(|| query.unknown_cursor())?;
    let data = found.items.iter().map(endpoint_object).collect();
    Ok(HttpResponse::Ok().json(list_page(data, found.has_more)))
}

async fn deliveries(
    path: web::Path<String>,
    query: web::Query<PageParams>,
    state: web::Data<AppState>,
    Project(project): Project,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    // Event ids: an unknown one is found out by the store.
    let page = query.parse(DEFAULT_LIMIT, MAX_LIMIT, |raw| Ok::<_, ()>(raw.to_owned()))?;
    if store::get(&state.pool, &project, &id).await?.is_none() {
        return Err(not_found(id.as_str()));
    }
    let found = store::deliveries(&state.pool, &id, page.after.as_deref(), page.limit)
        .await?
        .ok_or_else(|| query.unknown_cursor())?;
    let data = found.items.iter().map(delivery_object).collect();
    Ok(HttpResponse::Ok().json(list_page(data, found.has_more)))
}

/// The endpoint; `secret` only in the answers to create and rotate.
fn endpoint_object(e: &EndpointRecord) -> Value {
    let mut o = json!({
        "id": e.id.as_str(),
        "object": "webhook_endpoint",
        "url": e.url,
        "events": e.events.iter().map(|t| t.as_str()).collect::<Vec<_>>(),
        "status": e.status,
        "disabled_reason": e.disabled_reason,
        "disabled_at": e.disabled_at,
        "consecutive_failures": e.consecutive_failures,
        "created_at": e.created_at,
        "previous_secret_expires_at": e.previous_secret_until,
    });
    if let Some(secret) = &e.secret {
        o["secret"] = json!(secret);
    }
    o
}

fn delivery_object(d: &DeliveryRecord) -> Value {
    json!({
        "id": d.event_id,
        "object": "webhook_delivery",
        "event_id": d.event_id,
        "event_type": d.event_type.as_str(),
        "batch_id": d.batch_id.as_str(),
        "created_at": d.created_at,
        "status": d.state,
        "attempts": d.attempts,
        "last_attempt_at": d.last_attempt_at,
        "last_status_code": d.last_status_code,
        "last_error": d.last_error,
        "next_attempt_at": d.next_attempt_at,
        "delivered_at": d.delivered_at,
    })
}
