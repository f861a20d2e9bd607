-- Engine v2: the durable unit of work is a chunk of consecutive input lines, not a line.
-- PostgreSQL does a constant amount of work per chunk: one row to claim, one result row per
-- flush, and nothing per line is kept once the batch has ended.

-- Round robin across projects: the claim serves the project served longest ago.
ALTER TABLE projects ADD COLUMN served_at timestamptz;

CREATE TABLE batch_chunks (
    batch_id      text NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
    idx           integer NOT NULL CHECK (idx >= 0),
    project_id    text NOT NULL,
    batch_seq     bigint NOT NULL,          -- oldest batch first within a project
    -- The lines: file_id's content from byte start_offset of part start_part up to byte
    -- end_offset (exclusive) of part end_part. Usually the batch's input file.
    file_id       text NOT NULL,
    start_part    integer NOT NULL,
    start_offset  integer NOT NULL,
    end_part      integer NOT NULL,
    end_offset    integer NOT NULL,
    first_line    integer NOT NULL,         -- ordinal of its first request in the batch
    line_count    integer NOT NULL CHECK (line_count > 0),
    state         text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'running', 'done')),
    -- The fencing token: bumped by every claim (and by closing the chunk). A result is written
    -- only under the token it was claimed with, so a replica whose claim lapsed and was taken
    -- over can never write.
    attempt       integer NOT NULL DEFAULT 0,
    lease_owner   text,
    lease_until   timestamptz,
    -- Exact live progress, updated in the statement that writes each result group.
    completed     integer NOT NULL DEFAULT 0,
    failed        integer NOT NULL DEFAULT 0,
    input_tokens      bigint NOT NULL DEFAULT 0,
    cached_tokens     bigint NOT NULL DEFAULT 0,
    output_tokens     bigint NOT NULL DEFAULT 0,
    reasoning_tokens  bigint NOT NULL DEFAULT 0,
    total_tokens      bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (batch_id, idx)
) WITH (fillfactor = 70);  -- room for HOT updates: most flushes change only the counters

CREATE INDEX batch_chunks_pending ON batch_chunks (project_id, batch_seq, idx) WHERE state = 'pending';
CREATE INDEX batch_chunks_running ON batch_chunks (lease_until) WHERE state = 'running';

-- Finished lines, one row per flush of one chunk: each line as
-- "<line ordinal>\t<o|e>\t<its final output- or error-file JSON>\n" ('o': output file).
-- Deleted when the batch ends, in the transaction that writes its files.
-- Written once and read once: groups up to ~8 KB stay inline and uncompressed, larger ones are
-- compressed with lz4, which costs a fraction of pglz's CPU.
CREATE TABLE batch_results (
    batch_id   text NOT NULL,
    chunk_idx  integer NOT NULL,
    seq        bigint GENERATED ALWAYS AS IDENTITY,
    lines      text COMPRESSION lz4 NOT NULL,
    PRIMARY KEY (batch_id, chunk_idx, seq)
) WITH (toast_tuple_target = 8160);

-- Retention: content of deleted and expired files is purged by the janitor, which marks it here.
ALTER TABLE files ADD COLUMN purged boolean NOT NULL DEFAULT false;
UPDATE files SET purged = true WHERE deleted_at IS NOT NULL;
CREATE INDEX files_unpurged ON files ((coalesce(deleted_at, expires_at))) WHERE NOT purged;

