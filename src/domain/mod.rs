//! Values that can only exist in a valid state: each is built by a `parse` that
//! returns `Invalid` (rendered as a 400 by `crate::error`) for anything else.

/// Stores an id or a closed set as PostgreSQL `text`: written as its `as_str`, read back through
/// its own parser, so a row holding something the type cannot hold is a decode error naming the
/// type (`sqlx::Error`), never an invalid value. (sqlx's derive would keep a third copy of the
/// spellings beside strum's and serde's, and name no type when a stored value is bad.)
macro_rules! stored_as_text {
    ($ty:ty, |$raw:ident| $parse:expr) => {
        impl sqlx::Type<sqlx::Postgres> for $ty {
            fn type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::Type<sqlx::Postgres>>::type_info()
            }

            fn compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <&str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
            }
        }

        impl sqlx::postgres::PgHasArrayType for $ty {
            fn array_type_info() -> sqlx::postgres::PgTypeInfo {
                <&str as sqlx::postgres::PgHasArrayType>::array_type_info()
            }

            fn array_compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
                <&str as sqlx::postgres::PgHasArrayType>::array_compatible(ty)
            }
        }

        impl<'q> sqlx::Encode<'q, sqlx::Postgres> for $ty {
            fn encode_by_ref(
                &self,
                buf: &mut sqlx::postgres::PgArgumentBuffer,
            ) -> Result<sqlx::encode::IsNull, sqlx::error::BoxDynError> {
                <&str as sqlx::Encode<'q, sqlx::Postgres>>::encode(self.as_str(), buf)
            }
        }

        impl<'r> sqlx::Decode<'r, sqlx::Postgres> for $ty {
            fn decode(
                value: sqlx::postgres::PgValueRef<'r>,
            ) -> Result<Self, sqlx::error::BoxDynError> {
                let $raw = <&str as sqlx::Decode<'r, sqlx::Postgres>>::decode(value)?;
                let parsed: Result<Self, String> = $parse;
                parsed
                    .map_err(|e| format!("invalid {} in the database: {e}", stringify!($ty)).into())
            }
        }
    };
}

/// The derives of a closed set of values the API sends and the database stores as text, each
/// variant spelt once per derive (`strum` for `as_str`, serde for the wire, utoipa for the
/// document, sqlx for the column); `spellings_agree` in each type's tests holds them together.
#[cfg(test)]
macro_rules! text_enum_tests {
    ($ty:ty) => {
        #[test]
        fn spellings_agree() {
            use strum::IntoEnumIterator;
            let all: Vec<&str> = <$ty>::iter().map(<$ty>::as_str).collect();
            for v in <$ty>::iter() {
                assert_eq!(serde_json::to_value(v).unwrap(), v.as_str(), "{v:?}");
            }
            // The document lists exactly what is sent (with the type's doc as its description).
            let schema = serde_json::to_value(<$ty as utoipa::PartialSchema>::schema()).unwrap();
            assert_eq!(schema["type"], "string");
            assert_eq!(schema["enum"], serde_json::json!(all));
        }
    };
}

/// The schema of a string that is one of `values`.
pub fn string_enum<'a>(
    values: impl IntoIterator<Item = &'a str>,
) -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(values))
        .build()
}

/// Now, in Unix seconds: the time every API timestamp is in.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// The value of a closed set spelled `raw`, if any: the one lookup the parsers below share.
fn spelled<T: Copy + Into<&'static str>>(all: impl IntoIterator<Item = T>, raw: &str) -> Option<T> {
    all.into_iter()
        .find(|v| Into::<&'static str>::into(*v) == raw)
}

mod api_key;
mod batch;
mod cursor;
mod expiry;
mod file;
mod idempotency;
mod ids;
mod line_error;
mod metadata;
mod retry;
mod upload;
mod usage;
mod webhook;

pub use api_key::{constant_time_eq, ApiKey, NewKey, PresentedKey};
pub use batch::{
    behind_schedule, BatchSpec, BatchStatus, CancelDecision, CompletionWindow, Endpoint, Transition,
};
pub use cursor::ResultsCursor;
pub use expiry::ExpiresAfter;
pub use file::{Purpose, Utf8Check};
pub use idempotency::IdempotencyKey;
pub use ids::{
    id_schema, ApiKeyId, BatchId, FileId, ProjectId, ProjectName, ServiceAccountId, UploadId,
    UploadPartId, WebhookEndpointId, BUILT_IN_PROJECT_NAME,
};
pub use line_error::{
    BatchErrors, LineError, MAX_INPUT_BYTES, MAX_LINES_CEILING, MAX_REPORTED_ERRORS, MAX_REQUESTS,
};
pub use metadata::{Metadata, MetadataLimits};
pub use retry::RetryFilter;
pub use upload::{
    check_part_ids, parse_md5, NewUpload, UploadStatus, MAX_PART_BYTES, UPLOAD_LIFETIME_SECS,
};
pub use usage::{BucketWidth, UsageKind, UsageQuery, LAST_TIME};
pub use webhook::{
    is_public, DeliveryState, EndpointStatus, EventType, EventTypes, WebhookSecret, WebhookUrl,
};

