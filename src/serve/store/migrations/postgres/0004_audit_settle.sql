-- When each audit record was inserted, on the server's clock (the INSERT statement's start),
-- so a reader following the log by cursor can tell a gap in the ids that a transaction still
-- in flight will fill from one that stays (see `settled` in src/serve/store/audit.rs).
-- statement_timestamp() is stable, so existing rows take the value of this ALTER without a
-- rewrite of the table.
ALTER TABLE audit ADD COLUMN stored_ms BIGINT NOT NULL
    DEFAULT CAST(FLOOR(EXTRACT(EPOCH FROM statement_timestamp()) * 1000) AS BIGINT);
CREATE INDEX audit_stored ON audit (stored_ms);
