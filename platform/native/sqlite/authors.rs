//! Authors as small integers: rows store a local number, this cache maps
//! numbers to public keys and back. New numbers enter the cache only after
//! the transaction that created them commits.

use std::collections::HashMap;
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::Sql;
use crate::error::StorageError;
use crate::identity::DeviceId;
use crate::storage::StorageResult;

#[derive(Default)]
struct Maps {
    by_device: HashMap<DeviceId, i64>,
    by_id: HashMap<i64, DeviceId>,
}

/// The author number cache shared by the writer and the readers.
#[derive(Default)]
pub(super) struct Authors {
    maps: Mutex<Maps>,
}

pub(super) fn device_id(bytes: Vec<u8>) -> StorageResult<DeviceId> {
    let array: [u8; 32] = bytes
        .try_into()
        .map_err(|_| StorageError::Corrupt("author key is not 32 bytes".into()))?;
    Ok(DeviceId::from_bytes(array))
}

impl Authors {
    fn maps(&self) -> std::sync::MutexGuard<'_, Maps> {
        self.maps.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remember(&self, device: DeviceId, id: i64) {
        let mut maps = self.maps();
        maps.by_device.insert(device, id);
        maps.by_id.insert(id, device);
    }

    /// The public key of author number `id`.
    pub(super) fn device(&self, conn: &Connection, id: i64) -> StorageResult<DeviceId> {
        if let Some(device) = self.maps().by_id.get(&id) {
            return Ok(*device);
        }
        let bytes: Option<Vec<u8>> = conn
            .prepare_cached("SELECT device FROM authors WHERE id = ?1")
            .sql()?
            .query_row(params![id], |r| r.get(0))
            .optional()
            .sql()?;
        let device =
            device_id(bytes.ok_or_else(|| StorageError::Corrupt(format!("unknown author {id}")))?)?;
        self.remember(device, id);
        Ok(device)
    }

    /// The number of `device`, if it authored anything here.
    pub(super) fn lookup(&self, conn: &Connection, device: DeviceId) -> StorageResult<Option<i64>> {
        if let Some(id) = self.maps().by_device.get(&device) {
            return Ok(Some(*id));
        }
        let id: Option<i64> = conn
            .prepare_cached("SELECT id FROM authors WHERE device = ?1")
            .sql()?
            .query_row(params![&device.as_bytes()[..]], |r| r.get(0))
            .optional()
            .sql()?;
        if let Some(id) = id {
            self.remember(device, id);
        }
        Ok(id)
    }

    /// The number of `device`, creating it inside `tx` if needed; new numbers
    /// are collected in `created` for [`Authors::commit`].
    pub(super) fn number(
        &self,
        tx: &Transaction<'_>,
        created: &mut Vec<(DeviceId, i64)>,
        device: DeviceId,
    ) -> StorageResult<i64> {
        if let Some((_, id)) = created.iter().find(|(d, _)| *d == device) {
            return Ok(*id);
        }
        if let Some(id) = self.lookup(tx, device)? {
            return Ok(id);
        }
        tx.prepare_cached("INSERT INTO authors (device) VALUES (?1)")
            .sql()?
            .execute(params![&device.as_bytes()[..]])
            .sql()?;
        let id = tx.last_insert_rowid();
        created.push((device, id));
        Ok(id)
    }

    /// Caches numbers created by a transaction that committed.
    pub(super) fn commit(&self, created: Vec<(DeviceId, i64)>) {
        for (device, id) in created {
            self.remember(device, id);
        }
    }
}
