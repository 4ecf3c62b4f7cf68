//! The Rust API in one screen: open a store, write records, events and keys,
//! read them back, subscribe to changes, and merge with a second replica.
//!
//! Run: `cargo run --example quickstart`

use std::sync::Arc;

use persist::storage::{MemoryStore, StorageBackend, WriteBatch};
use persist::{Adapter, ConflictStrategy, EventListOptions, ListOptions, Store, StoreOptions};
use serde_json::json;

#[tokio::main]
async fn main() -> persist::Result<()> {
    let dir = std::env::temp_dir().join(format!("persist-quickstart-{}", std::process::id()));
    let store = Store::open(StoreOptions::new("my-app").path(dir.join("my-app.db"))).await?;

    let notes = store.records("notes");
    let _subscription = notes.subscribe(|changes| {
        for change in changes {
            let value = change
                .value
                .as_ref()
                .map_or("(deleted)".to_owned(), |v| v.to_string());
            println!("changed: notes/{} -> {value}", change.id);
        }
    })?;
    notes
        .put("n1", json!({ "title": "hi", "body": "..." }))
        .await?;
    notes
        .put_many([
            ("n2", json!({ "title": "two" })),
            ("n3", json!({ "title": "three" })),
        ])
        .await?;
    println!("n1 = {}", notes.get("n1").await?.unwrap_or_default());
    let page = notes
        .list(ListOptions {
            prefix: Some("n".into()),
            limit: Some(2),
            after: None,
        })
        .await?;
    println!(
        "first page: {:?}",
        page.iter().map(|r| &r.id).collect::<Vec<_>>()
    );

    let appended = store
        .events("audit")
        .append(json!({ "action": "login" }))
        .await?;
    println!("event {} at {}", appended.id, appended.at);
    println!(
        "{} audit events",
        store
            .events("audit")
            .list(EventListOptions::default())
            .await?
            .len()
    );

    store.kv().set("theme", "dark").await?;
    println!(
        "theme = {}",
        store.kv().get("theme").await?.unwrap_or_default()
    );

    // A second replica of the same store (in memory here; over the network
    // in later releases) merges field by field.
    let replica_backend = Arc::new(MemoryStore::new());
    replica_backend
        .write(WriteBatch {
            store_id: Some(store.store_id()),
            ..WriteBatch::default()
        })
        .await?;
    let replica = Store::open(
        StoreOptions::new("my-app")
            .adapter(Adapter::Memory)
            .backend(replica_backend)
            .strategy(ConflictStrategy::LastWriteWins),
    )
    .await?;
    replica
        .ingest(
            store
                .commits_missing_from(&replica.version_vector().await?, usize::MAX)
                .await?,
        )
        .await?;
    println!(
        "replica sees n1 = {}",
        replica
            .records("notes")
            .get("n1")
            .await?
            .unwrap_or_default()
    );

    store.close().await?;
    replica.close().await?;
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}
