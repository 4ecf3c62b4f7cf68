-- Persist schema, version 1.
-- Store metadata (the store id).
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;

-- Devices that authored commits, numbered locally so rows carry a small
-- integer instead of a 32-byte public key.
CREATE TABLE authors (
    id     INTEGER PRIMARY KEY,
    device BLOB NOT NULL UNIQUE
);

-- The change log: every signed commit, local or received. The rowid packs
-- (author, seq) as author << 40 | seq, so the log is clustered by author and
-- sequence with no second index, a local commit appends at the end of its
-- author's range, and an author's head is one descending probe.
-- hlc_last is the stamp of the commit's last operation (the clock on open).
CREATE TABLE change_log (
    id        INTEGER PRIMARY KEY,
    hlc_last  INTEGER NOT NULL,
    body      BLOB    NOT NULL,
    signature BLOB    NOT NULL
);

-- Materialized records, clustered by (collection, id) so listings are range
-- scans. value NULL is a tombstone; fields holds merge-fields state.
CREATE TABLE records (
    collection TEXT    NOT NULL,
    id         TEXT    NOT NULL,
    value      TEXT,
    hlc        INTEGER NOT NULL,
    author     INTEGER NOT NULL,
    fields     TEXT,
    PRIMARY KEY (collection, id)
) WITHOUT ROWID;

-- Events, clustered by (log, id); ids sort in log order.
CREATE TABLE events (
    log    TEXT    NOT NULL,
    id     TEXT    NOT NULL,
    at     INTEGER NOT NULL,
    author INTEGER NOT NULL,
    value  TEXT    NOT NULL,
    PRIMARY KEY (log, id)
) WITHOUT ROWID;

-- Key-value pairs. value NULL is a tombstone.
CREATE TABLE kv (
    key    TEXT    PRIMARY KEY,
    value  TEXT,
    hlc    INTEGER NOT NULL,
    author INTEGER NOT NULL
) WITHOUT ROWID;
