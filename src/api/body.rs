//! Reading request bodies ourselves (rather than with `web::Json`) so that every way a body
//! can be wrong (type, size, syntax, shape) ends in one of our errors with a useful `param`.

use actix_web::http::header;
use actix_web::{web, HttpRequest};
use futures_util::StreamExt;
use serde::de::DeserializeOwned;

use crate::error::ApiError;

pub fn is_json(req: &HttpRequest) -> bool {
    content_type(req).is_some_and(|ct| {
        let essence = ct.split(';').next().unwrap_or("").trim();
        essence.eq_ignore_ascii_case("application/json")
    })
}

pub fn content_type(req: &HttpRequest) -> Option<&str> {
    req.headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
}

/// Reads at most `limit` bytes; more is a 413, without reading the rest.
pub async fn read_limited(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<web::BytesMut, ApiError> {
    let too_large = || ApiError::BodyTooLarge { limit };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let mut body = web::BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| ApiError::BodyUnreadable {
            detail: e.to_string(),
        })?;
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// A JSON object body. Type errors name the offending field as `param`.
pub async fn json<T: DeserializeOwned>(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
) -> Result<T, ApiError> {
    if !is_json(req) {
        return Err(not_json(req));
    }
    let body = read_limited(req, payload, limit).await?;
    parse(&body)
}

/// Like `json`, for a body that may be left out: none at all (any content type) is
/// `T::default()`.
pub async fn optional_json<T: DeserializeOwned + Default>(
    req: &HttpRequest,
    payload: web::Payload,
    limit: usize,
) -> Result<T, ApiError> {
    let body = read_limited(req, payload, limit).await?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    if !is_json(req) {
        return Err(not_json(req));
    }
    parse(&body)
}

pub fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::EmptyBody);
    }
    // serde would accept an array for a struct; the API takes objects only.
    let first = body.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                Err(e) if !e.is_data() => invalid_json(&e),
                _ => ApiError::BodyNotObject,
            },
        );
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(de).map_err(describe)?;
    Ok(value)
}

fn describe(e: serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let path = e.path().to_string();
    let inner = e.into_inner();
    if inner.is_data() {
        let msg = strip_position(&inner.to_string());
        if path == "." {
            ApiError::InvalidBody { detail: msg }
        } else {
            ApiError::InvalidFieldType { path, detail: msg }
        }
    } else {
        invalid_json(&inner)
    }
}

fn invalid_json(e: &serde_json::Error) -> ApiError {
    ApiError::InvalidJson {
        detail: e.to_string(),
    }
}

fn not_json(req: &HttpRequest) -> ApiError {
    ApiError::NotJson {
        content_type: content_type(req).map(str::to_owned),
    }
}

/// serde_json appends " at line 1 column 20"; the position is noise once the path is known.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_owned(),
        None => msg.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[allow(dead_code)]
    #[derive(Deserialize, Debug)]
    struct Req {
        endpoint: Option<String>,
        metadata: Option<std::collections::HashMap<String, String>>,
    }

    #[test]
    fn syntax_errors_are_invalid_json() {
        let err = parse::<Req>(b"{\"endpoint\": ").unwrap_err();
        assert_eq!(err.code(), Some("invalid_json"));
        assert_eq!(err.status().as_u16(), 400);
        assert!(parse::<Req>(b"  ").is_err());
        assert!(parse::<Req>(b"{\"endpoint\": \"\xff\"}").is_err());
    }

    #[test]
    fn type_errors_name_the_field() {
        let err = parse::<Req>(br#"{"endpoint": 5}"#).unwrap_err();
        assert_eq!(err.param().as_deref(), Some("endpoint"));
        assert_eq!(err.code(), Some("invalid_type"));
        let err = parse::<Req>(br#"{"metadata": {"k": 1}}"#).unwrap_err();
        assert_eq!(err.param().as_deref(), Some("metadata.k"));
        let err = parse::<Req>(b"[1]").unwrap_err();
        assert_eq!(err.param(), None);
        assert_eq!(err.code(), Some("invalid_type"));
    }
}

/// Bounded fuzzing of body parsing: any bytes give a value or a 4xx, never a panic or a 5xx.
#[cfg(test)]
mod fuzz {
    use super::*;
    use proptest::prelude::*;

    #[allow(dead_code)]
    #[derive(serde::Deserialize, Debug)]
    struct Req {
        input_file_id: Option<String>,
        metadata: Option<serde_json::Value>,
        idempotency_key: Option<String>,
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1024))]

        #[test]
        fn any_body_is_a_value_or_a_client_error(raw in prop::collection::vec(any::<u8>(), 0..200)) {
            if let Err(e) = parse::<Req>(&raw) {
                prop_assert!(e.status().is_client_error());
            }
        }

        #[test]
        fn json_shaped_bodies_too(raw in r#"\{("[a-z_]{1,14}": ?(null|true|1|-2.5e3|"[^"\\]{0,8}"|\[\]|\{\}),? ?){0,4}\}"#) {
            if let Err(e) = parse::<Req>(raw.as_bytes()) {
                prop_assert!(e.status().is_client_error());
            }
        }
    }
}
