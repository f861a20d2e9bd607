use std::fmt;

use serde::{Deserialize, Serializer};

/// A value that never prints: the database URL carries a password.
#[derive(Clone, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Settings serialize (to list their defaults) without their secrets: a URL with its
/// password masked.
pub(super) fn serialize_url<S: Serializer>(url: &Secret, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&super::redact_url(url.expose()))
}

/// ...and a key as `***` when one is set.
pub(super) fn serialize_key<S: Serializer>(key: &Option<Secret>, s: S) -> Result<S::Ok, S::Error> {
    match key {
        Some(_) => s.serialize_some("***"),
        None => s.serialize_none(),
    }
}
