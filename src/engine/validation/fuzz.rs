//! Bounded fuzzing of the line validator: whatever the bytes, it answers without panicking,
//! and whatever it accepts is a line it can queue.
use super::*;
use crate::jsonl::LineSplitter;
use proptest::prelude::*;

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::String),
        Just(Value::String("POST".into())),
        Just(Value::String("/v1/chat/completions".into())),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    Just("custom_id".to_owned()),
                    Just("method".to_owned()),
                    Just("url".to_owned()),
                    Just("body".to_owned()),
                    Just("model".to_owned()),
                    Just("messages".to_owned()),
                    Just("stream".to_owned()),
                    "[a-z]{1,6}",
                ],
                inner,
                0..6
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(raw in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = check_line(&raw, 1, Endpoint::ChatCompletions);
        let mut f = FileCheck::new(Endpoint::Embeddings);
        let mut s = LineSplitter::default();
        s.feed(&raw, |l| { f.piece(l, 1); });
    }

    #[test]
    fn structured_lines_are_judged_consistently(v in json_value(), line in 1usize..1000) {
        let raw = v.to_string();
        match check_line(raw.as_bytes(), line, Endpoint::ChatCompletions) {
            Ok(ok) => {
                prop_assert!(!ok.custom_id.is_empty());
                prop_assert!(!ok.model.is_empty());
                let body: Value = serde_json::from_str(&ok.body).unwrap();
                prop_assert!(body.is_object());
            }
            Err(e) => {
                prop_assert_eq!(e.line, Some(line));
                prop_assert!(!e.message.is_empty());
            }
        }
    }
}
