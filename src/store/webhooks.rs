//! Webhook endpoints and their deliveries (the outbox filled by the `webhooks_enqueue` trigger
//! of migration 0011, in the transaction of the batch's status change).

use sqlx::PgPool;

use crate::domain::{
    BatchId, DeliveryState, EndpointStatus, EventType, EventTypes, ProjectId, WebhookEndpointId,
    WebhookSecret, WebhookUrl,
};
use crate::store::keyset::{self, Page};

/// LISTEN/NOTIFY channel: deliveries were enqueued (sent by the trigger at commit).
pub const CHANNEL: &str = "openbatch_webhooks";

#[derive(Debug, Clone)]
pub struct EndpointRecord {
    pub id: WebhookEndpointId,
    pub url: String,
    pub events: Vec<EventType>,
    pub status: EndpointStatus,
    pub disabled_reason: Option<String>,
    pub disabled_at: Option<i64>,
    pub consecutive_failures: i32,
    pub created_at: i64,
    /// Until when the previous secret still signs, if a rotation's grace period is running.
    pub previous_secret_until: Option<i64>,
    /// Filled only by the statements whose answer shows it (create, rotate).
    pub secret: Option<String>,
}

/// None when the project already has `max` endpoints (checked in the insert itself, so
/// simultaneous creates may overshoot by their number).
pub async fn create(
    pool: &PgPool,
    project: &ProjectId,
    url: &WebhookUrl,
    events: &EventTypes,
    secret: &WebhookSecret,
    max: i64,
) -> Result<Option<EndpointRecord>, sqlx::Error> {
    let id = WebhookEndpointId::generate();
    sqlx::query_as!(
        EndpointRecord,
        r#"INSERT INTO webhook_endpoints (id, project_id, url, events, secret)
           SELECT $1, $2, $3, $4, $5
           WHERE (SELECT count(*) FROM webhook_endpoints WHERE project_id = $2) < $6
           RETURNING id AS "id: WebhookEndpointId", url, events AS "events: Vec<EventType>",
                  status AS "status: EndpointStatus",
                     disabled_reason, disabled_at, consecutive_failures, created_at,
                     CASE WHEN previous_secret_until > unix_now() THEN previous_secret_until END
                         AS previous_secret_until,
                     secret AS "secret?""#,
        id.as_str(),
        project.as_str(),
        url.as_str(),
        &events.as_strings(),
        secret.expose(),
        max,
    )
    .fetch_optional(pool)
    .await
}

pub async fn get(
    pool: &PgPool,
    project: &ProjectId,
    id: &WebhookEndpointId,
) -> Result<Option<EndpointRecord>, sqlx::Error> {
    sqlx::query_as!(
        EndpointRecord,
        r#"SELECT id AS "id: WebhookEndpointId", url, events AS "events: Vec<EventType>",
                  status AS "status: EndpointStatus",
                     disabled_reason, disabled_at, consecutive_failures, created_at,
                     CASE WHEN previous_secret_until > unix_now() THEN previous_secret_until END
                         AS previous_secret_until,
                  NULL::text AS secret
           FROM webhook_endpoints WHERE project_id = $1 AND id = $2"#,
        project.as_str(),
        id.as_str(),
    )
    .fetch_optional(pool)
    .await
}

/// Newest first, after the endpoint `after` (None: it is not one of the project's).
pub async fn list(
    pool: &PgPool,
    project: &ProjectId,
    after: Option<&WebhookEndpointId>,
    limit: u32,
) -> Result<Option<Page<EndpointRecord>>, sqlx::Error> {
    let cursor = after.map(|id| {
        sqlx::query_scalar!(
            "SELECT seq FROM webhook_endpoints WHERE project_id = $1 AND id = $2",
            project.as_str(),
            id.as_str(),
        )
        .fetch_optional(pool)
    });
    keyset::page(cursor, limit, |after, fetch| {
        sqlx::query_as!(
            EndpointRecord,
            r#"SELECT id AS "id: WebhookEndpointId", url, events AS "events: Vec<EventType>",
                  status AS "status: EndpointStatus",
                     disabled_reason, disabled_at, consecutive_failures, created_at,
                     CASE WHEN previous_secret_until > unix_now() THEN previous_secret_until END
                         AS previous_secret_until,
                  NULL::text AS secret
           FROM webhook_endpoints
           WHERE project_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3"#,
            project.as_str(),
            after.unwrap_or(i64::MAX),
            fetch,
        )
        .fetch_all(pool)
    })
    .await
}

/// Deletes the endpoint and its delivery log; pending deliveries go with it.
pub async fn delete(
    pool: &PgPool,
    project: &ProjectId,
    id: &WebhookEndpointId,
) -> Result<bool, sqlx::Error> {
    Ok(sqlx::query!(
        "DELETE FROM webhook_endpoints WHERE project_id = $1 AND id = $2",
        project.as_str(),
        id.as_str(),
    )
    .execute(pool)
    .await?
    .rows_affected()
        == 1)
}

