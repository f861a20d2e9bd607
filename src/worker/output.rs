//! The lines of a batch's output and error files, and the usage they add up to.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::upstream::Outcome;

/// A stable id per line, so a finalization that is redone after a crash writes the same file.
pub fn line_id(batch_id: &str, line: i32) -> String {
    let digest = Sha256::digest(format!("{batch_id}/{line}").as_bytes());
    format!("batch_req_{}", hex::encode(&digest[..16]))
}

#[derive(Serialize)]
struct FileLine<'a> {
    id: String,
    custom_id: &'a str,
    response: Option<Answer<'a>>,
    error: Option<Failure<'a>>,
}

#[derive(Serialize)]
struct Answer<'a> {
    status_code: u16,
    request_id: Option<&'a str>,
    body: &'a RawValue,
}

#[derive(Serialize)]
struct Failure<'a> {
    code: &'a str,
    message: &'a str,
}

/// The output- or error-file line (without its newline) for an executed line. Successes go to
/// the output file; upstream errors and lines that never got a response to the error file.
/// The upstream's body is copied as it came, not parsed and rebuilt.
pub fn render(batch_id: &str, line: i32, custom_id: &str, outcome: &Outcome) -> String {
    let (response, error) = match outcome {
        Outcome::Response {
            status,
            request_id,
            body,
        } => (
            Some(Answer {
                status_code: *status,
                request_id: request_id.as_deref(),
                body,
            }),
            None,
        ),
        Outcome::Failure { code, message } => (None, Some(Failure { code, message })),
    };
    serde_json::to_string(&FileLine {
        id: line_id(batch_id, line),
        custom_id,
        response,
        error,
    })
    .expect("plain data serialises")
}

/// One finished line inside a stored result group: `"<line>\t<o|e>\t<file line>\n"`, `o` when
/// it belongs in the output file. Rendered JSON never holds a raw newline or tab before its
/// first character, so the fields split unambiguously.
pub fn encode(group: &mut String, line: i32, success: bool, file_line: &str) {
    use std::fmt::Write;
    let kind = if success { 'o' } else { 'e' };
    let _ = writeln!(group, "{line}\t{kind}\t{file_line}");
}

/// A line decoded from a stored result group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored<'a> {
    pub line: i32,
    pub success: bool,
    pub file_line: &'a str,
}

