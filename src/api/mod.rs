//! Thin HTTP handlers, one module per resource.

mod auth;
mod batch_events;
mod batch_results;
mod batch_retry;
mod batches;
mod body;
mod console;
mod files;
mod health;
mod openapi;
mod request_id;

use std::future::{ready, Ready};

use actix_web::{web, FromRequest, HttpMessage, HttpRequest};
use sqlx::PgPool;

use crate::config::LimitSettings;
use crate::domain::ProjectId;
use crate::error::ApiError;

pub use request_id::{middleware as request_id_middleware, RequestId};

pub use auth::{Auth, RateLimiter};

/// What every handler may use.
pub struct AppState {
    pub pool: PgPool,
    pub limits: LimitSettings,
    pub auth: Auth,
    pub rate: RateLimiter,
    /// Test-only shortening of the 24-hour completion window.
    pub expiry_override_secs: Option<i64>,
    /// This replica's batch worker, woken when a batch is created here so that validation
    /// starts at once (other replicas find it at their next poll).
    pub wake_worker: Option<std::sync::Arc<tokio::sync::Notify>>,
    /// `GET /v1/batches/{id}/events` streams open on this replica (capped by
    /// `limits.max_event_streams`).
    pub event_streams: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

pub fn routes(cfg: &mut web::ServiceConfig) {
    cfg.service(health::healthz)
        .service(health::readyz)
        .service(health::metrics)
        .service(openapi::openapi)
        .configure(console::routes)
        .service(
            web::scope("/v1")
                .wrap(actix_web::middleware::from_fn(auth::middleware))
                .configure(files::routes)
                .configure(batches::routes)
                .configure(batch_results::routes)
                .configure(batch_events::routes)
                .configure(batch_retry::routes),
        );
}

/// The project (tenant) a request acts for, as resolved by the authentication middleware.
pub struct Project(pub ProjectId);

impl FromRequest for Project {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _payload: &mut actix_web::dev::Payload) -> Self::Future {
        let identity = req
            .extensions()
            .get::<auth::Identity>()
            .map(|i| i.project.clone());
        ready(identity.map(Project).ok_or_else(|| {
            tracing::error!("a /v1 handler ran without the authentication middleware");
            ApiError::internal()
        }))
    }
}

/// An OpenAI list page. `has_more` is always present: the Python SDK keeps paging while it is
/// missing.
fn list_page(data: Vec<serde_json::Value>, has_more: bool) -> serde_json::Value {
    let id = |o: Option<&serde_json::Value>| o.and_then(|v| v.get("id")).cloned();
    serde_json::json!({
        "object": "list",
        "first_id": id(data.first()),
        "last_id": id(data.last()),
        "has_more": has_more,
        "data": data,
    })
}

/// A resource that is missing, or belongs to another project (indistinguishable by design).
fn no_such(kind: &str, id: &str, param: &str) -> ApiError {
    ApiError::not_found(format!("No such {kind} object: {id}")).with_param(param)
}
