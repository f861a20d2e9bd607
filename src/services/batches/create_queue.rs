//! Batch creations from concurrent requests, written to PostgreSQL together.
//!
//! A create is one small insert, and on a machine whose cores PostgreSQL shares, what it costs is
//! mostly the round trip and the commit around it, not the row: a handful of writers each take
//! every creation waiting at that moment and insert them in one statement and one commit. Under
//! no load a creation goes alone, as soon as it arrives; under load the statements grow, and
//! the database's work per creation shrinks.
//!
//! A statement that fails is re-run row by row only when PostgreSQL surely did not carry it out
//! ([`statement_outcome`]); when the connection was lost after it was sent, its rows may be in,
//! and each creation is answered [`CreateError::OutcomeUnknown`] instead of being inserted a
//! second time.

use std::collections::HashMap;
use std::sync::Arc;

use sqlx::postgres::{PgDatabaseError, PgSeverity};
use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot, Mutex};

use super::{resolve, Created};
use crate::error::ApiError;
use crate::store::batches::{self, NewBatch, Options};

/// Statements in flight at once per replica.
const WRITERS: usize = 4;
/// The most rows one statement carries.
const MAX_ROWS: usize = 128;

/// The handle requests send their creations through; cheap to clone.
#[derive(Clone)]
pub struct CreateQueue {
    jobs: mpsc::Sender<Job>,
    max_active: i64,
}

struct Job {
    batch: NewBatch,
    reply: oneshot::Sender<Reply>,
}

enum Reply {
    Inserted(Box<batches::BatchRecord>),
    /// Its key is taken, or its project is at the limit.
    NotInserted(NewBatch),
    /// The statement was refused (or never sent): the creation is made alone, so that it gets
    /// its own error (or succeeds, when another row of the statement was the cause).
    Failed(NewBatch),
    /// The connection was lost once the statement was sent: its rows may be in or not.
    Unknown,
}

/// Why a creation has no answer.
#[derive(Debug)]
pub enum CreateError {
    /// A statement failed and PostgreSQL did not carry it out (or a read failed).
    Database(sqlx::Error),
    /// The connection was lost after the statement creating the batch was sent: it may or may
    /// not exist. Never re-run: without an idempotency key that could make it twice; the
    /// client's retry with its key replays it if it was made.
    OutcomeUnknown,
}

impl From<sqlx::Error> for CreateError {
    fn from(e: sqlx::Error) -> Self {
        Self::Database(e)
    }
}

impl From<CreateError> for ApiError {
    fn from(e: CreateError) -> Self {
        match e {
            CreateError::Database(e) => e.into(),
            CreateError::OutcomeUnknown => ApiError::CreationOutcomeUnknown,
        }
    }
}

impl std::fmt::Display for CreateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Database(e) => e.fmt(f),
            Self::OutcomeUnknown => f.write_str("the outcome of the creation is unknown"),
        }
    }
}

/// Whether a failed statement may have been carried out all the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// PostgreSQL refused it: an error of severity ERROR ends the statement's (implicit)
    /// transaction with a rollback, and none is reported after a commit.
    NotApplied,
    /// Anything else. The connection broke (I/O, or a FATAL such as the backend being
    /// terminated, which can come at any point, even after the commit), or the answer could
    /// not be read (a protocol or decoding error, after the rows may be in).
    Unknown,
}

/// What `e`, the error of a statement sent on a connection already acquired, says about it.
/// Only a refusal is safe to run again; a pool error is not here, since nothing was sent.
pub fn statement_outcome(e: &sqlx::Error) -> Outcome {
    let refused = e
        .as_database_error()
        .and_then(|d| d.try_downcast_ref::<PgDatabaseError>())
        .is_some_and(|d| d.severity() == PgSeverity::Error);
    if refused {
        Outcome::NotApplied
    } else {
        Outcome::Unknown
    }
}

impl CreateQueue {
    /// Starts the writers; they stop when the last handle is dropped. `max_active`: unfinished
    /// batches a project may have, 0 for no limit.
    pub fn start(pool: PgPool, max_active: i64) -> Self {
        let (jobs, queue) = mpsc::channel(WRITERS * MAX_ROWS);
        let queue = Arc::new(Mutex::new(queue));
        for _ in 0..WRITERS {
            tokio::spawn(write(pool.clone(), queue.clone(), max_active));
        }
        Self { jobs, max_active }
    }

