use std::collections::BTreeMap;

use serde_json::Value;
use utoipa::openapi::schema::{Object, ObjectBuilder, SchemaType, Type};

use super::Invalid;

/// Up to 16 string pairs. Kept in a `BTreeMap` so its serialisation is canonical
/// (sorted keys): the idempotency hash must not depend on the client's key order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Metadata(BTreeMap<String, String>);

/// OpenAI's limits by default; an operator may lower or raise them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default)]
pub struct MetadataLimits {
    pub max_pairs: usize,
    pub max_key_chars: usize,
    pub max_value_chars: usize,
}

impl Default for MetadataLimits {
    fn default() -> Self {
        Self {
            max_pairs: 16,
            max_key_chars: 64,
            max_value_chars: 512,
        }
    }
}

impl Metadata {
    /// `null` (the Python SDK sends it for `metadata=None`) and `{}` both mean "none".
    pub fn from_json(value: &Value) -> Result<Option<Self>, Invalid> {
        Self::from_json_within(value, MetadataLimits::default())
    }

    pub fn from_json_within(
        value: &Value,
        limits: MetadataLimits,
    ) -> Result<Option<Self>, Invalid> {
        let obj = match value {
            Value::Null => return Ok(None),
            Value::Object(obj) => obj,
            _ => return Err(Invalid::wrong_type("metadata", "an object")),
        };
        if obj.len() > limits.max_pairs {
            return Err(Invalid::new(
                "metadata",
                "object_above_max_properties",
                format!(
                    "Invalid 'metadata': too many properties. Expected an object with at most {} properties, but got an object with {} properties instead.",
                    limits.max_pairs,
                    obj.len()
                ),
            ));
        }
        let mut pairs = BTreeMap::new();
        for (key, value) in obj {
            let param = format!("metadata.{key}");
            let key_chars = key.chars().count();
            if key_chars > limits.max_key_chars {
                return Err(Invalid::new(
                    "metadata",
                    "invalid_value",
                    format!(
                        "Invalid 'metadata': key '{key}' is too long. Expected a key with at most {} characters, but got {key_chars}.",
                        limits.max_key_chars
                    ),
                ));
            }
            let Value::String(value) = value else {
                return Err(Invalid::new(
                    param.clone(),
                    "invalid_type",
                    format!(
                        "Invalid type for '{param}': expected a string, but got {} instead.",
                        json_kind(value)
                    ),
                ));
            };
            if key.contains('\0') || value.contains('\0') {
                // PostgreSQL's jsonb cannot hold it (22P05): refuse it here, as a 400.
                return Err(Invalid::new(
                    param.clone(),
                    "invalid_value",
                    format!("Invalid '{param}': keys and values must not contain the NUL character (\\u0000)."),
                ));
            }
            let value_chars = value.chars().count();
            if value_chars > limits.max_value_chars {
                return Err(Invalid::new(
                    param.clone(),
                    "string_above_max_length",
                    format!(
                        "Invalid '{param}': string too long. Expected a string with maximum length {}, but got a string with length {value_chars} instead.",
                        limits.max_value_chars
                    ),
                ));
            }
            pairs.insert(key.clone(), value.clone());
        }
        Ok((!pairs.is_empty()).then_some(Self(pairs)))
    }

    pub fn to_json(&self) -> Value {
        serde_json::to_value(&self.0).expect("string map")
    }

    /// The schema of `metadata` in a request, within OpenAI's limits (the defaults; an
    /// operator may change them): `null` or an object of strings.
    pub fn request_schema() -> Object {
        let limits = MetadataLimits::default();
        ObjectBuilder::new()
            .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
            .max_properties(Some(limits.max_pairs))
            .property_names(Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .max_length(Some(limits.max_key_chars)),
            ))
            .additional_properties(Some(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .max_length(Some(limits.max_value_chars)),
            ))
            .build()
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn empty_and_null_mean_none() {
        assert_eq!(Metadata::from_json(&Value::Null), Ok(None));
        assert_eq!(Metadata::from_json(&json!({})), Ok(None));
    }

    #[test]
    fn key_order_does_not_matter() {
        let a = Metadata::from_json(&json!({"a": "1", "b": "2"})).unwrap();
        let b = Metadata::from_json(&json!({"b": "2", "a": "1"})).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.unwrap().to_json().to_string(), r#"{"a":"1","b":"2"}"#);
    }

    #[test]
    fn limits() {
        let many: serde_json::Map<String, Value> =
            (0..17).map(|i| (format!("k{i}"), json!("v"))).collect();
        let err = Metadata::from_json(&Value::Object(many)).unwrap_err();
        assert_eq!(err.param, "metadata");
        let sixteen: serde_json::Map<String, Value> =
            (0..16).map(|i| (format!("k{i}"), json!("v"))).collect();
        assert!(Metadata::from_json(&Value::Object(sixteen)).is_ok());

        let long_key = "k".repeat(65);
        assert!(Metadata::from_json(&json!({ long_key: "v" })).is_err());
        assert!(Metadata::from_json(&json!({ "k".repeat(64): "v" })).is_ok());
        let err = Metadata::from_json(&json!({"k": "v".repeat(513)})).unwrap_err();
        assert_eq!(err.param, "metadata.k");
        // Limits count characters, not bytes.
        assert!(Metadata::from_json(&json!({"k": "é".repeat(512)})).is_ok());
        let tight = MetadataLimits {
            max_pairs: 1,
            max_key_chars: 2,
            max_value_chars: 3,
        };
        assert!(Metadata::from_json_within(&json!({"a": "b", "c": "d"}), tight).is_err());
        assert!(Metadata::from_json_within(&json!({"abc": "d"}), tight).is_err());
        assert!(Metadata::from_json_within(&json!({"a": "bcde"}), tight).is_err());
        assert!(Metadata::from_json_within(&json!({"ab": "cde"}), tight).is_ok());
    }

    #[test]
    fn nul_is_refused_in_keys_and_values() {
        for m in [json!({"k": "a\u{0}b"}), json!({"k\u{0}": "v"})] {
            let err = Metadata::from_json(&m).unwrap_err();
            assert_eq!(err.code, "invalid_value", "{m}");
            assert!(err.param.starts_with("metadata."), "{m}");
            assert!(err.message.contains("NUL"), "{m}");
        }
    }

    #[test]
    fn non_string_values_name_the_key() {
        let err = Metadata::from_json(&json!({"n": 1})).unwrap_err();
        assert_eq!(
            (err.param.as_str(), err.code),
            ("metadata.n", "invalid_type")
        );
        assert_eq!(
            Metadata::from_json(&json!(["a"])).unwrap_err().code,
            "invalid_type"
        );
    }
}
