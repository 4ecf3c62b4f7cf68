//! # Persist
//!
//! A local-first data store that runs natively (SQLite) and in the browser
//! (WebAssembly), built so devices can replicate it to each other.
//!
//! Every write is a **commit**: its operations stamped with a hybrid logical
//! clock and the author device, signed once with the device's Ed25519 key,
//! appended to a change log and applied to materialized state (records,
//! events, keys). Conflicts between replicas resolve by a
//! [`ConflictStrategy`]; any replicas that applied the same commits hold the
//! same state.
//!
//! ```no_run
//! # async fn demo() -> persist::Result<()> {
//! use persist::{ListOptions, Store, StoreOptions};
//! use serde_json::json;
//!
//! let store = Store::open(StoreOptions::new("shared-notes").path("./notes.db")).await?;
//! let notes = store.records("notes");
//! notes.put("n1", json!({ "title": "hi", "body": "..." })).await?;
//! let _sub = notes.subscribe(|changes| println!("{} changed", changes.len()))?;
//! let all = notes.list(ListOptions::default()).await?;
//! store.close().await?;
//! # Ok(()) }
//! ```
//!
//! ## Layout
//!
//! - `hlc`, `identity`, `change`, `merge`, `names`: the sans-IO core (clock,
//!   keys, commit encoding and signatures, conflict rules, validation).
//! - `storage`: the storage trait, the memory backend and the conformance suite.
//! - `store`: the public API and the single group-committing writer.
//! - `membership`: who may sync a store (a signed, replicated log).
//! - `net`: P2P over libp2p (pairing, gating, sync), target-neutral.
//! - `crypto`: encryption at rest, sealing to a device.
//! - `platform` (in `platform/`): native (SQLite, keyfile, tokio) and web
//!   (browser) code behind `cfg`, the only place that names a runtime.
#![deny(missing_docs)]
#![warn(unreachable_pub)]
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod change;
pub mod crypto;
pub mod error;
pub mod hlc;
pub mod host;
pub mod identity;
pub mod js_api;
pub mod keys;
pub mod membership;
pub mod merge;
pub mod names;
pub mod net;
pub mod storage;
pub mod store;

#[path = "../platform/mod.rs"]
pub mod platform;

pub use change::{Commit, Limits, SignedCommit, Stamp, StoreId};
pub use error::{Code, Error, NameKind, RejectReason, Result, StorageError};
pub use identity::{DeviceId, DeviceIdentity};
pub use merge::{Conflict, ConflictStrategy, Version};
pub use store::{
    Adapter, AppendedEvent, Event, EventListOptions, Events, IngestReport, Kv, ListOptions, Origin,
    Record, RecordChange, Records, RotationProgress, Since, Store, StoreCrypto, StoreOptions,
    Subscription, Transaction, WriteReceipt,
};
