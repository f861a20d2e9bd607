-- Usage since the start, per project and model: what `/metrics` exports as counters. Kept by the
-- maintainer's fold (a row per combination in use, never per minute), so that a scrape's refresh
-- reads this small table and the few events not yet folded, never the rollups.
CREATE TABLE usage_totals (
    project_id     text NOT NULL,
    model          text NOT NULL,
    requests       bigint NOT NULL,
    input_tokens   bigint NOT NULL,
    cached_tokens  bigint NOT NULL,
    output_tokens  bigint NOT NULL,
    PRIMARY KEY (project_id, model)
);

INSERT INTO usage_totals
SELECT project_id, model, sum(requests), sum(input_tokens), sum(cached_tokens), sum(output_tokens)
FROM (SELECT * FROM usage_minutes UNION ALL SELECT * FROM usage_hours) u
GROUP BY project_id, model;
