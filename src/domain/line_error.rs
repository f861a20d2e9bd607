//! What a batch's input may hold, and how a problem with one of its lines is reported.

use serde::Serialize;
use utoipa::ToSchema;

/// OpenAI's caps on a batch, the defaults of `limits.max_batch_lines` and
/// `limits.max_batch_input_bytes`.
pub const MAX_REQUESTS: usize = 50_000;
pub const MAX_INPUT_BYTES: u64 = 200 * 1024 * 1024;
/// The most `limits.max_batch_lines` may be raised to (a line's number is kept in 32 bits, and
/// a finished batch's served order holds 4 bytes a line).
pub const MAX_LINES_CEILING: usize = 10_000_000;
/// Beyond this many, further problems are not reported (the batch has failed anyway).
pub const MAX_REPORTED_ERRORS: usize = 100;

/// One entry of a failed batch's `errors.data`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[schema(as = BatchError)]
pub struct LineError {
    pub code: &'static str,
    pub message: String,
    #[schema(required = true)]
    pub param: Option<String>,
    /// The input line (1-based) the error is about, if one.
    #[schema(required = true, value_type = Option<i64>)]
    pub line: Option<usize>,
}

// As a failed batch stores and the Batch object shows it.
/// Why a batch failed validation.
#[derive(Serialize, ToSchema)]
pub struct BatchErrors {
    #[schema(inline)]
    object: ListObject,
    #[schema(inline)]
    data: Vec<LineError>,
}

/// A list's `object`.
#[derive(Serialize, ToSchema)]
enum ListObject {
    #[serde(rename = "list")]
    List,
}

impl BatchErrors {
    /// The `errors` member of a batch that failed for `data`.
    pub fn json(data: Vec<LineError>) -> serde_json::Value {
        let errors = Self {
            object: ListObject::List,
            data,
        };
        serde_json::to_value(errors).expect("plain data serialises")
    }
}

impl LineError {
    pub fn file(code: &'static str, param: Option<&str>, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            param: param.map(str::to_owned),
            line: None,
        }
    }

    pub(crate) fn at(
        line: usize,
        code: &'static str,
        param: &str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            code,
            message: message.into(),
            param: Some(param.to_owned()),
            line: Some(line),
        }
    }
}
