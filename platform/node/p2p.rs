//! `store.enableP2P(...)` and `store.p2p` in Node.js: the native node
//! (TCP, QUIC, WebSocket and WebRTC-direct listeners, mDNS, relays, sync
//! servers).

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use futures::StreamExt;
use napi::bindgen_prelude::*;
use napi::threadsafe_function::{
    ThreadsafeCallContext, ThreadsafeFunction, ThreadsafeFunctionCallMode, UnknownReturnValue,
};
use napi_derive::napi;

use super::{check, json_view, parse, promise, settle};
use crate::net::{CodeOptions, P2p};

/// A `p2p.on` listener: called with the event's JSON; it keeps the
/// process alive while the node runs (released by `stop()`).
type EventListener =
    ThreadsafeFunction<String, UnknownReturnValue, Unknown<'static>, Status, false, false>;

/// What holds the process alive while the node runs: a function nobody
/// calls, released by `stop()`.
type Keepalive = ThreadsafeFunction<(), (), (), Status, false, false>;

struct Listener {
    id: u32,
    event: String,
    callback: Arc<EventListener>,
}

struct Shared {
    listeners: Mutex<Vec<Listener>>,
    next: AtomicU32,
    /// True once the task that delivers node events runs.
    delivering: AtomicBool,
    stopped: AtomicBool,
    keepalive: Mutex<Option<Keepalive>>,
}

/// A store's P2P node (`store.p2p`).
#[napi(js_name = "P2P")]
#[derive(Clone)]
pub struct JsP2p {
    node: P2p,
    shared: Arc<Shared>,
}

impl JsP2p {
    /// What keeps the process alive while a node runs.
    pub(crate) fn keepalive(env: &Env) -> Result<Keepalive> {
        let idle: Function<(), ()> =
            env.create_function_from_closure("persistP2pKeepalive", |_| Ok(()))?;
        idle.build_threadsafe_function::<()>()
            .build_callback(|_: ThreadsafeCallContext<()>| Ok(()))
    }

    pub(crate) fn new(node: P2p, keepalive: Keepalive) -> JsP2p {
        JsP2p {
            node,
            shared: Arc::new(Shared {
                listeners: Mutex::default(),
                next: AtomicU32::new(0),
                delivering: AtomicBool::new(false),
                stopped: AtomicBool::new(false),
                keepalive: Mutex::new(Some(keepalive)),
            }),
        }
    }

    /// True once `stop()` was called.
    pub(crate) fn is_stopped(&self) -> bool {
        self.shared.stopped.load(Ordering::Acquire)
    }

    /// Delivers the node's events to `on(...)` listeners (one task,
    /// started by the first listener).
    fn start_delivery(&self) {
        if self.shared.delivering.swap(true, Ordering::AcqRel) {
            return;
        }
        let mut events = self.node.events();
        let shared = Arc::downgrade(&self.shared);
        napi::bindgen_prelude::spawn(async move {
            while let Some(event) = events.next().await {
                let Some(shared) = shared.upgrade() else {
                    break;
                };
                let (name, detail) = crate::js_api::event(&event);
                let detail = detail.to_string();
                let callbacks: Vec<Arc<EventListener>> = match shared.listeners.lock() {
                    Ok(listeners) => listeners
                        .iter()
                        .filter(|l| l.event == name || l.event == "*")
                        .map(|l| l.callback.clone())
                        .collect(),
                    Err(_) => break,
                };
                for callback in callbacks {
                    callback.call(detail.clone(), ThreadsafeFunctionCallMode::NonBlocking);
                }
            }
        });
    }

