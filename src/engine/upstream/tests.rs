use super::answer::{non_json_message, NON_JSON_BODY_CHARS};
use super::*;

fn upstream(models: &[&str]) -> Upstream {
    Upstream::new(
        "u",
        &UpstreamSettings {
            base_url: "http://h:1/v1/".into(),
            base_urls: None,
            api_key: None,
            timeout_secs: 1,
            max_in_flight: 1,
            models: models.iter().map(|m| (*m).to_owned()).collect(),
            max_response_bytes: 1024,
            adaptive: true,
            metrics_url: None,
            priority: None,
        },
        Arc::new(AtomicUsize::new(1)),
        RetryPolicy::fixed(1, Duration::from_millis(1), Duration::from_millis(1)),
        reqwest::Client::new(),
    )
}

#[test]
fn the_priority_goes_first_and_a_line_s_own_wins() {
    let with = |body: &str| {
        let b = with_priority(&bytes::Bytes::copy_from_slice(body.as_bytes()), 5);
        String::from_utf8(b.to_vec()).unwrap()
    };
    assert_eq!(with(r#"{"model":"m"}"#), r#"{"priority":5,"model":"m"}"#);
    assert_eq!(with("{}"), r#"{"priority":5}"#);
    assert_eq!(with("{ \n}"), "{\"priority\":5 \n}");
    let own: serde_json::Value = serde_json::from_str(&with(r#"{"priority":-1}"#)).unwrap();
    assert_eq!(own["priority"], -1);
    for body in [r#"{"a":[1,{"b":2}]}"#, "{}"] {
        let v: serde_json::Value = serde_json::from_str(&with(body)).unwrap();
        assert_eq!(v["priority"], 5, "{body}");
    }
}

#[test]
fn line_uris_are_read_as_urls() {
    let uri = parse_uri("http://h:1/my models/v1/chat/completions").unwrap();
    assert_eq!(
        uri.to_string(),
        "http://h:1/my%20models/v1/chat/completions"
    );
    assert!(parse_uri("http://exa mple/v1").is_err());
}

#[test]
fn urls_join_without_doubling_the_version() {
    assert_eq!(
        upstream(&[]).endpoints()[0].url("/v1/chat/completions"),
        "http://h:1/v1/chat/completions"
    );
}

#[test]
fn the_bearer_header_is_sensitive() {
    assert!(upstream(&[]).auth.is_none());
    assert!(authorization("u", Some(&Secret::from(""))).is_none());
    let value = authorization("u", Some(&Secret::from("sk-secret"))).unwrap();
    assert!(value.is_sensitive());
    assert!(!format!("{value:?}").contains("sk-secret"));
    assert!(authorization("u", Some(&Secret::from("bad\nkey"))).is_none());
}

#[test]
fn non_json_error_bodies_are_truncated() {
    assert_eq!(non_json_message(b"Bad Gateway"), "Bad Gateway");
    let page = "<html>".repeat(10_000);
    let shown = non_json_message(page.as_bytes());
    assert!(shown.chars().count() < NON_JSON_BODY_CHARS + 40, "{shown}");
    assert!(shown.ends_with("(60000 bytes in all)"), "{shown}");
    // Cut on a character, not inside one.
    let shown = non_json_message("é".repeat(1000).as_bytes());
    assert!(shown.starts_with(&"é".repeat(NON_JSON_BODY_CHARS)));
}

#[test]
fn model_patterns() {
    let u = upstream(&["llama-*", "gpt-4o"]);
    assert!(u.serves("llama-3-8b"));
    assert!(u.serves("gpt-4o"));
    assert!(!u.serves("gpt-4o-mini"));
}

#[test]
fn traceparent_shape() {
    let t = traceparent_in(&trace_id_for("batch_1"));
    let parts: Vec<&str> = t.split('-').collect();
    assert_eq!(parts.len(), 4);
    assert_eq!(
        (parts[0], parts[1].len(), parts[2].len(), parts[3]),
        ("00", 32, 16, "01")
    );
    assert_eq!(
        parts[1],
        traceparent_in(&trace_id_for("batch_1"))
            .split('-')
            .nth(1)
            .unwrap()
    );
}
