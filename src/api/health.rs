use std::time::Duration;

use actix_web::{get, web, HttpResponse};
use serde_json::json;

use super::AppState;

/// The process is up.
#[get("/healthz")]
pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({"status": "ok"}))
}

/// Prometheus text format.
#[get("/metrics")]
pub async fn metrics(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(crate::metrics::get().render(&state.pool))
}

/// The process can serve: its database answers.
#[get("/readyz")]
pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let ok = tokio::time::timeout(Duration::from_secs(2), crate::store::ping(&state.pool))
        .await
        .unwrap_or(false);
    if ok {
        HttpResponse::Ok().json(json!({"status": "ok", "database": "ok"}))
    } else {
        HttpResponse::ServiceUnavailable()
            .json(json!({"status": "unavailable", "database": "unreachable"}))
    }
}
