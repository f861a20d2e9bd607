//! Thin HTTP handlers, one module per resource.

/// A member whose value is constant, such as `"object": "file"`: serialised as `$value` and
/// documented as a one-value enum.
macro_rules! tag {
    ($name:ident = $value:literal) => {
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name {
            Tag,
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str($value)
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                $crate::domain::string_enum([$value]).into()
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

mod auth;
mod batch_events;
mod batch_object;
mod batch_results;
mod batch_retry;
mod batches;
mod body;
mod console;
mod files;
mod health;
mod host_guard;
mod openapi;
mod pagination;
mod project_keys;
mod projects;
mod request_id;
mod service_accounts;
mod slots;
mod spool;
mod uploads;
mod usage;
mod webhooks;

use std::future::{ready, Ready};

use actix_web::{web, FromRequest, HttpMessage, HttpRequest};
use sqlx::PgPool;
use utoipa_actix_web::{scope, service_config::ServiceConfig};

use crate::config::LimitSettings;
use crate::domain::{ApiKeyId, ProjectId};
use crate::error::ApiError;
use crate::services::keys::KeyScope;

pub use request_id::{middleware as request_id_middleware, RequestId};

pub use auth::{Auth, RateLimiter};
pub use host_guard::{middleware as host_guard_middleware, HostGuard};
pub use slots::FairSlots;

/// What every handler may use.
pub struct AppState {
    pub pool: PgPool,
    /// File content, wherever `storage.backend` keeps it.
    pub content: crate::services::Content,
    /// Batch creations, written to the database together (`services::batches::create_queue`).
    pub creates: crate::services::batches::create_queue::CreateQueue,
    pub limits: LimitSettings,
    pub auth: Auth,
    pub rate: RateLimiter,
    /// Test-only shortening of the 24-hour completion window.
    pub expiry_override_secs: Option<i64>,
    /// This replica's batch worker, woken when a batch is created here so that validation
    /// starts at once (other replicas find it at their next poll).
    pub wake_worker: Option<std::sync::Arc<tokio::sync::Notify>>,
    /// Uploads this replica is receiving (`limits.max_concurrent_uploads`, and
    /// `..._per_project` of them per project).
    pub uploads: FairSlots,
    pub webhooks: crate::config::WebhookSettings,
    /// `GET /v1/batches/{id}/events` streams open on this replica (`limits.max_event_streams`,
    /// and `..._per_project` of them per project).
    pub event_streams: FairSlots,
    /// `GET /v1/batches/{id}/results` responses being served by this replica
    /// (`limits.max_live_readers`, and `..._per_project` of them per project).
    pub live_readers: FairSlots,
    /// Batch status changes as announced (`NOTIFY`), which wake the event streams.
    pub batch_status: crate::notify::Feed,
    /// The `completion_window`s a batch may ask for (`batches.completion_windows`).
    pub completion_windows: Vec<crate::domain::CompletionWindow>,
}

/// Every route but `/metrics`. A handler is registered once, here or in its module's `routes`:
/// its route attribute (`#[get("/files")]`) and `#[utoipa::path]` above it also make its
/// operation in the OpenAPI document, which `openapi` builds by registering the same routes.
pub fn routes(cfg: &mut web::ServiceConfig) {
    register(&mut ServiceConfig::new(cfg));
}

fn register(cfg: &mut ServiceConfig) {
    cfg.service(health::healthz)
        .service(health::readyz)
        .service(openapi::document)
        // Static pages, not the API: served, not documented.
        .map(|cfg| cfg.configure(console::routes))
        .service(
            scope("/v1")
                // A documented path with another method is a 405, as a resource answers it.
                .default_service(web::to(openapi::unrouted))
                .wrap(actix_web::middleware::from_fn(auth::middleware))
                .configure(files::routes)
                .configure(uploads::routes)
                .configure(batches::routes)
                .configure(webhooks::routes)
                .configure(batch_results::routes)
                .configure(batch_events::routes)
                .configure(batch_retry::routes)
                .configure(projects::routes)
                .configure(service_accounts::routes)
                .configure(project_keys::routes)
                .configure(usage::routes),
        );
}

/// `/metrics`: on the public port, or alone on `server.metrics_address` when that is set.
pub fn metrics_routes(cfg: &mut web::ServiceConfig) {
    register_metrics(&mut ServiceConfig::new(cfg));
}

fn register_metrics(cfg: &mut ServiceConfig) {
    cfg.service(health::metrics);
}

/// The project (tenant) a request acts for, as resolved by the authentication middleware.
pub struct Project(pub ProjectId);

impl FromRequest for Project {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _payload: &mut actix_web::dev::Payload) -> Self::Future {
        let project = match req.extensions().get::<auth::Identity>().map(|i| &i.scope) {
            Some(KeyScope::Project(project)) => Ok(Project(project.clone())),
            // The middleware lets an admin key reach only the Admin API, whose handlers take
            // no project.
            Some(KeyScope::Admin) => Err(ApiError::ProjectKeyRequired),
            None => {
                tracing::error!("a /v1 handler ran without the authentication middleware");
                Err(ApiError::Internal)
            }
        };
        ready(project)
    }
}

/// The key a request came with, by its public id (none with authentication off).
pub struct UsedKey(pub Option<ApiKeyId>);

impl FromRequest for UsedKey {
    type Error = ApiError;
    type Future = Ready<Result<Self, ApiError>>;

    fn from_request(req: &HttpRequest, _payload: &mut actix_web::dev::Payload) -> Self::Future {
        let key = (req.extensions().get::<auth::Identity>())
            .and_then(|i| i.key_prefix.as_deref().map(ApiKeyId::of_prefix));
        ready(Ok(UsedKey(key)))
    }
}

/// Puts a path's id on the request's span; only an id that parsed, since a raw path segment
/// may hold a decoded newline, which would forge lines in text logs.
fn record_path_id(field: &'static str, id: &str) {
    tracing::Span::current().record(field, id);
}
