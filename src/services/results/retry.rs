//! The input of a retry: exactly the requests of an ended batch that are in its error file
//! (failed upstream, never answered, expired or cancelled) and pass the filter, copied byte for
//! byte from its input file in input order.

use anyhow::Context;
use serde::Deserialize;

use super::{result_id, FileLines};
use crate::domain::{BatchId, RetryFilter};
use crate::jsonl::group::line_id;
use crate::jsonl::queued;

#[derive(Deserialize)]
struct ErrorLine {
    custom_id: String,
    response: Option<Response>,
    error: Option<Failure>,
}

#[derive(Deserialize)]
struct Response {
    status_code: Option<u64>,
}

#[derive(Deserialize)]
struct Failure {
    code: Option<String>,
}

/// The retry's input, a request at a time. The input and error files are read side by side, a
/// part at a time (each read a statement of its own: nothing is held between reads): both are
/// in input order, and an error line's id names the request it belongs to.
pub struct RetryInput<'a> {
    batch: &'a BatchId,
    filter: &'a RetryFilter,
    input: FileLines,
    errors: FileLines,
    ordinal: i32,
}

impl<'a> RetryInput<'a> {
    pub fn new(
        batch: &'a BatchId,
        input: FileLines,
        errors: FileLines,
        filter: &'a RetryFilter,
    ) -> Self {
        Self {
            batch,
            filter,
            input,
            errors,
            ordinal: 0,
        }
    }

    /// The next request to run again: its input line, byte for byte (without the newline).
    pub async fn next(&mut self) -> anyhow::Result<Option<Vec<u8>>> {
        while let Some(raw) = self.input.next().await? {
            let ordinal = self.ordinal;
            self.ordinal += 1;
            let failed = match self.errors.peek().await? {
                Some(head) => result_id(head)? == line_id(self.batch.as_str(), ordinal),
                None => false,
            };
            if !failed {
                continue;
            }
            let line = self.errors.next().await?.expect("peeked");
            let e: ErrorLine =
                serde_json::from_slice(&line).context("an error-file line is not a result line")?;
            let request =
                queued(&raw).context("an input line of an executed batch is not valid")?;
            anyhow::ensure!(
                request.custom_id == e.custom_id,
                "error line for request {ordinal} names custom_id {:?}, the input {:?}",
                e.custom_id,
                request.custom_id
            );
            let code = e.error.as_ref().and_then(|f| f.code.as_deref());
            let status = e.response.as_ref().and_then(|r| r.status_code);
            if self.filter.matches(code, status) {
                return Ok(Some(raw));
            }
        }
        anyhow::ensure!(
            self.errors.peek().await?.is_none(),
            "the error file of batch {} holds lines its input does not",
            self.batch
        );
        Ok(None)
    }
}
