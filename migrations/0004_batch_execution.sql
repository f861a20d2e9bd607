-- Batch-level work (validation, finalization, cancellation, expiry) is claimed by one replica at
-- a time through a lease; a replica that dies simply lets its lease run out.
ALTER TABLE batches
    ADD COLUMN lease_owner text,
    ADD COLUMN lease_until timestamptz;

-- Batches that still need batch-level work, oldest first.
CREATE INDEX batches_active ON batches (seq)
    WHERE status IN ('validating', 'in_progress', 'finalizing', 'cancelling');

-- One row per input line: the durable unit of work shared by every replica.
CREATE TABLE batch_requests (
    batch_id       text NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
    line           integer NOT NULL,          -- 0-based position in the input file
    custom_id      text NOT NULL,
    body           text NOT NULL,             -- the request body, JSON
    model          text NOT NULL,
    state          text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'running', 'done')),
    attempts       integer NOT NULL DEFAULT 0, -- claims, not HTTP attempts
    lease_owner    text,
    lease_until    timestamptz,
    -- Result: an upstream response (status_code + response), or a failure with no response.
    status_code    integer,
    response       jsonb,
    request_id     text,
    error_code     text,
    error_message  text,
    PRIMARY KEY (batch_id, line)
);

-- Claiming scans only unfinished lines.
CREATE INDEX batch_requests_open ON batch_requests (batch_id, line) WHERE state <> 'done';
CREATE INDEX batch_requests_leases ON batch_requests (lease_owner) WHERE state = 'running';
