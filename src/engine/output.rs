//! The lines of a batch's output and error files, and the usage they add up to.

use std::marker::PhantomData;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use utoipa::ToSchema;

use crate::engine::upstream::Outcome;
use crate::jsonl::group::line_id;

/// One line of a batch's output or error file, as OpenAI writes it: `response` for an answer
/// (any status), `error` for a line that never got one.
#[derive(Serialize, ToSchema)]
pub struct FileLine<'a> {
    /// `batch_req_…`, unique per line of the batch.
    id: String,
    custom_id: &'a str,
    #[schema(inline, required = true)]
    response: Option<Answer<'a>>,
    #[schema(inline, required = true)]
    error: Option<Failure<'a>>,
}

#[derive(Serialize, ToSchema)]
struct Answer<'a> {
    status_code: u16,
    /// The upstream's `x-request-id`, when it sent one.
    #[schema(required = true)]
    request_id: Option<&'a str>,
    /// The upstream's response body, as it came.
    #[schema(value_type = Object)]
    body: &'a RawValue,
}

#[derive(Serialize, ToSchema)]
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
    // Sized for the body and the envelope at once, rather than grown (and copied) in doublings.
    let body_len = match outcome {
        Outcome::Response { body, .. } => body.get().len(),
        Outcome::Failure { message, .. } => message.len(),
    };
    let mut out = Vec::with_capacity(body_len + custom_id.len() + 160);
    serde_json::to_writer(
        &mut out,
        &FileLine {
            id: line_id(batch_id, line),
            custom_id,
            response,
            error,
        },
    )
    .expect("plain data serialises");
    String::from_utf8(out).expect("serde_json writes UTF-8")
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
    /// Adds the `usage` of a response body, reading only that member, into typed fields: no
    /// tree is built (a map with a key string per member cost more than the rest of a line's
    /// handling of its response). A member of the wrong type counts as absent.
    pub fn add(&mut self, body: &RawValue) {
        #[derive(Deserialize)]
        struct WithUsage {
            #[serde(default)]
            usage: Lenient<Counts>,
        }
        if let Ok(WithUsage {
            usage: Lenient(Some(u)),
        }) = serde_json::from_str(body.get())
        {
            self.add_counts(&u);
        }
    }

    fn add_counts(&mut self, u: &Counts) {
        let input = u.input_tokens.or(u.prompt_tokens).unwrap_or(0);
        let output = u.output_tokens.or(u.completion_tokens).unwrap_or(0);
        let detail = |a: &Lenient<Details>, b: &Lenient<Details>, get: fn(&Details) -> Count| {
            a.0.as_ref()
                .and_then(|d| get(d).0)
                .or_else(|| b.0.as_ref().and_then(|d| get(d).0))
                .unwrap_or(0)
        };
        self.input_tokens += input;
        self.output_tokens += output;
        self.cached_tokens += detail(&u.input_tokens_details, &u.prompt_tokens_details, |d| {
            d.cached_tokens
        });
        self.reasoning_tokens += detail(
            &u.output_tokens_details,
            &u.completion_tokens_details,
            |d| d.reasoning_tokens,
        );
        self.total_tokens += u.total_tokens.0.unwrap_or(input + output);
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
        let usage = BatchUsage {
            input_tokens: self.input_tokens,
            input_tokens_details: InputTokensDetails {
                cached_tokens: self.cached_tokens,
            },
            output_tokens: self.output_tokens,
            output_tokens_details: OutputTokensDetails {
                reasoning_tokens: self.reasoning_tokens,
            },
            total_tokens: self.total_tokens,
        };
        serde_json::to_value(usage).expect("plain data serialises")
    }
}

// As a batch stores it once ended, and the Batch object shows it.
/// The tokens a batch's successful requests used.
#[derive(Serialize, ToSchema)]
pub struct BatchUsage {
    input_tokens: i64,
    #[schema(inline)]
    input_tokens_details: InputTokensDetails,
    output_tokens: i64,
    #[schema(inline)]
    output_tokens_details: OutputTokensDetails,
    total_tokens: i64,
}

#[derive(Serialize, ToSchema)]
struct InputTokensDetails {
    cached_tokens: i64,
}

#[derive(Serialize, ToSchema)]
struct OutputTokensDetails {
    reasoning_tokens: i64,
}

/// The members of a `usage` object that are summed; both naming schemes.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Counts {
    input_tokens: Count,
    prompt_tokens: Count,
    output_tokens: Count,
    completion_tokens: Count,
    total_tokens: Count,
    input_tokens_details: Lenient<Details>,
    prompt_tokens_details: Lenient<Details>,
    output_tokens_details: Lenient<Details>,
    completion_tokens_details: Lenient<Details>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Details {
    cached_tokens: Count,
    reasoning_tokens: Count,
}

/// An integer that fits an `i64`, or nothing (any other JSON value).
#[derive(Default, Clone, Copy)]
struct Count(Option<i64>);

impl Count {
    fn or(self, other: Count) -> Count {
        Count(self.0.or(other.0))
    }

    fn unwrap_or(self, default: i64) -> i64 {
        self.0.unwrap_or(default)
    }
}

/// An object read as `T`, or nothing (any other JSON value).
#[derive(Default)]
struct Lenient<T>(Option<T>);

