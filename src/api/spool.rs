//! Receiving an upload's body without letting its client hold anything shared: the body is
//! read through a [`Guard`] that counts every byte of the request and gives up on a stalled
//! client. The file itself goes to a local spool (`services::files::Spool`), and the database is
//! used only once the whole request is in.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::error::PayloadError;
use actix_web::web;
use bytes::Bytes;
use futures_util::Stream;
use tokio::time::{Instant, Sleep};

use crate::error::ApiError;

/// Bytes of a multipart request that are not the file's content (preamble, boundaries, part
/// headers, the small text parts, ignored parts) that a request may carry. The parser buffers
/// a part's headers until their end, so this also caps the memory a header can take. Far
/// above what a real form needs, and above one network read, since the parser reads ahead:
/// the first bytes of the file may be counted here, and the next part's as the file's.
pub const FORM_OVERHEAD_BYTES: u64 = 1024 * 1024;

/// Why the guard stopped reading the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Breach {
    Idle,
    Deadline,
    TooLarge,
    OverheadTooLarge,
}

#[derive(Default)]
struct Shared {
    breach: Cell<Option<Breach>>,
    in_file: Cell<bool>,
    overhead: Cell<u64>,
    file: Cell<u64>,
}

/// The handler's side of a guarded body: says which bytes are file content, and explains a
/// read error that the guard caused.
#[derive(Clone)]
pub struct Guard {
    shared: Rc<Shared>,
    max_file_bytes: u64,
    idle: Duration,
    total: Duration,
}

pub struct GuardSettings {
    pub max_file_bytes: u64,
    pub idle: Duration,
    pub total: Duration,
}

impl Guard {
    /// Wraps `payload`; the returned stream is what the multipart parser reads.
    pub fn wrap(payload: web::Payload, settings: GuardSettings) -> (Self, GuardedPayload) {
        let shared = Rc::new(Shared::default());
        let now = Instant::now();
        let stream = GuardedPayload {
            inner: payload,
            shared: shared.clone(),
            max_file_bytes: settings.max_file_bytes,
            idle_for: settings.idle,
            idle: Box::pin(tokio::time::sleep_until(now + settings.idle)),
            deadline: Box::pin(tokio::time::sleep_until(now + settings.total)),
        };
        let guard = Self {
            shared,
            max_file_bytes: settings.max_file_bytes,
            idle: settings.idle,
            total: settings.total,
        };
        (guard, stream)
    }

    /// Bytes read from now on are the file's content (true) or form overhead (false).
    pub fn set_in_file(&self, in_file: bool) {
        self.shared.in_file.set(in_file);
    }

    /// The error to answer with: the guard's own reason if it cut the body short, else
    /// `otherwise` (a malformed body).
    pub fn explain(&self, otherwise: ApiError) -> ApiError {
        match self.shared.breach.get() {
            None => otherwise,
            Some(Breach::Idle) => ApiError::UploadStalled {
                idle_secs: self.idle.as_secs(),
            },
            Some(Breach::Deadline) => ApiError::UploadTooSlow {
                limit_secs: self.total.as_secs(),
            },
            Some(Breach::TooLarge) => ApiError::FileTooLarge {
                max: self.max_file_bytes,
            },
            Some(Breach::OverheadTooLarge) => ApiError::FormTooLarge {
                max: FORM_OVERHEAD_BYTES,
            },
        }
    }
}

/// The request body as the multipart parser sees it: it ends in an error as soon as the
/// client stalls, runs out of time, or sends more than the limits allow.
pub struct GuardedPayload {
    inner: web::Payload,
    shared: Rc<Shared>,
    max_file_bytes: u64,
    idle_for: Duration,
    idle: Pin<Box<Sleep>>,
    deadline: Pin<Box<Sleep>>,
}

impl GuardedPayload {
    fn breach(&self, breach: Breach) -> Poll<Option<Result<Bytes, PayloadError>>> {
        self.shared.breach.set(Some(breach));
        let kind = match breach {
            Breach::Idle | Breach::Deadline => io::ErrorKind::TimedOut,
            Breach::TooLarge | Breach::OverheadTooLarge => io::ErrorKind::InvalidData,
        };
        Poll::Ready(Some(Err(PayloadError::Io(io::Error::new(
            kind,
            format!("{breach:?}"),
        )))))
    }
}

impl Stream for GuardedPayload {
    type Item = Result<Bytes, PayloadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if let Some(breach) = self.shared.breach.get() {
            return self.breach(breach);
        }
        match Pin::new(&mut self.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                let n = chunk.len() as u64;
                let s = &self.shared;
                // Bytes the parser pulls while the handler reads the file part are content
                // (a read ahead across a part's edge may be miscounted: bounded by a read).
                let (counter, limit, breach) = if s.in_file.get() {
                    // The handler checks the file's exact size; this is the backstop.
                    (
                        &s.file,
                        self.max_file_bytes + FORM_OVERHEAD_BYTES,
                        Breach::TooLarge,
                    )
                } else {
                    (&s.overhead, FORM_OVERHEAD_BYTES, Breach::OverheadTooLarge)
                };
                counter.set(counter.get() + n);
                if counter.get() > limit {
                    return self.breach(breach);
                }
                let next = Instant::now() + self.idle_for;
                self.idle.as_mut().reset(next);
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Pending => {
                if self.deadline.as_mut().poll(cx).is_ready() {
                    return self.breach(Breach::Deadline);
                }
                if self.idle.as_mut().poll(cx).is_ready() {
                    return self.breach(Breach::Idle);
                }
                Poll::Pending
            }
            other => other,
        }
    }
}
