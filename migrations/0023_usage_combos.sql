-- Usage rollups read fast over long ranges:
--  * each (project, endpoint, model, key) is named once, in `usage_combos`, and the rollups
--    hold its integer id: rows of half the size, grouped on integers;
--  * every event is folded into minutes, hours and days at once, so that a report of 30 days
--    in day buckets reads 30 rows per combination, not 43,200. Minutes are kept for the minute
--    retention only; hours and days for good.
-- Combinations are never deleted (a row per combination ever used), so the rollups need no
-- foreign key to them.

CREATE TABLE usage_combos (
    id          integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project_id  text NOT NULL,
    endpoint    text NOT NULL,
    model       text NOT NULL,
    api_key_id  text NOT NULL DEFAULT '',
    UNIQUE (project_id, endpoint, model, api_key_id)
);

INSERT INTO usage_combos (project_id, endpoint, model, api_key_id)
SELECT project_id, endpoint, model, api_key_id FROM usage_minutes
UNION
SELECT project_id, endpoint, model, api_key_id FROM usage_hours;

ALTER TABLE usage_minutes RENAME TO usage_minutes_0020;
ALTER TABLE usage_minutes_0020 RENAME CONSTRAINT usage_minutes_pkey TO usage_minutes_0020_pkey;
ALTER TABLE usage_hours RENAME TO usage_hours_0020;
ALTER TABLE usage_hours_0020 RENAME CONSTRAINT usage_hours_pkey TO usage_hours_0020_pkey;

CREATE TABLE usage_minutes (
    start          bigint NOT NULL,
    combo          integer NOT NULL,
    requests       bigint NOT NULL,
    input_tokens   bigint NOT NULL,
    cached_tokens  bigint NOT NULL,
    output_tokens  bigint NOT NULL,
    PRIMARY KEY (start, combo)
);
CREATE TABLE usage_hours (LIKE usage_minutes INCLUDING ALL);
CREATE TABLE usage_days (LIKE usage_minutes INCLUDING ALL);

INSERT INTO usage_minutes
SELECT m.start, c.id, m.requests, m.input_tokens, m.cached_tokens, m.output_tokens
FROM usage_minutes_0020 m JOIN usage_combos c USING (project_id, endpoint, model, api_key_id);

-- Until now hours held only minutes past the retention: they get the minutes still kept too.
INSERT INTO usage_hours
SELECT start - start % 3600, c.id, sum(requests), sum(input_tokens), sum(cached_tokens),
       sum(output_tokens)
FROM (SELECT * FROM usage_minutes_0020 UNION ALL SELECT * FROM usage_hours_0020) u
JOIN usage_combos c USING (project_id, endpoint, model, api_key_id)
GROUP BY 1, 2;

INSERT INTO usage_days
SELECT start - start % 86400, combo, sum(requests), sum(input_tokens), sum(cached_tokens),
       sum(output_tokens)
FROM usage_hours GROUP BY 1, 2;

DROP TABLE usage_minutes_0020, usage_hours_0020;
