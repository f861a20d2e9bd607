-- The order in which an ended batch's lines were served while it ran, so that a
-- `GET /v1/batches/{id}/results` cursor taken then can still be honoured from its output and
-- error files. Written in the transaction that writes the files (only for a batch that had
-- stored results); the janitor deletes it once those files are gone.
--   group_seqs:   the batch's result groups' `seq`, ascending
--   group_starts: for each group, how many lines the live stream served before it; then one
--                 more element, how many it served in all
--   ranks:        per request (by ordinal), 4 bytes little-endian: the position in the live
--                 stream where it was first served; 0xFFFFFFFF for a line never served live
CREATE TABLE batch_live_order (
    batch_id      text PRIMARY KEY,
    group_seqs    int8[] NOT NULL,
    group_starts  int4[] NOT NULL,
    ranks         bytea NOT NULL
);