/// The lines of a stored result group; a malformed entry (which only a bug could write) is an
/// error, not a silently dropped line.
pub fn decode(group: &str) -> impl Iterator<Item = anyhow::Result<Stored<'_>>> {
    group.lines().map(|entry| {
        let mut fields = entry.splitn(3, '\t');
        let (Some(line), Some(kind), Some(file_line)) =
            (fields.next(), fields.next(), fields.next())
        else {
            anyhow::bail!("malformed result entry");
        };
        Ok(Stored {
            line: line.parse()?,
            success: match kind {
                "o" => true,
                "e" => false,
                other => anyhow::bail!("malformed result kind {other:?}"),
            },
            file_line,
        })
    })
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
    /// Adds the `usage` of a response body, reading only that member.
    pub fn add(&mut self, body: &RawValue) {
        #[derive(Deserialize)]
        struct WithUsage {
            usage: Option<Value>,
        }
        if let Ok(WithUsage { usage: Some(u) }) = serde_json::from_str(body.get()) {
            self.add_usage(&u);
        }
    }

    fn add_usage(&mut self, u: &Value) {
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

    /// Input, cached, output, reasoning and total tokens, as the chunks store them.
    pub fn to_array(self) -> [i64; 5] {
        [
            self.input_tokens,
            self.cached_tokens,
            self.output_tokens,
            self.reasoning_tokens,
            self.total_tokens,
        ]
    }

    pub fn from_array([input, cached, output, reasoning, total]: [i64; 5]) -> Self {
        Self {
            input_tokens: input,
            cached_tokens: cached,
            output_tokens: output,
            reasoning_tokens: reasoning,
            total_tokens: total,
        }
    }

    pub fn merge(&mut self, other: Usage) {
        self.input_tokens += other.input_tokens;
        self.cached_tokens += other.cached_tokens;
        self.output_tokens += other.output_tokens;
        self.reasoning_tokens += other.reasoning_tokens;
        self.total_tokens += other.total_tokens;
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

    fn response(status: u16) -> Outcome {
        Outcome::Response {
            status,
            request_id: Some("req_1".into()),
            body: RawValue::from_string(r#"{"ok": true, "usage": {"total_tokens": 3}}"#.to_owned())
                .unwrap(),
        }
    }

    #[test]
    fn success_lines_carry_the_response_body_as_an_object() {
        let r = response(200);
        assert!(r.is_success());
        let v: Value = serde_json::from_str(&render("batch_x", 3, "c", &r)).unwrap();
        assert_eq!(v["custom_id"], "c");
        assert_eq!(v["response"]["status_code"], 200);
        assert_eq!(v["response"]["request_id"], "req_1");
        assert_eq!(
            v["response"]["body"],
            json!({"ok": true, "usage": {"total_tokens": 3}})
        );
        let mut usage = Usage::default();
        if let Outcome::Response { body, .. } = &r {
            usage.add(body);
        }
        assert_eq!(usage.total_tokens, 3);
        assert_eq!(v["error"], Value::Null);
        assert!(v["id"].as_str().unwrap().starts_with("batch_req_"));
        assert_eq!(
            render("batch_x", 3, "c", &r),
            render("batch_x", 3, "c", &r),
            "stable ids"
        );
        assert_ne!(render("batch_x", 3, "c", &r), render("batch_x", 4, "c", &r));
    }

    #[test]
    fn failures_without_a_response_carry_an_error() {
        let f = Outcome::Failure {
            code: "batch_expired",
            message: "late".into(),
        };
        assert!(!f.is_success());
        let v: Value = serde_json::from_str(&render("b", 1, "c", &f)).unwrap();
        assert_eq!(v["response"], Value::Null);
        assert_eq!(v["error"]["code"], "batch_expired");
        let upstream_404 = response(404);
        assert!(!upstream_404.is_success());
        let v: Value = serde_json::from_str(&render("b", 1, "c", &upstream_404)).unwrap();
        assert_eq!(v["response"]["status_code"], 404);
        assert_eq!(v["error"], Value::Null);
    }

    #[test]
    fn groups_round_trip_even_with_tabs_and_newlines_in_the_content() {
        let tricky = Outcome::Failure {
            code: "x",
            message: "a\tb\nc".into(),
        };
        let mut group = String::new();
        let a = render("b", 7, "id\twith tab", &tricky);
        let b = render("b", 2, "plain", &response(200));
        encode(&mut group, 7, false, &a);
        encode(&mut group, 2, true, &b);
        let decoded: Vec<Stored> = decode(&group).map(Result::unwrap).collect();
        assert_eq!(
            decoded,
            vec![
                Stored {
                    line: 7,
                    success: false,
                    file_line: &a
                },
                Stored {
                    line: 2,
                    success: true,
                    file_line: &b
                },
            ]
        );
        assert!(decode("nonsense").next().unwrap().is_err());
        assert!(decode("1\tx\t{}").next().unwrap().is_err());
    }

    #[test]
    fn usage_adds_both_naming_schemes() {
        let raw = |v: Value| serde_json::value::to_raw_value(&v).unwrap();
        let mut u = Usage::default();
        u.add(&raw(
            json!({"usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7,
                             "prompt_tokens_details": {"cached_tokens": 1}}}),
        ));
        u.add(&raw(
            json!({"usage": {"input_tokens": 10, "output_tokens": 5,
                                     "output_tokens_details": {"reasoning_tokens": 2}}}),
        ));
        u.add(&raw(json!({"data": []})));
        let expected = Usage {
            input_tokens: 13,
            cached_tokens: 1,
            output_tokens: 9,
            reasoning_tokens: 2,
            total_tokens: 22,
        };
        assert_eq!(u, expected);
        assert_eq!(Usage::from_array(u.to_array()), u);
        let mut twice = u;
        twice.merge(u);
        assert_eq!(twice.total_tokens, 44);
    }
}
