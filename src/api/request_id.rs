use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::HeaderValue;
use actix_web::middleware::Next;
use actix_web::HttpMessage;
use tracing::Instrument;

/// The id sent back as `x-request-id` (the SDKs expose it as `request_id`) and logged with
/// everything the request does.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = format!("req_{}", uuid::Uuid::new_v4().simple());
    req.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!(
        "http",
        request_id = %id,
        method = %req.method(),
        path = %req.path(),
        status = tracing::field::Empty,
    );
    let result = next.call(req).instrument(span.clone()).await;
    let mut res = result?;
    let status = res.status();
    span.record("status", status.as_u16());
    if status.is_server_error() {
        tracing::warn!(parent: &span, "request failed");
    } else {
        tracing::debug!(parent: &span, "request done");
    }
    res.headers_mut().insert(
        "x-request-id".try_into().expect("static header name"),
        HeaderValue::from_str(&id).expect("hex id"),
    );
    Ok(res)
}
