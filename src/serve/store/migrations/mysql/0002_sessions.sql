-- Console sessions (see src/serve/store/sessions.rs). A row never holds the cookie: `id_hash`
-- is the SHA-256 of its 32 random bytes, and the CSRF token is derived from the cookie, so
-- neither can be read back from here. `owner` is the SHA-256 of whom the session is counted
-- against (a token's hash, or a directory entry's DN case-folded); `name_key` that of the
-- directory account's name, lower-cased, for ending every session of a name. The hashes are
-- 64 hex digits, so every indexed column has a fixed, small width.
CREATE TABLE sessions (
    id_hash CHAR(64) PRIMARY KEY,
    owner CHAR(64) NOT NULL,
    token_hash CHAR(64),
    name TEXT,
    name_key CHAR(64),
    role VARCHAR(16),
    dn TEXT,
    confirmed_ms BIGINT,
    stale_ms BIGINT,
    created_ms BIGINT NOT NULL,
    seen_ms BIGINT NOT NULL,
    INDEX sessions_owner (owner, seen_ms),
    INDEX sessions_name (name_key),
    INDEX sessions_seen (seen_ms),
    INDEX sessions_created (created_ms)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- One row that every login locks first, so that counting an identity's sessions and the
-- table's, ending the surplus and inserting the new one happen one login at a time across
-- replicas (see `open` in sessions.rs).
CREATE TABLE session_gate (
    id INTEGER PRIMARY KEY,
    logins BIGINT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
INSERT INTO session_gate (id, logins) VALUES (1, 0);
