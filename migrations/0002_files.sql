-- Deleted files keep their row (deleted_at set, content gone) so that a list cursor naming
-- a file deleted mid-pagination still has a position, and ids are never reused.
CREATE TABLE files (
    id          text PRIMARY KEY,
    project_id  text NOT NULL REFERENCES projects (id),
    seq         bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    filename    text NOT NULL,
    purpose     text NOT NULL,
    bytes       bigint NOT NULL CHECK (bytes >= 0),
    created_at  bigint NOT NULL DEFAULT unix_now(),
    expires_at  bigint,
    deleted_at  bigint
);

CREATE INDEX files_project_seq ON files (project_id, seq);

-- Content lives in PostgreSQL so that any replica can serve it. The foreign key is deferred:
-- an upload streams its chunks first and writes the files row last, in one transaction.
CREATE TABLE file_chunks (
    file_id  text NOT NULL REFERENCES files (id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
    idx      integer NOT NULL CHECK (idx >= 0),
    data     bytea NOT NULL,
    PRIMARY KEY (file_id, idx)
);

-- JSONL rarely compresses enough to pay for pglz on every read; store chunks uncompressed.
ALTER TABLE file_chunks ALTER COLUMN data SET STORAGE EXTERNAL;
