-- Fair shares by tokens: each claim advances its project's clock by the chunk's estimated
-- tokens (from `batches.est_tokens`), and the project with the earliest clock goes next, so a
-- project of long prompts gets fewer chunks than one of short prompts, not as many. A project
-- that comes back after idling starts from the earliest clock of those with work waiting,
-- never from credit saved while idle.
ALTER TABLE projects ADD COLUMN served_tokens bigint NOT NULL DEFAULT 0;
