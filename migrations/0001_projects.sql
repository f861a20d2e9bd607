-- Every file and batch belongs to a project (tenant). Until API keys exist there is one built-in project.
CREATE FUNCTION unix_now() RETURNS bigint
    LANGUAGE sql STABLE
    AS $$ SELECT floor(extract(epoch FROM now()))::bigint $$;

CREATE TABLE projects (
    id          text PRIMARY KEY,
    name        text NOT NULL UNIQUE,
    created_at  bigint NOT NULL DEFAULT unix_now()
);

INSERT INTO projects (id, name) VALUES ('proj_default', 'default');
