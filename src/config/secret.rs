//! Secrets in the settings (the database URL carries a password; the upstream's API key) are
//! `secrecy`'s `SecretString`: never printed by `Debug`, read only through `expose_secret`.

use secrecy::ExposeSecret;
pub use secrecy::SecretString as Secret;
use serde::Serializer;

/// Settings serialize (to list their defaults) without their secrets: a URL with its
/// password masked.
pub(super) fn serialize_url<S: Serializer>(url: &Secret, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&super::redact_url(url.expose_secret()))
}

/// ...and a key as `***` when one is set.
pub(super) fn serialize_key<S: Serializer>(key: &Option<Secret>, s: S) -> Result<S::Ok, S::Error> {
    match key {
        Some(_) => s.serialize_some("***"),
        None => s.serialize_none(),
    }
}
