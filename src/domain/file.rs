use super::Invalid;

/// Why a file was uploaded. `batch_output` is ours to assign, never a client's.
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
pub enum Purpose {
    Assistants,
    Batch,
    BatchOutput,
    #[strum(serialize = "fine-tune")]
    #[serde(rename = "fine-tune")]
    FineTune,
    Vision,
    UserData,
    Evals,
}

impl Purpose {
    pub const ALL: [Purpose; 7] = [
        Purpose::Assistants,
        Purpose::Batch,
        Purpose::BatchOutput,
        Purpose::FineTune,
        Purpose::Vision,
        Purpose::UserData,
        Purpose::Evals,
    ];

    const UPLOADABLE: [Purpose; 6] = [
        Purpose::Assistants,
        Purpose::Batch,
        Purpose::FineTune,
        Purpose::Vision,
        Purpose::UserData,
        Purpose::Evals,
    ];

    pub fn as_str(self) -> &'static str {
        self.into()
    }

    /// A purpose a client may upload with.
    pub fn parse_upload(raw: &str) -> Result<Self, Invalid> {
        super::spelled(Self::UPLOADABLE, raw)
            .ok_or_else(|| Invalid::unsupported("purpose", raw, Self::UPLOADABLE.map(Self::as_str)))
    }

    /// The purposes a client may upload with, as the OpenAPI document lists them.
    pub fn uploadable_schema() -> utoipa::openapi::schema::Object {
        super::string_enum(Self::UPLOADABLE.map(Self::as_str))
    }

    /// A purpose a client may filter a listing by (includes `batch_output`).
    pub fn parse_filter(raw: &str) -> Result<Self, Invalid> {
        if raw == Purpose::BatchOutput.as_str() {
            return Ok(Purpose::BatchOutput);
        }
        Self::parse_upload(raw)
    }
}

impl TryFrom<String> for Purpose {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        Self::parse_filter(&s).map_err(|e| e.message)
    }
}

/// Checks that a byte stream is UTF-8 without holding it: a character split across two
/// chunks is carried over to the next one.
#[derive(Debug, Default)]
pub struct Utf8Check {
    carry: Vec<u8>,
    broken: bool,
}

impl Utf8Check {
    pub fn feed(&mut self, mut data: &[u8]) {
        if self.broken {
            return;
        }
        // Finish a character begun in the previous chunk, one byte at a time (at most 3).
        while !self.carry.is_empty() {
            let Some((&b, rest)) = data.split_first() else {
                return;
            };
            self.carry.push(b);
            data = rest;
            match std::str::from_utf8(&self.carry) {
                Ok(_) => self.carry.clear(),
                Err(e) if e.error_len().is_none() && self.carry.len() < 4 => {}
                Err(_) => {
                    self.broken = true;
                    return;
                }
            }
        }
        if let Err(e) = std::str::from_utf8(data) {
            match e.error_len() {
                Some(_) => self.broken = true,
                None => self.carry.extend_from_slice(&data[e.valid_up_to()..]),
            }
        }
    }

    /// True as soon as a byte sequence is known not to be UTF-8.
    pub fn has_failed(&self) -> bool {
        self.broken
    }

    /// True when everything fed was UTF-8 and no character was left unfinished.
    pub fn is_valid(&self) -> bool {
        !self.broken && self.carry.is_empty()
    }
}

// Read back through the domain parser, so a bad stored value is named in the error.
stored_as_text!(Purpose, |raw| Purpose::parse_filter(raw)
    .map_err(|e| e.message));

#[cfg(test)]
mod tests {
    use super::*;

    text_enum_tests!(Purpose);

    #[test]
    fn purposes() {
        assert_eq!(Purpose::parse_upload("batch"), Ok(Purpose::Batch));
        assert_eq!(Purpose::parse_upload("fine-tune"), Ok(Purpose::FineTune));
        assert!(Purpose::parse_upload("batch_output").is_err());
        assert_eq!(
            Purpose::parse_filter("batch_output"),
            Ok(Purpose::BatchOutput)
        );
        assert_eq!(Purpose::parse_upload("nope").unwrap_err().param, "purpose");
        // `ALL` is what the OpenAPI document lists: each a purpose a listing accepts.
        for p in Purpose::ALL {
            assert_eq!(Purpose::parse_filter(p.as_str()), Ok(p));
        }
    }

    fn check_split(bytes: &[u8], at: &[usize]) -> bool {
        let mut c = Utf8Check::default();
        let mut start = 0;
        for &i in at {
            c.feed(&bytes[start..i]);
            start = i;
        }
        c.feed(&bytes[start..]);
        c.is_valid()
    }

    #[test]
    fn valid_text_split_anywhere_stays_valid() {
        let text = "{\"a\": \"héllo wörld — 😀 ✓\"}\n".as_bytes();
        for i in 0..=text.len() {
            for j in i..=text.len() {
                assert!(check_split(text, &[i, j]), "split at {i},{j}");
            }
        }
    }

    #[test]
    fn invalid_bytes_are_caught_wherever_they_fall() {
        let mut bytes = "ok é ".as_bytes().to_vec();
        bytes.extend_from_slice(&[0xff, 0xfe]);
        bytes.extend_from_slice(b" more");
        for i in 0..=bytes.len() {
            assert!(!check_split(&bytes, &[i]), "split at {i}");
        }
    }

    #[test]
    fn a_truncated_character_at_the_end_is_invalid() {
        let bytes = "😀".as_bytes();
        assert!(!check_split(&bytes[..3], &[1]));
        let mut lone_continuation = b"a".to_vec();
        lone_continuation.push(0x80);
        assert!(!check_split(&lone_continuation, &[1]));
    }
}