    /// `{ code, expiresAt }` of a new invite (also `store.crypto`'s).
    pub(crate) fn create_invite<'env>(
        &self,
        env: &'env Env,
        options: Option<Unknown>,
    ) -> Result<PromiseRaw<'env, Unknown<'env>>> {
        settle(env, || {
            let options = json_view(env, options)?;
            let ttl =
                check(env, crate::js_api::count(&options, "ttlMs"))?.unwrap_or(10 * 60 * 1000);
            let node = self.node.clone();
            promise(
                env,
                async move {
                    let pending = node.create_invite(ttl).await?;
                    Ok(serde_json::json!({ "code": pending.code(), "expiresAt": pending.expires_at_ms() })
                        .to_string())
                },
                parse,
            )
        })
    }

    /// Joins by a pairing code or an invite (also `acceptInvite`'s).
    pub(crate) fn pair<'env>(
        &self,
        env: &'env Env,
        code: String,
        host: Option<crate::net::Multiaddr>,
    ) -> Result<PromiseRaw<'env, String>> {
        settle(env, || {
            let node = self.node.clone();
            promise(
                env,
                async move {
                    let peer = if code.starts_with(crate::net::pairing::INVITE_PREFIX) {
                        node.accept_invite(&code).await?
                    } else {
                        node.pair(&code, host).await?
                    };
                    Ok(peer.to_string())
                },
                |_, peer| Ok(peer),
            )
        })
    }

    /// Stops the node and lets the process exit.
    pub(crate) fn stop(&self) {
        self.shared.stopped.store(true, Ordering::Release);
        self.node.shutdown();
        if let Ok(mut listeners) = self.shared.listeners.lock() {
            listeners.clear();
        }
        if let Ok(mut keepalive) = self.shared.keepalive.lock() {
            keepalive.take();
        }
    }
}

/// What `confirm` returns: a boolean or a promise of one.
type ConfirmAnswer = Either<bool, Promise<bool>>;

/// A `confirm` function.
type Asker = ThreadsafeFunction<PairingRequest, ConfirmAnswer, PairingRequest, Status, false, true>;

/// A device that proved a code made with `confirm`, waiting for the answer.
#[napi(object)]
pub struct PairingRequest {
    /// Its peer id.
    pub peer: String,
    /// The name it gave itself.
    pub label: String,
    /// `XXXX-XXXX`: compare with `p2p.fingerprint` on the joining device.
    pub fingerprint: String,
}

/// Waits for the device that proves the code of `nameplate`, asks
/// `confirm` about it, and answers. A `confirm` that throws or rejects
/// refuses the device; nobody proving the code in its lifetime (plus a
/// minute) ends the wait.
async fn ask(
    node: P2p,
    mut requests: futures::channel::mpsc::Receiver<crate::net::P2pEvent>,
    nameplate: String,
    confirm: Asker,
    ttl_ms: u64,
) {
    let wait = async {
        while let Some(event) = requests.next().await {
            let crate::net::P2pEvent::PairingRequest {
                peer,
                label,
                nameplate: proved,
            } = &event
            else {
                continue;
            };
            if *proved != nameplate {
                continue;
            }
            let request = PairingRequest {
                peer: peer.to_string(),
                label: label.clone(),
                fingerprint: crate::net::pairing::fingerprint(peer),
            };
            let (answered, answer) = futures::channel::oneshot::channel();
            confirm.call_with_return_value(
                request,
                ThreadsafeFunctionCallMode::NonBlocking,
                move |answer: Result<ConfirmAnswer>, _| {
                    let _ = answered.send(answer);
                    Ok(())
                },
            );
            let accept = match answer.await {
                Ok(Ok(Either::A(answer))) => answer,
                Ok(Ok(Either::B(promise))) => promise.await.unwrap_or_else(|e| {
                    tracing::warn!(%e, "a pairing confirmation rejected: the device is refused");
                    false
                }),
                Ok(Err(e)) => {
                    tracing::warn!(%e, "a pairing confirmation threw: the device is refused");
                    false
                }
                Err(_) => {
                    tracing::warn!(
                        "a pairing confirmation was never called: the device is refused"
                    );
                    false
                }
            };
            if let Err(e) = node.confirm_pairing(*peer, accept).await {
                tracing::warn!(code = e.code(), %e, "the pairing answer did not reach the node");
            }
            return;
        }
    };
    let limit = std::time::Duration::from_millis(ttl_ms.saturating_add(60_000));
    let _ = tokio::time::timeout(limit, wait).await;
}

fn strings(items: impl IntoIterator<Item = impl ToString>) -> Vec<String> {
    items.into_iter().map(|i| i.to_string()).collect()
}

#[napi]
impl JsP2p {
    /// This device's peer id.
    #[napi(getter, js_name = "peerId")]
    pub fn peer_id(&self) -> String {
        self.node.peer_id().to_string()
    }

