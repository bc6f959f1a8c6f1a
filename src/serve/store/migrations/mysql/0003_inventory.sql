-- The inventory when the database is its source of truth (`serve` without `--inventory`; see
-- src/serve/store/inventory.rs and docs/STATE.md). One row per node: `hostname` is the
-- validated name (lower case, at most 253 characters), `ord` its place in the CSV (gaps
-- allowed; only the order counts), `fields` a JSON object of column -> value as written, so free
-- template columns survive.
CREATE TABLE inventory_nodes (
    hostname VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PRIMARY KEY,
    ord BIGINT NOT NULL,
    fields MEDIUMTEXT NOT NULL,
    INDEX inventory_nodes_ord (ord)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

-- One row: the header (a JSON array of column names, in order), the version every change
-- compares and sets (0: no inventory yet), and when and by whom it last changed.
CREATE TABLE inventory_meta (
    id INTEGER PRIMARY KEY,
    version BIGINT NOT NULL,
    column_names MEDIUMTEXT NOT NULL,
    changed_ms BIGINT,
    changed_by VARCHAR(255)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
INSERT INTO inventory_meta (id, version, column_names) VALUES (1, 0, '[]');
