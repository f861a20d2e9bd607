-- The W3C traceparent of the request that created a batch, so the worker's spans can link
-- back to the trace that asked for the work.
ALTER TABLE batches ADD COLUMN trace_context text;
