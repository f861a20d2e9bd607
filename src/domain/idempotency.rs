use super::Invalid;

/// A client-chosen key that makes batch creation safe to retry.
///
/// It may arrive in three places (body `idempotency_key`, the seed's body `idem_tok`, or the
/// `Idempotency-Key` header); they must agree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const MAX_LEN: usize = 255;

    /// The schema of a key, wherever it is sent.
    pub fn schema() -> utoipa::openapi::schema::Object {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .min_length(Some(1))
            .max_length(Some(Self::MAX_LEN))
            .build()
    }

    fn parse(param: &str, raw: &str) -> Result<Self, Invalid> {
        if raw.is_empty() || raw.len() > Self::MAX_LEN || raw.chars().any(char::is_control) {
            return Err(Invalid::new(
                param,
                "invalid_value",
                format!(
                    "Invalid '{param}': an idempotency key must be 1 to {} bytes of printable text.",
                    Self::MAX_LEN
                ),
            ));
        }
        Ok(Self(raw.to_owned()))
    }

    /// Combines the places a key can come from; `(param name, value)` pairs, absent ones `None`.
    pub fn from_sources(sources: &[(&str, Option<&str>)]) -> Result<Option<Self>, Invalid> {
        let mut found: Option<(&str, Self)> = None;
        for (param, raw) in sources {
            let Some(raw) = raw else { continue };
            let key = Self::parse(param, raw)?;
            match &found {
                Some((first, k)) if *k != key => {
                    return Err(Invalid::new(
                        *param,
                        "invalid_value",
                        format!(
                            "Conflicting idempotency keys: '{first}' and '{param}' carry different values. Send one key."
                        ),
                    ))
                }
                Some(_) => {}
                None => found = Some((param, key)),
            }
        }
        Ok(found.map(|(_, k)| k))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absent_everywhere_is_none() {
        assert_eq!(
            IdempotencyKey::from_sources(&[("a", None), ("b", None)]),
            Ok(None)
        );
    }

    #[test]
    fn same_value_in_several_places_is_fine() {
        let k = IdempotencyKey::from_sources(&[("a", Some("k1")), ("b", None), ("c", Some("k1"))]);
        assert_eq!(k.unwrap().unwrap().as_str(), "k1");
    }

    #[test]
    fn different_values_are_rejected_naming_both() {
        let err =
            IdempotencyKey::from_sources(&[("a", Some("k1")), ("b", Some("k2"))]).unwrap_err();
        assert_eq!(err.param, "b");
        assert!(err.message.contains("'a'"));
    }

    #[test]
    fn empty_or_oversized_keys_are_rejected() {
        assert!(IdempotencyKey::from_sources(&[("a", Some(""))]).is_err());
        let long = "k".repeat(256);
        assert!(IdempotencyKey::from_sources(&[("a", Some(long.as_str()))]).is_err());
        let max = "k".repeat(255);
        assert!(IdempotencyKey::from_sources(&[("a", Some(max.as_str()))]).is_ok());
    }
}
