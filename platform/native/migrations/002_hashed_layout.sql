-- Persist schema, version 2: tables for stores whose names are keyed
-- hashes (encrypted stores). Hashed ids keep no order, so clustering rows by
-- them would scatter every batch of writes over the whole B-tree; these
-- tables keep rows in write order (rowid) and index the hash instead.
CREATE TABLE hashed_records (
    collection TEXT    NOT NULL,
    id         TEXT    NOT NULL,
    value      TEXT,
    hlc        INTEGER NOT NULL,
    author     INTEGER NOT NULL,
    fields     TEXT
);
CREATE UNIQUE INDEX hashed_records_key ON hashed_records (collection, id);

CREATE TABLE hashed_kv (
    key    TEXT    NOT NULL,
    value  TEXT,
    hlc    INTEGER NOT NULL,
    author INTEGER NOT NULL
);
CREATE UNIQUE INDEX hashed_kv_key ON hashed_kv (key);
