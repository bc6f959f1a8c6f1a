-- Console sessions (see src/serve/store/sessions.rs). A row never holds the cookie: `id_hash`
-- is the SHA-256 of its 32 random bytes, and the CSRF token is derived from the cookie, so
-- neither can be read back from here. `owner` is the SHA-256 of whom the session is counted
-- against (a token's hash, or a directory entry's DN case-folded); `name_key` that of the
-- directory account's name, lower-cased, for ending every session of a name.
CREATE TABLE sessions (
    id_hash TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    token_hash TEXT,
    name TEXT,
    name_key TEXT,
    role TEXT,
    dn TEXT,
    confirmed_ms BIGINT,
    stale_ms BIGINT,
    created_ms BIGINT NOT NULL,
    seen_ms BIGINT NOT NULL
);
CREATE INDEX sessions_owner ON sessions (owner, seen_ms);
CREATE INDEX sessions_name ON sessions (name_key);
CREATE INDEX sessions_seen ON sessions (seen_ms);
CREATE INDEX sessions_created ON sessions (created_ms);

-- One row that every login locks first, so that counting an identity's sessions and the
-- table's, ending the surplus and inserting the new one happen one login at a time across
-- replicas (see `open` in sessions.rs).
CREATE TABLE session_gate (
    id INTEGER PRIMARY KEY,
    logins BIGINT NOT NULL
);
INSERT INTO session_gate (id, logins) VALUES (1, 0);
