-- Webhooks: per-project endpoints, and an outbox of deliveries filled by a trigger on the batch
-- status, so an event is enqueued in the very transaction that makes a batch terminal, whichever
-- code path does it (jobs::end, jobs::fail, expiry, cancellation, or any future one).

CREATE TABLE webhook_endpoints (
    id                    text PRIMARY KEY,
    project_id            text NOT NULL REFERENCES projects (id),
    seq                   bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    url                   text NOT NULL,
    events                text[] NOT NULL,
    -- The HMAC key must be usable, so it is stored as is (unlike API keys, which are hashed).
    secret                text NOT NULL,
    -- After a rotation the old secret also signs until previous_secret_until (Unix seconds).
    previous_secret       text,
    previous_secret_until bigint,
    status                text NOT NULL DEFAULT 'enabled' CHECK (status IN ('enabled', 'disabled')),
    disabled_reason       text,
    disabled_at           bigint,
    consecutive_failures  integer NOT NULL DEFAULT 0,
    created_at            bigint NOT NULL DEFAULT unix_now()
);

CREATE INDEX webhook_endpoints_project ON webhook_endpoints (project_id, seq);

-- One row per (endpoint, event): the delivery and its log. `event_id` is the `webhook-id` of
-- every attempt; `payload` is the exact body, fixed when enqueued, so retries send the same bytes.
CREATE TABLE webhook_deliveries (
    endpoint_id       text NOT NULL REFERENCES webhook_endpoints (id) ON DELETE CASCADE,
    event_id          text NOT NULL,
    seq               bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    event_type        text NOT NULL,
    batch_id          text NOT NULL,
    payload           text NOT NULL,
    created_at        bigint NOT NULL DEFAULT unix_now(),
    state             text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts          integer NOT NULL DEFAULT 0,
    -- Due time while pending; while an attempt runs, the end of its lease (a replica that dies
    -- mid-attempt leaves the row due again at that time). NULL once delivered or given up.
    next_attempt_at   timestamptz DEFAULT now(),
    last_attempt_at   bigint,
    last_status_code  integer,
    last_error        text,
    delivered_at      bigint,
    finished_at       timestamptz,
    PRIMARY KEY (endpoint_id, event_id)
);

CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_finished ON webhook_deliveries (finished_at) WHERE state <> 'pending';

-- The outbox: runs inside the transaction of the status change; NOTIFY is sent at its commit
-- (and not at all if it rolls back), waking every replica's deliverer.
CREATE FUNCTION webhooks_enqueue() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
DECLARE
    event_type text := 'batch.' || NEW.status;
    event_id   text := 'evt_' || replace(gen_random_uuid()::text, '-', '');
BEGIN
    INSERT INTO webhook_deliveries (endpoint_id, event_id, event_type, batch_id, payload)
    SELECT e.id, event_id, event_type, NEW.id,
           json_build_object('id', event_id, 'object', 'event', 'type', event_type,
                             'created_at', unix_now(), 'data', json_build_object('id', NEW.id))::text
    FROM webhook_endpoints e
    WHERE e.project_id = NEW.project_id AND e.status = 'enabled' AND event_type = ANY (e.events);
    IF FOUND THEN
        PERFORM pg_notify('openbatch_webhooks', '');
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER batches_webhooks_on_update
    AFTER UPDATE OF status ON batches
    FOR EACH ROW
    WHEN (NEW.status IN ('completed', 'failed', 'expired', 'cancelled')
          AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION webhooks_enqueue();

-- A batch created already terminal (none today) is announced too.
CREATE TRIGGER batches_webhooks_on_insert
    AFTER INSERT ON batches
    FOR EACH ROW
    WHEN (NEW.status IN ('completed', 'failed', 'expired', 'cancelled'))
    EXECUTE FUNCTION webhooks_enqueue();
