//! Webhook endpoints (an OpenBatch extension): register, list, get, delete, rotate the signing
//! secret, re-enable, and read the delivery log. Everything is per project.

use actix_web::{delete, get, post, web, HttpRequest, HttpResponse};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

use super::pagination::{list_type, PageParams, PageQuery};
use super::{body, AppState, Project};
use crate::domain::{DeliveryState, EndpointStatus, EventType, WebhookEndpointId, WebhookUrl};
use crate::error::{ApiError, ErrorResponse};
use crate::services::webhooks::{self as service, DeliveryRecord, EndpointRecord, MAX_GRACE_SECS};

pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(create)
        .service(list)
        .service(retrieve)
        .service(delete)
        .service(rotate)
        .service(enable)
        .service(deliveries);
}

#[derive(Deserialize, ToSchema)]
#[schema(as = CreateWebhookEndpointRequest)]
struct CreateEndpoint {
    #[schema(required = true, schema_with = WebhookUrl::request_schema)]
    url: Option<String>,
    /// Event types to send; default: all.
    #[serde(default)]
    #[schema(value_type = Option<Vec<EventType>>, min_items = 1)]
    events: Value,
}

#[utoipa::path(
    operation_id = "createWebhookEndpoint",
    tag = "webhooks",
    summary = "Register a webhook endpoint (OpenBatch extension)",
    description = "Registers an endpoint for this project's batch events. The answer carries the \
                   signing `secret` (`whsec_…`), shown only here and on rotate_secret. Loopback, \
                   private, link-local and other non-public addresses are refused unless the \
                   operator allows private networks.",
    request_body = CreateEndpoint,
    responses(
        (status = 200, description = "The new endpoint, with its secret", body = EndpointObject,
            links(
                ("retrieveWebhookEndpoint" = (operation_id = "retrieveWebhookEndpoint",
                    parameters(("endpoint_id" = "$response.body#/id")))),
                ("deleteWebhookEndpoint" = (operation_id = "deleteWebhookEndpoint",
                    parameters(("endpoint_id" = "$response.body#/id")))),
                ("rotateWebhookEndpointSecret" = (operation_id = "rotateWebhookEndpointSecret",
                    parameters(("endpoint_id" = "$response.body#/id")))),
                ("enableWebhookEndpoint" = (operation_id = "enableWebhookEndpoint",
                    parameters(("endpoint_id" = "$response.body#/id")))),
                ("listWebhookDeliveries" = (operation_id = "listWebhookDeliveries",
                    parameters(("endpoint_id" = "$response.body#/id")))),
            )),
        (status = 400, response = ErrorResponse),
        (status = 413, response = ErrorResponse),
        (status = 415, response = ErrorResponse),
    ),
    extensions(("x-openbatch-extension" = json!(true)))
)]
#[post("/webhook_endpoints")]
async fn create(
    req: HttpRequest,
    payload: web::Payload,
    state: web::Data<AppState>,
    Project(project): Project,
) -> Result<HttpResponse, ApiError> {
    let body: CreateEndpoint = body::json(&req, payload, state.limits.max_json_body_bytes).await?;
    let url = body.url.as_deref();
    let endpoint =
        service::create(&state.pool, &state.webhooks, &project, url, &body.events).await?;
    Ok(HttpResponse::Ok().json(EndpointObject::new(&endpoint)))
}

fn parse_id(raw: &str) -> Result<WebhookEndpointId, ApiError> {
    WebhookEndpointId::parse("endpoint_id", raw)
        .map_err(|_| ApiError::WebhookEndpointNotFound { id: raw.to_owned() })
}

#[utoipa::path(
    operation_id = "retrieveWebhookEndpoint",
    tag = "webhooks",
    summary = "A webhook endpoint, without its secret (OpenBatch extension)",
    params(("endpoint_id" = String, Path)),
    responses(
        (status = 200, description = "The endpoint", body = EndpointObject),
        (status = 404, response = ErrorResponse),
    ),
    extensions(("x-openbatch-extension" = json!(true)))
)]
#[get("/webhook_endpoints/{endpoint_id}")]
async fn retrieve(
    path: web::Path<String>,
    state: web::Data<AppState>,
    Project(project): Project,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let endpoint = service::get(&state.pool, &project, &id).await?;
    Ok(HttpResponse::Ok().json(EndpointObject::new(&endpoint)))
}

