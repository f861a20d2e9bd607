//! `GET /v1/batches/{id}/events` (OpenBatch extension): Server-Sent Events carrying the batch
//! object whenever its status or `request_counts` change, ending after a final status.
//!
//! A status change wakes the stream at once (each is announced by NOTIFY, a handful per batch).
//! Progress is polled (`limits.event_poll_ms`; one indexed read of the row and its chunks'
//! counters, ~0.1 ms): it is written by flushes, which do not NOTIFY (a NOTIFY per flush would
//! serialise every replica's commits). The cost is bounded per replica by
//! `limits.max_event_streams`, and per project by `limits.max_event_streams_per_project`.

use std::time::{Duration, Instant};

use actix_web::{get, web, HttpResponse};
use bytes::Bytes;
use futures_util::Stream;
use sqlx::PgPool;
use utoipa::ToSchema;
use utoipa_actix_web::service_config::ServiceConfig;

use super::batch_object::{parse_batch_id, BatchObject};
use super::{AppState, Project};
use crate::domain::{BatchId, ProjectId};
use crate::error::{ApiError, ErrorResponse};
use crate::notify::{Notice, Subscription};
use crate::services::batches::{self, BatchRecord};

/// A comment line this often keeps proxies from closing a quiet stream.
const KEEPALIVE: Duration = Duration::from_secs(15);

pub fn routes(cfg: &mut ServiceConfig) {
    cfg.service(events);
}

fn event(batch: &BatchObject) -> Bytes {
    BatchEvent::of(batch).into_bytes()
}

// The name of every event of the stream.
#[derive(ToSchema)]
enum EventName {
    #[schema(rename = "batch")]
    Batch,
}

// Sent as its `event:` and `data:` lines (`into_bytes`).
/// One event of the stream.
#[derive(ToSchema)]
struct BatchEvent {
    #[schema(inline)]
    event: EventName,
    /// The batch object (JSON).
    data: String,
}

impl BatchEvent {
    fn of(batch: &BatchObject) -> Self {
        Self {
            event: EventName::Batch,
            data: serde_json::to_string(batch).expect("the batch object is plain data"),
        }
    }

    fn into_bytes(self) -> Bytes {
        let name = match self.event {
            EventName::Batch => "batch",
        };
        Bytes::from(format!("event: {name}\ndata: {}\n\n", self.data))
    }
}

#[utoipa::path(
    operation_id = "batchEvents",
    tag = "batches",
    summary = "Server-Sent Events: the batch whenever its status or request_counts change \
               (OpenBatch extension)",
    description = "Each event is `event: batch` with the batch object as `data`; the first \
                   carries the batch as it is, and the stream ends after an event with a final \
                   status (`completed`, `failed`, `expired`, `cancelled`). Comment lines keep a \
                   quiet stream alive. At most `limits.max_event_streams` streams per replica, \
                   and `limits.max_event_streams_per_project` per project (429 \
                   `too_many_event_streams` beyond).",
    params(("batch_id" = String, Path)),
    responses(
        (status = 200, description = "An event stream", body = inline(BatchEvent),
            content_type = "text/event-stream"),
        (status = 404, response = ErrorResponse),
    ),
    extensions(("x-openbatch-extension" = json!(true)))
)]
#[get("/batches/{batch_id}/events")]
async fn events(
    path: web::Path<String>,
    state: web::Data<AppState>,
    Project(project): Project,
) -> Result<HttpResponse, ApiError> {
    let id = parse_batch_id(&path)?;
    // Taken before the first read: no change after it goes unannounced.
    let changes = state.batch_status.subscribe();
    let batch = batches::get(&state.pool, &project, &id).await?;
    // Held by the task below, which ends when the client goes.
    let slot = state
        .event_streams
        .take(&project)
        .map_err(ApiError::TooManyEventStreams)?;
    let wake = Wake {
        poll: Duration::from_millis(state.limits.event_poll_ms),
        changes,
    };
    let body = stream(state.pool.clone(), project, id, batch, wake, slot);
    Ok(HttpResponse::Ok()
        .content_type("text/event-stream")
        .insert_header(("Cache-Control", "no-cache"))
        .insert_header(("X-Accel-Buffering", "no"))
        .streaming(body))
}

/// When a stream reads its batch again: every `poll`, or at once when its status changes.
struct Wake {
    poll: Duration,
    changes: Subscription,
}

impl Wake {
    async fn next(&mut self, id: &BatchId) {
        let announced = async {
            loop {
                match self.changes.recv().await {
                    Notice::Message { payload, .. } if payload == id.as_str() => return,
                    Notice::Message { .. } => {}
                    // Changes may have gone unannounced: read now.
                    Notice::Lost | Notice::Resume => return,
                }
            }
        };
        tokio::select! {
            // At least every `KEEPALIVE`, so that a quiet stream gets its comment line.
            _ = tokio::time::sleep(self.poll.min(KEEPALIVE)) => {}
            _ = announced => {}
        }
    }
}

/// The events of a batch, first as `batch` is: a task reads it again on each `wake` and sends
/// it whenever it changed, until it ends, is gone, or the client goes (`tx.closed()`), holding
/// `slot` till then.
fn stream<S: 'static>(
    pool: PgPool,
    project: ProjectId,
    id: BatchId,
    mut batch: BatchRecord,
    mut wake: Wake,
    slot: S,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
    actix_web::rt::spawn(async move {
        let _slot = slot;
        let mut sent: Option<BatchObject> = None;
        let mut wrote = Instant::now();
        loop {
            let object = BatchObject::new(&batch);
            if sent.as_ref() != Some(&object) {
                if tx.send(Ok(event(&object))).await.is_err() {
                    return;
                }
                sent = Some(object);
                wrote = Instant::now();
            }
            if batch.status.is_terminal() {
                return;
            }
            tokio::select! {
                _ = wake.next(&id) => {}
                _ = tx.closed() => return,
            }
            if wrote.elapsed() >= KEEPALIVE {
                if tx
                    .send(Ok(Bytes::from_static(b": keepalive\n\n")))
                    .await
                    .is_err()
                {
                    return;
                }
                wrote = Instant::now();
            }
            match batches::get(&pool, &project, &id).await {
                Ok(b) => batch = b,
                Err(ApiError::BatchNotFound { .. }) => return,
                // The database may come back; the client keeps its stream meanwhile.
                Err(e) => {
                    tracing::warn!(batch_id = %id, error = %e, "event stream: reading the batch failed")
                }
            }
        }
    });
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
