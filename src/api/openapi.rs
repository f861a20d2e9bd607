use actix_web::{get, HttpResponse};

/// The OpenAPI description of every route this server implements (schemathesis runs against
/// it in the test suite, so it cannot drift from the code unnoticed).
#[get("/openapi.json")]
pub async fn openapi() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("application/json")
        .body(include_str!("openapi.json"))
}