/// Installs a new secret; the current one keeps signing for `grace_secs` more.
pub async fn rotate(
    pool: &PgPool,
    project: &ProjectId,
    id: &WebhookEndpointId,
    secret: &WebhookSecret,
    grace_secs: i64,
) -> Result<Option<EndpointRecord>, sqlx::Error> {
    sqlx::query_as!(
        EndpointRecord,
        r#"UPDATE webhook_endpoints
           SET previous_secret = secret, previous_secret_until = unix_now() + $4, secret = $3
           WHERE project_id = $1 AND id = $2
           RETURNING id AS "id: WebhookEndpointId", url, events AS "events: Vec<EventType>",
                  status AS "status: EndpointStatus",
                     disabled_reason, disabled_at, consecutive_failures, created_at,
                     CASE WHEN previous_secret_until > unix_now() THEN previous_secret_until END
                         AS previous_secret_until,
                     secret AS "secret?""#,
        project.as_str(),
        id.as_str(),
        secret.expose(),
        grace_secs,
    )
    .fetch_optional(pool)
    .await
}

/// Re-enables a disabled endpoint; deliveries still pending resume at once.
pub async fn enable(
    pool: &PgPool,
    project: &ProjectId,
    id: &WebhookEndpointId,
) -> Result<Option<EndpointRecord>, sqlx::Error> {
    sqlx::query_as!(
        EndpointRecord,
        r#"UPDATE webhook_endpoints
           SET status = 'enabled', disabled_reason = NULL, disabled_at = NULL,
               consecutive_failures = 0
           WHERE project_id = $1 AND id = $2
           RETURNING id AS "id: WebhookEndpointId", url, events AS "events: Vec<EventType>",
                  status AS "status: EndpointStatus",
                     disabled_reason, disabled_at, consecutive_failures, created_at,
                     CASE WHEN previous_secret_until > unix_now() THEN previous_secret_until END
                         AS previous_secret_until,
                     NULL::text AS secret"#,
        project.as_str(),
        id.as_str(),
    )
    .fetch_optional(pool)
    .await
}

#[derive(Debug, Clone)]
pub struct DeliveryRecord {
    pub event_id: String,
    pub event_type: EventType,
    pub batch_id: BatchId,
    pub created_at: i64,
    pub state: DeliveryState,
    pub attempts: i32,
    pub last_attempt_at: Option<i64>,
    pub last_status_code: Option<i32>,
    pub last_error: Option<String>,
    pub next_attempt_at: Option<i64>,
    pub delivered_at: Option<i64>,
}

/// An endpoint's delivery log, newest first (None: `after` is not in it). The caller has
/// checked that the endpoint is the project's.
pub async fn deliveries(
    pool: &PgPool,
    endpoint: &WebhookEndpointId,
    after: Option<&str>,
    limit: u32,
) -> Result<Option<Page<DeliveryRecord>>, sqlx::Error> {
    let cursor = after.map(|event| {
        sqlx::query_scalar!(
            "SELECT seq FROM webhook_deliveries WHERE endpoint_id = $1 AND event_id = $2",
            endpoint.as_str(),
            event,
        )
        .fetch_optional(pool)
    });
    keyset::page(cursor, limit, |after, fetch| {
        sqlx::query_as!(
        DeliveryRecord,
        r#"SELECT event_id, event_type AS "event_type: EventType", batch_id AS "batch_id: BatchId",
                  created_at, state AS "state: DeliveryState", attempts, last_attempt_at,
                  last_status_code, last_error,
                  delivered_at,
                  CASE WHEN state = 'pending'
                       THEN ceil(extract(epoch FROM next_attempt_at))::bigint END
                      AS next_attempt_at
           FROM webhook_deliveries
           WHERE endpoint_id = $1 AND seq < $2 ORDER BY seq DESC LIMIT $3"#,
            endpoint.as_str(),
            after.unwrap_or(i64::MAX),
            fetch,
        )
        .fetch_all(pool)
    })
    .await
}

/// A delivery claimed for one attempt.
#[derive(Debug, Clone)]
pub struct Due {
    pub endpoint_id: WebhookEndpointId,
    pub event_id: String,
    pub payload: String,
    /// This attempt's number; it also fences the result write.
    pub attempts: i32,
    pub url: String,
    pub secret: String,
    /// Set while a rotation's grace period runs: the message is signed with both.
    pub previous_secret: Option<String>,
}

