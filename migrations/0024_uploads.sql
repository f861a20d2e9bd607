-- OpenAI's Uploads API: a file sent in parts (up to 64 MB each, 8 GB in all), assembled into
-- an ordinary file on completion. Parts are stored as they arrive, in chunks as file content
-- is; an upload that is cancelled, or not completed within its hour, loses its parts.

CREATE TABLE uploads (
    id          text PRIMARY KEY,
    project_id  text NOT NULL REFERENCES projects (id),
    filename    text NOT NULL,
    purpose     text NOT NULL,
    bytes       bigint NOT NULL CHECK (bytes > 0),
    mime_type   text NOT NULL,
    status      text NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'completed', 'cancelled', 'expired')),
    created_at  bigint NOT NULL DEFAULT unix_now(),
    expires_at  bigint NOT NULL,
    -- What the parts received hold together (more than `bytes` if a client sent a part twice,
    -- as an SDK retrying a lost answer does): bounded by `limits.max_upload_total_bytes`.
    received    bigint NOT NULL DEFAULT 0,
    -- The file it becomes: its `expires_after[seconds]`, and its id once completed.
    file_expires_after  bigint,
    file_id     text
);
CREATE INDEX uploads_pending_expiry ON uploads (expires_at) WHERE status = 'pending';

CREATE TABLE upload_parts (
    id          text PRIMARY KEY,
    upload_id   text NOT NULL REFERENCES uploads (id) ON DELETE CASCADE,
    created_at  bigint NOT NULL DEFAULT unix_now(),
    bytes       bigint NOT NULL CHECK (bytes > 0)
);
CREATE INDEX upload_parts_upload ON upload_parts (upload_id);

CREATE TABLE upload_chunks (
    part_id  text NOT NULL REFERENCES upload_parts (id) ON DELETE CASCADE,
    idx      integer NOT NULL CHECK (idx >= 0),
    data     bytea NOT NULL,
    PRIMARY KEY (part_id, idx)
);
ALTER TABLE upload_chunks ALTER COLUMN data SET STORAGE EXTERNAL;
