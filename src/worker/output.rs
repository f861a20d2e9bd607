//! The lines of a batch's output and error files, and the usage they add up to.

use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::store::requests::LineResult;

/// Which file a finished line belongs in: successes in the output file; upstream errors and
/// lines that never got a response in the error file.
pub fn is_success(r: &LineResult) -> bool {
    r.status_code.is_some_and(|s| (200..300).contains(&s))
}

/// A stable id per line, so a finalization that is redone after a crash writes the same file.
fn line_id(batch_id: &str, line: i32) -> String {
    let digest = Sha256::digest(format!("{batch_id}/{line}").as_bytes());
    format!("batch_req_{}", hex::encode(&digest[..16]))
}

pub fn render(batch_id: &str, r: &LineResult) -> String {
    let response = r.status_code.map(|status| {
        json!({
            "status_code": status,
            "request_id": r.request_id,
            "body": r.response.clone().unwrap_or(Value::Null),
        })
    });
    let error = match (&r.error_code, &response) {
        (Some(code), _) => json!({"code": code, "message": r.error_message}),
        (None, Some(_)) => Value::Null,
        (None, None) => {
            json!({"code": "internal_error", "message": "The request produced no result."})
        }
    };
    let mut line = json!({
        "id": line_id(batch_id, r.line),
        "custom_id": r.custom_id,
        "response": response,
        "error": error,
    })
    .to_string();
    line.push('\n');
    line
}

/// Token usage summed over successful responses; both the chat/completions names
/// (`prompt_tokens`) and the responses names (`input_tokens`) are understood.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: i64,
    pub cached_tokens: i64,
    pub output_tokens: i64,
    pub reasoning_tokens: i64,
    pub total_tokens: i64,
}

impl Usage {
    pub fn add(&mut self, body: &Value) {
        let Some(u) = body.get("usage") else { return };
        let n = |v: Option<&Value>| v.and_then(Value::as_i64).unwrap_or(0);
        let input = n(u.get("input_tokens").or_else(|| u.get("prompt_tokens")));
        let output = n(u
            .get("output_tokens")
            .or_else(|| u.get("completion_tokens")));
        self.input_tokens += input;
        self.output_tokens += output;
        self.cached_tokens += n(u
            .pointer("/input_tokens_details/cached_tokens")
            .or_else(|| u.pointer("/prompt_tokens_details/cached_tokens")));
        self.reasoning_tokens += n(u
            .pointer("/output_tokens_details/reasoning_tokens")
            .or_else(|| u.pointer("/completion_tokens_details/reasoning_tokens")));
        self.total_tokens += u
            .get("total_tokens")
            .and_then(Value::as_i64)
            .unwrap_or(input + output);
    }

    pub fn to_json(self) -> Value {
        json!({
            "input_tokens": self.input_tokens,
            "input_tokens_details": {"cached_tokens": self.cached_tokens},
            "output_tokens": self.output_tokens,
            "output_tokens_details": {"reasoning_tokens": self.reasoning_tokens},
            "total_tokens": self.total_tokens,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn result(status: Option<i32>, error: Option<&str>) -> LineResult {
        LineResult {
            line: 3,
            custom_id: "c".into(),
            status_code: status,
            response: status.map(|_| json!({"ok": true})),
            request_id: Some("req_1".into()),
            error_code: error.map(str::to_owned),
            error_message: error.map(|_| "went wrong".to_owned()),
        }
    }

    #[test]
    fn success_lines_carry_the_response_body_as_an_object() {
        let r = result(Some(200), None);
        assert!(is_success(&r));
        let v: Value = serde_json::from_str(&render("batch_x", &r)).unwrap();
        assert_eq!(v["custom_id"], "c");
        assert_eq!(v["response"]["status_code"], 200);
        assert_eq!(v["response"]["body"], json!({"ok": true}));
        assert_eq!(v["error"], Value::Null);
        assert!(v["id"].as_str().unwrap().starts_with("batch_req_"));
        assert_eq!(render("batch_x", &r), render("batch_x", &r), "stable ids");
    }

    #[test]
    fn failures_without_a_response_carry_an_error() {
        let r = result(None, Some("batch_expired"));
        assert!(!is_success(&r));
        let v: Value = serde_json::from_str(&render("b", &r)).unwrap();
        assert_eq!(v["response"], Value::Null);
        assert_eq!(v["error"]["code"], "batch_expired");
        let upstream_404 = result(Some(404), None);
        assert!(!is_success(&upstream_404));
        let v: Value = serde_json::from_str(&render("b", &upstream_404)).unwrap();
        assert_eq!(v["response"]["status_code"], 404);
        assert_eq!(v["error"], Value::Null);
    }

    #[test]
    fn usage_adds_both_naming_schemes() {
        let mut u = Usage::default();
        u.add(
            &json!({"usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7,
                                "prompt_tokens_details": {"cached_tokens": 1}}}),
        );
        u.add(&json!({"usage": {"input_tokens": 10, "output_tokens": 5,
                                "output_tokens_details": {"reasoning_tokens": 2}}}));
        u.add(&json!({"data": []}));
        assert_eq!(
            u,
            Usage {
                input_tokens: 13,
                cached_tokens: 1,
                output_tokens: 9,
                reasoning_tokens: 2,
                total_tokens: 22
            }
        );
    }
}
