use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::HeaderValue;
use actix_web::http::Method;
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
    // A client chooses the method freely (any token of any length): only known ones are
    // recorded as they are, so spans and metric labels come from a closed set.
    let method = known_method(req.method());
    let span = tracing::info_span!(
        "http_request",
        otel.name = method,
        otel.kind = "server",
        http.request.method = method,
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
    let started = std::time::Instant::now();
    let result = next.call(req).instrument(span.clone()).await;
    let mut res = result?;
    let status = res.status();
    span.record("http.response.status_code", i64::from(status.as_u16()));
    // The route template, not the path: ids would make the label set unbounded.
    let route = res
        .request()
        .match_pattern()
        .unwrap_or_else(|| UNMATCHED.to_owned());
    span.record("http.route", route.as_str());
    crate::telemetry::rename(&span, format!("{method} {route}"));
    crate::metrics::get().observe_http(method, &route, status.as_u16(), started.elapsed());
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

/// The route label of a request no route matched (any path a client makes up).
const UNMATCHED: &str = "unmatched";

/// The method as a label: the standard ones by name, anything else `OTHER`.
fn known_method(method: &Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "DELETE" => "DELETE",
        "CONNECT" => "CONNECT",
        "OPTIONS" => "OPTIONS",
        "TRACE" => "TRACE",
        "PATCH" => "PATCH",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_standard_methods_are_labelled_by_name() {
        assert_eq!(known_method(&Method::GET), "GET");
        assert_eq!(known_method(&Method::PATCH), "PATCH");
        let junk = Method::from_bytes("X".repeat(200).as_bytes()).unwrap();
        assert_eq!(known_method(&junk), "OTHER");
        let lower = Method::from_bytes(b"get").unwrap();
        assert_eq!(known_method(&lower), "OTHER");
    }
}
