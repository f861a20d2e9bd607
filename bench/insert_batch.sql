-- pgbench script: the single statement at the heart of POST /v1/batches with a
-- DISTINCT idempotency key (the "raw ceiling" the HTTP figures are compared to).
-- Columns follow migrations/0003_batches.sql; every NOT NULL column without a
-- default is filled, the rest take their defaults as the server's insert does.
INSERT INTO batches (id, project_id, endpoint, input_file_id, completion_window, status,
                     expires_at, metadata, idempotency_key, params_hash)
VALUES ('batch_' || replace(gen_random_uuid()::text, '-', ''), 'proj_default',
        '/v1/chat/completions', 'file-bench', '24h', 'validating',
        unix_now() + 86400, '{"k": "v"}'::jsonb,
        'pgb-' || gen_random_uuid()::text,
        'a3f1c9b0e5d2478e9f6b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e6f708192a3b4c5')
ON CONFLICT (project_id, idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING;
