-- Persist schema, version 1.
-- Store metadata: store id, persisted clock.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;

-- The change log: every signed commit, local or received, in arrival order
-- (rowid), unique per (author, seq). Bodies can be large, so the table is a
-- rowid table and (author, seq) an index.
CREATE TABLE change_log (
    rowid     INTEGER PRIMARY KEY,
    author    BLOB    NOT NULL,
    seq       INTEGER NOT NULL,
    hlc       INTEGER NOT NULL,
    body      BLOB    NOT NULL,
    signature BLOB    NOT NULL,
    UNIQUE (author, seq)
);

-- Highest sequence number per author (the version vector).
CREATE TABLE heads (
    author BLOB PRIMARY KEY,
    seq    INTEGER NOT NULL
) WITHOUT ROWID;

-- Materialized records, clustered by (collection, id) so listings are range scans.
-- value NULL is a tombstone. fields holds per-field state for merge-fields.
CREATE TABLE records (
    collection TEXT    NOT NULL,
    id         TEXT    NOT NULL,
    value      TEXT,
    hlc        INTEGER NOT NULL,
    author     BLOB    NOT NULL,
    fields     TEXT,
    PRIMARY KEY (collection, id)
) WITHOUT ROWID;

-- Events, clustered by (log, id); ids sort in log order.
CREATE TABLE events (
    log    TEXT    NOT NULL,
    id     TEXT    NOT NULL,
    at     INTEGER NOT NULL,
    author BLOB    NOT NULL,
    value  TEXT    NOT NULL,
    PRIMARY KEY (log, id)
) WITHOUT ROWID;

-- Key-value pairs. value NULL is a tombstone.
CREATE TABLE kv (
    key    TEXT    PRIMARY KEY,
    value  TEXT,
    hlc    INTEGER NOT NULL,
    author BLOB    NOT NULL
) WITHOUT ROWID;
