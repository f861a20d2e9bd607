-- Replicas alive, as their heartbeats last said: each replica enforces its share of the
-- cluster-wide per-key rate limit (the limit divided by the live replicas).
CREATE TABLE replicas (
    id      text PRIMARY KEY,
    seen_at timestamptz NOT NULL
);
