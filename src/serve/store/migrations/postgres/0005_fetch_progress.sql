-- Each inventory host's last config or asset fetch (see docs/STATE.md): the progress of an
-- open install that no state write records, read by the fleet view to tell a stalled install
-- without scanning the audit log. Written by the audit writer with the fetch's record.
CREATE TABLE fetch_progress (
    host TEXT PRIMARY KEY,
    ms BIGINT NOT NULL
);
CREATE INDEX fetch_progress_ms ON fetch_progress (ms);
