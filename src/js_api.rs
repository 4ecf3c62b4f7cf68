//! The JavaScript API's shapes, shared by both bindings (the browser's
//! wasm-bindgen layer and the Node.js addon): options read from a JSON
//! view of the caller's object, and events, changes and progress written
//! as JSON objects. A binding only moves values across its boundary
//! (JSON text in, JSON values out) and adds what JSON cannot carry
//! (callbacks); what the options mean and what events look like is
//! decided here once.

use serde_json::{json, Map, Value};

use crate::error::{Error, Result};
use crate::merge::ConflictStrategy;
use crate::net::{Multiaddr, P2pEvent, P2pOptions, PeerId};
use crate::store::{
    Adapter, EventListOptions, ListOptions, Origin, RecordChange, RotationProgress, Since,
    StoreOptions,
};

fn invalid(message: impl Into<String>) -> Error {
    Error::InvalidOptions(message.into())
}

/// The property `key` of an options object (`Null` when absent or when
/// `options` is no object).
pub fn field<'a>(options: &'a Value, key: &str) -> &'a Value {
    options.get(key).unwrap_or(&Value::Null)
}

/// An optional string option.
pub fn string(options: &Value, key: &str) -> Result<Option<String>> {
    match field(options, key) {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        _ => Err(invalid(format!("option {key} must be a string"))),
    }
}

/// An optional non-negative integer option.
pub fn count(options: &Value, key: &str) -> Result<Option<u64>> {
    match field(options, key) {
        Value::Null => Ok(None),
        Value::Number(n) => match (n.as_u64(), n.as_f64()) {
            (Some(n), _) => Ok(Some(n)),
            (None, Some(f)) if f >= 0.0 && f.fract() == 0.0 && f < 9_007_199_254_740_992.0 => {
                Ok(Some(f as u64))
            }
            _ => Err(invalid(format!(
                "option {key} must be a non-negative integer"
            ))),
        },
        _ => Err(invalid(format!(
            "option {key} must be a non-negative integer"
        ))),
    }
}

/// JavaScript truthiness of an option that is a JSON value.
pub fn truthy(options: &Value, key: &str) -> bool {
    match field(options, key) {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(_) | Value::Object(_) => true,
    }
}

/// `createStore("name", options)` or `createStore({ name, ... })`: the
/// store's options (`adapter`, `path`, `encrypt`, `key`, `strategy` or
/// `sync.strategy`) and the `sync.remote` servers as given (an address, a
/// list, or the deployment's server by name; each binding resolves them).
pub fn store_options(
    name_or_options: &Value,
    options: &Value,
) -> Result<(StoreOptions, Option<Vec<String>>)> {
    let (name, options) = match name_or_options {
        Value::String(name) => (name.clone(), options),
        Value::Object(_) => (
            string(name_or_options, "name")?.ok_or_else(|| invalid("createStore needs a name"))?,
            name_or_options,
        ),
        _ => return Err(invalid("createStore takes a name or an options object")),
    };
    let mut store = StoreOptions::new(name);
    if let Some(adapter) = string(options, "adapter")? {
        store = store.adapter(Adapter::from_name(&adapter)?);
    }
    if let Some(path) = string(options, "path")? {
        store = store.path(path);
    }
    store = store.encrypt(truthy(options, "encrypt"));
    if let Some(key) = string(options, "key")? {
        store = store.key(key);
    }
    let sync = field(options, "sync");
    if let Some(strategy) = string(options, "strategy")?.or(string(sync, "strategy")?) {
        let strategy = ConflictStrategy::from_name(&strategy)
            .ok_or_else(|| invalid("strategy must be \"last-write-wins\" or \"merge-fields\""))?;
        store = store.strategy(strategy);
    }
    let remote = match field(sync, "remote") {
        Value::Null => None,
        Value::String(s) => Some(vec![s.clone()]),
        Value::Array(items) => Some(
            items
                .iter()
                .map(|i| {
                    i.as_str().map(str::to_owned).ok_or_else(|| {
                        invalid("sync.remote is an address, a list of them, or a server's name")
                    })
                })
                .collect::<Result<_>>()?,
        ),
        _ => {
            return Err(invalid(
                "sync.remote is an address, a list of them, or a server's name",
            ))
        }
    };
    if remote.is_some() && !store.encrypt {
        return Err(invalid(
            "a sync server holds only ciphertext: open the store with encrypt: true to sync \
             through one",
        ));
    }
    Ok((store, remote))
}

