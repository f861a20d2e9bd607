//! OpenAI's Uploads API: a file sent in parts, then assembled. The rules a request must meet
//! before anything is stored.

use super::{ExpiresAfter, Invalid, Purpose};

/// OpenAI's cap on one part.
pub const MAX_PART_BYTES: u64 = 64 * 1024 * 1024;
/// How long an upload may stay unfinished before it expires and its parts are removed.
pub const UPLOAD_LIFETIME_SECS: i64 = 3600;
const MAX_FILENAME_CHARS: usize = 255;
const MAX_MIME_TYPE_CHARS: usize = 255;

#[derive(Debug, Clone, Copy, PartialEq, Eq, strum::IntoStaticStr, strum::EnumString)]
#[strum(serialize_all = "snake_case")]
pub enum UploadStatus {
    Pending,
    Completed,
    Cancelled,
    Expired,
}

impl UploadStatus {
    pub fn as_str(self) -> &'static str {
        self.into()
    }
}

stored_as_text!(UploadStatus, |raw| raw
    .parse::<UploadStatus>()
    .map_err(|e| e.to_string()));

/// `POST /v1/uploads`, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUpload {
    pub filename: String,
    pub purpose: Purpose,
    pub bytes: i64,
    pub mime_type: String,
    /// For the file the upload becomes.
    pub expires_after: Option<ExpiresAfter>,
}

impl NewUpload {
    /// `max_bytes`: `limits.max_upload_total_bytes`.
    pub fn parse(
        filename: &str,
        purpose: &str,
        bytes: i64,
        mime_type: &str,
        expires_after: Option<ExpiresAfter>,
        max_bytes: u64,
    ) -> Result<Self, Invalid> {
        if filename.is_empty()
            || filename.chars().count() > MAX_FILENAME_CHARS
            || filename.chars().any(char::is_control)
        {
            return Err(Invalid::new(
                "filename",
                "invalid_value",
                format!("'filename' must be 1 to {MAX_FILENAME_CHARS} printable characters."),
            ));
        }
        let purpose = Purpose::parse_upload(purpose)?;
        if bytes < 1 || bytes as u64 > max_bytes {
            return Err(Invalid::new(
                "bytes",
                "invalid_value",
                format!("'bytes' must be from 1 to {max_bytes} (the largest upload this server takes); got {bytes}."),
            ));
        }
        if mime_type.trim().is_empty()
            || mime_type.chars().count() > MAX_MIME_TYPE_CHARS
            || mime_type.chars().any(char::is_control)
        {
            return Err(Invalid::new(
                "mime_type",
                "invalid_value",
                format!("'mime_type' must be 1 to {MAX_MIME_TYPE_CHARS} printable characters."),
            ));
        }
        Ok(Self {
            filename: filename.to_owned(),
            purpose,
            bytes,
            mime_type: mime_type.trim().to_owned(),
            expires_after,
        })
    }
}

/// An `md5` a completion is checked against: 32 hex digits (either case) or the 16 bytes in
/// base64, as `Content-MD5` carries them.
pub fn parse_md5(raw: &str) -> Result<[u8; 16], Invalid> {
    let bad = || {
        Invalid::new(
            "md5",
            "invalid_value",
            "'md5' must be an MD5 digest: 32 hexadecimal digits, or 16 bytes in base64.",
        )
    };
    let raw = raw.trim();
    let bytes = if raw.len() == 32 {
        hex::decode(raw).map_err(|_| bad())?
    } else {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(raw)
            .map_err(|_| bad())?
    };
    bytes.try_into().map_err(|_| bad())
}

/// The `part_ids` of a completion: at least one, none twice.
pub fn check_part_ids(ids: &[String]) -> Result<(), Invalid> {
    if ids.is_empty() {
        return Err(Invalid::new(
            "part_ids",
            "invalid_value",
            "'part_ids' must list the upload's parts, in order.",
        ));
    }
    let mut seen = std::collections::HashSet::new();
    if let Some(twice) = ids.iter().find(|id| !seen.insert(id.as_str())) {
        return Err(Invalid::new(
            "part_ids",
            "invalid_value",
            format!("'part_ids' names part '{twice}' more than once."),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GB8: u64 = 8 << 30;

    #[test]
    fn a_new_upload_is_checked_field_by_field() {
        let ok = NewUpload::parse("in.jsonl", "batch", 10, "application/jsonl", None, GB8).unwrap();
        assert_eq!((ok.purpose, ok.bytes), (Purpose::Batch, 10));
        for (args, param) in [
            (("", "batch", 10, "text/plain"), "filename"),
            (("a\nb", "batch", 10, "text/plain"), "filename"),
            (("f", "batch_output", 10, "text/plain"), "purpose"),
            (("f", "batch", 0, "text/plain"), "bytes"),
            (("f", "batch", GB8 as i64 + 1, "text/plain"), "bytes"),
            (("f", "batch", 10, " "), "mime_type"),
        ] {
            let e = NewUpload::parse(args.0, args.1, args.2, args.3, None, GB8).unwrap_err();
            assert_eq!(e.param, param, "{args:?}");
        }
    }

    #[test]
    fn md5_is_hex_or_base64() {
        let hex = "9e107d9d372bb6826bd81d3542a419d6";
        let digest = parse_md5(hex).unwrap();
        assert_eq!(parse_md5(&hex.to_uppercase()).unwrap(), digest);
        assert_eq!(parse_md5("nhB9nTcrtoJr2B01QqQZ1g==").unwrap(), digest);
        for bad in ["", "xyz", &hex[..30], "9e107d9d372bb6826bd81d3542a419zz"] {
            assert_eq!(parse_md5(bad).unwrap_err().param, "md5", "{bad}");
        }
    }

    #[test]
    fn part_ids_are_named_once_each() {
        assert!(check_part_ids(&["a".into(), "b".into()]).is_ok());
        assert!(check_part_ids(&[]).is_err());
        assert!(check_part_ids(&["a".into(), "a".into()]).is_err());
    }
}