#[utoipa::path(
    operation_id = "deleteWebhookEndpoint",
    tag = "webhooks",
    summary = "Delete a webhook endpoint, its pending deliveries and its log (OpenBatch extension)",
    params(("endpoint_id" = String, Path)),
    responses(
        (status = 200, description = "Deleted", body = DeletedEndpoint),
        (status = 404, response = ErrorResponse),
    ),
    extensions(("x-openbatch-extension" = json!(true)))
)]
#[delete("/webhook_endpoints/{endpoint_id}")]
async fn delete(
    path: web::Path<String>,
    state: web::Data<AppState>,
    Project(project): Project,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    service::delete(&state.pool, &project, &id).await?;
    Ok(HttpResponse::Ok().json(DeletedEndpoint {
        id: id.as_str().to_owned(),
        object: DeletedEndpointTag::Tag,
        deleted: true,
    }))
}

#[derive(Deserialize, ToSchema)]
#[schema(as = RotateWebhookSecretRequest)]
struct Rotate {
    /// How long the previous secret still signs; default: the server's
    /// webhooks.rotation_grace_secs.
    #[serde(default, deserialize_with = "crate::domain::deserialize_whole_number")]
    #[schema(schema_with = grace_schema)]
    grace_period_seconds: Option<i64>,
}

fn grace_schema() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::Integer)
        .minimum(Some(0))
        .maximum(Some(MAX_GRACE_SECS))
        .build()
}

#[utoipa::path(
    operation_id = "rotateWebhookEndpointSecret",
    tag = "webhooks",
    summary = "Issue a new signing secret (OpenBatch extension)",
    description = "The new secret is in the answer. The previous one also signs (a second `v1,` \
                   signature) until `previous_secret_expires_at`. The body may be left out.",
    params(("endpoint_id" = String, Path)),
    request_body = Option<Rotate>,
    responses(
        (status = 200, description = "The endpoint with its new secret", body = EndpointObject),
        (status = 400, response = ErrorResponse),
        (status = 404, response = ErrorResponse),
        (status = 413, response = ErrorResponse),
    ),
    extensions(("x-openbatch-extension" = json!(true)))
)]
#[post("/webhook_endpoints/{endpoint_id}/rotate_secret")]
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
    let endpoint = service::rotate(&state.pool, &state.webhooks, &project, &id, grace).await?;
    Ok(HttpResponse::Ok().json(EndpointObject::new(&endpoint)))
}

#[utoipa::path(
    operation_id = "enableWebhookEndpoint",
    tag = "webhooks",
    summary = "Re-enable a webhook endpoint (OpenBatch extension)",
    description = "Re-enables an endpoint disabled after too many failed deliveries; its pending \
                   deliveries go out at once.",
    params(("endpoint_id" = String, Path)),
    responses(
        (status = 200, description = "The endpoint", body = EndpointObject),
        (status = 404, response = ErrorResponse),
    ),
    extensions(("x-openbatch-extension" = json!(true)))
)]
#[post("/webhook_endpoints/{endpoint_id}/enable")]
async fn enable(
    path: web::Path<String>,
    state: web::Data<AppState>,
    Project(project): Project,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    let endpoint = service::enable(&state.pool, &project, &id).await?;
    Ok(HttpResponse::Ok().json(EndpointObject::new(&endpoint)))
}

const DEFAULT_LIMIT: u32 = 20;
const MAX_LIMIT: u32 = 100;

#[utoipa::path(
    operation_id = "listWebhookEndpoints",
    tag = "webhooks",
    summary = "This project's webhook endpoints, newest first (OpenBatch extension)",
    params(PageQuery<DEFAULT_LIMIT, MAX_LIMIT>),
    responses(
        (status = 200, description = "A page of endpoints", body = WebhookEndpointList),
        (status = 400, response = ErrorResponse),
    ),
    extensions(("x-openbatch-extension" = json!(true)))
)]
#[get("/webhook_endpoints")]
async fn list(
    query: web::Query<PageParams>,
    state: web::Data<AppState>,
    Project(project): Project,
) -> Result<HttpResponse, ApiError> {
    let page = query.parse(DEFAULT_LIMIT, MAX_LIMIT, |raw| {
        WebhookEndpointId::parse("after", raw)
    })?;
    let found = service::list(&state.pool, &project, page.after.as_ref(), page.limit).await?;
    let data = found.items.iter().map(EndpointObject::new).collect();
    Ok(HttpResponse::Ok().json(WebhookEndpointList::new(data, found.has_more)))
}

