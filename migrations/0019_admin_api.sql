-- The Admin API (OpenAI's shapes): projects that can be archived, service accounts that own
-- project keys, and admin keys that belong to no project and can use only /v1/organization/*.

-- Archived: its keys stop working (the key copy reloads on the NOTIFY archiving sends), its data
-- stays. `seq` orders listings for keyset pagination, as for files and batches.
ALTER TABLE projects
    ADD COLUMN archived_at bigint,
    ADD COLUMN seq bigint GENERATED ALWAYS AS IDENTITY;
CREATE UNIQUE INDEX projects_seq ON projects (seq);

CREATE TABLE service_accounts (
    id          text PRIMARY KEY,
    project_id  text NOT NULL REFERENCES projects (id),
    seq         bigint GENERATED ALWAYS AS IDENTITY UNIQUE,
    name        text NOT NULL,
    created_at  bigint NOT NULL DEFAULT unix_now(),
    deleted_at  bigint
);
CREATE INDEX service_accounts_project ON service_accounts (project_id, seq) WHERE deleted_at IS NULL;

-- A key's public id is its prefix's (`obk_<12 hex>` -> `key_<12 hex>`), so that no second
-- random id has to be kept in step with it. A project key belongs to a project (and, from now
-- on, a service account); an admin key to none.
ALTER TABLE api_keys
    ADD COLUMN id text GENERATED ALWAYS AS ('key_' || substr(prefix, 5)) STORED,
    ADD COLUMN seq bigint GENERATED ALWAYS AS IDENTITY,
    ADD COLUMN name text NOT NULL DEFAULT 'Secret Key',
    ADD COLUMN admin boolean NOT NULL DEFAULT false,
    ADD COLUMN service_account_id text REFERENCES service_accounts (id),
    ADD COLUMN last_used_at bigint,
    ALTER COLUMN project_id DROP NOT NULL,
    ADD CONSTRAINT api_keys_scope CHECK (admin = (project_id IS NULL)
                                         AND NOT (admin AND service_account_id IS NOT NULL));
CREATE UNIQUE INDEX api_keys_id ON api_keys (id);
CREATE UNIQUE INDEX api_keys_seq ON api_keys (seq);

-- Every key made before this owned by a service account of its own, so that each key the Admin
-- API lists has an owner, as OpenAI's do.
INSERT INTO service_accounts (id, project_id, name, created_at, deleted_at)
SELECT 'svc_acct_' || substr(prefix, 5), project_id, 'key ' || prefix, created_at, revoked_at
FROM api_keys;
UPDATE api_keys SET service_account_id = 'svc_acct_' || substr(prefix, 5);