    /// Inserts the batch, or finds the one created earlier under its idempotency key.
    #[tracing::instrument(skip_all, name = "db.batches.create")]
    pub async fn create(&self, pool: &PgPool, batch: NewBatch) -> Result<Created, CreateError> {
        let (reply, answer) = oneshot::channel();
        let batch = match self.jobs.send(Job { batch, reply }).await {
            Ok(()) => match answer.await {
                Ok(Reply::Inserted(record)) => return Ok(Created::New(*record)),
                Ok(Reply::NotInserted(batch)) => match &batch.key {
                    Some(key) => match batches::by_key(pool, &batch.project, key).await? {
                        Some(found) => return Ok(resolve(found, &batch.hash)),
                        // Refused by the limit: alone, the count is this batch's own.
                        None => batch,
                    },
                    None => batch,
                },
                Ok(Reply::Failed(batch)) => batch,
                Ok(Reply::Unknown) => return Err(CreateError::OutcomeUnknown),
                // The writer went away mid-statement: the row may or may not be in, so not
                // alone (a second batch); an error, which the client's retry with its key mends.
                Err(_) => return Err(CreateError::OutcomeUnknown),
            },
            // The writers are gone (shutting down): alone, then.
            Err(mpsc::error::SendError(job)) => job.batch,
        };
        self.alone(pool, &batch).await
    }

    async fn alone(&self, pool: &PgPool, batch: &NewBatch) -> Result<Created, CreateError> {
        let mut conn = pool.acquire().await?;
        let created = batches::create(
            &mut conn,
            &batch.project,
            &batch.spec,
            Options {
                key: batch.key.as_ref(),
                expires_in_secs: batch.expires_in_secs,
                max_active: self.max_active,
                trace_context: batch.trace_context.as_deref(),
                retry_of: None,
                params_hash: &batch.hash,
            },
        )
        .await;
        let created = created.map_err(|e| match statement_outcome(&e) {
            Outcome::NotApplied => CreateError::Database(e),
            Outcome::Unknown => {
                tracing::warn!(error = %e, "the connection was lost while creating a batch");
                CreateError::OutcomeUnknown
            }
        })?;
        Ok(Created::from_insert(created, &batch.hash))
    }
}

async fn write(pool: PgPool, queue: Arc<Mutex<mpsc::Receiver<Job>>>, max_active: i64) {
    loop {
        let mut jobs = Vec::new();
        // The writer holding the lock waits for the next creation, then takes all that queued
        // behind it; the others wait for the lock meanwhile, not for creations.
        {
            let mut queue = queue.lock().await;
            match queue.recv().await {
                Some(job) => jobs.push(job),
                None => return,
            }
            while jobs.len() < MAX_ROWS {
                match queue.try_recv() {
                    Ok(job) => jobs.push(job),
                    Err(_) => break,
                }
            }
        }
        flush(&pool, jobs, max_active).await;
    }
}

/// Inserts the jobs' batches in one statement and answers each job.
async fn flush(pool: &PgPool, jobs: Vec<Job>, max_active: i64) {
    let rows: Vec<&NewBatch> = jobs.iter().map(|j| &j.batch).collect();
    let inserted = match pool.acquire().await {
        Ok(mut conn) => batches::insert_many(&mut conn, &rows, max_active)
            .await
            .map_err(|e| (statement_outcome(&e), e)),
        // Nothing was sent.
        Err(e) => Err((Outcome::NotApplied, e)),
    };
    let inserted = match inserted {
        Ok(records) => records,
        Err((Outcome::NotApplied, e)) => {
            if jobs.len() > 1 {
                tracing::warn!(error = %e, rows = jobs.len(), "inserting batches together failed; inserting each alone");
            }
            for job in jobs {
                let _ = job.reply.send(Reply::Failed(job.batch));
            }
            return;
        }
        Err((Outcome::Unknown, e)) => {
            tracing::warn!(error = %e, rows = jobs.len(), "the connection was lost while inserting batches; their creations are answered with a retryable error");
            for job in jobs {
                let _ = job.reply.send(Reply::Unknown);
            }
            return;
        }
    };
    let mut by_id: HashMap<String, batches::BatchRecord> = inserted
        .into_iter()
        .map(|r| (r.id.as_str().to_owned(), r))
        .collect();
    for job in jobs {
        // A requester that gave up (its client went away) drops its answer; the batch stays.
        let _ = job.reply.send(match by_id.remove(job.batch.id.as_str()) {
            Some(record) => Reply::Inserted(Box::new(record)),
            None => Reply::NotInserted(job.batch),
        });
    }
}

#[cfg(test)]
mod tests {
    use actix_web::http::{header, StatusCode};
    use actix_web::ResponseError;

    use super::*;

    #[test]
    fn a_creation_of_unknown_outcome_is_a_503_the_sdks_retry() {
        let e = ApiError::from(CreateError::OutcomeUnknown);
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.to_json()["error"]["type"], "server_error");
        let res = e.error_response();
        assert_eq!(res.headers().get("x-should-retry").unwrap(), "true");
        assert_eq!(res.headers().get(header::RETRY_AFTER).unwrap(), "1");
        // A refused statement keeps its own answer.
        let e = ApiError::from(CreateError::Database(sqlx::Error::PoolTimedOut));
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
