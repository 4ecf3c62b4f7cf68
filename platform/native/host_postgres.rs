//! A sync server's storage in PostgreSQL ([`HostStorage`]): the same two
//! tables as the SQLite storage, in plain SQL (`BYTEA`, `BIGINT`, one
//! primary key per table, no extension), so it also runs on
//! PostgreSQL-compatible engines. A pool of connections
//! (`deadpool-postgres`); a write is acknowledged once its transaction
//! commits. Errors reaching the database are `STORAGE_IO`; a commit stored
//! twice under one number is `STORAGE_CONFLICT`.

use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

use crate::change::{SignedCommit, StoreId};
use crate::error::StorageError;
use crate::host::stored::{commit as signed, count, device, hash, number};
use crate::host::{Head, HostStats, HostStorage, HostedCommit, SpaceId, StoredSpace, Usage};
use crate::identity::DeviceId;
use crate::platform::BoxFuture;
use crate::storage::StorageResult;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS persist_spaces (
    id BIGSERIAL PRIMARY KEY,
    store BYTEA NOT NULL,
    founder BYTEA NOT NULL,
    log BYTEA NOT NULL,
    UNIQUE (store, founder)
);
CREATE TABLE IF NOT EXISTS persist_commits (
    space BIGINT NOT NULL,
    author BYTEA NOT NULL,
    seq BIGINT NOT NULL,
    hash BYTEA NOT NULL,
    body BYTEA NOT NULL,
    signature BYTEA NOT NULL,
    PRIMARY KEY (space, author, seq)
);
";

/// Connections in the pool, at most.
const POOL_SIZE: usize = 16;

/// A sync server's storage in PostgreSQL.
pub struct PostgresHost {
    describe: String,
    pool: Pool,
}

fn pg(e: tokio_postgres::Error) -> StorageError {
    match e.code() {
        Some(code) if *code == SqlState::UNIQUE_VIOLATION => StorageError::Conflict(e.to_string()),
        Some(code) if *code == SqlState::DISK_FULL => StorageError::Io(e.to_string()),
        Some(_) => StorageError::Backend(e.to_string()),
        // No SQL state: the connection failed or closed.
        None => StorageError::Io(format!("PostgreSQL: {e}")),
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> StorageError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => pg(e),
        other => StorageError::Io(format!("PostgreSQL: {other}")),
    }
}

impl PostgresHost {
    /// Connects to the database at `url` (`postgres://user@host:port/db`)
    /// and creates the tables if they are missing.
    pub async fn connect(url: &str) -> StorageResult<PostgresHost> {
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StorageError::Backend(format!("PostgreSQL address: {e}")))?;
        let describe = format!(
            "PostgreSQL database {} on {:?}",
            config.get_dbname().unwrap_or("(default)"),
            config.get_hosts()
        );
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .build()
            .map_err(|e| StorageError::Backend(format!("PostgreSQL pool: {e}")))?;
        let client = pool.get().await.map_err(pool_error)?;
        client.batch_execute(SCHEMA).await.map_err(pg)?;
        drop(client);
        Ok(PostgresHost { describe, pool })
    }

    async fn client(&self) -> StorageResult<deadpool_postgres::Object> {
        self.pool.get().await.map_err(pool_error)
    }
}

async fn find_space(
    client: &tokio_postgres::Client,
    store: StoreId,
    founder: DeviceId,
) -> StorageResult<Option<StoredSpace>> {
    let row = client
        .query_opt(
            "SELECT id, log FROM persist_spaces WHERE store = $1 AND founder = $2",
            &[&store.as_bytes().as_slice(), &founder.as_bytes().as_slice()],
        )
        .await
        .map_err(pg)?;
    Ok(row.map(|r| (r.get(0), r.get(1))))
}