/// A JSON number that is a whole number, as JSON Schema's `integer` (and OpenAI's API) take it:
/// `7200` or `7200.0`, never `7200.5`. RFC 8259 gives the two spellings one meaning, and the
/// OpenAPI 3.1 document's generators send both.
pub fn whole_number(value: &serde_json::Value) -> Option<i64> {
    /// Past 2^53 a float no longer spells one integer.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    let n = value.as_number()?;
    n.as_i64().or_else(|| {
        n.as_f64()
            .filter(|f| f.fract() == 0.0 && f.abs() <= EXACT)
            .map(|f| f as i64)
    })
}

/// `whole_number` for a serde field: `#[serde(default, deserialize_with = ...)]`.
pub fn deserialize_whole_number<'de, D: serde::Deserializer<'de>>(
    de: D,
) -> Result<Option<i64>, D::Error> {
    use serde::de::{Error, Unexpected};
    use serde::Deserialize;
    use serde_json::Value;
    let value = Option::<Value>::deserialize(de)?;
    let Some(v) = value.filter(|v| !v.is_null()) else {
        return Ok(None);
    };
    if let Some(n) = whole_number(&v) {
        return Ok(Some(n));
    }
    // The words serde uses for an `i64` field, as before.
    let unexpected = match &v {
        Value::Bool(b) => Unexpected::Bool(*b),
        Value::Number(n) => match (n.as_u64(), n.as_f64()) {
            (Some(u), _) => Unexpected::Unsigned(u),
            (None, Some(f)) => Unexpected::Float(f),
            _ => Unexpected::Other("number"),
        },
        Value::String(s) => Unexpected::Str(s),
        Value::Array(_) => Unexpected::Seq,
        Value::Object(_) => Unexpected::Map,
        Value::Null => Unexpected::Unit,
    };
    Err(D::Error::invalid_type(unexpected, &"i64"))
}

/// A client-supplied value that was rejected, with the OpenAI `param` and `code` to report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub param: String,
    pub code: &'static str,
    pub message: String,
}

impl Invalid {
    pub fn new(param: impl Into<String>, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            param: param.into(),
            code,
            message: message.into(),
        }
    }

    pub fn missing(param: &str) -> Self {
        Self::new(
            param,
            "missing_required_parameter",
            format!("Missing required parameter: '{param}'."),
        )
    }

    /// A value outside a fixed set, listing the set as OpenAI does.
    pub fn unsupported(
        param: &str,
        raw: &str,
        supported: impl IntoIterator<Item = &'static str>,
    ) -> Self {
        let listed: Vec<String> = supported.into_iter().map(|s| format!("'{s}'")).collect();
        Self::new(
            param,
            "invalid_value",
            format!(
                "Invalid value: '{raw}'. Supported values are: {}.",
                listed.join(", ")
            ),
        )
    }

    pub fn wrong_type(param: &str, expected: &str) -> Self {
        Self::new(
            param,
            "invalid_type",
            format!("Invalid type for '{param}': expected {expected}."),
        )
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::whole_number;

    #[test]
    fn whole_numbers_in_either_spelling() {
        assert_eq!(whole_number(&json!(7200)), Some(7200));
        assert_eq!(whole_number(&json!(7200.0)), Some(7200));
        assert_eq!(whole_number(&json!(-3.0)), Some(-3));
        for not in [
            json!(7200.5),
            json!("7200"),
            json!(null),
            json!(1e300),
            json!(u64::MAX),
        ] {
            assert_eq!(whole_number(&not), None, "{not}");
        }
    }

    #[test]
    fn a_field_of_whole_numbers_reads_as_an_i64_field_did() {
        #[derive(serde::Deserialize)]
        struct Body {
            #[serde(default, deserialize_with = "super::deserialize_whole_number")]
            n: Option<i64>,
        }
        let read = |text: &str| serde_json::from_str::<Body>(text).map(|b| b.n);
        assert_eq!(read(r#"{"n": 60}"#).unwrap(), Some(60));
        assert_eq!(read(r#"{"n": 60.0}"#).unwrap(), Some(60));
        assert_eq!(read(r#"{"n": null}"#).unwrap(), None);
        assert_eq!(read("{}").unwrap(), None);
        let e = read(r#"{"n": 1.5}"#).unwrap_err().to_string();
        assert!(
            e.starts_with("invalid type: floating point `1.5`, expected i64"),
            "{e}"
        );
        let e = read(r#"{"n": "60"}"#).unwrap_err().to_string();
        assert!(
            e.starts_with(r#"invalid type: string "60", expected i64"#),
            "{e}"
        );
    }
}
