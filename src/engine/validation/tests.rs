use super::*;
use crate::jsonl::{queued, TooLong};
use serde_json::json;

fn line(v: Value) -> Vec<u8> {
    v.to_string().into_bytes()
}

fn good(id: &str, model: &str) -> Vec<u8> {
    line(
        json!({"custom_id": id, "method": "POST", "url": "/v1/chat/completions",
                "body": {"model": model, "messages": [{"role": "user", "content": "hi"}]}}),
    )
}

fn err(raw: &[u8]) -> (String, Option<String>) {
    let e = check_line(raw, 7, Endpoint::ChatCompletions).unwrap_err();
    assert_eq!(e.line, Some(7));
    (e.code.to_owned(), e.param)
}

#[test]
fn a_queued_line_reads_back_as_validation_saw_it() {
    let raw = good("a\"b", "m");
    let v = check_line(&raw, 1, Endpoint::ChatCompletions).unwrap();
    let q = queued(&raw).unwrap();
    assert_eq!(
        (q.custom_id.as_str(), q.model.as_str()),
        (v.custom_id.as_str(), "m")
    );
    let (a, b): (Value, Value) = (
        serde_json::from_str(&q.body).unwrap(),
        serde_json::from_str(&v.body).unwrap(),
    );
    assert_eq!(a, b);
}

#[test]
fn a_good_line_passes() {
    let v = check_line(&good("a", "m"), 1, Endpoint::ChatCompletions).unwrap();
    assert_eq!((v.custom_id.as_str(), v.model.as_str()), ("a", "m"));
    let body: Value = serde_json::from_str(&v.body).unwrap();
    assert_eq!(body["model"], "m");
}

#[test]
fn each_rule_has_its_code_and_param() {
    let base = json!({"custom_id": "a", "method": "POST", "url": "/v1/chat/completions",
                      "body": {"model": "m", "messages": []}});
    let with = |path: &[&str], v: Value| {
        let mut x = base.clone();
        let mut cur = &mut x;
        for p in &path[..path.len() - 1] {
            cur = &mut cur[*p];
        }
        cur[path[path.len() - 1]] = v;
        line(x)
    };
    let cases = [
        (b"not json".to_vec(), "invalid_json_line", "line"),
        (b"[1,2]".to_vec(), "invalid_json_line", "line"),
        (
            with(&["custom_id"], Value::Null),
            "missing_required_parameter",
            "custom_id",
        ),
        (
            with(&["custom_id"], json!(5)),
            "invalid_request",
            "custom_id",
        ),
        (
            with(&["custom_id"], json!("a\u{0}b")),
            "invalid_request",
            "custom_id",
        ),
        (
            with(&["body", "model"], json!("m\u{0}")),
            "invalid_request",
            "body.model",
        ),
        (with(&["method"], json!("GET")), "invalid_request", "method"),
        (
            with(&["method"], Value::Null),
            "missing_required_parameter",
            "method",
        ),
        (
            with(&["url"], json!("/v1/embeddings")),
            "invalid_url",
            "url",
        ),
        (
            with(&["body"], Value::Null),
            "missing_required_parameter",
            "body",
        ),
        (with(&["body"], json!("text")), "invalid_request", "body"),
        (
            with(&["body", "model"], Value::Null),
            "missing_required_parameter",
            "body.model",
        ),
        (
            with(&["body", "stream"], json!(true)),
            "streaming_unsupported",
            "body.stream",
        ),
        (
            with(&["body", "messages"], Value::Null),
            "missing_required_parameter",
            "body.messages",
        ),
    ];
    for (raw, code, param) in cases {
        assert_eq!(
            err(&raw),
            (code.to_owned(), Some(param.to_owned())),
            "{}",
            String::from_utf8_lossy(&raw)
        );
    }
    assert!(check_line(
        &with(&["body", "stream"], json!(false)),
        1,
        Endpoint::ChatCompletions
    )
    .is_ok());
}

#[test]
fn endpoint_specific_fields() {
    let emb = line(
        json!({"custom_id": "a", "method": "POST", "url": "/v1/embeddings", "body": {"model": "m"}}),
    );
    assert_eq!(
        check_line(&emb, 1, Endpoint::Embeddings)
            .unwrap_err()
            .param
            .as_deref(),
        Some("body.input")
    );
}

#[test]
fn file_rules() {
    let mut f = FileCheck::new(Endpoint::ChatCompletions);
    assert!(f.line(&good("a", "m"), 1).is_some());
    assert!(f.line(b"   ", 2).is_none());
    assert!(f.line(&good("a", "m"), 3).is_none());
    assert!(f.line(&good("b", "other"), 4).is_none());
    let errors = f.finish().unwrap_err();
    let got: Vec<_> = errors.iter().map(|e| (e.code, e.line)).collect();
    assert_eq!(
        got,
        vec![("duplicate_custom_id", Some(3)), ("mixed_models", Some(4))]
    );

    let f = FileCheck::new(Endpoint::ChatCompletions);
    assert_eq!(f.finish().unwrap_err()[0].code, "empty_file");

    let mut f = FileCheck::new(Endpoint::ChatCompletions);
    f.line(b"", 1);
    f.line(&good("a", "m"), 2);
    f.line(&good("b", "m"), 3);
    f.line(&good("c", "other"), 4);
    f.line(&good("d", "other"), 5);
    assert_eq!(f.models(), vec![("m", 2), ("other", 4)]);

    let mut f = FileCheck::new(Endpoint::ChatCompletions);
    for i in 0..MAX_REQUESTS + 2 {
        f.line(&good(&i.to_string(), "m"), i + 1);
    }
    let errors = f.finish().unwrap_err();
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].code, "too_many_requests");
}

#[test]
fn a_line_too_long_fails_the_file_with_its_number() {
    let mut f = FileCheck::new(Endpoint::ChatCompletions);
    assert!(f.line(&good("a", "m"), 1).is_some());
    let t = TooLong {
        bytes: 100,
        limit: 10,
    };
    assert!(f.piece(Err(t), 2).is_none());
    let errors = f.finish().unwrap_err();
    assert_eq!(
        (errors[0].code, errors[0].line, errors[0].param.as_deref()),
        ("line_too_long", Some(2), Some("line"))
    );
    assert!(
        errors[0].message.contains("10 bytes"),
        "{}",
        errors[0].message
    );
}
