-- The stream position (entry id "ms-n") of the newest command applied to each resource.
-- A full replace older than it (a message claimed late from a dead worker, a slow batch on
-- another worker) is stale and must not overwrite the newer state.
ALTER TABLE users ADD COLUMN seq_ms bigint NOT NULL DEFAULT 0, ADD COLUMN seq_n bigint NOT NULL DEFAULT 0;
ALTER TABLE groups ADD COLUMN seq_ms bigint NOT NULL DEFAULT 0, ADD COLUMN seq_n bigint NOT NULL DEFAULT 0;
