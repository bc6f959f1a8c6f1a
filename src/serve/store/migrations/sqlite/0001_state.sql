-- The service's state on SQLite (see docs/STATE.md). Host names are the inventory's validated
-- names; every JSON column holds a record the service wrote itself.
CREATE TABLE hosts (
    name TEXT PRIMARY KEY NOT NULL,
    version INTEGER NOT NULL,
    deciding INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    state TEXT NOT NULL
);
CREATE INDEX hosts_deciding ON hosts (deciding, name);

CREATE TABLE audit (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    ms INTEGER NOT NULL,
    event TEXT NOT NULL,
    host TEXT,
    record TEXT NOT NULL
);
CREATE INDEX audit_host ON audit (host, id);
CREATE INDEX audit_event ON audit (event, id);
CREATE INDEX audit_ms ON audit (ms);

CREATE TABLE last_boots (
    host TEXT PRIMARY KEY NOT NULL,
    ms INTEGER NOT NULL,
    record TEXT NOT NULL
);

CREATE TABLE meta (
    name TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);
