//! One record of `GET /v1/batches/{id}/results`: a result-file line exactly as its file holds
//! (or will hold) it, with `line`, `cursor` and `file` added in front. The stored line is
//! copied, not parsed: the record is the head's members, then the line's.

use serde::Serialize;
use utoipa::openapi::schema::{Object, Schema};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

use crate::engine::output::FileLine;

/// Which result file a record comes from.
#[derive(Debug, Clone, Copy, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ResultFile {
    Output,
    Error,
}

impl ResultFile {
    /// Successes go to the output file, everything else to the error file.
    pub fn of(success: bool) -> Self {
        if success {
            Self::Output
        } else {
            Self::Error
        }
    }
}

/// The members a record puts in front of its file line.
#[derive(Serialize, ToSchema)]
pub struct RecordHead<'a> {
    /// 1-based number of the request among the input file's requests.
    line: i64,
    /// Pass it as `after` to resume after this record.
    cursor: &'a str,
    #[schema(inline)]
    file: ResultFile,
}

/// Appends one record and its newline; `ordinal` is 0-based.
pub fn record(buf: &mut Vec<u8>, ordinal: i64, cursor: &str, file: ResultFile, file_line: &[u8]) {
    let head = RecordHead {
        line: ordinal + 1,
        cursor,
        file,
    };
    serde_json::to_writer(&mut *buf, &head).expect("plain data serialises");
    // `{"line":…,"file":"…"}` + `{"id":…}` → `{"line":…,"file":"…","id":…}`
    buf.pop();
    buf.push(b',');
    buf.extend_from_slice(file_line.strip_prefix(b"{").unwrap_or(file_line));
    buf.push(b'\n');
}

/// The OpenAPI schema of a record: [`RecordHead`]'s members, then [`FileLine`]'s, read from
/// the two types that write them.
pub struct ResultRecord;

impl PartialSchema for ResultRecord {
    fn schema() -> RefOr<Schema> {
        let mut record = object_of(RecordHead::schema());
        let line = object_of(FileLine::schema());
        record.properties.extend(line.properties);
        record.required.extend(line.required);
        record.description = Some(
            "One line of `GET /v1/batches/{batch_id}/results`: a result-file line with `line`, \
             `cursor` and `file` added."
                .to_owned(),
        );
        Schema::Object(record).into()
    }
}

impl ToSchema for ResultRecord {}

fn object_of(schema: RefOr<Schema>) -> Object {
    match schema {
        RefOr::T(Schema::Object(o)) => o,
        _ => panic!("a record's parts are object schemas"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_is_the_file_line_with_three_members_in_front() {
        let mut buf = Vec::new();
        let line = r#"{"id":"batch_req_1","custom_id":"a","response":null,"error":{"code":"x","message":"m"}}"#;
        record(&mut buf, 4, "f5_abcd", ResultFile::Error, line.as_bytes());
        assert!(
            buf.starts_with(br#"{"line":5,"cursor":"f5_abcd","file":"error","id":"batch_req_1""#),
            "{}",
            String::from_utf8_lossy(&buf)
        );
        let v: serde_json::Value = serde_json::from_slice(&buf).unwrap();
        let mut file_line = v.as_object().unwrap().clone();
        for k in ["line", "cursor", "file"] {
            file_line.remove(k);
        }
        assert_eq!(
            serde_json::Value::Object(file_line),
            serde_json::from_str::<serde_json::Value>(line).unwrap()
        );
        assert!(buf.ends_with(b"}\n"));
    }

    #[test]
    fn the_record_schema_has_the_head_then_the_file_line() {
        let RefOr::T(Schema::Object(o)) = ResultRecord::schema() else {
            panic!("an object")
        };
        let names: Vec<&str> = o.properties.keys().map(String::as_str).collect();
        assert_eq!(
            names,
            [
                "line",
                "cursor",
                "file",
                "id",
                "custom_id",
                "response",
                "error"
            ]
        );
        for name in names {
            assert!(o.required.iter().any(|r| r == name), "{name} is required");
        }
    }
}
