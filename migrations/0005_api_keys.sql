-- API keys: only a SHA-256 of each key is stored, with a short non-secret prefix to find it by
-- and to show to operators.
CREATE TABLE api_keys (
    prefix      text PRIMARY KEY,
    project_id  text NOT NULL REFERENCES projects (id),
    key_hash    bytea NOT NULL,
    created_at  bigint NOT NULL DEFAULT unix_now(),
    revoked_at  bigint
);

CREATE INDEX api_keys_project ON api_keys (project_id);

-- Admission control counts a project's unfinished batches.
CREATE INDEX batches_project_active ON batches (project_id)
    WHERE status IN ('validating', 'in_progress', 'finalizing', 'cancelling');
