//! The line pipeline of one replica: claim → execute → store, continuously. A free slot is
//! refilled as soon as one line's result is stored, so a slow line never holds back others.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tracing::Instrument;

use super::{sleep_or_stop, Ctx};
use crate::store::requests::{self, ClaimedLine, Finished};
use crate::upstream::{traceparent_for, Outcome};

/// Most results written in one statement.
const MAX_FLUSH: usize = 256;

struct Done {
    result: Finished,
    /// The line's slot; freed only once the result is stored, which bounds the work a killed
    /// replica can lose to `max_in_flight`.
    _slot: OwnedSemaphorePermit,
}

pub(super) async fn run(ctx: Arc<Ctx>, stop: watch::Receiver<bool>) {
    let (tx, rx) = mpsc::channel::<Done>(ctx.settings.max_in_flight);
    let flusher = tokio::spawn(flush(ctx.clone(), rx));
    dispatch(ctx, stop, tx).await;
    // The flusher ends when the last in-flight line has sent its result.
    let _ = flusher.await;
}

async fn dispatch(ctx: Arc<Ctx>, mut stop: watch::Receiver<bool>, results: mpsc::Sender<Done>) {
    let slots = Arc::new(Semaphore::new(ctx.settings.max_in_flight));
    let poll = Duration::from_millis(ctx.settings.poll_interval_ms);
    let mut failures = 0_u32;
    loop {
        let first = tokio::select! {
            p = slots.clone().acquire_owned() => p.expect("never closed"),
            _ = stop.changed() => return,
        };
        if *stop.borrow() {
            return;
        }
        let mut permits = vec![first];
        while permits.len() < ctx.settings.claim_size {
            match slots.clone().try_acquire_owned() {
                Ok(p) => permits.push(p),
                Err(_) => break,
            }
        }
        let claimed = match requests::claim(
            &ctx.pool,
            &ctx.owner,
            permits.len(),
            ctx.settings.lease_secs,
        )
        .await
        {
            Ok(c) => {
                failures = 0;
                c
            }
            Err(e) => {
                failures += 1;
                tracing::warn!(error = %e, "claiming lines failed; retrying");
                drop(permits);
                let backoff = poll * 2_u32.saturating_pow(failures.min(5));
                if sleep_or_stop(&mut stop, backoff).await {
                    return;
                }
                continue;
            }
        };
        if claimed.is_empty() {
            drop(permits);
            if sleep_or_stop(&mut stop, poll).await {
                return;
            }
            continue;
        }
        permits.truncate(claimed.len());
        let takeovers = claimed.iter().filter(|l| l.attempts > 1).count();
        crate::metrics::get()
            .lease_takeovers
            .inc_by(takeovers as u64);
        for (line, slot) in claimed.into_iter().zip(permits) {
            tokio::spawn(execute_line(ctx.clone(), line, slot, results.clone()));
        }
    }
}

async fn execute_line(
    ctx: Arc<Ctx>,
    line: ClaimedLine,
    slot: OwnedSemaphorePermit,
    results: mpsc::Sender<Done>,
) {
    let span = tracing::info_span!(
        "batch_line",
        otel.kind = "internal",
        batch_id = %line.batch_id,
        line = line.line,
        model = %line.model,
    );
    // The line's trace is its own; a link leads back to the request that created the batch.
    if let Some(tp) = &line.trace_context {
        crate::telemetry::link_to(&span, tp);
    }
    let outcome = async {
        // Upstream calls carry this trace when tracing is on, else one trace id per batch.
        let traceparent = crate::telemetry::traceparent(&tracing::Span::current())
            .unwrap_or_else(|| traceparent_for(line.batch_id.as_str()));
        ctx.upstreams
            .execute(&line.endpoint, &line.model, &line.body, &traceparent)
            .await
    }
    .instrument(span)
    .await;
    let ok = matches!(&outcome, Outcome::Response { status, .. } if (200..300).contains(status));
    crate::metrics::get()
        .lines
        .with_label_values(&[if ok { "succeeded" } else { "failed" }])
        .inc();
    let result = match outcome {
        Outcome::Response {
            status,
            request_id,
            body,
        } => Finished {
            batch_id: line.batch_id,
            line: line.line,
            status_code: Some(i32::from(status)),
            // PostgreSQL's jsonb refuses NUL characters; keep the text, lose only those.
            response: Some(body.to_string().replace("\\u0000", "\\ufffd")),
            request_id,
            error_code: None,
            error_message: None,
        },
        Outcome::Failure { code, message } => Finished {
            batch_id: line.batch_id,
            line: line.line,
            status_code: None,
            response: None,
            request_id: None,
            error_code: Some(code.to_owned()),
            error_message: Some(message),
        },
    };
    let _ = results
        .send(Done {
            result,
            _slot: slot,
        })
        .await;
}

/// Writes results in groups, group-commit style: each write takes everything that finished
/// while the previous one ran (up to `MAX_FLUSH`), so groups grow with load and a result never
/// waits for a timer. `flush_interval_ms` > 0 adds a wait for stragglers; since a line's slot
/// is held until its result is stored, any wait there is paid in throughput.
/// A failed write (database restarting) is retried with the results kept; their slots stay
/// taken meanwhile, so the replica stops claiming instead of piling up work.
async fn flush(ctx: Arc<Ctx>, mut rx: mpsc::Receiver<Done>) {
    let window = Duration::from_millis(ctx.settings.flush_interval_ms);
    let mut buf: Vec<Done> = Vec::with_capacity(MAX_FLUSH);
    while let Some(first) = rx.recv().await {
        buf.push(first);
        let deadline = Instant::now() + window;
        while buf.len() < MAX_FLUSH {
            match rx.try_recv() {
                Ok(d) => buf.push(d),
                Err(_) if window.is_zero() => break,
                Err(_) => match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(d)) => buf.push(d),
                    Ok(None) | Err(_) => break,
                },
            }
        }
        let results: Vec<Finished> = buf.iter().map(|d| d.result.clone()).collect();
        let mut delay = Duration::from_millis(100);
        while let Err(e) = requests::store_results(&ctx.pool, &ctx.owner, &results).await {
            tracing::warn!(error = %e, lines = results.len(), "storing results failed; retrying");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
        buf.clear();
        ctx.wake_jobs.notify_one();
    }
}
