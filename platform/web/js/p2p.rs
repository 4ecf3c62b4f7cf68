//! `store.enableP2P(...)` and `store.p2p`: the browser's P2P node.

use crate::error::Code;
use std::cell::RefCell;
use std::rc::Rc;

use futures::StreamExt;
use js_sys::{Array, Function, Object, Reflect};
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::future_to_promise;

use super::error::{js_error, JsResult};
use super::value::{json_view, option, option_count};
use crate::net::{Multiaddr, P2p, P2pOptions, PeerId};

/// The node's options from `enableP2P`'s argument (read by
/// [`crate::js_api::p2p_options`]). A browser cannot listen on sockets or
/// multicast: listen addresses other than relayed ones (`.../p2p-circuit`)
/// and `mdns: true` are skipped with a console warning (code written for
/// Node.js or native runs unchanged); the tab is reachable through its
/// bootstrap nodes' relay instead.
pub(crate) fn options(value: &JsValue) -> JsResult<P2pOptions> {
    let json = json_view(value)?;
    let asked = |o: &serde_json::Value| crate::js_api::field(o, "mdns").as_bool() == Some(true);
    if asked(&json) || asked(crate::js_api::field(&json, "discovery")) {
        console_warn(
            "persist: there is no mDNS in a browser; peers are found through bootstrapPeers",
        );
    }
    let browser = P2pOptions {
        listen_addrs: Vec::new(),
        mdns: false,
        dht: true,
        ..P2pOptions::loopback()
    };
    let mut options = crate::js_api::p2p_options(&json, browser)?;
    options.mdns = false;
    let (listen_addrs, skipped): (Vec<Multiaddr>, Vec<Multiaddr>) = options
        .listen_addrs
        .into_iter()
        .partition(|a| a.iter().any(|p| p == crate::net::Protocol::P2pCircuit));
    if !skipped.is_empty() {
        let skipped: Vec<String> = skipped.iter().map(ToString::to_string).collect();
        console_warn(&format!(
            "persist: a browser cannot listen on {}; it is reachable through its bootstrap \
             nodes' relay",
            skipped.join(", ")
        ));
    }
    options.listen_addrs = listen_addrs;
    Ok(options)
}

fn console_warn(message: &str) {
    console("warn", &JsValue::from_str(message), &JsValue::UNDEFINED);
}

/// Calls `console[level](first, second)` if there is a console.
fn console(level: &str, first: &JsValue, second: &JsValue) {
    let method = Reflect::get(&js_sys::global(), &JsValue::from_str("console"))
        .ok()
        .and_then(|c| Reflect::get(&c, &JsValue::from_str(level)).ok())
        .and_then(|f| f.dyn_into::<Function>().ok());
    if let Some(method) = method {
        let _ = method.call2(&JsValue::NULL, first, second);
    }
}

fn peer_id(text: &str) -> JsResult<PeerId> {
    Ok(crate::js_api::peer_id(text)?)
}

fn strings<T: ToString>(items: impl IntoIterator<Item = T>) -> JsValue {
    items
        .into_iter()
        .map(|i| JsValue::from_str(&i.to_string()))
        .collect::<Array>()
        .into()
}

/// One subscriber of `p2p.on(...)`.
struct Listener {
    id: u32,
    event: String,
    callback: Function,
}

#[derive(Default)]
struct Listeners {
    next: u32,
    all: Vec<Listener>,
    /// True once the task that delivers node events runs.
    started: bool,
}

/// The browser's P2P node of a store, in the tab that runs it; the
/// package's `P2P` (`store.p2p`, `js/index.js`) wraps it for every tab.
#[wasm_bindgen(js_name = P2PNode)]
#[derive(Clone)]
pub struct JsP2p {
    node: P2p,
    listeners: Rc<RefCell<Listeners>>,
    /// Set by `stop()`: `enableP2P` then starts a new node.
    stopped: Rc<std::cell::Cell<bool>>,
}

impl JsP2p {
    pub(crate) fn new(node: P2p) -> JsP2p {
        JsP2p {
            node,
            listeners: Rc::default(),
            stopped: Rc::default(),
        }
    }

