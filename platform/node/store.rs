//! `openStore`, the `Store` class and `store.crypto`.

use std::sync::{Arc, Mutex};

use napi::bindgen_prelude::*;
use napi::threadsafe_function::{ThreadsafeFunctionCallMode, UnknownReturnValue};
use napi_derive::napi;

use super::data::{json_listener, JsEvents, JsKv, JsRecords, JsonListener};
use super::p2p::JsP2p;
use super::{check, coded, json_view, parse, promise, settle};
use crate::net::{P2p, P2pOptions};
use crate::store::{RotationProgress, Store, StoreCrypto};

/// The store's P2P node, once `enableP2P` started it (shared by the store
/// and its `crypto`, whose invites travel over it).
type NodeSlot = Arc<Mutex<Option<JsP2p>>>;

fn node_of(slot: &NodeSlot) -> Option<JsP2p> {
    slot.lock()
        .ok()
        .and_then(|node| node.clone())
        .filter(|n| !n.is_stopped())
}

/// Opens a store: `openStore("name", { adapter, path, encrypt, key,
/// strategy, sync })` or `openStore({ name, ... })` (the package's
/// `createStore`). `sync.remote` starts syncing with those servers (or the
/// one `PERSIST_SYNC_REMOTE` names) as the store opens.
#[napi(js_name = "openStore", ts_return_type = "Promise<Store>")]
pub fn open_store<'env>(
    env: &'env Env,
    name_or_options: Unknown,
    options: Option<Unknown>,
) -> Result<PromiseRaw<'env, JsStore>> {
    settle(env, || {
        let (mut options, remote) = check(
            env,
            crate::js_api::store_options(
                &json_view(env, Some(name_or_options))?,
                &json_view(env, options)?,
            ),
        )?;
        if let Some(remote) = remote {
            options = options.sync_remote(remote.join(","));
        }
        promise(
            env,
            async move { Store::open(options).await },
            |_, store| {
                Ok(JsStore {
                    store,
                    p2p: NodeSlot::default(),
                })
            },
        )
    })
}

/// An open store.
#[napi(js_name = "Store")]
pub struct JsStore {
    store: Store,
    p2p: NodeSlot,
}

#[napi]
impl JsStore {
    /// The records of a collection.
    #[napi]
    pub fn records(&self, collection: String) -> JsRecords {
        JsRecords::new(self.store.records(&collection))
    }

    /// An event log.
    #[napi]
    pub fn events(&self, log: String) -> JsEvents {
        JsEvents::new(self.store.events(&log))
    }

    /// The key-value space.
    #[napi(getter)]
    pub fn kv(&self) -> JsKv {
        JsKv::new(self.store.kv())
    }

    /// Key export and rotation; invites once P2P runs.
    #[napi(getter)]
    pub fn crypto(&self) -> JsStoreCrypto {
        JsStoreCrypto {
            crypto: self.store.crypto(),
            p2p: self.p2p.clone(),
        }
    }

    /// The store's name.
    #[napi(getter)]
    pub fn name(&self) -> String {
        self.store.name().to_owned()
    }

    /// The store's id (hex).
    #[napi(getter, js_name = "storeId")]
    pub fn store_id(&self) -> String {
        self.store.store_id().to_string()
    }

    /// This device's id (hex of its Ed25519 public key).
    #[napi(getter, js_name = "deviceId")]
    pub fn device_id(&self) -> String {
        self.store.device_id().to_string()
    }

    /// Starts this store's P2P node (once; later calls resolve to the same
    /// node): `{ listenAddrs, bootstrapPeers, syncServers, discovery: {
    /// dht, mdns } }`. The node keeps the process alive until `stop()` or
    /// `close()`, as a listening server does.
    #[napi(js_name = "enableP2P", ts_return_type = "Promise<P2P>")]
    pub fn enable_p2p<'env>(
        &self,
        env: &'env Env,
        options: Option<Unknown>,
    ) -> Result<PromiseRaw<'env, JsP2p>> {
        settle(env, || {
            let options = check(
                env,
                crate::js_api::p2p_options(&json_view(env, options)?, P2pOptions::default()),
            )?;
            if let Some(node) = node_of(&self.p2p) {
                return PromiseRaw::resolve(env, node);
            }
            let keepalive = JsP2p::keepalive(env)?;
            let store = self.store.clone();
            let slot = self.p2p.clone();
            promise(
                env,
                async move { store.enable_p2p(options).await },
                move |env, node: P2p| {
                    let node = JsP2p::new(node, keepalive);
                    match slot.lock() {
                        Ok(mut slot) => *slot = Some(node.clone()),
                        Err(_) => {
                            return Err(coded(
                                env,
                                crate::Code::P2pUnavailable.as_str(),
                                "the store's P2P state was poisoned by a panic",
                            ))
                        }
                    }
                    Ok(node)
                },
            )
        })
    }

    /// The P2P node (`null` until `enableP2P`).
    #[napi(getter, js_name = "p2p", ts_return_type = "P2P | null")]
    pub fn p2p(&self) -> Option<JsP2p> {
        node_of(&self.p2p)
    }

    /// Closes the store (and stops its P2P node); later calls fail with
    /// `CLOSED`.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn close<'env>(&self, env: &'env Env) -> Result<PromiseRaw<'env, ()>> {
        settle(env, || {
            if let Some(node) = self.p2p.lock().ok().and_then(|mut n| n.take()) {
                node.stop();
            }
            let store = self.store.clone();
            promise(env, async move { store.close().await }, |_, _| Ok(()))
        })
    }
}

