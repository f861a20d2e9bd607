CREATE TABLE batches (
    id                 text PRIMARY KEY,
    project_id         text NOT NULL REFERENCES projects (id),
    seq                bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    endpoint           text NOT NULL,
    input_file_id      text NOT NULL,
    completion_window  text NOT NULL,
    status             text NOT NULL CHECK (status IN ('validating', 'failed', 'in_progress', 'finalizing',
                                                       'completed', 'expired', 'cancelling', 'cancelled')),
    model              text,
    errors             jsonb,
    output_file_id     text,
    error_file_id      text,
    created_at         bigint NOT NULL DEFAULT unix_now(),
    in_progress_at     bigint,
    expires_at         bigint NOT NULL,
    finalizing_at      bigint,
    completed_at       bigint,
    failed_at          bigint,
    expired_at         bigint,
    cancelling_at      bigint,
    cancelled_at       bigint,
    request_total      integer NOT NULL DEFAULT 0,
    request_completed  integer NOT NULL DEFAULT 0,
    request_failed     integer NOT NULL DEFAULT 0,
    usage              jsonb,
    metadata           jsonb,
    output_expires_after_seconds bigint,
    -- Client-chosen key, unique per project. NULLs are distinct, so batches without a key never collide.
    idempotency_key    text,
    -- SHA-256 (hex) of the canonicalised creation parameters; a replay must match it.
    params_hash        text NOT NULL,
    CONSTRAINT batches_project_idempotency_key UNIQUE (project_id, idempotency_key)
);

CREATE INDEX batches_project_seq ON batches (project_id, seq);