#[utoipa::path(
    operation_id = "listWebhookDeliveries",
    tag = "webhooks",
    summary = "A webhook endpoint's delivery log, newest first (OpenBatch extension)",
    description = "`after` is an event id.",
    params(("endpoint_id" = String, Path), PageQuery<DEFAULT_LIMIT, MAX_LIMIT>),
    responses(
        (status = 200, description = "A page of deliveries", body = WebhookDeliveryList),
        (status = 400, response = ErrorResponse),
        (status = 404, response = ErrorResponse),
    ),
    extensions(("x-openbatch-extension" = json!(true)))
)]
#[get("/webhook_endpoints/{endpoint_id}/deliveries")]
async fn deliveries(
    path: web::Path<String>,
    query: web::Query<PageParams>,
    state: web::Data<AppState>,
    Project(project): Project,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&path)?;
    // Event ids: an unknown one is found out by the service.
    let page = query.parse(DEFAULT_LIMIT, MAX_LIMIT, |raw| Ok::<_, ()>(raw.to_owned()))?;
    let after = page.after.as_deref();
    let found = service::deliveries(&state.pool, &project, &id, after, page.limit).await?;
    let data = found.items.iter().map(DeliveryObject::new).collect();
    Ok(HttpResponse::Ok().json(WebhookDeliveryList::new(data, found.has_more)))
}

tag!(EndpointTag = "webhook_endpoint");
tag!(DeletedEndpointTag = "webhook_endpoint.deleted");
tag!(DeliveryTag = "webhook_delivery");

/// A webhook endpoint (OpenBatch extension); `secret` only in the answers to create and
/// rotate_secret.
#[derive(Serialize, ToSchema)]
#[schema(as = WebhookEndpoint)]
pub(super) struct EndpointObject {
    id: String,
    #[schema(inline)]
    object: EndpointTag,
    url: String,
    events: Vec<EventType>,
    #[schema(inline)]
    status: EndpointStatus,
    #[schema(required = true)]
    disabled_reason: Option<String>,
    #[schema(required = true)]
    disabled_at: Option<i64>,
    consecutive_failures: i32,
    created_at: i64,
    #[schema(required = true)]
    previous_secret_expires_at: Option<i64>,
    /// Only in the answers to create and rotate_secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String)]
    secret: Option<String>,
}

impl EndpointObject {
    fn new(e: &EndpointRecord) -> Self {
        Self {
            id: e.id.as_str().to_owned(),
            object: EndpointTag::Tag,
            url: e.url.clone(),
            events: e.events.clone(),
            status: e.status,
            disabled_reason: e.disabled_reason.clone(),
            disabled_at: e.disabled_at,
            consecutive_failures: e.consecutive_failures,
            created_at: e.created_at,
            previous_secret_expires_at: e.previous_secret_until,
            secret: e.secret.clone(),
        }
    }
}

list_type!(
    WebhookEndpointList,
    EndpointObject,
    "A page of webhook endpoints."
);

#[derive(Serialize, ToSchema)]
#[schema(as = DeletedWebhookEndpoint)]
pub(super) struct DeletedEndpoint {
    id: String,
    #[schema(inline)]
    object: DeletedEndpointTag,
    deleted: bool,
}

/// One event sent (or being sent) to an endpoint.
#[derive(Serialize, ToSchema)]
#[schema(as = WebhookDelivery)]
pub(super) struct DeliveryObject {
    /// The event id (the webhook-id header).
    id: String,
    #[schema(inline)]
    object: DeliveryTag,
    event_id: String,
    event_type: EventType,
    batch_id: String,
    created_at: i64,
    #[schema(inline)]
    status: DeliveryState,
    attempts: i32,
    #[schema(required = true)]
    last_attempt_at: Option<i64>,
    #[schema(required = true)]
    last_status_code: Option<i32>,
    #[schema(required = true)]
    last_error: Option<String>,
    #[schema(required = true)]
    next_attempt_at: Option<i64>,
    #[schema(required = true)]
    delivered_at: Option<i64>,
}

impl DeliveryObject {
    fn new(d: &DeliveryRecord) -> Self {
        Self {
            id: d.event_id.clone(),
            object: DeliveryTag::Tag,
            event_id: d.event_id.clone(),
            event_type: d.event_type,
            batch_id: d.batch_id.as_str().to_owned(),
            created_at: d.created_at,
            status: d.state,
            attempts: d.attempts,
            last_attempt_at: d.last_attempt_at,
            last_status_code: d.last_status_code,
            last_error: d.last_error.clone(),
            next_attempt_at: d.next_attempt_at,
            delivered_at: d.delivered_at,
        }
    }
}

list_type!(
    WebhookDeliveryList,
    DeliveryObject,
    "A page of webhook deliveries."
);
