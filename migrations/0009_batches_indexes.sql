-- `batches` keeps only the indexes its statements use: `seq` is an identity column, unique by
-- construction, and nothing looks a batch up by it alone (lists go through (project_id, seq)).
ALTER TABLE batches DROP CONSTRAINT batches_seq_key;
