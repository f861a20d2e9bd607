//! What an attempt's answer means for its line (`Outcome`) and for its endpoint (`Verdict`).

use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::value::RawValue;

use super::client::SendError;
use super::pool::Verdict;
use super::{retry, Outcome, RetryPolicy};

/// An answer, whatever its status: its body kept as one line of JSON, a backpressure status
/// read as the endpoint being overloaded.
pub(super) fn read(
    status: u16,
    headers: &HeaderMap,
    bytes: &[u8],
) -> (Outcome, Verdict, Option<Duration>) {
    let retry_after = retry::retry_after(headers);
    let verdict = if RetryPolicy::is_backpressure(status) {
        Verdict::Overloaded(retry_after)
    } else {
        Verdict::Answered
    };
    let request_id = header_str(headers, "x-request-id");
    let body = match serde_json::from_slice::<Box<RawValue>>(bytes) {
        // Whatever its formatting: the stored results and the result files are one line
        // per result.
        Ok(v) if v.get().starts_with('{') => crate::jsonl::compact(v),
        _ if (200..300).contains(&status) => {
            return (
                Outcome::Failure {
                    code: "invalid_upstream_response",
                    message: format!(
                        "The upstream answered {status} with a body that is not a JSON object."
                    ),
                },
                verdict,
                None,
            )
        }
        // Keep a non-JSON error body readable in the error file, but short: an HTML error
        // page or a proxy's dump has no business filling tenants' files.
        _ => serde_json::value::to_raw_value(
            &serde_json::json!({"error": {"message": non_json_message(bytes)}}),
        )
        .expect("a JSON value serialises"),
    };
    (
        Outcome::Response {
            status,
            request_id,
            body,
        },
        verdict,
        retry_after,
    )
}

/// No answer to keep: the line fails, and the endpoint is judged by how the call failed.
pub(super) fn failed(e: SendError, limit: usize) -> (Outcome, Verdict, Option<Duration>) {
    let verdict = match e {
        SendError::TooLarge => return (too_large(limit), Verdict::Answered, None),
        SendError::Connect(_) => Verdict::Refused,
        SendError::Timeout => Verdict::TimedOut,
        _ => Verdict::Dropped,
    };
    (transport_failure(&e), verdict, None)
}

pub(super) const RESPONSE_TOO_LARGE: &str = "response_too_large";

fn too_large(limit: usize) -> Outcome {
    Outcome::Failure {
        code: RESPONSE_TOO_LARGE,
        message: format!(
            "The upstream's response was larger than the limit of {limit} bytes; it was not kept."
        ),
    }
}

fn header_str(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// At most this many characters of a non-JSON error body reach the error file.
pub(super) const NON_JSON_BODY_CHARS: usize = 512;

pub(super) fn non_json_message(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let mut shown: String = text.chars().take(NON_JSON_BODY_CHARS).collect();
    if shown.len() < text.len() {
        shown.push_str(&format!("… ({} bytes in all)", bytes.len()));
    }
    shown
}

/// The error file is read by tenants: it gets a generic message, never the upstream's URL or
/// address (the HTTP stack's messages name them). The detail goes to the server's log.
pub(super) fn transport_failure(e: &SendError) -> Outcome {
    let timeout = matches!(e, SendError::Timeout);
    match e {
        SendError::Transport(e) | SendError::Connect(e) => {
            tracing::warn!(error = error_chain(e.as_ref()), "upstream call failed")
        }
        _ => tracing::warn!(timeout, "upstream call failed"),
    }
    if timeout {
        Outcome::Failure {
            code: "upstream_timeout",
            message: "The upstream did not answer in time.".to_owned(),
        }
    } else {
        Outcome::Failure {
            code: "upstream_unreachable",
            message: "Could not get a response from the upstream.".to_owned(),
        }
    }
}

pub(super) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        cur = s.source();
    }
    msg
}
