-- Every change of a batch's status is announced on `openbatch_batch_status` (payload: the
-- batch id), sent at commit. A batch changes status a handful of times in its life, never per
-- line or per flush, so this costs nothing measurable; waiters (the integration tests) wake on
-- it instead of polling.
CREATE FUNCTION batches_status_notify() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
BEGIN
    PERFORM pg_notify('openbatch_batch_status', NEW.id);
    RETURN NULL;
END
$$;

CREATE TRIGGER batches_status_notify
    AFTER UPDATE OF status ON batches
    FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION batches_status_notify();
