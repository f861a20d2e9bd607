-- Bytes of files each project stores, for the storage quota. A file counts while it is neither
-- deleted nor purged. Kept by a trigger, so every path that writes `files` (uploads, batch
-- output, deletion, the janitor's purge) keeps it right without knowing about it; reading one
-- row replaces summing a project's files on every upload.
CREATE TABLE project_storage (
    project_id    text PRIMARY KEY REFERENCES projects (id),
    stored_bytes  bigint NOT NULL DEFAULT 0
);

INSERT INTO project_storage (project_id, stored_bytes)
SELECT project_id, sum(bytes) FROM files
WHERE deleted_at IS NULL AND NOT purged
GROUP BY project_id;

CREATE FUNCTION files_counted_bytes(deleted_at bigint, purged boolean, bytes bigint)
    RETURNS bigint LANGUAGE sql IMMUTABLE
    AS $$ SELECT CASE WHEN deleted_at IS NULL AND NOT purged THEN bytes ELSE 0 END $$;

CREATE FUNCTION files_track_storage() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    delta bigint := 0;
    project text;
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        delta := delta - files_counted_bytes(OLD.deleted_at, OLD.purged, OLD.bytes);
        project := OLD.project_id;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        delta := delta + files_counted_bytes(NEW.deleted_at, NEW.purged, NEW.bytes);
        project := NEW.project_id;
    END IF;
    IF delta <> 0 THEN
        INSERT INTO project_storage AS s (project_id, stored_bytes) VALUES (project, delta)
        ON CONFLICT (project_id) DO UPDATE SET stored_bytes = s.stored_bytes + EXCLUDED.stored_bytes;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER files_track_storage
    AFTER INSERT OR DELETE OR UPDATE OF deleted_at, purged, bytes ON files
    FOR EACH ROW EXECUTE FUNCTION files_track_storage();
