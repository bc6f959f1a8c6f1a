-- When each audit record was inserted, on the server's clock (NOW(3): the statement's start),
-- so a reader following the log by cursor can tell a gap in the ids that a transaction still
-- in flight will fill from one that stays (see `settled` in src/serve/store/audit.rs).
ALTER TABLE audit ADD COLUMN stored_ms BIGINT NOT NULL
    DEFAULT (CAST(FLOOR(UNIX_TIMESTAMP(NOW(3)) * 1000) AS SIGNED));
CREATE INDEX audit_stored ON audit (stored_ms);
