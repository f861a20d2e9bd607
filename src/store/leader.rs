//! Session advisory locks: how one replica of many becomes the one that runs a chore.

use sqlx::PgConnection;

/// Takes the lock on this connection if no other session holds it; kept until the connection
/// closes, so a replica that dies gives it up with its connection.
pub async fn try_lock(conn: &mut PgConnection, key: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(r#"SELECT pg_try_advisory_lock($1) AS "locked!""#, key)
        .fetch_one(conn)
        .await
}

/// Whether the connection that holds a lock still works (and with it, the lock).
pub async fn still_held(conn: &mut PgConnection) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar!(r#"SELECT 1 AS "one!""#)
        .fetch_one(conn)
        .await
        .map(|_| true)
}
