//! Upstream bodies as one line of JSON. Result groups and result files hold one line per
//! result, so a body spread over several lines (a pretty-printing server, a gateway's
//! `{\n  "error": …\n}`) would split its result in two and make it unreadable.

use std::borrow::Cow;

use serde_json::value::RawValue;

/// `text`, a JSON document, without the whitespace between its tokens: the same JSON value,
/// byte for byte in its strings and numbers (nothing is parsed or rebuilt, so no number loses
/// precision and no key is reordered), and never a newline, since JSON strings cannot hold a raw
/// one. Borrowed when there is nothing to remove. Meant for valid JSON only: in anything else,
/// removing whitespace could join two tokens.
pub fn compact_json(text: &str) -> Cow<'_, str> {
    let bytes = text.as_bytes();
    let mut scan = Scan::default();
    let Some(first) = bytes.iter().position(|&b| scan.insignificant(b)) else {
        return Cow::Borrowed(text);
    };
    let mut out = Vec::with_capacity(bytes.len());
    out.extend_from_slice(&bytes[..first]);
    // `first` is whitespace, which leaves the scan outside a string as it found it.
    out.extend(
        bytes[first + 1..]
            .iter()
            .filter(|&&b| !scan.insignificant(b)),
    );
    // Only ASCII bytes outside strings were removed: what is left is as valid UTF-8 as `text`.
    Cow::Owned(String::from_utf8(out).expect("removing ASCII whitespace keeps UTF-8 valid"))
}

/// A body as `compact_json` leaves it, kept as it is when it is compact already.
pub fn compact(body: Box<RawValue>) -> Box<RawValue> {
    let compacted = match compact_json(body.get()) {
        Cow::Borrowed(_) => return body,
        Cow::Owned(s) => s,
    };
    RawValue::from_string(compacted).unwrap_or(body)
}

/// Where a byte-by-byte reading of JSON text is: inside a string or not, after a backslash.
#[derive(Default)]
struct Scan {
    in_string: bool,
    escaped: bool,
}

impl Scan {
    /// Reads the next byte; whether it is whitespace between tokens (outside any string).
    fn insignificant(&mut self, b: u8) -> bool {
        if self.in_string {
            if self.escaped {
                self.escaped = false;
            } else if b == b'\\' {
                self.escaped = true;
            } else if b == b'"' {
                self.in_string = false;
            }
            false
        } else if is_whitespace(b) {
            true
        } else {
            self.in_string = b == b'"';
            false
        }
    }
}

/// JSON's whitespace (RFC 8259, section 2).
fn is_whitespace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn pretty_json_becomes_one_line_with_the_same_value() {
        let pretty = "{\r\n  \"error\" : {\n\t\"message\": \"a \\\" b  c\\n\",\n    \"n\": [1, 2.50, 1.0e2, 123456789012345678901234567890 ],\n    \"é\": \"x y\"\n  }\n}";
        let compact = compact_json(pretty);
        assert_eq!(
            compact,
            "{\"error\":{\"message\":\"a \\\" b  c\\n\",\"n\":[1,2.50,1.0e2,123456789012345678901234567890],\"é\":\"x y\"}}"
        );
        assert!(!compact.contains('\n') && !compact.contains('\r'));
        let parse = |s: &str| serde_json::from_str::<Value>(s).unwrap();
        assert_eq!(parse(&compact), parse(pretty));
    }

    #[test]
    fn compact_json_is_borrowed_as_it_is() {
        let text = r#"{"a":"b c","d":[1,{"e":null}]}"#;
        assert!(matches!(compact_json(text), Cow::Borrowed(t) if t == text));
    }

    #[test]
    fn a_raw_body_parsed_with_surrounding_whitespace_is_compacted() {
        let raw: Box<RawValue> = serde_json::from_slice(b"\n  {\n  \"a\" : 1\n}\n\n").unwrap();
        // Recognised as an object (see `Upstreams::attempt`).
        assert!(raw.get().starts_with('{'), "{raw}");
        assert_eq!(compact(raw).get(), r#"{"a":1}"#);
        let raw: Box<RawValue> = serde_json::from_slice(br#"{"a":1}"#).unwrap();
        assert_eq!(compact(raw).get(), r#"{"a":1}"#);
    }
}
