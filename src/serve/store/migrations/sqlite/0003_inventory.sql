-- The inventory when the database is its source of truth (`serve` without `--inventory`; see
-- src/serve/store/inventory.rs and docs/STATE.md). One row per node: `hostname` is the
-- validated name (lower case), `ord` its place in the CSV (gaps allowed; only the order counts),
-- `fields` a JSON object of column -> value as written, so free template columns survive.
CREATE TABLE inventory_nodes (
    hostname TEXT PRIMARY KEY NOT NULL,
    ord INTEGER NOT NULL,
    fields TEXT NOT NULL
);
CREATE INDEX inventory_nodes_ord ON inventory_nodes (ord);

-- One row: the header (a JSON array of column names, in order), the version every change
-- compares and sets (0: no inventory yet), and when and by whom it last changed.
CREATE TABLE inventory_meta (
    id INTEGER PRIMARY KEY NOT NULL,
    version INTEGER NOT NULL,
    column_names TEXT NOT NULL,
    changed_ms INTEGER,
    changed_by TEXT
);
INSERT INTO inventory_meta (id, version, column_names) VALUES (1, 0, '[]');
