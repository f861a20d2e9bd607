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
        "http_request",
        otel.name = %req.method(),
        otel.kind = "server",
        http.request.method = %req.method(),
        url.path = %req.path(),
        http.route = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        request_id = %id,
        trace_id = tracing::field::Empty,
        batch_id = tracing::field::Empty,
        file_id = tracing::field::Empty,
    );
    crate::telemetry::continue_trace(&span, req.headers());
    if let Some(tp) = crate::telemetry::traceparent(&span) {
        if let Some(trace_id) = tp.split('-').nth(1) {
            span.record("trace_id", trace_id);
        }
    }
    let method = req.method().to_string();
    let started = std::time::Instant::now();
    let result = next.call(req).instrument(span.clone()).await;
    let mut res = result?;
    let status = res.status();
    span.record("http.response.status_code", i64::from(status.as_u16()));
    // The route template, not the path: ids would make the label set unbounded.
    let route = res
        .request()
        .match_pattern()
        .unwrap_or_else(|| "unmatched".to_owned());
    span.record("http.route", route.as_str());
    crate::telemetry::rename(&span, format!("{method} {route}"));
    crate::metrics::get().observe_http(&method, &route, status.as_u16(), started.elapsed());
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
