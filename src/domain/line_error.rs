//! What a batch's input may hold, and how a problem with one of its lines is reported.

use serde::Serialize;

pub const MAX_REQUESTS: usize = 50_000;
pub const MAX_INPUT_BYTES: u64 = 200 * 1024 * 1024;
/// Beyond this many, further problems are not reported (the batch has failed anyway).
pub const MAX_REPORTED_ERRORS: usize = 100;

/// One entry of a failed batch's `errors.data`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LineError {
    pub code: &'static str,
    pub message: String,
    pub param: Option<String>,
    pub line: Option<usize>,
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
