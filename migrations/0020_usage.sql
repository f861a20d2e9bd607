-- Token usage for the Usage API, counted from the lines' real `usage` as they are stored (never
-- re-counted from files, and kept when a batch, its files or its project's keys go away).
--
-- Each flush adds one `usage_events` row per result group that holds successful lines, in the
-- flush's own statement: insert-only, so replicas flushing the same batch never wait on each
-- other. The maintainer folds events into per-minute rollups (`usage_minutes`), and minutes
-- older than the minute retention into hours (`usage_hours`), so that what is kept grows with
-- the combinations in use, not with the lines.

-- The key that created a batch (`key_<12 hex>`; none with authentication off).
ALTER TABLE batches ADD COLUMN api_key_id text;

CREATE TABLE usage_events (
    seq            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at             bigint NOT NULL DEFAULT unix_now(),
    project_id     text NOT NULL,
    endpoint       text NOT NULL,
    model          text NOT NULL,
    api_key_id     text,
    requests       bigint NOT NULL,
    input_tokens   bigint NOT NULL,
    cached_tokens  bigint NOT NULL,
    output_tokens  bigint NOT NULL
);

-- One row per (bucket, project, endpoint, model, key): the same shape for both widths.
CREATE TABLE usage_minutes (
    start          bigint NOT NULL,
    project_id     text NOT NULL,
    endpoint       text NOT NULL,
    model          text NOT NULL,
    api_key_id     text NOT NULL DEFAULT '',
    requests       bigint NOT NULL,
    input_tokens   bigint NOT NULL,
    cached_tokens  bigint NOT NULL,
    output_tokens  bigint NOT NULL,
    PRIMARY KEY (start, project_id, endpoint, model, api_key_id)
);

CREATE TABLE usage_hours (LIKE usage_minutes INCLUDING ALL);