/// `records.list(options)`: `{ prefix?, after?, limit? }`.
pub fn list_options(options: &Value) -> Result<ListOptions> {
    Ok(ListOptions {
        prefix: string(options, "prefix")?,
        after: string(options, "after")?,
        limit: count(options, "limit")?.map(|n| n as usize),
    })
}

/// `events.list(options)`: `{ since?, limit? }`, `since` an event id
/// (exclusive) or milliseconds since the epoch.
pub fn event_list_options(options: &Value) -> Result<EventListOptions> {
    let since = match field(options, "since") {
        Value::Null => None,
        Value::String(id) => Some(Since::Id(id.clone())),
        Value::Number(n) => match n.as_f64() {
            Some(ms) if ms >= 0.0 && ms.is_finite() => Some(Since::Millis(ms as u64)),
            _ => return Err(invalid("since must be an event id or milliseconds")),
        },
        _ => return Err(invalid("since must be an event id or milliseconds")),
    };
    Ok(EventListOptions {
        since,
        limit: count(options, "limit")?.map(|n| n as usize),
    })
}

/// The addresses under `key` in `options` and in `options.discovery`.
pub fn addresses(options: &Value, key: &str) -> Result<Vec<Multiaddr>> {
    let mut out = Vec::new();
    for source in [field(options, key), field(field(options, "discovery"), key)] {
        let items = match source {
            Value::Null => continue,
            Value::Array(items) => items,
            _ => {
                return Err(invalid(format!(
                    "{key} must be an array of multiaddr strings"
                )))
            }
        };
        for item in items {
            let text = item
                .as_str()
                .ok_or_else(|| invalid(format!("{key} holds a non-string")))?;
            let addr: Multiaddr = text
                .parse()
                .map_err(|e| invalid(format!("{key}: {text:?} is not a multiaddr: {e}")))?;
            if !out.contains(&addr) {
                out.push(addr);
            }
        }
    }
    Ok(out)
}

/// An explicit boolean option (`None` when absent or not a boolean).
fn flag(options: &Value, key: &str) -> Option<bool> {
    field(options, key).as_bool()
}

/// `enableP2P(options)`: `{ listenAddrs, bootstrapPeers, syncServers,
/// discovery: { dht, mdns, bootstrapPeers } }`; what is not given comes
/// from the platform's `defaults` (natively [`P2pOptions::default`]: TCP
/// and QUIC on every interface, mDNS on unless `PERSIST_MDNS=off`, the
/// DHT on).
pub fn p2p_options(options: &Value, defaults: P2pOptions) -> Result<P2pOptions> {
    let discovery = field(options, "discovery");
    let given = |key: &str| !field(options, key).is_null() || !field(discovery, key).is_null();
    let listen_addrs = if given("listenAddrs") {
        addresses(options, "listenAddrs")?
    } else {
        defaults.listen_addrs
    };
    let mdns = flag(discovery, "mdns")
        .or(flag(options, "mdns"))
        .unwrap_or(defaults.mdns);
    let dht = flag(discovery, "dht").unwrap_or(defaults.dht);
    Ok(P2pOptions {
        listen_addrs,
        bootstrap_peers: addresses(options, "bootstrapPeers")?,
        mdns,
        dht,
        sync_servers: addresses(options, "syncServers")?,
        ..defaults
    })
}

/// A peer id given as text.
pub fn peer_id(text: &str) -> Result<PeerId> {
    text.parse()
        .map_err(|e| invalid(format!("{text:?} is not a peer id: {e}")))
}

/// A multiaddr given as text.
pub fn multiaddr(text: &str) -> Result<Multiaddr> {
    text.parse()
        .map_err(|e| invalid(format!("{text:?} is not a multiaddr: {e}")))
}