/// `store.crypto`: key export and rotation of an encrypted store, and
/// invites over its P2P node.
#[napi(js_name = "StoreCrypto")]
pub struct JsStoreCrypto {
    crypto: StoreCrypto,
    p2p: NodeSlot,
}

fn progress_text(progress: &RotationProgress) -> String {
    crate::js_api::rotation(progress).to_string()
}

/// A reporter that hands each progress to `onProgress` (if given).
fn reporter(listener: Option<JsonListener>) -> impl FnMut(&RotationProgress) + Send {
    move |progress| {
        if let Some(listener) = &listener {
            listener.call(
                progress_text(progress),
                ThreadsafeFunctionCallMode::NonBlocking,
            );
        }
    }
}

/// The `onProgress` function of `options`, if any.
fn on_progress(env: &Env, options: &Option<Object>) -> Result<Option<JsonListener>> {
    let Some(options) = options else {
        return Ok(None);
    };
    let callback: Option<Unknown> = options.get("onProgress")?;
    match callback {
        None => Ok(None),
        Some(callback) if callback.get_type()? == ValueType::Function => {
            let callback: Option<Function<'_, Unknown<'static>, UnknownReturnValue>> =
                options.get("onProgress")?;
            callback.map(json_listener).transpose()
        }
        Some(_) => Err(coded(
            env,
            crate::Code::InvalidOptions.as_str(),
            "onProgress must be a function",
        )),
    }
}

#[napi]
impl JsStoreCrypto {
    /// True for an encrypted store.
    #[napi(getter)]
    pub fn encrypted(&self) -> bool {
        self.crypto.is_encrypted()
    }

    /// The key epoch new data is sealed under.
    #[napi]
    pub fn epoch(&self, env: &Env) -> Result<u32> {
        check(env, self.crypto.epoch())
    }

    /// The current key as checksummed text.
    #[napi(js_name = "exportKey", ts_return_type = "Promise<string>")]
    pub fn export_key<'env>(&self, env: &'env Env) -> Result<PromiseRaw<'env, String>> {
        settle(env, || {
            let crypto = self.crypto.clone();
            promise(
                env,
                async move { crypto.export_key().map(|k| k.as_str().to_owned()) },
                |_, text| Ok(text),
            )
        })
    }

    /// Starts a new key epoch and re-encrypts the stored data in batches,
    /// calling `onProgress(progress)` after each.
    #[napi(js_name = "rotateKey", ts_return_type = "Promise<RotationProgress>")]
    pub fn rotate_key<'env>(
        &self,
        env: &'env Env,
        options: Option<Object>,
    ) -> Result<PromiseRaw<'env, Unknown<'env>>> {
        settle(env, || {
            let report = reporter(on_progress(env, &options)?);
            let crypto = self.crypto.clone();
            promise(
                env,
                async move { crypto.rotate_key(report).await.map(|p| progress_text(&p)) },
                parse,
            )
        })
    }

    /// Finishes an interrupted rotation; `null` when there is none.
    #[napi(
        js_name = "resumeRotation",
        ts_return_type = "Promise<RotationProgress | null>"
    )]
    pub fn resume_rotation<'env>(
        &self,
        env: &'env Env,
        options: Option<Object>,
    ) -> Result<PromiseRaw<'env, Unknown<'env>>> {
        settle(env, || {
            let report = reporter(on_progress(env, &options)?);
            let crypto = self.crypto.clone();
            promise(
                env,
                async move {
                    let done = crypto.resume_rotation(report).await?;
                    Ok(done.map_or_else(|| "null".to_owned(), |p| progress_text(&p)))
                },
                parse,
            )
        })
    }

    /// An invite for another device (`{ code, expiresAt }`); needs
    /// `enableP2P` first.
    #[napi(
        js_name = "createInvite",
        ts_return_type = "Promise<{ code: string; expiresAt: number }>"
    )]
    pub fn create_invite<'env>(
        &self,
        env: &'env Env,
        options: Option<Unknown>,
    ) -> Result<PromiseRaw<'env, Unknown<'env>>> {
        settle(env, || self.node(env)?.create_invite(env, options))
    }

    /// Joins the store of the device that created `code`; resolves to its
    /// peer id.
    #[napi(js_name = "acceptInvite", ts_return_type = "Promise<string>")]
    pub fn accept_invite<'env>(
        &self,
        env: &'env Env,
        code: String,
    ) -> Result<PromiseRaw<'env, String>> {
        settle(env, || self.node(env)?.pair(env, code, None))
    }
}

impl JsStoreCrypto {
    fn node(&self, env: &Env) -> Result<JsP2p> {
        node_of(&self.p2p).ok_or_else(|| {
            coded(
                env,
                crate::Code::P2pUnavailable.as_str(),
                "invites travel over P2P: call store.enableP2P({ bootstrapPeers }) first",
            )
        })
    }
}
