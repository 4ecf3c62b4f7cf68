//! A sync server's storage in PostgreSQL ([`HostStorage`]): the same two
//! tables as the SQLite storage, in plain SQL (`BYTEA`, `BIGINT`, one
//! primary key per table, no extension), so it also runs on
//! PostgreSQL-compatible engines. A pool of connections
//! (`deadpool-postgres`); a write is acknowledged once its transaction
//! commits. Errors reaching the database are `STORAGE_IO`; a commit stored
//! twice under one number is `STORAGE_CONFLICT`.
//!
//! Several server processes may share the database. Each write that
//! changes a space also sends a notice (`pg_notify` on the channel
//! `persist_changes`, delivered when the transaction commits, payload
//! `<process>:<space>`); each process listens on its own connection and
//! reads the spaces the others changed again
//! ([`HostStorage::changes`]). Engines without `LISTEN`/`NOTIFY` need one
//! process (or devices catch up at their next pull).

use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

use crate::change::{SignedCommit, StoreId};
use crate::error::StorageError;
use crate::host::stored::{commit as signed, count, device, hash, number};
use crate::host::{
    Changed, Head, HostStats, HostStorage, HostedCommit, SpaceId, StoredSpace, Usage,
};
use crate::identity::DeviceId;
use crate::platform::{BoxFuture, BoxStream};
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
/// The channel of change notices.
const CHANNEL: &str = "persist_changes";
/// Notices waiting for the serving loop, at most (more: one
/// [`Changed::Unknown`] stands for those dropped).
const NOTICES: usize = 256;

/// A sync server's storage in PostgreSQL.
pub struct PostgresHost {
    describe: String,
    config: tokio_postgres::Config,
    pool: Pool,
    /// This process among those sharing the database (its own notices
    /// are not news to it).
    process: u64,
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
            config.clone(),
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
        let mut process = [0u8; 8];
        getrandom::fill(&mut process)
            .map_err(|e| StorageError::Backend(format!("no randomness for a process id: {e}")))?;
        Ok(PostgresHost {
            describe,
            config,
            pool,
            process: u64::from_le_bytes(process),
        })
    }

    async fn client(&self) -> StorageResult<deadpool_postgres::Object> {
        self.pool.get().await.map_err(pool_error)
    }

    /// The payload of this process's notice about `space`.
    fn notice(&self, space: SpaceId) -> String {
        format!("{}:{space}", self.process)
    }
}

/// Tells the other processes (when `tx` commits) that `space` changed.
async fn notify(tx: &tokio_postgres::Transaction<'_>, payload: &str) -> StorageResult<()> {
    tx.execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])
        .await
        .map_err(pg)?;
    Ok(())
}

/// Listens for the other processes' notices on a connection of its own,
/// connecting again (1 s to 30 s apart) while the database is away;
/// after a reconnection, [`Changed::Unknown`]: notices sent meanwhile
/// were lost. Ends when the serving loop drops its end.
async fn listen(
    config: tokio_postgres::Config,
    process: u64,
    mut out: futures::channel::mpsc::Sender<Changed>,
) {
    use futures::StreamExt;
    let mut wait = std::time::Duration::from_secs(1);
    let mut listened_before = false;
    while !out.is_closed() {
        let (client, mut connection) = match config.connect(NoTls).await {
            Ok(pair) => pair,
            Err(e) => {
                tracing::warn!(%e, "cannot listen for other server processes' changes; trying again");
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(std::time::Duration::from_secs(30));
                continue;
            }
        };
        let mut sink = out.clone();
        let driver = tokio::spawn(async move {
            let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
            let mut missed = false;
            // Looks up once a second whether the serving loop is gone.
            let tick = std::time::Duration::from_secs(1);
            while !sink.is_closed() {
                let Ok(message) = tokio::time::timeout(tick, messages.next()).await else {
                    continue;
                };
                match message {
                    Some(Ok(tokio_postgres::AsyncMessage::Notification(n))) => {
                        forward(n.payload(), process, &mut sink, &mut missed)
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        tracing::warn!(%e, "the connection listening for changes broke");
                        break;
                    }
                    None => break,
                }
            }
        });
        match client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
            Ok(()) => {
                wait = std::time::Duration::from_secs(1);
                if listened_before {
                    tracing::info!("listening for other server processes' changes again");
                    // Notices sent while away are lost: read everything again.
                    let _ = out.try_send(Changed::Unknown);
                }
                listened_before = true;
            }
            Err(e) => tracing::warn!(%e, "cannot listen for other server processes' changes"),
        }
        // Until the connection ends (the client stays open meanwhile).
        let _ = driver.await;
        drop(client);
        tokio::time::sleep(wait).await;
    }
}

/// Passes on one notice (not this process's own); when the loop is
/// behind, one [`Changed::Unknown`] stands for what was dropped.
fn forward(
    payload: &str,
    process: u64,
    out: &mut futures::channel::mpsc::Sender<Changed>,
    missed: &mut bool,
) {
    let Some((from, space)) = payload.split_once(':') else {
        tracing::debug!(payload, "a notice not from a server process ignored");
        return;
    };
    let (Ok(from), Ok(space)) = (from.parse::<u64>(), space.parse::<SpaceId>()) else {
        tracing::debug!(payload, "a notice not from a server process ignored");
        return;
    };
    if from == process {
        return;
    }
    if *missed {
        if out.try_send(Changed::Unknown).is_err() {
            return;
        }
        *missed = false;
    }
    if let Err(e) = out.try_send(Changed::Space(space)) {
        *missed = e.is_full();
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

    fn set_log(
        &self,
        space: SpaceId,
        old: Vec<u8>,
        new: Vec<u8>,
    ) -> BoxFuture<'_, StorageResult<bool>> {
        Box::pin(async move {
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg)?;
            let replaced = tx
                .execute(
                    "UPDATE persist_spaces SET log = $3 WHERE id = $1 AND log = $2",
                    &[&space, &old, &new],
                )
                .await
                .map_err(pg)?;
            if replaced != 1 {
                return Ok(false);
            }
            notify(&tx, &self.notice(space)).await?;
            tx.commit().await.map_err(pg)?;
            Ok(true)
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
            notify(&tx, &self.notice(space)).await?;
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
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(pg)?;
            let dropped = tx
                .execute(
                    "DELETE FROM persist_commits WHERE space = $1 AND author = $2 AND seq > $3",
                    &[&space, &author.as_bytes().as_slice(), &number(keep_upto)?],
                )
                .await
                .map_err(pg)?;
            notify(&tx, &self.notice(space)).await?;
            tx.commit().await.map_err(pg)?;
            Ok(dropped)
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

    fn changes(&self) -> BoxStream<'static, Changed> {
        let (out, notices) = futures::channel::mpsc::channel(NOTICES);
        tokio::spawn(listen(self.config.clone(), self.process, out));
        Box::pin(notices)
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