    /// True once `stop()` was called.
    pub(crate) fn is_stopped(&self) -> bool {
        self.stopped.get()
    }

    /// Delivers the node's events to `on(...)` listeners (one task, started
    /// by the first listener).
    fn start_delivery(&self) {
        if std::mem::replace(&mut self.listeners.borrow_mut().started, true) {
            return;
        }
        let mut events = self.node.events();
        let listeners = Rc::downgrade(&self.listeners);
        wasm_bindgen_futures::spawn_local(async move {
            while let Some(event) = events.next().await {
                let Some(listeners) = listeners.upgrade() else {
                    break;
                };
                let (name, detail) = crate::js_api::event(&event);
                let Ok(detail) = super::value::to_js(&detail) else {
                    continue;
                };
                let callbacks: Vec<Function> = listeners
                    .borrow()
                    .all
                    .iter()
                    .filter(|l| l.event == name || l.event == "*")
                    .map(|l| l.callback.clone())
                    .collect();
                for callback in callbacks {
                    if let Err(e) = callback.call1(&JsValue::NULL, &detail) {
                        console(
                            "error",
                            &JsValue::from_str("persist: a p2p listener threw"),
                            &e,
                        );
                    }
                }
            }
        });
    }
}

#[wasm_bindgen(js_class = P2PNode)]
impl JsP2p {
    /// This device's peer id.
    #[wasm_bindgen(getter, js_name = peerId)]
    pub fn peer_id(&self) -> String {
        self.node.peer_id().to_string()
    }

    /// Offers a pairing code (`ABCD-7KQ2`) another device types to join
    /// this store; `{ ttlMs }` (default 10 minutes), `{ confirm: true }` to
    /// hold the device that proves the code until `confirmPairing` (the
    /// package's `confirm` callback does that). The outcome arrives as a
    /// `pair` or `pair:failed` event; a device waiting for confirmation as
    /// `pair:request`.
    #[wasm_bindgen(js_name = createPairingCode)]
    pub fn create_pairing_code(&self, options: JsValue) -> JsResult<js_sys::Promise> {
        let mut code_options = crate::net::CodeOptions::default();
        if let Some(ttl) = option_count(&options, "ttlMs")? {
            code_options.ttl_ms = ttl;
        }
        let confirm = option(&options, "confirm");
        code_options.confirm = match confirm.as_bool() {
            Some(confirm) => confirm,
            None if confirm.is_undefined() || confirm.is_null() => false,
            None => {
                return Err(js_error(
                    Code::InvalidOptions,
                    "confirm must be true, false, or (through the package) a function",
                ))
            }
        };
        let node = self.node.clone();
        Ok(future_to_promise(async move {
            let pending = node.create_pairing_code_with(code_options).await?;
            Ok(JsValue::from_str(pending.code()))
        }))
    }

    /// Accepts (`true`) or refuses the device `peer` that proved a code
    /// made with `{ confirm }`.
    #[wasm_bindgen(js_name = confirmPairing)]
    pub fn confirm_pairing(&self, peer: String, accept: bool) -> JsResult<js_sys::Promise> {
        let peer = peer_id(&peer)?;
        let node = self.node.clone();
        Ok(future_to_promise(async move {
            node.confirm_pairing(peer, accept).await?;
            Ok(JsValue::UNDEFINED)
        }))
    }

    /// This device's fingerprint (`XXXX-XXXX`): what another device asking
    /// its user to confirm this one shows.
    #[wasm_bindgen(getter)]
    pub fn fingerprint(&self) -> String {
        self.node.fingerprint()
    }

    /// Offers an invite: `{ code, expiresAt }`, where `code` is
    /// `persist-invite-v1-...` (a long secret plus this device's addresses,
    /// to copy rather than type). `{ ttlMs }`, default 10 minutes.
    #[wasm_bindgen(js_name = createInvite)]
    pub fn create_invite(&self, options: JsValue) -> JsResult<js_sys::Promise> {
        let ttl = option_count(&options, "ttlMs")?.unwrap_or(10 * 60 * 1000);
        let node = self.node.clone();
        Ok(future_to_promise(async move {
            let pending = node.create_invite(ttl).await?;
            let object = Object::new();
            let _ = Reflect::set(&object, &"code".into(), &pending.code().into());
            let _ = Reflect::set(
                &object,
                &"expiresAt".into(),
                &JsValue::from_f64(pending.expires_at_ms() as f64),
            );
            Ok(object.into())
        }))
    }

