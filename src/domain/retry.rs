use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use utoipa::openapi::schema::{Array, ArrayBuilder, ObjectBuilder, SchemaType, Type};

use super::{BatchId, Invalid};

/// Error codes or statuses a filter may name, at most.
const MAX_VALUES: usize = 64;
/// The longest error code a filter may name, in characters.
const MAX_CODE_CHARS: usize = 128;
/// The status codes a filter may name.
const STATUS_CODES: std::ops::RangeInclusive<u64> = 100..=599;

/// Which failed lines of an ended batch `POST /v1/batches/{id}/retry` runs again: all of them
/// when both lists are empty, else those whose `error.code` is in `error_codes` or whose
/// `response.status_code` is in `status_codes`. Sorted and without repeats, so equal filters
/// compare (and fingerprint) equal however they were written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetryFilter {
    error_codes: Vec<String>,
    status_codes: Vec<u16>,
}

impl RetryFilter {
    /// From the request's `error_codes` (strings) and `status_codes` (integers 100–599); `null`
    /// or absent is no filter.
    pub fn from_json(error_codes: &Value, status_codes: &Value) -> Result<Self, Invalid> {
        let list = |param: &str, v: &Value| -> Result<Vec<Value>, Invalid> {
            match v {
                Value::Null => Ok(Vec::new()),
                Value::Array(items) if items.len() <= MAX_VALUES => Ok(items.clone()),
                Value::Array(_) => Err(Invalid::new(
                    param,
                    "invalid_value",
                    format!("'{param}' may name at most {MAX_VALUES} values."),
                )),
                _ => Err(Invalid::wrong_type(param, "an array")),
            }
        };
        let mut codes = Vec::new();
        for (i, v) in list("error_codes", error_codes)?.into_iter().enumerate() {
            match v.as_str() {
                Some(s) if !s.is_empty() && s.chars().count() <= MAX_CODE_CHARS => codes.push(s.to_owned()),
                _ => {
                    return Err(Invalid::new(
                        format!("error_codes[{i}]"),
                        "invalid_value",
                        format!("Invalid 'error_codes[{i}]': expected an error code such as 'batch_expired' (a non-empty string of at most 128 characters), got {v}."),
                    ))
                }
            }
        }
        let mut statuses = Vec::new();
        for (i, v) in list("status_codes", status_codes)?.into_iter().enumerate() {
            let n = super::whole_number(&v).and_then(|n| u64::try_from(n).ok());
            match n.filter(|n| STATUS_CODES.contains(n)) {
                Some(n) => statuses.push(n as u16),
                None => {
                    return Err(Invalid::new(
                        format!("status_codes[{i}]"),
                        "invalid_value",
                        format!("Invalid 'status_codes[{i}]': expected an HTTP status code (an integer from 100 to 599), got {v}."),
                    ))
                }
            }
        }
        codes.sort();
        codes.dedup();
        statuses.sort_unstable();
        statuses.dedup();
        Ok(Self {
            error_codes: codes,
            status_codes: statuses,
        })
    }

    /// The schema of `error_codes` in a retry request: `null` or a list of error codes.
    pub fn error_codes_schema() -> Array {
        ArrayBuilder::new()
            .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
            .max_items(Some(MAX_VALUES))
            .items(
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .min_length(Some(1))
                    .max_length(Some(MAX_CODE_CHARS))
                    .build(),
            )
            .build()
    }

    /// The schema of `status_codes` in a retry request: `null` or a list of HTTP statuses.
    pub fn status_codes_schema() -> Array {
        ArrayBuilder::new()
            .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
            .max_items(Some(MAX_VALUES))
            .items(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(*STATUS_CODES.start()))
                    .maximum(Some(*STATUS_CODES.end()))
                    .build(),
            )
            .build()
    }

    pub fn is_empty(&self) -> bool {
        self.error_codes.is_empty() && self.status_codes.is_empty()
    }

    /// Whether a failed line with this `error.code` and `response.status_code` is retried.
    pub fn matches(&self, error_code: Option<&str>, status_code: Option<u64>) -> bool {
        self.is_empty()
            || error_code.is_some_and(|c| self.error_codes.iter().any(|w| w == c))
            || status_code.is_some_and(|s| self.status_codes.iter().any(|&w| u64::from(w) == s))
    }

    /// What idempotency compares for a retry: its origin and its filter.
    pub fn fingerprint(&self, origin: &BatchId) -> String {
        let canonical = json!({
            "retry_of": origin.as_str(),
            "error_codes": self.error_codes,
            "status_codes": self.status_codes,
        });
        hex::encode(Sha256::digest(canonical.to_string().as_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_parse_normalise_and_match() {
        let f = RetryFilter::from_json(&json!(["b", "a", "b"]), &json!([500, 429])).unwrap();
        let g = RetryFilter::from_json(&json!(["a", "b"]), &json!([429, 500, 500])).unwrap();
        assert_eq!(f, g);
        let id = BatchId::generate();
        assert_eq!(f.fingerprint(&id), g.fingerprint(&id));
        assert_ne!(f.fingerprint(&id), RetryFilter::default().fingerprint(&id));
        assert!(f.matches(Some("a"), None));
        assert!(f.matches(None, Some(429)));
        assert!(!f.matches(Some("c"), Some(400)));
        assert!(RetryFilter::default().matches(None, None));
        // 500.0 is the number 500 (JSON Schema's integer admits it).
        let whole = RetryFilter::from_json(&Value::Null, &json!([500.0, 429])).unwrap();
        assert_eq!(
            whole,
            RetryFilter::from_json(&Value::Null, &json!([429, 500])).unwrap()
        );
        let none = RetryFilter::from_json(&Value::Null, &Value::Null).unwrap();
        assert!(none.is_empty());
    }

    #[test]
    fn bad_filters_name_the_offending_value() {
        let bad = [
            (json!("x"), Value::Null, "error_codes"),
            (json!([1]), Value::Null, "error_codes[0]"),
            (json!([""]), Value::Null, "error_codes[0]"),
            (Value::Null, json!([200, 99]), "status_codes[1]"),
            (Value::Null, json!([500.5]), "status_codes[0]"),
            (Value::Null, json!(["500"]), "status_codes[0]"),
            (Value::Null, json!(500), "status_codes"),
            (
                Value::Null,
                json!((0..65).collect::<Vec<_>>()),
                "status_codes",
            ),
        ];
        for (codes, statuses, param) in bad {
            let e = RetryFilter::from_json(&codes, &statuses).unwrap_err();
            assert_eq!(e.param, param, "{codes} {statuses}");
        }
    }
}