/// A subscription's batch: `[{ id, value, origin }]` (`value` absent for a
/// deletion).
pub fn changes(batch: &[RecordChange]) -> Value {
    batch
        .iter()
        .map(|c| {
            let origin = match c.origin {
                Origin::Local => "local",
                Origin::Remote => "remote",
            };
            let mut row = Map::new();
            row.insert("id".into(), Value::String(c.id.clone()));
            if let Some(value) = &c.value {
                row.insert("value".into(), value.clone());
            }
            row.insert("origin".into(), Value::String(origin.into()));
            Value::Object(row)
        })
        .collect()
}

/// A key rotation's progress: `{ epoch, table, scanned, resealed, done,
/// resealMs }`.
pub fn rotation(progress: &RotationProgress) -> Value {
    let table = progress.table.map(|t| match t {
        crate::storage::Table::Records => "records",
        crate::storage::Table::Events => "events",
        crate::storage::Table::Kv => "kv",
    });
    json!({
        "epoch": progress.epoch,
        "table": table,
        "scanned": progress.scanned,
        "resealed": progress.resealed,
        "done": progress.done,
        "resealMs": progress.reseal_ms,
    })
}

/// A P2P event as `p2p.on(...)` delivers it: its name and `{ type, ... }`.
pub fn event(event: &P2pEvent) -> (&'static str, Value) {
    let peer = |p: &PeerId| Value::String(p.to_string());
    let (name, mut detail) = match event {
        P2pEvent::Listening(addr) => ("listen", json!({ "addr": addr.to_string() })),
        P2pEvent::PeerConnected(p) => ("peer:connect", json!({ "peer": peer(p) })),
        P2pEvent::PeerDisconnected(p) => ("peer:disconnect", json!({ "peer": peer(p) })),
        P2pEvent::Synced {
            peer: p,
            applied,
            rejected,
            remaining,
        } => (
            "sync",
            json!({ "peer": peer(p), "applied": applied, "rejected": rejected, "remaining": remaining }),
        ),
        P2pEvent::MemberAdded(p) => ("member:add", json!({ "peer": peer(p) })),
        P2pEvent::MemberRemoved(p) => ("member:remove", json!({ "peer": peer(p) })),
        P2pEvent::Paired(p) => ("pair", json!({ "peer": peer(p) })),
        P2pEvent::PairingFailed(code) => ("pair:failed", json!({ "code": code })),
        P2pEvent::PairingRequest {
            peer: p,
            label,
            nameplate,
        } => (
            "pair:request",
            json!({
                "peer": peer(p),
                "label": label,
                "fingerprint": crate::net::pairing::fingerprint(p),
                "nameplate": nameplate,
            }),
        ),
        P2pEvent::Equivocation(p) => (
            "alert",
            json!({ "peer": peer(p), "code": crate::error::Code::Equivocation.as_str() }),
        ),
        P2pEvent::ProtocolUnsupported(p) => (
            "alert",
            json!({ "peer": peer(p), "code": crate::error::Code::ProtocolUnsupported.as_str() }),
        ),
        P2pEvent::ServerReady(p) => ("server:ready", json!({ "peer": peer(p) })),
        P2pEvent::ServerRefused { peer: p, code } => {
            ("server:refused", json!({ "peer": peer(p), "code": code }))
        }
    };
    if let Value::Object(map) = &mut detail {
        map.insert("type".into(), Value::String(name.into()));
    }
    (name, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_options_read_both_call_shapes() {
        let (a, remote) = store_options(
            &json!("notes"),
            &json!({ "adapter": "memory", "encrypt": true, "sync": { "strategy": "merge-fields", "remote": ["/ip4/127.0.0.1/tcp/1"] } }),
        )
        .expect("options");
        assert_eq!(a.name, "notes");
        assert!(a.encrypt);
        assert!(matches!(a.strategy, ConflictStrategy::MergeFields));
        assert_eq!(remote, Some(vec!["/ip4/127.0.0.1/tcp/1".to_owned()]));
        let (b, remote) =
            store_options(&json!({ "name": "n", "path": "x.db" }), &Value::Null).expect("options");
        assert_eq!(b.path.as_deref(), Some(std::path::Path::new("x.db")));
        assert_eq!(remote, None);
        for (first, second, code) in [
            (json!(1), Value::Null, "INVALID_OPTIONS"),
            (json!({}), Value::Null, "INVALID_OPTIONS"),
            (
                json!("n"),
                json!({ "adapter": "floppy" }),
                "ADAPTER_UNAVAILABLE",
            ),
            (json!("n"), json!({ "strategy": "coin" }), "INVALID_OPTIONS"),
            (
                json!("n"),
                json!({ "sync": { "remote": "x" } }),
                "INVALID_OPTIONS",
            ),
            (json!("n"), json!({ "key": 5 }), "INVALID_OPTIONS"),
        ] {
            let err = store_options(&first, &second).expect_err("refused");
            assert_eq!(err.code(), code, "{first} {second}");
        }
    }

    #[test]
    fn counts_and_since_refuse_what_is_not_one() {
        assert_eq!(count(&json!({ "n": 3 }), "n").expect("3"), Some(3));
        assert_eq!(count(&json!({ "n": 3.0 }), "n").expect("3.0"), Some(3));
        for bad in [json!(-1), json!(1.5), json!("3"), json!(true)] {
            assert!(count(&json!({ "n": bad }), "n").is_err(), "{bad}");
        }
        assert!(matches!(
            event_list_options(&json!({ "since": 5 }))
                .expect("ms")
                .since,
            Some(Since::Millis(5))
        ));
        assert!(event_list_options(&json!({ "since": -5 })).is_err());
        assert!(event_list_options(&json!({ "since": [] })).is_err());
    }

    #[test]
    fn p2p_options_merge_discovery_and_fall_back_to_the_platform() {
        let quiet = P2pOptions {
            listen_addrs: Vec::new(),
            mdns: false,
            dht: true,
            ..P2pOptions::loopback()
        };
        let options = p2p_options(
            &json!({
                "listenAddrs": ["/ip4/0.0.0.0/tcp/0"],
                "bootstrapPeers": ["/ip4/127.0.0.1/tcp/9"],
                "discovery": { "mdns": true, "bootstrapPeers": ["/ip4/127.0.0.1/tcp/9", "/ip4/127.0.0.1/tcp/8"] },
            }),
            quiet.clone(),
        )
        .expect("options");
        assert_eq!(options.listen_addrs.len(), 1);
        assert_eq!(options.bootstrap_peers.len(), 2, "duplicates merge");
        assert!(options.mdns && options.dht);
        let off =
            p2p_options(&json!({ "discovery": { "dht": false } }), quiet.clone()).expect("off");
        assert!(!off.dht && !off.mdns && off.listen_addrs.is_empty());
        let loud = P2pOptions {
            mdns: true,
            ..P2pOptions::loopback()
        };
        let defaults = p2p_options(&Value::Null, loud.clone()).expect("defaults");
        assert!(
            defaults.mdns,
            "mDNS as the platform has it unless said otherwise"
        );
        assert_eq!(defaults.listen_addrs, loud.listen_addrs);
        assert!(
            !p2p_options(&json!({ "mdns": false }), loud)
                .expect("no mdns")
                .mdns
        );
        assert!(p2p_options(&json!({ "listenAddrs": ["nope"] }), quiet.clone()).is_err());
        assert!(p2p_options(&json!({ "listenAddrs": "/ip4/1.2.3.4/tcp/1" }), quiet).is_err());
    }

    #[test]
    fn an_equivocation_reaches_javascript_as_an_alert_with_its_code() {
        let peer = PeerId::random();
        let (name, detail) = event(&P2pEvent::Equivocation(peer));
        assert_eq!(name, "alert");
        assert_eq!(
            detail,
            json!({ "type": "alert", "peer": peer.to_string(), "code": "EQUIVOCATION" })
        );
    }
}