/// Claims up to `limit` due deliveries of enabled endpoints. The lease is the due time itself:
/// pushed `lease_secs` ahead, so a replica that dies mid-attempt leaves the delivery due again
/// then (another replica sends it again, with the same `webhook-id`).
pub async fn claim_due(
    pool: &PgPool,
    limit: i64,
    lease_secs: f64,
) -> Result<Vec<Due>, sqlx::Error> {
    sqlx::query_as!(
        Due,
        r#"UPDATE webhook_deliveries d
         SET attempts = d.attempts + 1, next_attempt_at = now() + make_interval(secs => $2)
         FROM (SELECT q.endpoint_id, q.event_id, e.url, e.secret,
                      CASE WHEN e.previous_secret_until > unix_now() THEN e.previous_secret END
                          AS previous_secret
               FROM webhook_deliveries q JOIN webhook_endpoints e ON e.id = q.endpoint_id
               WHERE q.state = 'pending' AND q.next_attempt_at <= now() AND e.status = 'enabled'
               ORDER BY q.next_attempt_at
               LIMIT $1
               FOR UPDATE OF q SKIP LOCKED) c
         WHERE d.endpoint_id = c.endpoint_id AND d.event_id = c.event_id
         RETURNING d.endpoint_id AS "endpoint_id!: WebhookEndpointId", d.event_id AS "event_id!",
                   d.payload AS "payload!", d.attempts AS "attempts!", c.url AS "url!",
                   c.secret AS "secret!", c.previous_secret AS "previous_secret?""#,
        limit,
        lease_secs,
    )
    .fetch_all(pool)
    .await
}

/// What one attempt came to.
pub struct Outcome<'a> {
    pub delivered: bool,
    pub status_code: Option<i32>,
    pub error: Option<&'a str>,
    /// Wait before the next attempt, if this one failed.
    pub retry_in_secs: f64,
}

pub struct Policy {
    /// Give up on an event this long after it happened.
    pub max_retry_secs: i64,
    /// Disable an endpoint after this many failed attempts in a row.
    pub disable_after: i32,
}

/// Records an attempt's outcome, and the endpoint's run of failures (disabling it at the
/// limit), in one statement. A no-op if the claim was taken over meanwhile (its attempt number
/// moved on): the later attempt's outcome is the one that counts.
pub async fn record(
    pool: &PgPool,
    due: &Due,
    o: &Outcome<'_>,
    policy: &Policy,
) -> Result<(), sqlx::Error> {
    sqlx::query!(
        "WITH d AS (
            UPDATE webhook_deliveries SET
                state = CASE WHEN $4 THEN 'delivered'
                             WHEN created_at + $8 <= unix_now() THEN 'failed'
                             ELSE 'pending' END,
                next_attempt_at = CASE WHEN $4 OR created_at + $8 <= unix_now() THEN NULL
                                       ELSE now() + make_interval(secs => $7) END,
                finished_at = CASE WHEN $4 OR created_at + $8 <= unix_now() THEN now() END,
                delivered_at = CASE WHEN $4 THEN unix_now() END,
                last_attempt_at = unix_now(), last_status_code = $5, last_error = $6
            WHERE endpoint_id = $1 AND event_id = $2 AND attempts = $3 AND state = 'pending'
            RETURNING endpoint_id
         )
         UPDATE webhook_endpoints e SET
            consecutive_failures = CASE WHEN $4 THEN 0 ELSE e.consecutive_failures + 1 END,
            status = CASE WHEN NOT $4 AND e.consecutive_failures + 1 >= $9 THEN 'disabled'
                          ELSE e.status END,
            disabled_at = CASE WHEN NOT $4 AND e.consecutive_failures + 1 >= $9
                                    AND e.status = 'enabled'
                               THEN unix_now() ELSE e.disabled_at END,
            disabled_reason = CASE WHEN NOT $4 AND e.consecutive_failures + 1 >= $9
                                        AND e.status = 'enabled'
                                   THEN format('%s delivery attempts in a row failed; the last: %s',
                                               e.consecutive_failures + 1,
                                               coalesce('HTTP ' || $5::text, $6, 'error'))
                                   ELSE e.disabled_reason END
         FROM d WHERE e.id = d.endpoint_id",
        due.endpoint_id.as_str(),
        due.event_id,
        due.attempts,
        o.delivered,
        o.status_code,
        o.error,
        o.retry_in_secs,
        policy.max_retry_secs,
        policy.disable_after,
    )
    .execute(pool)
    .await?;
    Ok(())
}

/// Deletes up to `limit` finished deliveries older than `retention_secs` from the log.
pub async fn prune(pool: &PgPool, retention_secs: f64, limit: i64) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query!(
        "DELETE FROM webhook_deliveries WHERE (endpoint_id, event_id) IN (
            SELECT endpoint_id, event_id FROM webhook_deliveries
            WHERE state <> 'pending' AND finished_at < now() - make_interval(secs => $1)
            LIMIT $2)",
        retention_secs,
        limit,
    )
    .execute(pool)
    .await?
    .rows_affected())
}
