//! The records of `GET /v1/batches/{id}/results`: each a result-file line exactly as its file
//! holds (or will hold) it, with `line`, `cursor` and `file` added in front.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use sqlx::PgPool;
use tokio::sync::mpsc;

use super::record::{record, ResultFile};
use super::FinishedLines;
use crate::domain::{BatchId, ResultsCursor};
use crate::engine::order::LiveOrder;
use crate::jsonl::group;
use crate::store::results;

/// Result groups read per query (about; at least one group).
const PAGE_BYTES: i64 = 512 << 10;
/// Records sent to the client per write once this many bytes are ready.
const SEND_BYTES: usize = 256 << 10;

/// Where the records come from.
pub enum Source {
    /// The batch runs: its stored result groups, in commit order, from this position.
    Live { seq: i64, taken: u32 },
    /// The batch ended: its files in input order, from request `next`, without the lines its
    /// reader had from the live stream when it followed that.
    Final {
        lines: Box<FinishedLines>,
        next: u32,
        read_live: Option<ReadLive>,
    },
}

/// What a reader who began while the batch ran has read of it: the lines the live stream
/// served before `position`.
pub struct ReadLive {
    pub order: LiveOrder,
    pub position: u32,
}

/// The producing side of a results response. Memory per reader is bounded whatever its client
/// does: a page of groups (`PAGE_BYTES`, or one group past it) is read, each group is encoded
/// and dropped in turn, at most `SEND_BYTES` (and one record) wait in `buf`, and one chunk waits
/// in the channel, which the response takes from only as fast as its client reads. A client
/// that takes nothing for `idle` is cut off: the producer ends (freeing what it held, and the
/// reader's slot), and the response ends in an error once it has handed over what was queued,
/// so that a cut-off response is never taken for the whole.
pub struct Outbox {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    idle: Duration,
    cut: Arc<AtomicBool>,
}

/// An [`Outbox`] and the response body it feeds.
pub fn outbox(
    idle: Duration,
) -> (
    Outbox,
    impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + 'static,
) {
    let (tx, mut rx) = mpsc::channel(1);
    let cut = Arc::new(AtomicBool::new(false));
    let out = Outbox {
        tx,
        idle,
        cut: cut.clone(),
    };
    let body = futures_util::stream::poll_fn(move |cx| match rx.poll_recv(cx) {
        Poll::Ready(None) if cut.swap(false, Ordering::AcqRel) => {
            Poll::Ready(Some(Err(std::io::Error::other("results response cut off"))))
        }
        other => other,
    });
    (out, body)
}

impl Outbox {
    /// Hands a chunk to the response; false when the client has gone or took nothing for the
    /// idle timeout (then the response is cut off).
    async fn send(&self, chunk: Bytes) -> bool {
        match tokio::time::timeout(self.idle, self.tx.send(Ok(chunk))).await {
            Ok(sent) => sent.is_ok(),
            Err(_) => {
                tracing::info!(
                    idle_secs = self.idle.as_secs(),
                    "results reader took nothing for the idle timeout: cut off"
                );
                self.abort();
                false
            }
        }
    }

    /// Ends the response in an error once what was queued is handed over: a client never takes
    /// a cut-off stream for the whole.
    pub fn abort(&self) {
        self.cut.store(true, Ordering::Release);
    }
}

/// Hands what `buf` holds to the response; false when the client has gone or was cut off.
async fn send(out: &Outbox, buf: &mut Vec<u8>) -> bool {
    let chunk = Bytes::from(std::mem::replace(buf, Vec::with_capacity(SEND_BYTES)));
    out.send(chunk).await
}

/// Sends every record available now to `tx`, a page at a time: for a running batch, until it
/// has caught up with what is stored; for an ended one, to the end of its files. Returns early
/// when the client has gone.
pub async fn produce(
    pool: PgPool,
    batch: BatchId,
    source: Source,
    out: &Outbox,
) -> anyhow::Result<()> {
    let mut buf = Vec::with_capacity(SEND_BYTES);
    match source {
        Source::Live { mut seq, mut taken } => loop {
            let groups = results::live_page(&pool, &batch, seq, PAGE_BYTES).await?;
            let Some(last) = groups.last().map(|g| g.seq) else {
                break;
            };
            // Each group is dropped once encoded: a reader holds one page at most.
            for g in groups {
                let skip = if g.seq == seq { taken as usize } else { 0 };
                for (k, stored) in group::decode(&g.lines).enumerate().skip(skip) {
                    let s = stored?;
                    let cursor = ResultsCursor::Live {
                        seq: g.seq,
                        taken: k as u32 + 1,
                    }
                    .encode(&batch);
                    record(
                        &mut buf,
                        i64::from(s.line),
                        &cursor,
                        ResultFile::of(s.success),
                        s.file_line.as_bytes(),
                    );
                    if buf.len() >= SEND_BYTES && !send(out, &mut buf).await {
                        return Ok(());
                    }
                }
            }
            (seq, taken) = (last + 1, 0);
            if !buf.is_empty() && !send(out, &mut buf).await {
                return Ok(());
            }
        },
        Source::Final {
            mut lines,
            next,
            read_live,
        } => {
            while let Some(f) = lines.next().await? {
                if f.ordinal < next {
                    continue;
                }
                let cursor = match &read_live {
                    Some(r) if r.order.read_before(f.ordinal, r.position) => continue,
                    Some(r) => ResultsCursor::Resumed {
                        seen: r.position,
                        next: f.ordinal + 1,
                    },
                    None => ResultsCursor::Final {
                        next: f.ordinal + 1,
                    },
                }
                .encode(&batch);
                record(
                    &mut buf,
                    i64::from(f.ordinal),
                    &cursor,
                    ResultFile::of(f.output),
                    &f.line,
                );
                if buf.len() >= SEND_BYTES && !send(out, &mut buf).await {
                    return Ok(());
                }
            }
            if !buf.is_empty() {
                send(out, &mut buf).await;
            }
        }
    }
    Ok(())
}
