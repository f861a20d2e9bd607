//! Webhook endpoints: the URL a project registers (never a private address unless the operator
//! allows it), the events it wants, and the Standard Webhooks signing secret.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

use super::Invalid;

/// The events a batch produces when it reaches a terminal status, named as OpenAI names them.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    strum::IntoStaticStr,
    strum::EnumIter,
    serde::Serialize,
    utoipa::ToSchema,
)]
pub enum EventType {
    #[strum(serialize = "batch.completed")]
    #[serde(rename = "batch.completed")]
    BatchCompleted,
    #[strum(serialize = "batch.failed")]
    #[serde(rename = "batch.failed")]
    BatchFailed,
    #[strum(serialize = "batch.expired")]
    #[serde(rename = "batch.expired")]
    BatchExpired,
    #[strum(serialize = "batch.cancelled")]
    #[serde(rename = "batch.cancelled")]
    BatchCancelled,
}

impl EventType {
    pub const ALL: [EventType; 4] = [
        EventType::BatchCompleted,
        EventType::BatchFailed,
        EventType::BatchExpired,
        EventType::BatchCancelled,
    ];

    pub fn as_str(self) -> &'static str {
        self.into()
    }

    pub fn parse(param: &str, raw: &str) -> Result<Self, Invalid> {
        super::spelled(Self::ALL, raw)
            .ok_or_else(|| Invalid::unsupported(param, raw, Self::ALL.map(EventType::as_str)))
    }
}

// An endpoint's state, as the database's CHECK constraint allows (a plain comment: the
// document shows it inline, without a description).
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    strum::IntoStaticStr,
    strum::EnumIter,
    serde::Serialize,
    utoipa::ToSchema,
)]
#[strum(serialize_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum EndpointStatus {
    Enabled,
    Disabled,
}

// Where a delivery stands, as the database's CHECK constraint allows.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    strum::IntoStaticStr,
    strum::EnumIter,
    serde::Serialize,
    utoipa::ToSchema,
)]
#[strum(serialize_all = "snake_case")]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    Pending,
    Delivered,
    Failed,
}

/// `as_str` and a `parse` of the stored spelling, for the closed sets above.
macro_rules! stored_state {
    ($ty:ident) => {
        impl $ty {
            pub fn as_str(self) -> &'static str {
                self.into()
            }

            fn parse(raw: &str) -> Result<Self, String> {
                super::spelled(<Self as strum::IntoEnumIterator>::iter(), raw)
                    .ok_or_else(|| format!("unknown {} '{raw}'", stringify!($ty)))
            }
        }
        stored_as_text!($ty, |raw| $ty::parse(raw));
    };
}
stored_state!(EndpointStatus);
stored_state!(DeliveryState);

/// A non-empty set of event types, in a stable order without duplicates. Absent means all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventTypes(Vec<EventType>);

impl EventTypes {
    pub fn all() -> Self {
        Self(EventType::ALL.to_vec())
    }

    pub fn from_json(value: &serde_json::Value) -> Result<Self, Invalid> {
        let items = match value {
            serde_json::Value::Null => return Ok(Self::all()),
            serde_json::Value::Array(items) => items,
            _ => return Err(Invalid::wrong_type("events", "an array of event types")),
        };
        if items.is_empty() {
            return Err(Invalid::new(
                "events",
                "invalid_value",
                "'events' must name at least one event type (or be left out for all of them).",
            ));
        }
        let mut set = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let param = format!("events[{i}]");
            let raw = item
                .as_str()
                .ok_or_else(|| Invalid::wrong_type(&param, "a string"))?;
            let e = EventType::parse(&param, raw)?;
            if !set.contains(&e) {
                set.push(e);
            }
        }
        set.sort_by_key(|e| EventType::ALL.iter().position(|x| x == e));
        Ok(Self(set))
    }

    pub fn as_strings(&self) -> Vec<String> {
        self.0.iter().map(|e| e.as_str().to_owned()).collect()
    }
}

const MAX_URL_LEN: usize = 2048;

/// An http(s) URL that, as written, does not point into a private network (unless allowed).
/// Host names are checked again at every delivery, after resolution.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl(reqwest::Url);

impl WebhookUrl {
    /// The schema of `url` when an endpoint is registered. The pattern (a public-looking host
    /// name) describes the URLs that are surely accepted, for generators; `parse` decides.
    pub fn request_schema() -> utoipa::openapi::schema::Object {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .description(Some(
                "An http or https URL the events are POSTed to. Literal addresses and host names \
                 such as `localhost` that name a loopback, private, link-local or other non-public \
                 address are refused (400), unless the operator sets \
                 webhooks.allow_private_networks.",
            ))
            .pattern(Some(
                r"^https?://[a-z0-9]+(\.[a-z0-9]+)*\.[a-z]{2,}(:[1-9][0-9]{0,3})?(/[A-Za-z0-9._~-]*)*$",
            ))
            .max_length(Some(MAX_URL_LEN))
            .build()
    }

    pub fn parse(raw: &str, allow_private: bool) -> Result<Self, Invalid> {
        let bad = |msg: String| Invalid::new("url", "invalid_value", msg);
        if raw.is_empty() || raw.len() > MAX_URL_LEN {
            return Err(bad(format!(
                "'url' must be an http or https URL of 1 to {MAX_URL_LEN} characters."
            )));
        }
        let url = reqwest::Url::parse(raw)
            .map_err(|e| bad(format!("Invalid 'url': '{raw}' is not a valid URL ({e}).")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad(format!(
                "Invalid 'url': the scheme must be 'https' or 'http', not '{}'.",
                url.scheme()
            )));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(bad(
                "Invalid 'url': credentials in the URL are not supported.".to_owned(),
            ));
        }
        if !allow_private {
            let refused = match url.host() {
                None => true,
                Some(url::Host::Ipv4(ip)) => !is_public(IpAddr::V4(ip)),
                Some(url::Host::Ipv6(ip)) => !is_public(IpAddr::V6(ip)),
                Some(url::Host::Domain(name)) => {
                    let name = name.trim_end_matches('.').to_ascii_lowercase();
                    name == "localhost" || name.ends_with(".localhost")
                }
            };
            if refused {
                return Err(bad(format!(
                    "Invalid 'url': '{raw}' points to a loopback, private, link-local or otherwise \
                     non-public address, which webhooks may not be sent to."
                )));
            }
        }
        Ok(Self(url))
    }

    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }
}

