use actix_web::http::header;
use actix_web::http::StatusCode;
use actix_web::ResponseError;

use super::*;

#[test]
fn database_hiccups_are_transient_and_bugs_are_not() {
    for code in [
        "40001", "40P01", "57P01", "57P02", "57P03", "57014", "55P03", "08006", "08001", "53300",
        "53100",
    ] {
        assert!(is_transient_sqlstate(code), "{code}");
    }
    for code in ["23505", "22021", "42P01", "42703", "XX000"] {
        assert!(!is_transient_sqlstate(code), "{code}");
    }
    assert!(is_transient(&sqlx::Error::PoolTimedOut));
    assert!(!is_transient(&sqlx::Error::RowNotFound));
}

#[test]
fn unavailable_and_throttled_answers_carry_retry_after() {
    let res = ApiError::DatabaseUnavailable.error_response();
    assert_eq!(res.headers().get(header::RETRY_AFTER).unwrap(), "1");
    let full = Full::Replica { total: 4 };
    let res = ApiError::TooManyUploads(full).error_response();
    assert_eq!(res.headers().get(header::RETRY_AFTER).unwrap(), "1");
    let res = ApiError::EmptyBody.error_response();
    assert!(!res.headers().contains_key(header::RETRY_AFTER));
}

#[test]
fn a_known_wait_replaces_the_default_retry_after() {
    let e = ApiError::RateLimited {
        per_minute: 10,
        wait_secs: 42,
    };
    assert_eq!(e.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(e.to_json()["error"]["code"], "rate_limit_exceeded");
    assert_eq!(e.should_retry(), None, "the SDKs may retry after the wait");
    let res = e.error_response();
    assert_eq!(res.headers().get(header::RETRY_AFTER).unwrap(), "42");
    assert!(!res.headers().contains_key("x-should-retry"));
}

#[test]
fn a_limit_no_retry_can_lift_still_says_so() {
    let res = ApiError::BatchLimit { limit: 3 }.error_response();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(res.headers().get("x-should-retry").unwrap(), "false");
    assert_eq!(res.headers().get(header::RETRY_AFTER).unwrap(), "1");
}

#[test]
fn unauthorized_is_an_invalid_key_not_worth_retrying() {
    let e = ApiError::IncorrectApiKey {
        masked: "sk-****".into(),
    };
    assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
    let res = e.error_response();
    assert_eq!(res.headers().get("x-should-retry").unwrap(), "false");
    assert!(!res.headers().contains_key(header::RETRY_AFTER));
    let body = e.to_json();
    assert_eq!(body["error"]["type"], "invalid_request_error");
    assert_eq!(body["error"]["code"], "invalid_api_key");
    assert_eq!(body["error"]["param"], serde_json::Value::Null);
    assert_eq!(
        body["error"]["message"],
        "Incorrect API key provided: sk-****."
    );
}

#[test]
fn the_refusal_of_a_slot_says_which_limit_was_reached() {
    let own = ApiError::TooManyUploads(Full::Project { share: 2, total: 4 });
    let message = own.to_json()["error"]["message"].clone();
    assert!(
        message
            .as_str()
            .unwrap()
            .contains("This project already has 2 uploads"),
        "{message}"
    );
    assert_eq!(own.to_json()["error"]["code"], "too_many_uploads");
    assert_eq!(own.status().as_u16(), 429);
    let all = ApiError::TooManyUploads(Full::Replica { total: 4 });
    let message = all.to_json()["error"]["message"].clone();
    assert!(
        message
            .as_str()
            .unwrap()
            .contains("This server already has 4 uploads"),
        "{message}"
    );
}
