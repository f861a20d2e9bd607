//! `GET /v1/batches/{id}/results`: where a reader's records come from (the stored groups while
//! the batch runs, its files once it has ended, a cursor taken while it ran carried across its
//! end), and the task that serves them.

use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use sqlx::PgPool;

use super::live::{self, ReadLive, Source};
use super::{FileLines, FinishedLines};
use crate::domain::{BatchId, BatchStatus, FileId, ProjectId, ResultsCursor};
use crate::engine::order::LiveOrder;
use crate::error::ApiError;
use crate::store::content::Content;
use crate::store::{batches, files, results};

/// A reader's results, ready to be served; `slot` is held until they are.
pub struct Opened<S> {
    /// The batch's status when reading began.
    pub status: BatchStatus,
    source: Source,
    slot: S,
}

impl<S> Opened<S> {
    /// Whether the batch had ended: the records are then every result after the cursor.
    pub fn complete(&self) -> bool {
        self.status.is_terminal()
    }
}

/// The results of the project's batch `id` after the cursor `after`. `take_slot` takes one of
/// this replica's reader slots, once the batch is known to exist.
pub async fn open<S>(
    content: &Content,
    project: &ProjectId,
    id: &BatchId,
    after: Option<&str>,
    take_slot: impl FnOnce() -> Result<S, ApiError>,
) -> Result<Opened<S>, ApiError> {
    let pool = content.pool();
    let batch = batches::get(pool, project, id)
        .await?
        .ok_or_else(|| ApiError::BatchNotFound { id: id.to_string() })?;
    let slot = take_slot()?;
    let cursor = match after.filter(|a| !a.is_empty()) {
        Some(raw) => Some(ResultsCursor::parse(id, raw)?),
        None => None,
    };
    // A batch's status and its stored groups change in one transaction (finalization writes
    // the files and deletes the groups), so the status read here says where its results are.
    let source = match (batch.status.is_terminal(), cursor) {
        (false, None) => Source::Live { seq: 0, taken: 0 },
        (false, Some(ResultsCursor::Live { seq, taken })) => Source::Live { seq, taken },
        (false, Some(ResultsCursor::Final { .. } | ResultsCursor::Resumed { .. })) => {
            return Err(ApiError::CursorNotForState)
        }
        (true, cursor) => {
            // Both files first: results that are gone are said so whatever the cursor.
            let output = result_file(content, project, batch.output_file_id.as_ref()).await?;
            let errors = result_file(content, project, batch.error_file_id.as_ref()).await?;
            // No result file (a batch that failed): nothing to serve, whatever was read.
            let cursor = cursor.filter(|_| output.is_some() || errors.is_some());
            let (next, read_live) = from_cursor(pool, id, cursor).await?;
            Source::Final {
                lines: Box::new(FinishedLines::new(id.clone(), output, errors)),
                next,
                read_live,
            }
        }
    };
    Ok(Opened {
        status: batch.status,
        source,
        slot,
    })
}

/// Where an ended batch's files are to be read from for `cursor`: the next request, and what
/// a reader who began while it ran has had of it.
async fn from_cursor(
    pool: &PgPool,
    id: &BatchId,
    cursor: Option<ResultsCursor>,
) -> Result<(u32, Option<ReadLive>), ApiError> {
    Ok(match cursor {
        None => (0, None),
        Some(ResultsCursor::Final { next }) => (next, None),
        Some(ResultsCursor::Live { seq, taken }) => {
            let order = live_order(pool, id).await?;
            let position = order.position(seq, taken);
            (0, Some(ReadLive { order, position }))
        }
        Some(ResultsCursor::Resumed { seen, next }) => {
            let order = live_order(pool, id).await?;
            let read = ReadLive {
                order,
                position: seen,
            };
            (next, Some(read))
        }
    })
}

/// A result file of an ended batch, ready to be read; `None` when the batch has none.
async fn result_file(
    content: &Content,
    project: &ProjectId,
    id: Option<&FileId>,
) -> Result<Option<FileLines>, ApiError> {
    let Some(id) = id else { return Ok(None) };
    let missing = || ApiError::ResultsUnavailable { file: id.clone() };
    let file = files::get(content.pool(), project, id)
        .await?
        .ok_or_else(missing)?;
    Ok(Some(FileLines::new(content.clone(), file.id, file.bytes)))
}

/// The order an ended batch's lines were served in while it ran, which a cursor taken then
/// needs; refused when it was not kept (the batch ended before this version kept it).
async fn live_order(pool: &PgPool, id: &BatchId) -> Result<LiveOrder, ApiError> {
    let stored = results::live_order(pool, id)
        .await?
        .ok_or_else(|| ApiError::CursorExpired { batch: id.clone() })?;
    LiveOrder::from_stored(stored).map_err(|e| {
        tracing::error!(batch_id = %id, error = format!("{e:#}"), "unreadable live order");
        ApiError::Internal
    })
}

/// The response body of `opened`, fed by a task of this thread that holds its slot until the
/// body is served, its client gone, or cut off after `idle` without reading.
pub fn serve<S: 'static>(
    pool: PgPool,
    batch: BatchId,
    opened: Opened<S>,
    idle: Duration,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + 'static {
    let (out, body) = live::outbox(idle);
    let Opened { source, slot, .. } = opened;
    tokio::task::spawn_local(async move {
        let _slot = slot;
        if let Err(e) = live::produce(pool, batch.clone(), source, &out).await {
            tracing::error!(batch_id = %batch, error = format!("{e:#}"), "serving results failed");
            out.abort();
        }
    });
    body
}
