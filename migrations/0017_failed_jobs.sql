-- Batch-level work (validation, finalization) that fails, rather than losing its replica, is
-- counted too: attempts in a row that ended in an error. A finalization that fails the same way
-- every time (a stored result the database or the decoder refuses) is given up after
-- `worker.max_job_failures` of them instead of being retried forever, and the count holds
-- across replicas and restarts.
ALTER TABLE batches ADD COLUMN failed_attempts integer NOT NULL DEFAULT 0;
