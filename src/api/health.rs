use std::time::Duration;

use actix_web::{get, web, HttpResponse};
use serde::Serialize;
use utoipa::ToSchema;

use super::AppState;

/// The answer of `/healthz` and `/readyz`.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// `ok`, or `unavailable` when the database does not answer.
    status: &'static str,
    /// `/readyz` only: `ok` or `unreachable`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String)]
    database: Option<&'static str>,
}

/// The process is up.
#[utoipa::path(
    operation_id = "healthz",
    tag = "health",
    responses((status = 200, description = "The process is up", body = Health))
)]
#[get("/healthz")]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(Health {
        status: "ok",
        database: None,
    })
}

/// Prometheus text format.
#[utoipa::path(
    operation_id = "metrics",
    tag = "health",
    description = "Served on the API port unless server.metrics_address is set, in which case it \
                   is served only on that address. Database gauges are cached (refreshed every \
                   server.metrics_refresh_secs by a background task); a scrape runs no query.",
    responses((
        status = 200,
        description = "Prometheus text format",
        body = String,
        content_type = "text/plain"
    ))
)]
#[get("/metrics")]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(crate::metrics::get().render(&state.pool))
}

/// The process can serve: its database answers.
#[utoipa::path(
    operation_id = "readyz",
    tag = "health",
    responses(
        (status = 200, description = "The database answers", body = Health),
        (status = 503, description = "The database does not answer", body = Health),
    )
)]
#[get("/readyz")]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let ok = crate::services::database_answers(&state.pool, Duration::from_secs(2)).await;
    if ok {
        HttpResponse::Ok().json(Health {
            status: "ok",
            database: Some("ok"),
        })
    } else {
        HttpResponse::ServiceUnavailable().json(Health {
            status: "unavailable",
            database: Some("unreachable"),
        })
    }
}
