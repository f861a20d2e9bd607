-- Each batch's estimated prompt tokens, recorded when validation queues it: a project's
-- enqueued tokens per model are what its running batches have not finished of theirs
-- (`limits.max_enqueued_tokens_per_project`). None for batches queued before this.
ALTER TABLE batches ADD COLUMN est_tokens bigint;