impl<'de> Deserialize<'de> for Count {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let shape = d.deserialize_any(ShapeOf::<serde::de::IgnoredAny>(PhantomData))?;
        Ok(Count(match shape {
            Shape::Int(v) => Some(v),
            _ => None,
        }))
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let shape = d.deserialize_any(ShapeOf::<T>(PhantomData))?;
        Ok(Lenient(match shape {
            Shape::Object(v) => Some(v),
            _ => None,
        }))
    }
}

/// What a JSON value holds for `Count` and `Lenient`: an integer that fits an `i64`, an object
/// read as `T`, or something else, skipped without being built.
enum Shape<T> {
    Int(i64),
    Object(T),
    Other,
}

struct ShapeOf<T>(PhantomData<T>);

impl<'de, T: Deserialize<'de>> serde::de::Visitor<'de> for ShapeOf<T> {
    type Value = Shape<T>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Shape::Int(v))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(i64::try_from(v).map_or(Shape::Other, Shape::Int))
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        T::deserialize(serde::de::value::MapAccessDeserializer::new(map)).map(Shape::Object)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(Shape::Other)
    }

    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Shape::Other)
    }

    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Shape::Other)
    }

    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Shape::Other)
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Shape::Other)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::borrow::Cow;

    use crate::jsonl::group::{decode, encode, Stored};

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
    fn usage_members_of_the_wrong_type_count_as_absent() {
        let raw = |v: Value| serde_json::value::to_raw_value(&v).unwrap();
        let mut u = Usage::default();
        // Not an object: nothing is added, and nothing fails.
        for usage in [
            json!(7),
            json!("x"),
            json!([1, 2]),
            json!(null),
            json!(true),
        ] {
            u.add(&raw(json!({"usage": usage})));
        }
        assert_eq!(u, Usage::default());
        u.add(&raw(json!({"usage": {
            "prompt_tokens": 2.5, "input_tokens": "3", "completion_tokens": 4,
            "total_tokens": u64::MAX, "prompt_tokens_details": [1],
            "completion_tokens_details": {"reasoning_tokens": {"n": 1}},
            "output_tokens_details": null, "extra": {"deep": [{"a": 1}]}
        }})));
        // total_tokens does not fit: input + output instead.
        let expected = Usage {
            output_tokens: 4,
            total_tokens: 4,
            ..Usage::default()
        };
        assert_eq!(u, expected);
        // The first naming scheme present wins, member by member.
        let mut u = Usage::default();
        u.add(&raw(json!({"usage": {
            "input_tokens": 1, "prompt_tokens": 100, "output_tokens": null, "completion_tokens": 2,
            "input_tokens_details": {"cached_tokens": "no"},
            "prompt_tokens_details": {"cached_tokens": 1}
        }})));
        assert_eq!(
            u,
            Usage {
                input_tokens: 1,
                cached_tokens: 1,
                output_tokens: 2,
                reasoning_tokens: 0,
                total_tokens: 3
            }
        );
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
                    file_line: Cow::Borrowed(&a)
                },
                Stored {
                    line: 2,
                    success: true,
                    file_line: Cow::Borrowed(&b)
                },
            ]
        );
        assert!(decode("nonsense").next().unwrap().is_err());
        assert!(decode("1\tx\t{}").next().unwrap().is_err());
    }
    #[test]
    fn an_entry_stored_over_several_lines_is_read_whole_as_one_line() {
        // As earlier versions stored a pretty-printed upstream body: copied as it came.
        let pretty = "{\"id\":\"batch_req_1\",\"custom_id\":\"a\",\"response\":{\"status_code\":429,\"request_id\":null,\"body\":{\n  \"error\": {\n    \"message\": \"slow down\",\r\n\n    \"n\": [\n1,\n2\n]\n  }\n}\n},\"error\":null}";
        let plain = render("b", 4, "c", &response(200));
        let mut group = String::new();
        encode(&mut group, 3, false, pretty);
        encode(&mut group, 4, true, &plain);
        encode(&mut group, 5, false, pretty);
        let decoded: Vec<Stored> = decode(&group).map(Result::unwrap).collect();
        assert_eq!(decoded.len(), 3, "{decoded:?}");
        assert_eq!((decoded[0].line, decoded[0].success), (3, false));
        assert_eq!(decoded[1].file_line, plain);
        assert_eq!(decoded[2].line, 5);
        for d in [&decoded[0], &decoded[2]] {
            assert!(!d.file_line.contains('\n'), "{}", d.file_line);
            let v: Value = serde_json::from_str(&d.file_line).unwrap();
            assert_eq!(
                v["response"]["body"],
                json!({"error": {"message": "slow down", "n": [1, 2]}})
            );
        }
        // Several lines that are no JSON are still an error, not a guess.
        let mut broken = String::new();
        encode(&mut broken, 1, true, "{\"a\":\n1 2}");
        assert!(decode(&broken).next().unwrap().is_err());
        // Garbage before the first entry is one malformed entry; the entries after it are read.
        let damaged = format!("junk\nmore junk\n{group}");
        let entries: Vec<_> = decode(&damaged).collect();
        assert_eq!(entries.len(), 4);
        assert!(entries[0].is_err() && entries[1..].iter().all(Result::is_ok));
    }
}
