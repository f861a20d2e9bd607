//! The input of a retry: exactly the requests of an ended batch that are in its error file
//! (failed upstream, never answered, expired or cancelled) and pass the filter, copied byte for
//! byte from its input file in input order.

use anyhow::Context;
use serde::Deserialize;
use sqlx::{PgConnection, PgPool};

use super::{result_id, FileLines};
use crate::domain::{BatchId, RetryFilter};
use crate::store::files::{NewContent, CHUNK_BYTES};
use crate::worker::output::line_id;
use crate::worker::validate::queued;

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

/// Writes the retry's input into `content` (inside the caller's transaction) and returns how
/// many requests it holds. The input and error files are read side by side, a part at a time:
/// both are in input order, and an error line's id names the request it belongs to.
pub async fn write_input(
    pool: &PgPool,
    conn: &mut PgConnection,
    batch: &BatchId,
    mut input: FileLines,
    mut errors: FileLines,
    filter: &RetryFilter,
    content: &mut NewContent,
) -> anyhow::Result<usize> {
    let mut buf = Vec::with_capacity(CHUNK_BYTES);
    let (mut ordinal, mut taken) = (0_i32, 0_usize);
    while let Some(raw) = input.next(pool).await? {
        let failed = match errors.peek(pool).await? {
            Some(head) => result_id(head)? == line_id(batch.as_str(), ordinal),
            None => false,
        };
        ordinal += 1;
        if !failed {
            continue;
        }
        let line = errors.next(pool).await?.expect("peeked");
        let e: ErrorLine =
            serde_json::from_slice(&line).context("an error-file line is not a result line")?;
        let request = queued(&raw).context("an input line of an executed batch is not valid")?;
        anyhow::ensure!(
            request.custom_id == e.custom_id,
            "error line for request {ordinal} names custom_id {:?}, the input {:?}",
            e.custom_id,
            request.custom_id
        );
        let code = e.error.as_ref().and_then(|f| f.code.as_deref());
        let status = e.response.as_ref().and_then(|r| r.status_code);
        if !filter.matches(code, status) {
            continue;
        }
        buf.extend_from_slice(&raw);
        buf.push(b'\n');
        taken += 1;
        if buf.len() >= CHUNK_BYTES {
            content.write_chunk(conn, &buf).await?;
            buf.clear();
        }
    }
    anyhow::ensure!(
        errors.peek(pool).await?.is_none(),
        "the error file of batch {batch} holds lines its input does not"
    );
    if !buf.is_empty() {
        content.write_chunk(conn, &buf).await?;
    }
    Ok(taken)
}