impl HostStorage for PostgresHost {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    fn space(
        &self,
        store: StoreId,
        founder: DeviceId,
    ) -> BoxFuture<'_, StorageResult<Option<StoredSpace>>> {
        Box::pin(async move {
            let client = self.client().await?;
            find_space(&client, store, founder).await
        })
    }

    fn create_space(
        &self,
        store: StoreId,
        founder: DeviceId,
        log: Vec<u8>,
        max_spaces: u64,
    ) -> BoxFuture<'_, StorageResult<Option<StoredSpace>>> {
        Box::pin(async move {
            let client = self.client().await?;
            if let Some(found) = find_space(&client, store, founder).await? {
                return Ok(Some(found));
            }
            let held: i64 = client
                .query_one("SELECT count(*) FROM persist_spaces", &[])
                .await
                .map_err(pg)?
                .get(0);
            if count(held)? >= max_spaces {
                return Ok(None);
            }
            // Two servers may create it at once: the first insert wins,
            // both return it.
            client
                .execute(
                    "INSERT INTO persist_spaces (store, founder, log) VALUES ($1, $2, $3) \
                     ON CONFLICT (store, founder) DO NOTHING",
                    &[
                        &store.as_bytes().as_slice(),
                        &founder.as_bytes().as_slice(),
                        &log,
                    ],
                )
                .await
                .map_err(pg)?;
            find_space(&client, store, founder).await
        })
    }

    fn set_log(&self, space: SpaceId, log: Vec<u8>) -> BoxFuture<'_, StorageResult<()>> {
        Box::pin(async move {
            self.client()
                .await?
                .execute(
                    "UPDATE persist_spaces SET log = $2 WHERE id = $1",
                    &[&space, &log],
                )
                .await
                .map_err(pg)?;
            Ok(())
        })
    }

    fn heads(&self, space: SpaceId) -> BoxFuture<'_, StorageResult<Vec<Head>>> {
        Box::pin(async move {
            let rows = self
                .client()
                .await?
                .query(
                    "SELECT author, seq, hash FROM persist_commits c WHERE space = $1 AND seq = \
                     (SELECT max(seq) FROM persist_commits WHERE space = c.space AND author = c.author)",
                    &[&space],
                )
                .await
                .map_err(pg)?;
            rows.into_iter()
                .map(|r| Ok((device(r.get(0))?, count(r.get(1))?, hash(r.get(2))?)))
                .collect()
        })
    }

    fn commits_after(
        &self,
        space: SpaceId,
        author: DeviceId,
        after: u64,
        limit: usize,
    ) -> BoxFuture<'_, StorageResult<Vec<SignedCommit>>> {
        Box::pin(async move {
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let rows = self
                .client()
                .await?
                .query(
                    "SELECT body, signature FROM persist_commits \
                     WHERE space = $1 AND author = $2 AND seq > $3 ORDER BY seq LIMIT $4",
                    &[
                        &space,
                        &author.as_bytes().as_slice(),
                        &number(after)?,
                        &limit,
                    ],
                )
                .await
                .map_err(pg)?;
            rows.into_iter()
                .map(|r| signed(r.get(0), r.get(1)))
                .collect()
        })
    }

    fn commit_at(
        &self,
        space: SpaceId,
        author: DeviceId,
        seq: u64,
    ) -> BoxFuture<'_, StorageResult<Option<SignedCommit>>> {
        Box::pin(async move {
            let row = self
                .client()
                .await?
                .query_opt(
                    "SELECT body, signature FROM persist_commits \
                     WHERE space = $1 AND author = $2 AND seq = $3",
                    &[&space, &author.as_bytes().as_slice(), &number(seq)?],
                )
                .await
                .map_err(pg)?;
            row.map(|r| signed(r.get(0), r.get(1))).transpose()
        })
    }

    fn append(
        &self,
        space: SpaceId,
        commits: Vec<HostedCommit>,
    ) -> BoxFuture<'_, StorageResult<()>> {
        Box::pin(async move {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg)?;
            let insert = tx
                .prepare_cached(
                    "INSERT INTO persist_commits (space, author, seq, hash, body, signature) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .await
                .map_err(pg)?;
            for c in &commits {
                tx.execute(
                    &insert,
                    &[
                        &space,
                        &c.author.as_bytes().as_slice(),
                        &number(c.seq)?,
                        &c.hash.as_slice(),
                        &c.commit.body,
                        &c.commit.signature.as_slice(),
                    ],
                )
                .await
                .map_err(pg)?;
            }
            tx.commit().await.map_err(pg)
        })
    }

    fn truncate(
        &self,
        space: SpaceId,
        author: DeviceId,
        keep_upto: u64,
    ) -> BoxFuture<'_, StorageResult<u64>> {
        Box::pin(async move {
            self.client()
                .await?
                .execute(
                    "DELETE FROM persist_commits WHERE space = $1 AND author = $2 AND seq > $3",
                    &[&space, &author.as_bytes().as_slice(), &number(keep_upto)?],
                )
                .await
                .map_err(pg)
        })
    }

    fn usage(&self, space: SpaceId) -> BoxFuture<'_, StorageResult<Usage>> {
        Box::pin(async move {
            let row = self
                .client()
                .await?
                .query_one(
                    "SELECT count(*), coalesce(sum(length(body) + length(signature)), 0)::BIGINT \
                     FROM persist_commits WHERE space = $1",
                    &[&space],
                )
                .await
                .map_err(pg)?;
            Ok(Usage {
                commits: count(row.get(0))?,
                bytes: count(row.get(1))?,
            })
        })
    }

    fn stats(&self) -> BoxFuture<'_, StorageResult<HostStats>> {
        Box::pin(async move {
            let client = self.client().await?;
            let stores: i64 = client
                .query_one("SELECT count(*) FROM persist_spaces", &[])
                .await
                .map_err(pg)?
                .get(0);
            let row = client
                .query_one(
                    "SELECT count(*), coalesce(sum(length(body) + length(signature)), 0)::BIGINT \
                     FROM persist_commits",
                    &[],
                )
                .await
                .map_err(pg)?;
            Ok(HostStats {
                stores: count(stores)?,
                commits: count(row.get(0))?,
                bytes: count(row.get(1))?,
            })
        })
    }
}

/// Opens the server storage named by `spec`: a `postgres://` or
/// `postgresql://` URL, or a SQLite file path.
pub async fn open_host_storage(spec: &str) -> StorageResult<Arc<dyn HostStorage>> {
    if spec.starts_with("postgres://") || spec.starts_with("postgresql://") {
        Ok(Arc::new(PostgresHost::connect(spec).await?))
    } else {
        Ok(Arc::new(super::SqliteHost::open(std::path::Path::new(
            spec,
        ))?))
    }
}
