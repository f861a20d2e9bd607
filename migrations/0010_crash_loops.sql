-- Crash loops: a chunk whose every claim ends without a stored result (the replica running it
-- is OOM-killed, or hangs, each time) is given up after `worker.max_idle_claims` claims instead
-- of being handed to the next replica forever.
-- idle_claims: claims since the chunk last made progress, the current one included.
-- progress_mark: completed + failed when it was last claimed.
ALTER TABLE batch_chunks
    ADD COLUMN idle_claims   integer NOT NULL DEFAULT 0,
    ADD COLUMN progress_mark integer NOT NULL DEFAULT 0;

-- The same for batch-level work (validate, finalize): claims in a row whose holder vanished
-- without letting go (its lease lapsed with lease_owner still set).
ALTER TABLE batches ADD COLUMN lapsed_claims integer NOT NULL DEFAULT 0;