    /// Always true in Node.js: the process runs the node itself.
    #[napi(getter, js_name = "isLeader")]
    pub fn is_leader(&self) -> bool {
        true
    }

    /// This device's fingerprint (`XXXX-XXXX`).
    #[napi(getter)]
    pub fn fingerprint(&self) -> String {
        self.node.fingerprint()
    }

    /// Offers a pairing code (`ABCD-7KQ2`): `{ ttlMs, confirm }`. With
    /// `confirm` a function, the device that proves the code receives
    /// nothing until `confirm({ peer, label, fingerprint })` returns (or
    /// resolves to) `true`; with `confirm: true`, until `confirmPairing`.
    #[napi(js_name = "createPairingCode", ts_return_type = "Promise<string>")]
    pub fn create_pairing_code<'env>(
        &self,
        env: &'env Env,
        options: Option<Object>,
    ) -> Result<PromiseRaw<'env, String>> {
        settle(env, || {
            let mut code_options = CodeOptions::default();
            let mut asker = None;
            if let Some(options) = &options {
                if let Some(ttl) = options.get::<Unknown>("ttlMs")? {
                    let ttl = json_view(env, Some(ttl))?;
                    let ttl = check(
                        env,
                        crate::js_api::count(&serde_json::json!({ "ttlMs": ttl }), "ttlMs"),
                    )?;
                    if let Some(ttl) = ttl {
                        code_options.ttl_ms = ttl;
                    }
                }
                let confirm: Option<Unknown> = options.get("confirm")?;
                code_options.confirm = match confirm.as_ref().map(|c| c.get_type()).transpose()? {
                    None | Some(ValueType::Null | ValueType::Undefined) => false,
                    Some(ValueType::Boolean) => options.get::<bool>("confirm")?.unwrap_or(false),
                    Some(ValueType::Function) => {
                        let confirm: Option<Function<'_, PairingRequest, ConfirmAnswer>> =
                            options.get("confirm")?;
                        asker = confirm
                            .map(|c| c.build_threadsafe_function().weak::<true>().build())
                            .transpose()?;
                        true
                    }
                    Some(_) => {
                        return Err(super::coded(
                            env,
                            crate::Code::InvalidOptions.as_str(),
                            "confirm must be a function, true or false",
                        ))
                    }
                };
            }
            let node = self.node.clone();
            let ttl_ms = code_options.ttl_ms;
            promise(
                env,
                async move {
                    // Listening first: the request cannot arrive before it.
                    let requests = asker.as_ref().map(|_| node.events());
                    let pending = node.create_pairing_code_with(code_options).await?;
                    let code = pending.code().to_owned();
                    if let (Some(asker), Some(requests)) = (asker, requests) {
                        let nameplate = code.chars().take(4).collect::<String>();
                        napi::bindgen_prelude::spawn(ask(node, requests, nameplate, asker, ttl_ms));
                    }
                    Ok(code)
                },
                |_, code| Ok(code),
            )
        })
    }

    /// Accepts (`true`) or refuses the device `peer` that proved a code
    /// made with `{ confirm }`.
    #[napi(js_name = "confirmPairing", ts_return_type = "Promise<void>")]
    pub fn confirm_pairing<'env>(
        &self,
        env: &'env Env,
        peer: String,
        accept: bool,
    ) -> Result<PromiseRaw<'env, ()>> {
        settle(env, || {
            let peer = check(env, crate::js_api::peer_id(&peer))?;
            let node = self.node.clone();
            promise(
                env,
                async move { node.confirm_pairing(peer, accept).await },
                |_, _| Ok(()),
            )
        })
    }

    /// Offers an invite: `{ code, expiresAt }`.
    #[napi(
        js_name = "createInvite",
        ts_return_type = "Promise<{ code: string; expiresAt: number }>"
    )]
    pub fn invite<'env>(
        &self,
        env: &'env Env,
        options: Option<Unknown>,
    ) -> Result<PromiseRaw<'env, Unknown<'env>>> {
        settle(env, || self.create_invite(env, options))
    }

    /// Joins the store of the device that offered `code` (a pairing code
    /// or an invite); resolves to its peer id. `{ peer }` names its
    /// address; otherwise the bootstrap nodes and mDNS find it.
    #[napi(js_name = "pair", ts_return_type = "Promise<string>")]
    pub fn join<'env>(
        &self,
        env: &'env Env,
        code: String,
        options: Option<Unknown>,
    ) -> Result<PromiseRaw<'env, String>> {
        settle(env, || {
            let options = json_view(env, options)?;
            let host = check(env, crate::js_api::string(&options, "peer"))?
                .map(|text| check(env, crate::js_api::multiaddr(&text)))
                .transpose()?;
            self.pair(env, code, host)
        })
    }

    /// The peer ids of the devices trusted to sync the store.
    #[napi(js_name = "trustedPeers", ts_return_type = "Promise<string[]>")]
    pub fn trusted_peers<'env>(&self, env: &'env Env) -> Result<PromiseRaw<'env, Vec<String>>> {
        settle(env, || {
            let node = self.node.clone();
            promise(
                env,
                async move { node.trusted_peers().map(strings) },
                |_, peers| Ok(peers),
            )
        })
    }

    /// Removes a device: its later writes are refused everywhere and an
    /// encrypted store moves to a key it never gets.
    #[napi(js_name = "revokeTrust", ts_return_type = "Promise<void>")]
    pub fn revoke_trust<'env>(&self, env: &'env Env, peer: String) -> Result<PromiseRaw<'env, ()>> {
        settle(env, || {
            let peer = check(env, crate::js_api::peer_id(&peer))?;
            let node = self.node.clone();
            promise(env, async move { node.revoke_trust(peer).await }, |_, _| {
                Ok(())
            })
        })
    }

    /// Peer ids connected now.
    #[napi(js_name = "connectedPeers", ts_return_type = "Promise<string[]>")]
    pub fn connected_peers<'env>(&self, env: &'env Env) -> Result<PromiseRaw<'env, Vec<String>>> {
        settle(env, || {
            let node = self.node.clone();
            promise(
                env,
                async move { node.connected_peers().await.map(strings) },
                |_, peers| Ok(peers),
            )
        })
    }

    /// Addresses this device listens on.
    #[napi(js_name = "listenAddrs", ts_return_type = "Promise<string[]>")]
    pub fn listen_addrs<'env>(&self, env: &'env Env) -> Result<PromiseRaw<'env, Vec<String>>> {
        settle(env, || {
            let node = self.node.clone();
            promise(
                env,
                async move { node.listen_addrs().await.map(strings) },
                |_, addrs| Ok(addrs),
            )
        })
    }

    /// Dials a multiaddr.
    #[napi(ts_return_type = "Promise<void>")]
    pub fn dial<'env>(&self, env: &'env Env, addr: String) -> Result<PromiseRaw<'env, ()>> {
        settle(env, || {
            let addr = check(env, crate::js_api::multiaddr(&addr))?;
            let node = self.node.clone();
            promise(env, async move { node.dial(addr).await }, |_, _| Ok(()))
        })
    }

    /// Calls `callback(detail)` on each event named `event` (or `*`);
    /// returns a function that stops it.
    #[napi(ts_return_type = "() => void")]
    pub fn on<'env>(
        &self,
        env: &'env Env,
        event: String,
        #[napi(ts_arg_type = "(event: P2PEvent) => void")] callback: Function<
            'env,
            Unknown<'static>,
            UnknownReturnValue,
        >,
    ) -> Result<Function<'env, (), ()>> {
        let callback: EventListener = callback
            .build_threadsafe_function::<String>()
            .build_callback(|ctx: ThreadsafeCallContext<String>| parse(&ctx.env, ctx.value))?;
        let id = self.shared.next.fetch_add(1, Ordering::AcqRel);
        if let Ok(mut listeners) = self.shared.listeners.lock() {
            listeners.push(Listener {
                id,
                event,
                callback: Arc::new(callback),
            });
        }
        self.start_delivery();
        let shared = Arc::downgrade(&self.shared);
        env.create_function_from_closure("off", move |_| {
            if let Some(shared) = shared.upgrade() {
                if let Ok(mut listeners) = shared.listeners.lock() {
                    listeners.retain(|l| l.id != id);
                }
            }
            Ok(())
        })
    }

    /// Stops the node (connections close; the store stays open).
    #[napi(js_name = "stop")]
    pub fn stop_node(&self) {
        self.stop();
    }
}
