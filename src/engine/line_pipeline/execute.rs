//! Executing one line at the upstream, in its own span, a panic contained as a failure.

use std::sync::Arc;

use futures_util::FutureExt;
use tokio::sync::{mpsc, OwnedSemaphorePermit};
use tracing::Instrument;

use super::flusher::Done;
use super::limits::Limits;
use super::{let_go, Line};
use crate::engine::output::{self, Usage};
use crate::engine::upstream::{traceparent_in, Outcome};
use crate::engine::Ctx;

pub(super) async fn execute_line(
    ctx: Arc<Ctx>,
    line: Line,
    (slot, unstored, limits): (OwnedSemaphorePermit, OwnedSemaphorePermit, Arc<Limits>),
    results: mpsc::Sender<Done>,
) {
    let batch_id = line.chunk.held.batch_id.as_str();
    let span = tracing::info_span!(
        "batch_line",
        otel.kind = "internal",
        batch_id = %batch_id,
        line = line.line,
        model = %line.model,
    );
    // The line's trace is its own; a link leads back to the request that created the batch.
    if let Some(tp) = &line.chunk.trace_context {
        crate::telemetry::link_to(&span, tp);
    }
    let outcome = contain_panic(
        async {
            // Upstream calls carry this trace when tracing is on, else one trace id per batch.
            let traceparent = crate::telemetry::traceparent(&tracing::Span::current())
                .unwrap_or_else(|| traceparent_in(&line.chunk.trace_id));
            ctx.upstreams
                .execute(
                    line.chunk.endpoint.as_str(),
                    &line.model,
                    &line.body,
                    &traceparent,
                    line.chunk.until_stopped(),
                )
                .await
        }
        .instrument(span),
    )
    .await;
    drop(slot);
    let Some(outcome) = outcome else {
        // Its batch stopped while it waited for the upstream: it never ran, and its batch's
        // end (cancelled, expired) or the chunk's next owner accounts for it.
        drop(unstored);
        let_go(&ctx, &line.chunk, 1).await;
        return;
    };
    let success = outcome.is_success();
    crate::metrics::get()
        .lines
        .with_label_values(&[if success { "succeeded" } else { "failed" }])
        .inc();
    let mut usage = Usage::default();
    if let (true, Outcome::Response { body, .. }) = (success, &outcome) {
        usage.add(body);
    }
    let file_line = output::render(batch_id, line.line, &line.custom_id, &outcome);
    let backlog = limits.backlog(file_line.len());
    let _ = results
        .send(Done {
            chunk: line.chunk,
            line: line.line,
            success,
            file_line,
            usage,
            _unstored: unstored,
            _backlog: backlog,
        })
        .await;
}

/// A line whose execution panics (a bug) still ends with a result, a failure: otherwise its
/// chunk would wait for it forever, kept alive by the heartbeat, until the batch expired.
async fn contain_panic(
    work: impl std::future::Future<Output = Option<Outcome>>,
) -> Option<Outcome> {
    match std::panic::AssertUnwindSafe(work).catch_unwind().await {
        Ok(outcome) => outcome,
        Err(_) => Some(Outcome::Failure {
            code: "internal_error",
            message: "OpenBatch failed while executing this request.".to_owned(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_line_still_ends_with_a_failure() {
        let outcome = contain_panic(async { panic!("a bug") }).await;
        assert!(
            matches!(
                outcome,
                Some(Outcome::Failure {
                    code: "internal_error",
                    ..
                })
            ),
            "{outcome:?}"
        );
        let ok = contain_panic(async {
            Some(Outcome::Failure {
                code: "x",
                message: String::new(),
            })
        })
        .await;
        assert!(matches!(ok, Some(Outcome::Failure { code: "x", .. })));
    }
}