/// Whether an address is on the public internet: not loopback, private (RFC 1918), unique-local,
/// link-local (cloud metadata lives there), CGNAT, unspecified, multicast, broadcast,
/// documentation or otherwise reserved. IPv4 embedded in IPv6 (mapped, NAT64, 6to4) is checked
/// as the IPv4 address it carries.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || a == 0
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_multicast()
        || ip.is_broadcast()
        || ip.is_documentation()
        || a >= 240
        || (a == 100 && (64..128).contains(&b)) // CGNAT, 100.64.0.0/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (b == 18 || b == 19))) // benchmarking
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let embedded =
        |hi: u16, lo: u16| Ipv4Addr::new((hi >> 8) as u8, hi as u8, (lo >> 8) as u8, lo as u8);
    // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) reach the IPv4 address they carry.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0] {
        return is_public_v4(embedded(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return is_public_v4(embedded(s[1], s[2]));
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local, fc00::/7
        || (s[0] & 0xffc0) == 0xfe80 // link local, fe80::/10
        || (s[0] & 0xffc0) == 0xfec0 // site local (deprecated), fec0::/10
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || s[0..6] == [0, 0, 0, 0, 0, 0]) // IPv4-compatible (deprecated), incl. ::a.b.c.d
}

/// A Standard Webhooks signing secret: `whsec_` and the base64 of 32 random bytes, the HMAC key.
#[derive(Clone, PartialEq, Eq)]
pub struct WebhookSecret(String);

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(***)")
    }
}

const SECRET_PREFIX: &str = "whsec_";

impl WebhookSecret {
    pub fn generate() -> Self {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        Self(format!("{SECRET_PREFIX}{}", B64.encode(key)))
    }

    /// A secret read back from the database (always one we generated).
    pub fn from_db(s: String) -> Self {
        Self(s)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    fn key(&self) -> Vec<u8> {
        let encoded = self.0.strip_prefix(SECRET_PREFIX).unwrap_or(&self.0);
        B64.decode(encoded)
            .unwrap_or_else(|_| encoded.as_bytes().to_vec())
    }

    /// `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`, the Standard Webhooks signature.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key()).expect("HMAC takes any key");
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", B64.encode(mac.finalize().into_bytes()))
    }
}

// Read back through the domain parser, so a bad stored value is named in the error.
stored_as_text!(EventType, |raw| EventType::parse("event_type", raw)
    .map_err(|e| e.message));

#[cfg(test)]
mod tests {
    use super::*;

    text_enum_tests!(EventType);

    #[test]
    fn private_and_special_addresses_are_not_public() {
        for ip in [
            "127.0.0.1",
            "10.0.0.1",
            "172.16.5.4",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "ff02::1",
            "::ffff:127.0.0.1",
            "::ffff:10.1.2.3",
            "64:ff9b::a9fe:a9fe",
            "2002:7f00:1::",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip} must be refused");
        }
        for ip in ["8.8.8.8", "1.1.1.1", "2606:4700:4700::1111", "100.128.0.1"] {
            assert!(is_public(ip.parse().unwrap()), "{ip} is public");
        }
    }

    #[test]
    fn urls_are_checked_as_written() {
        for raw in [
            "http://127.0.0.1/hook",
            "http://169.254.169.254/",
            "http://[::1]/",
            "http://10.0.0.1/",
            "http://localhost:8080/",
            "http://api.localhost/",
            "http://2130706433/", // 127.0.0.1 in decimal: the URL parser normalises it
            "ftp://example.com/",
            "not a url",
            "https://user:pw@example.com/",
        ] {
            let e = WebhookUrl::parse(raw, false).unwrap_err();
            assert_eq!(e.param, "url", "{raw}");
        }
        assert!(WebhookUrl::parse("https://example.com/hook", false).is_ok());
        assert!(WebhookUrl::parse("http://127.0.0.1:9/hook", true).is_ok());
        assert!(WebhookUrl::parse("ftp://127.0.0.1/", true).is_err());
    }

    #[test]
    fn event_types_default_to_all_and_reject_unknown_ones() {
        assert_eq!(
            EventTypes::from_json(&serde_json::Value::Null).unwrap(),
            EventTypes::all()
        );
        let one = EventTypes::from_json(&serde_json::json!(["batch.failed", "batch.failed"]));
        assert_eq!(one.unwrap().as_strings(), ["batch.failed"]);
        let e = EventTypes::from_json(&serde_json::json!(["batch.completed", "batch.created"]));
        assert_eq!(e.unwrap_err().param, "events[1]");
        assert!(EventTypes::from_json(&serde_json::json!([])).is_err());
        assert!(EventTypes::from_json(&serde_json::json!("batch.failed")).is_err());
    }

    #[test]
    fn signatures_follow_standard_webhooks() {
        // The example from the Standard Webhooks specification.
        let secret = WebhookSecret::from_db("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned());
        let sig = secret.sign(
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        let fresh = WebhookSecret::generate();
        assert!(fresh.expose().starts_with("whsec_"));
        assert_eq!(fresh.key().len(), 32);
    }
}
