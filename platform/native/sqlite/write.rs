//! Applying one group commit as one SQLite transaction.

use rusqlite::{params, Connection};

use super::authors::Authors;
use super::{log_key, to_i64, Sql, Tables};
use crate::error::StorageError;
use crate::storage::{StorageResult, WriteBatch};

pub(super) fn write_batch(
    conn: &mut Connection,
    authors: &Authors,
    tables: Tables,
    batch: WriteBatch,
) -> StorageResult<()> {
    let tx = conn.transaction().sql()?;
    let mut created = Vec::new();
    if batch.clear {
        for table in [
            "change_log",
            "records",
            "events",
            "kv",
            "hashed_records",
            "hashed_kv",
        ] {
            tx.execute(&format!("DELETE FROM {table}"), []).sql()?;
        }
        for key in crate::storage::MetaKey::ALL {
            tx.execute("DELETE FROM meta WHERE key = ?1", params![key.as_str()])
                .sql()?;
        }
    }
    if let Some(id) = batch.store_id {
        let insert = if batch.adopt_store_id {
            "INSERT INTO meta (key, value) VALUES ('store_id', ?1)
             ON CONFLICT (key) DO UPDATE SET value = excluded.value"
        } else {
            "INSERT INTO meta (key, value) VALUES ('store_id', ?1) ON CONFLICT (key) DO NOTHING"
        };
        tx.execute(insert, params![&id.as_bytes()[..]]).sql()?;
        let stored: Vec<u8> = tx
            .query_row("SELECT value FROM meta WHERE key = 'store_id'", [], |r| {
                r.get(0)
            })
            .sql()?;
        if stored != id.as_bytes() {
            return Err(StorageError::Conflict(
                "the store already has another id".into(),
            ));
        }
    }
    // The clock is derived from the change log (`hlc_last`), not stored.
    {
        let mut log = tx
            .prepare_cached(
                "INSERT INTO change_log (id, hlc_last, body, signature) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (id) DO NOTHING",
            )
            .sql()?;
        for entry in &batch.log {
            let author = authors.number(&tx, &mut created, entry.author)?;
            log.execute(params![
                log_key(author, entry.seq)?,
                to_i64(entry.last_hlc.as_u64()),
                entry.commit.body,
                &entry.commit.signature[..]
            ])
            .sql()?;
        }
        let mut records = tx
            .prepare_cached(&format!(
                "INSERT INTO {} (collection, id, value, hlc, author, fields)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (collection, id) DO UPDATE SET
                   value = excluded.value, hlc = excluded.hlc,
                   author = excluded.author, fields = excluded.fields",
                tables.records
            ))
            .sql()?;
        for row in &batch.records {
            let author = authors.number(&tx, &mut created, row.stamp.author)?;
            records
                .execute(params![
                    row.collection,
                    row.id,
                    row.value,
                    to_i64(row.stamp.hlc.as_u64()),
                    author,
                    row.fields
                ])
                .sql()?;
        }
        let mut events = tx
            .prepare_cached(if batch.replace_events {
                "INSERT OR REPLACE INTO events (log, id, at, author, value) VALUES (?1, ?2, ?3, ?4, ?5)"
            } else {
                "INSERT INTO events (log, id, at, author, value) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (log, id) DO NOTHING"
            })
            .sql()?;
        for row in &batch.events {
            let author = authors.number(&tx, &mut created, row.author)?;
            events
                .execute(params![row.log, row.id, to_i64(row.at), author, row.value])
                .sql()?;
        }
        let mut kv = tx
            .prepare_cached(&format!(
                "INSERT INTO {} (key, value, hlc, author) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (key) DO UPDATE SET
                   value = excluded.value, hlc = excluded.hlc, author = excluded.author",
                tables.kv
            ))
            .sql()?;
        for row in &batch.kv {
            let author = authors.number(&tx, &mut created, row.stamp.author)?;
            kv.execute(params![
                row.key,
                row.value,
                to_i64(row.stamp.hlc.as_u64()),
                author
            ])
            .sql()?;
        }
    }
    for (key, value) in &batch.meta {
        tx.prepare_cached("INSERT OR REPLACE INTO meta (key, value) VALUES (?1, ?2)")
            .sql()?
            .execute(params![key.as_str(), value])
            .sql()?;
    }
    tx.commit().sql()?;
    authors.commit(created);
    Ok(())
}
