//! Giving the space of purged content back to the file system.
//!
//! VACUUM returns the empty pages at the end of a table, but not those of a b-tree: the index of
//! a TOAST table (one entry per ~2 KB slice of every large value) keeps its high-water mark. Once
//! 400 MB of file content is purged, `file_chunks`' TOAST index still holds ~6 MB of empty pages:
//! reused by later uploads, but never freed. `REINDEX TABLE CONCURRENTLY` rebuilds the indexes
//! from the live rows without blocking reads or writes (it takes the lock VACUUM takes).

use sqlx::PgPool;

/// The tables whose values live in TOAST and are deleted in bulk (named again in `bloated`);
/// names are fixed, so they can be spliced into the statements that take no parameters.
const TABLES: [&str; 2] = ["file_chunks", "batch_results"];

/// Bytes a packed TOAST index entry takes, with margin: ~22 measured (an 8-byte key, tuple
/// header and line pointer, leaves 90 % full), so an index over this per live slice is
/// mostly empty pages.
const NEEDED_PER_SLICE: i64 = 3 * 22;

/// Bytes of a value per TOAST slice (`TOAST_MAX_CHUNK_SIZE` with 8 KiB pages).
const SLICE_BYTES: i64 = 1996;

/// A table whose TOAST index is mostly empty pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bloated {
    pub table: &'static str,
    pub index_bytes: i64,
}

/// The tables whose TOAST index holds more than `slack` bytes beyond what their live values
/// need. The live bytes are summed from the tables' own rows — `pg_column_size` of a TOASTed
/// value reads its pointer only, and both tables hold one row per MiB or per flush, so the scan
/// is small — because the statistics counters can lag a purge by far more than a check's
/// interval.
#[tracing::instrument(level = "debug", skip_all, name = "db.compact.bloated")]
pub async fn bloated(pool: &PgPool, slack: i64) -> Result<Vec<Bloated>, sqlx::Error> {
    let rows = sqlx::query!(
        r#"WITH live (name, stored) AS (
              SELECT 'file_chunks', (SELECT coalesce(sum(pg_column_size(data)), 0) FROM file_chunks)
              UNION ALL
              SELECT 'batch_results',
                     (SELECT coalesce(sum(pg_column_size(lines)), 0) FROM batch_results)
           )
           SELECT live.name AS "name!", pg_relation_size(i.indexrelid) AS "index_bytes!"
           FROM live
           JOIN pg_class c ON c.relname = live.name
                          AND c.relnamespace = current_schema()::regnamespace
           JOIN pg_index i ON i.indrelid = c.reltoastrelid AND i.indisvalid
           WHERE pg_relation_size(i.indexrelid) > $1 + $2 * (live.stored / $3)"#,
        slack,
        NEEDED_PER_SLICE,
        SLICE_BYTES,
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|r| {
            let table = TABLES.into_iter().find(|t| *t == r.name)?;
            Some(Bloated {
                table,
                index_bytes: r.index_bytes,
            })
        })
        .collect())
}

/// Rebuilds a table's indexes (its TOAST index among them) from its live rows; returns the
/// TOAST index's size afterwards. A rebuild interrupted by a crash leaves an invalid `_ccnew`
/// copy behind, which would be maintained on every write and never used: those are dropped
/// first.
#[tracing::instrument(skip_all, name = "db.compact.reindex", fields(table = table))]
pub async fn reindex(pool: &PgPool, table: &'static str) -> Result<i64, sqlx::Error> {
    debug_assert!(TABLES.contains(&table));
    let leftovers = sqlx::query_scalar!(
        r#"SELECT i.indexrelid::regclass::text AS "index!"
           FROM pg_class c JOIN pg_index i ON i.indrelid IN (c.oid, c.reltoastrelid)
           WHERE c.relnamespace = current_schema()::regnamespace AND c.relname = $1
             AND NOT i.indisvalid"#,
        table,
    )
    .fetch_all(pool)
    .await?;
    for index in leftovers {
        // Built at run time: an index name cannot be a bound parameter; this one comes from
        // `regclass::text`, quoted by PostgreSQL itself.
        sqlx::raw_sql(&format!("DROP INDEX CONCURRENTLY IF EXISTS {index}"))
            .execute(pool)
            .await?;
    }
    // Built at run time (a table name cannot be bound); the simple protocol, as REINDEX
    // CONCURRENTLY must not run inside a transaction block.
    sqlx::raw_sql(&format!("REINDEX TABLE CONCURRENTLY {table}"))
        .execute(pool)
        .await?;
    sqlx::query_scalar!(
        r#"SELECT pg_relation_size(i.indexrelid) AS "bytes!"
           FROM pg_class c JOIN pg_index i ON i.indrelid = c.reltoastrelid AND i.indisvalid
           WHERE c.relnamespace = current_schema()::regnamespace AND c.relname = $1"#,
        table,
    )
    .fetch_one(pool)
    .await
}
