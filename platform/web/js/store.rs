//! `createStore` and the `Store` class.

use std::cell::RefCell;
use std::rc::Rc;

use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use super::error::JsResult;
use super::value::json_view;
use super::{JsEvents, JsKv, JsP2p, JsRecords, JsStoreCrypto};
use crate::store::Store;

/// Opens a store: `createStore("name", { adapter })` or
/// `createStore({ name, adapter, strategy })`. Exported as `openStore`:
/// the package's `createStore` (its JavaScript layer) calls it, then
/// starts the tab's node for `sync.remote`.
#[wasm_bindgen(js_name = openStore)]
pub async fn create_store(name_or_options: JsValue, options: JsValue) -> JsResult<JsStore> {
    // The servers of `sync.remote` go to the tab's node (the package's
    // `createStore` starts it); they hold only ciphertext.
    let (store_options, _remote) =
        crate::js_api::store_options(&json_view(&name_or_options)?, &json_view(&options)?)?;
    let store = Store::open(store_options).await?;
    Ok(JsStore {
        store,
        p2p: Rc::default(),
    })
}

/// An open store, as Rust holds it: the package's `Store` (`js/index.js`)
/// wraps it with the P2P node the origin's tabs share, and invites.
#[wasm_bindgen(js_name = StoreHandle)]
pub struct JsStore {
    store: Store,
    /// The P2P node, once `enableP2P` started it.
    p2p: Rc<RefCell<Option<JsP2p>>>,
}

#[wasm_bindgen(js_class = StoreHandle)]
impl JsStore {
    /// The records of a collection.
    pub fn records(&self, collection: String) -> JsRecords {
        JsRecords::new(self.store.records(&collection))
    }

    /// An event log.
    pub fn events(&self, log: String) -> JsEvents {
        JsEvents::new(self.store.events(&log))
    }

    /// The key-value space.
    #[wasm_bindgen(getter)]
    pub fn kv(&self) -> JsKv {
        JsKv::new(self.store.kv())
    }

    /// Key management: `exportKey()`, `rotateKey({ onProgress })`.
    #[wasm_bindgen(getter)]
    pub fn crypto(&self) -> JsStoreCrypto {
        JsStoreCrypto::new(self.store.crypto())
    }

    /// The store's name.
    #[wasm_bindgen(getter)]
    pub fn name(&self) -> String {
        self.store.name().to_owned()
    }

    /// The store's id (hex).
    #[wasm_bindgen(getter, js_name = storeId)]
    pub fn store_id(&self) -> String {
        self.store.store_id().to_string()
    }

    /// This device's id (hex of its Ed25519 public key).
    #[wasm_bindgen(getter, js_name = deviceId)]
    pub fn device_id(&self) -> String {
        self.store.device_id().to_string()
    }

    /// Starts this store's P2P node (again after `stop()`): `{
    /// bootstrapPeers: [multiaddr], discovery: { dht } }`. A browser dials WebSocket and WebRTC-direct
    /// addresses and is reachable through its bootstrap nodes' relay.
    /// Resolves to the node (`store.p2p` afterwards).
    #[wasm_bindgen(js_name = enableP2P)]
    pub fn enable_p2p(&self, options: JsValue) -> JsResult<js_sys::Promise> {
        let options = super::p2p::options(&options)?;
        let store = self.store.clone();
        let slot = self.p2p.clone();
        Ok(future_to_promise(async move {
            if let Some(node) = slot.borrow().as_ref().filter(|n| !n.is_stopped()) {
                return Ok(node.clone().into());
            }
            let node = JsP2p::new(store.enable_p2p(options).await?);
            *slot.borrow_mut() = Some(node.clone());
            Ok(node.into())
        }))
    }

    /// The P2P node (`null` until `enableP2P`).
    #[wasm_bindgen(getter)]
    pub fn p2p(&self) -> Option<JsP2p> {
        self.p2p.borrow().clone()
    }

    /// Closes the store (and stops its P2P node); later calls fail with
    /// `CLOSED`.
    pub fn close(&self) -> js_sys::Promise {
        let store = self.store.clone();
        if let Some(node) = self.p2p.borrow_mut().take() {
            node.stop();
        }
        future_to_promise(async move {
            store.close().await?;
            Ok(JsValue::UNDEFINED)
        })
    }
}
