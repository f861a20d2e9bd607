-- A batch created by `POST /v1/batches/{id}/retry` names the batch whose failed lines it runs
-- again; the origin lists its retries by this column.
ALTER TABLE batches ADD COLUMN retry_of text;
CREATE INDEX batches_retry_of ON batches (retry_of) WHERE retry_of IS NOT NULL;