-- Rolling upgrade: batches that v1 was running are converted, lines already done keep their
-- results. Each chunk of 256 queued lines gets its own part of a hidden (deleted) input file
-- rebuilt from the queued bodies, so the conversion does not depend on the original input file
-- still existing.
CREATE FUNCTION pg_temp.tokens(j jsonb) RETURNS bigint LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE WHEN jsonb_typeof(j) = 'number' AND (j #>> '{}') ~ '^-?[0-9]+$'
                THEN (j #>> '{}')::bigint ELSE 0 END
$$;

CREATE TEMP TABLE legacy_lines ON COMMIT DROP AS
SELECT r.batch_id, r.line, r.line / 256 AS chunk, b.project_id, b.seq AS batch_seq,
       'file-' || md5(r.batch_id) AS file_id,
       convert_to(json_build_object('custom_id', r.custom_id, 'method', 'POST', 'url', b.endpoint,
                                    'body', r.body::json)::text || E'\n', 'UTF8') AS raw,
       r.state = 'done' AS done,
       coalesce(r.status_code BETWEEN 200 AND 299, false) AS ok,
       json_build_object(
           'id', 'batch_req_' || left(encode(sha256(convert_to(r.batch_id || '/' || r.line, 'UTF8')), 'hex'), 32),
           'custom_id', r.custom_id,
           'response', CASE WHEN r.status_code IS NULL THEN NULL
                            ELSE json_build_object('status_code', r.status_code,
                                                   'request_id', r.request_id,
                                                   'body', r.response) END,
           'error', CASE WHEN r.error_code IS NOT NULL
                             THEN json_build_object('code', r.error_code, 'message', r.error_message)
                         WHEN r.status_code IS NOT NULL THEN NULL
                         ELSE json_build_object('code', 'internal_error',
                                                'message', 'The request produced no result.') END
       )::text AS rendered,
       r.response -> 'usage' AS usage
FROM batch_requests r JOIN batches b ON b.id = r.batch_id
WHERE b.status IN ('in_progress', 'finalizing', 'cancelling');

INSERT INTO files (id, project_id, filename, purpose, bytes, deleted_at)
SELECT file_id, project_id, batch_id || '_requeued_input.jsonl', 'batch', sum(octet_length(raw)), unix_now()
FROM legacy_lines GROUP BY file_id, project_id, batch_id;

INSERT INTO file_chunks (file_id, idx, data)
SELECT file_id, chunk, string_agg(raw, ''::bytea ORDER BY line)
FROM legacy_lines GROUP BY file_id, chunk;

INSERT INTO batch_chunks (batch_id, idx, project_id, batch_seq, file_id, start_part, start_offset,
                          end_part, end_offset, first_line, line_count, state, attempt, completed, failed,
                          input_tokens, cached_tokens, output_tokens, reasoning_tokens, total_tokens)
SELECT batch_id, chunk, project_id, batch_seq, file_id, chunk, 0, chunk, sum(octet_length(raw)),
       -- attempt 1: as if claimed once, so the next claim reads which lines are done already
       min(line), count(*), CASE WHEN bool_and(done) THEN 'done' ELSE 'pending' END, 1,
       count(*) FILTER (WHERE done AND ok), count(*) FILTER (WHERE done AND NOT ok),
       coalesce(sum(u.input) FILTER (WHERE ok), 0),
       coalesce(sum(pg_temp.tokens(coalesce(usage #> '{input_tokens_details,cached_tokens}',
                                            usage #> '{prompt_tokens_details,cached_tokens}'))) FILTER (WHERE ok), 0),
       coalesce(sum(u.output) FILTER (WHERE ok), 0),
       coalesce(sum(pg_temp.tokens(coalesce(usage #> '{output_tokens_details,reasoning_tokens}',
                                            usage #> '{completion_tokens_details,reasoning_tokens}'))) FILTER (WHERE ok), 0),
       coalesce(sum(CASE WHEN usage ? 'total_tokens' THEN pg_temp.tokens(usage -> 'total_tokens')
                         ELSE u.input + u.output END) FILTER (WHERE ok), 0)
FROM legacy_lines,
     LATERAL (SELECT pg_temp.tokens(coalesce(usage -> 'input_tokens', usage -> 'prompt_tokens')) AS input,
                     pg_temp.tokens(coalesce(usage -> 'output_tokens', usage -> 'completion_tokens')) AS output) u
GROUP BY batch_id, chunk, project_id, batch_seq, file_id;

INSERT INTO batch_results (batch_id, chunk_idx, lines)
SELECT batch_id, chunk,
       string_agg(line || E'\t' || CASE WHEN ok THEN 'o' ELSE 'e' END || E'\t' || rendered || E'\n', ''
                  ORDER BY line)
FROM legacy_lines WHERE done GROUP BY batch_id, chunk;

-- A v1 replica still running during the roll-out now fails every engine query instead of
-- claiming or finalizing from a table that no longer holds the work; its API keeps serving.
DROP TABLE batch_requests;
