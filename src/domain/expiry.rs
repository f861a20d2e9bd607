use serde_json::Value;
use utoipa::openapi::schema::{Object, ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;

use super::Invalid;

/// `{"anchor": "created_at", "seconds": N}` with N between one hour and 30 days,
/// as for `expires_after` on files and `output_expires_after` on batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExpiresAfter {
    seconds: i64,
}

impl ExpiresAfter {
    pub const MIN_SECONDS: i64 = 3600;
    pub const MAX_SECONDS: i64 = 2_592_000;
    /// The one anchor OpenAI defines.
    pub const ANCHOR: &'static str = "created_at";

    /// The schema of `anchor` (of `expires_after[anchor]` in a file upload form).
    pub fn anchor_schema() -> Object {
        super::string_enum([Self::ANCHOR])
    }

    /// The schema of `seconds` (of `expires_after[seconds]` in a file upload form).
    pub fn seconds_schema() -> Object {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(Self::MIN_SECONDS))
            .maximum(Some(Self::MAX_SECONDS))
            .build()
    }

    pub fn new(param: &str, anchor: &str, seconds: i64) -> Result<Self, Invalid> {
        if anchor != Self::ANCHOR {
            return Err(Invalid::unsupported(
                &format!("{param}.anchor"),
                anchor,
                [Self::ANCHOR],
            ));
        }
        if !(Self::MIN_SECONDS..=Self::MAX_SECONDS).contains(&seconds) {
            return Err(Invalid::new(
                format!("{param}.seconds"),
                "invalid_value",
                format!(
                    "Invalid '{param}.seconds': must be between {} and {}, got {seconds}.",
                    Self::MIN_SECONDS,
                    Self::MAX_SECONDS
                ),
            ));
        }
        Ok(Self { seconds })
    }

    /// From a JSON body field; `null` means "not given".
    pub fn from_json(param: &str, value: &Value) -> Result<Option<Self>, Invalid> {
        let obj = match value {
            Value::Null => return Ok(None),
            Value::Object(obj) => obj,
            _ => return Err(Invalid::wrong_type(param, "an object")),
        };
        let anchor = match obj.get("anchor") {
            Some(Value::String(s)) => s.as_str(),
            None | Some(Value::Null) => return Err(Invalid::missing(&format!("{param}.anchor"))),
            Some(_) => return Err(Invalid::wrong_type(&format!("{param}.anchor"), "a string")),
        };
        let seconds = match obj.get("seconds") {
            Some(v) => super::whole_number(v)
                .ok_or_else(|| Invalid::wrong_type(&format!("{param}.seconds"), "an integer"))?,
            None => return Err(Invalid::missing(&format!("{param}.seconds"))),
        };
        Self::new(param, anchor, seconds).map(Some)
    }

    pub fn seconds(self) -> i64 {
        self.seconds
    }
}

/// `{"anchor": "created_at", "seconds": N}`.
impl utoipa::PartialSchema for ExpiresAfter {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .property("anchor", Self::anchor_schema())
            .property("seconds", Self::seconds_schema())
            .required("anchor")
            .required("seconds")
            .build()
            .into()
    }
}

impl utoipa::ToSchema for ExpiresAfter {}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn bounds_are_inclusive() {
        assert!(ExpiresAfter::new("x", "created_at", 3600).is_ok());
        assert!(ExpiresAfter::new("x", "created_at", 2_592_000).is_ok());
        assert_eq!(
            ExpiresAfter::new("x", "created_at", 3599)
                .unwrap_err()
                .param,
            "x.seconds"
        );
        assert_eq!(
            ExpiresAfter::new("x", "last_active_at", 3600)
                .unwrap_err()
                .param,
            "x.anchor"
        );
    }

    #[test]
    fn json_shapes() {
        assert_eq!(ExpiresAfter::from_json("x", &Value::Null), Ok(None));
        let ok = ExpiresAfter::from_json("x", &json!({"anchor": "created_at", "seconds": 7200}));
        assert_eq!(ok.unwrap().unwrap().seconds(), 7200);
        // The same number, however it is spelt; a fraction is not a number of seconds.
        let whole =
            ExpiresAfter::from_json("x", &json!({"anchor": "created_at", "seconds": 7200.0}));
        assert_eq!(whole.unwrap().unwrap().seconds(), 7200);
        let part =
            ExpiresAfter::from_json("x", &json!({"anchor": "created_at", "seconds": 7200.5}));
        assert_eq!(part.unwrap_err().code, "invalid_type");
        assert_eq!(
            ExpiresAfter::from_json("x", &json!("soon"))
                .unwrap_err()
                .code,
            "invalid_type"
        );
        assert_eq!(
            ExpiresAfter::from_json("x", &json!({"anchor": "created_at"}))
                .unwrap_err()
                .param,
            "x.seconds"
        );
    }
}
