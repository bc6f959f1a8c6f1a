-- The service's state on PostgreSQL (see docs/STATE.md). Host names are the inventory's
-- validated names; every JSON column holds a record the service wrote itself.
CREATE TABLE hosts (
    name TEXT PRIMARY KEY,
    version BIGINT NOT NULL,
    deciding SMALLINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    state TEXT NOT NULL
);
CREATE INDEX hosts_deciding ON hosts (deciding, name);

CREATE TABLE audit (
    id BIGSERIAL PRIMARY KEY,
    ms BIGINT NOT NULL,
    event TEXT NOT NULL,
    host TEXT,
    record TEXT NOT NULL
);
CREATE INDEX audit_host ON audit (host, id);
CREATE INDEX audit_event ON audit (event, id);
CREATE INDEX audit_ms ON audit (ms);

CREATE TABLE last_boots (
    host TEXT PRIMARY KEY,
    ms BIGINT NOT NULL,
    record TEXT NOT NULL
);

CREATE TABLE meta (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
