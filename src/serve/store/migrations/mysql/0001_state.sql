-- The service's state on MariaDB/MySQL (see docs/STATE.md). Names compare byte for byte
-- (utf8mb4_bin), as on the other engines; InnoDB for transactions.
CREATE TABLE hosts (
    name VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin PRIMARY KEY,
    version BIGINT NOT NULL,
    deciding SMALLINT NOT NULL,
    updated_ms BIGINT NOT NULL,
    state MEDIUMTEXT NOT NULL,
    INDEX hosts_deciding (deciding, name)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE audit (
    id BIGINT AUTO_INCREMENT PRIMARY KEY,
    ms BIGINT NOT NULL,
    event VARCHAR(64) NOT NULL,
    host VARCHAR(255),
    record MEDIUMTEXT NOT NULL,
    INDEX audit_host (host, id),
    INDEX audit_event (event, id),
    INDEX audit_ms (ms)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE last_boots (
    host VARCHAR(255) PRIMARY KEY,
    ms BIGINT NOT NULL,
    record MEDIUMTEXT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;

CREATE TABLE meta (
    name VARCHAR(64) PRIMARY KEY,
    value MEDIUMTEXT NOT NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin;
