-- The active-batch limit (`limits.max_active_batches_per_project`) is checked by the statement
-- that inserts the batches. Counting in that statement alone is not exact: two statements on
-- different connections (or replicas) each count with a snapshot taken before the other
-- committed, both pass, and the project ends above its limit.
--
-- This function serialises the check per project: it takes a transaction-scoped advisory lock
-- on the project (first key 2834 = 0x0b12, "admission of a project"; the two-key form never meets the
-- one-key locks used elsewhere), held until the inserting transaction ends, and only then
-- counts. A VOLATILE function's statements each take a fresh snapshot (READ COMMITTED), so the
-- count sees every batch committed by the lock's previous holder, which the calling
-- statement's own snapshot may not. Callers lock several projects in ascending order (see
-- `store::batches::insert_many`), so two of them cannot deadlock.
--
-- Counting stops at `max_active`, so it costs at most that much (the partial index
-- `batches_project_active` covers it).
CREATE FUNCTION batch_admission_count(project text, max_active bigint) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    taken bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(2834, hashtext(project));
    SELECT count(*) INTO taken FROM (
        SELECT 1 FROM batches b
        WHERE b.project_id = project
          AND b.status IN ('validating', 'in_progress', 'finalizing', 'cancelling')
        LIMIT max_active) active;
    RETURN taken;
END $$;