    /// Joins the store of the device that offered `code` (a pairing code or
    /// an invite); resolves to that device's peer id. `{ peer }` names the
    /// device's address; otherwise the bootstrap nodes find it.
    pub fn pair(&self, code: String, options: JsValue) -> JsResult<js_sys::Promise> {
        let host = match option(&options, "peer").as_string() {
            Some(text) => Some(text.parse::<Multiaddr>().map_err(|e| {
                js_error(
                    Code::InvalidOptions,
                    &format!("peer {text:?} is not a multiaddr: {e}"),
                )
            })?),
            None => None,
        };
        let node = self.node.clone();
        Ok(future_to_promise(async move {
            let peer = if code.starts_with(crate::net::pairing::INVITE_PREFIX) {
                node.accept_invite(&code).await?
            } else {
                node.pair(&code, host).await?
            };
            Ok(JsValue::from_str(&peer.to_string()))
        }))
    }

    /// The peer ids of the devices trusted to sync the store (this one
    /// included).
    #[wasm_bindgen(js_name = trustedPeers)]
    pub fn trusted_peers(&self) -> js_sys::Promise {
        let node = self.node.clone();
        future_to_promise(async move { Ok(strings(node.trusted_peers()?)) })
    }

    /// Removes a device: its later writes are refused everywhere and an
    /// encrypted store moves to a key it never gets.
    #[wasm_bindgen(js_name = revokeTrust)]
    pub fn revoke_trust(&self, peer: String) -> JsResult<js_sys::Promise> {
        let peer = peer_id(&peer)?;
        let node = self.node.clone();
        Ok(future_to_promise(async move {
            node.revoke_trust(peer).await?;
            Ok(JsValue::UNDEFINED)
        }))
    }

    /// Peer ids connected now (bootstrap nodes included).
    #[wasm_bindgen(js_name = connectedPeers)]
    pub fn connected_peers(&self) -> js_sys::Promise {
        let node = self.node.clone();
        future_to_promise(async move { Ok(strings(node.connected_peers().await?)) })
    }

    /// Addresses this device is reachable at (relayed, in a browser).
    #[wasm_bindgen(js_name = listenAddrs)]
    pub fn listen_addrs(&self) -> js_sys::Promise {
        let node = self.node.clone();
        future_to_promise(async move { Ok(strings(node.listen_addrs().await?)) })
    }

    /// Dials a multiaddr (`/ip4/.../tcp/.../ws/p2p/...`,
    /// `/.../webrtc-direct/certhash/.../p2p/...`).
    pub fn dial(&self, addr: String) -> JsResult<js_sys::Promise> {
        let addr = crate::js_api::multiaddr(&addr)?;
        let node = self.node.clone();
        Ok(future_to_promise(async move {
            node.dial(addr).await?;
            Ok(JsValue::UNDEFINED)
        }))
    }

    /// Calls `callback(detail)` on each event named `event` (`peer:connect`,
    /// `peer:disconnect`, `sync`, `pair`, `pair:failed`, `member:add`,
    /// `member:remove`, `listen`, or `*`); returns a function that stops it.
    pub fn on(&self, event: String, callback: Function) -> Function {
        let id = {
            let mut listeners = self.listeners.borrow_mut();
            listeners.next += 1;
            let id = listeners.next;
            listeners.all.push(Listener {
                id,
                event,
                callback,
            });
            id
        };
        self.start_delivery();
        let listeners = Rc::downgrade(&self.listeners);
        Closure::once_into_js(move || {
            if let Some(listeners) = listeners.upgrade() {
                listeners.borrow_mut().all.retain(|l| l.id != id);
            }
        })
        .unchecked_into()
    }

    /// Stops the node (connections close; the store stays open).
    pub fn stop(&self) {
        self.stopped.set(true);
        self.node.shutdown();
    }
}
