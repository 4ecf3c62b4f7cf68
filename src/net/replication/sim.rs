//! A deterministic network of replicas in memory that speak the real
//! protocol: each replica is a real store (memory backend, encrypted) with
//! its [`Replication`] core, and an executor like the node's, except that
//! messages go through a simulated network that drops, duplicates,
//! reorders and partitions. The protocol property test drives it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures::executor::block_on;

use super::{Action, Incoming, Replication, Token};
use crate::hlc::Hlc;
use crate::identity::{DeviceId, DeviceIdentity};
use crate::keys::MemoryKeyStore;
use crate::membership::{MemberChange, MemberEntry, MEMBER_ENTRY_FORMAT};
use crate::net::live::LiveMessage;
use crate::net::replica::Replica;
use crate::net::{SyncRequest, SyncResponse};
use crate::storage::{MemoryStore, StorageBackend};
use crate::store::{Store, StoreOptions};

/// A small deterministic generator (xorshift64*).
pub(super) struct Rng(u64);

impl Rng {
    pub(super) fn new(seed: u64) -> Rng {
        Rng(seed | 1)
    }

    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// What travels between replicas.
#[derive(Debug, Clone)]
enum Wire {
    Request {
        from: usize,
        to: usize,
        token: Token,
        request: SyncRequest,
    },
    Response {
        from: usize,
        to: usize,
        response: SyncResponse,
    },
    Live {
        from: usize,
        to: usize,
        message: LiveMessage,
    },
}

impl Wire {
    fn ends(&self) -> (usize, usize) {
        match self {
            Wire::Request { from, to, .. }
            | Wire::Response { from, to, .. }
            | Wire::Live { from, to, .. } => (*from, *to),
        }
    }
}

pub(super) struct Node {
    pub(super) store: Store,
    core: Replication<usize>,
}

/// The simulated network.
pub(super) struct Sim {
    pub(super) nodes: Vec<Node>,
    ids: Vec<DeviceId>,
    queue: VecDeque<Wire>,
    /// Request tokens: who asked.
    askers: BTreeMap<Token, usize>,
    next_token: Token,
    /// Pairs that are connected.
    up: BTreeSet<(usize, usize)>,
    clock: Arc<AtomicU64>,
    pub(super) rng: Rng,
    /// Faults while not healing: percent of messages dropped, duplicated.
    faults: bool,
    /// Messages delivered (a bound on every run).
    pub(super) delivered: u64,
}

/// The secret of replica `i` in the schedule `seed` (runs repeat exactly).
fn device_seed(seed: u64, i: usize) -> [u8; 32] {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_be_bytes());
    bytes[8] = i as u8 + 1;
    bytes
}

fn pair(a: usize, b: usize) -> (usize, usize) {
    (a.min(b), a.max(b))
}

impl Sim {
    /// `n` encrypted stores, all connected: the first founded the store
    /// and admitted the next `joined - 1` (as pairing would); the others
    /// join later ([`Sim::pair`]).
    pub(super) fn new(n: usize, joined: usize, seed: u64) -> Sim {
        let clock = Arc::new(AtomicU64::new(1_700_000_000_000));
        let nodes: Vec<Node> = (0..n)
            .map(|i| {
                let backend: Arc<dyn StorageBackend> = Arc::new(MemoryStore::new());
                let reading = clock.clone();
                let options = StoreOptions::new(format!("sim{i}"))
                    .backend(backend)
                    .key_store(Arc::new(MemoryKeyStore::from_identity(
                        &DeviceIdentity::from_secret(&device_seed(seed, i)),
                    )))
                    .encrypt(true)
                    .clock(move || reading.load(Ordering::SeqCst));
                Node {
                    store: block_on(Store::open(options)).expect("opens"),
                    core: Replication::new(),
                }
            })
            .collect();
        for joiner in &nodes[1..joined] {
            block_on(async {
                let welcome = nodes[0]
                    .store
                    .admit_device(joiner.store.device_id(), "sim")
                    .await
                    .expect("admit");
                joiner.store.join(welcome).await.expect("join");
            });
        }
        // Right after pairing each device syncs with its host: everyone
        // starts from the founder's whole log.
        let log = block_on(nodes[0].store.membership());
        for node in &nodes[1..joined] {
            block_on(node.store.merge_membership(&log)).expect("merge");
        }
        let ids = nodes.iter().map(|n| n.store.device_id()).collect();
        let mut sim = Sim {
            nodes,
            ids,
            queue: VecDeque::new(),
            askers: BTreeMap::new(),
            next_token: 0,
            up: BTreeSet::new(),
            clock,
            rng: Rng::new(seed),
            faults: true,
            delivered: 0,
        };
        for a in 0..n {
            for b in a + 1..n {
                sim.connect(a, b);
            }
        }
        sim
    }

    /// Pairs `joiner` (no replica of the store yet) through `host`: admitted,
    /// joined with the welcome, given its host's log, then connected afresh
    /// to the peers it is connected to (what the gate does once it
    /// trusts them). False if the host refused.
    pub(super) fn pair(&mut self, host: usize, joiner: usize) -> bool {
        let (host_store, joiner_store) = (
            self.nodes[host].store.clone(),
            self.nodes[joiner].store.clone(),
        );
        let id = self.ids[joiner];
        let joined = block_on(async {
            let welcome = host_store.admit_device(id, "late").await.ok()?;
            joiner_store.join(welcome).await.ok()?;
            let log = host_store.membership().await;
            joiner_store.merge_membership(&log).await.ok()
        })
        .is_some();
        if joined {
            self.changed(host);
            for peer in 0..self.nodes.len() {
                if self.up.contains(&pair(joiner, peer)) {
                    self.disconnect(joiner, peer);
                    self.connect(joiner, peer);
                }
            }
        }
        joined
    }

    fn is_member(&self, at: usize, peer: usize) -> bool {
        self.nodes[at].store.members().is_member(&self.ids[peer])
    }

    pub(super) fn connect(&mut self, a: usize, b: usize) {
        if a == b || !self.up.insert(pair(a, b)) {
            return;
        }
        for (x, y) in [(a, b), (b, a)] {
            let member = self.is_member(x, y);
            let actions = self.nodes[x].core.connected(y, member);
            self.execute(x, actions);
        }
    }

    pub(super) fn disconnect(&mut self, a: usize, b: usize) {
        if self.up.remove(&pair(a, b)) {
            self.nodes[a].core.disconnected(b);
            self.nodes[b].core.disconnected(a);
            // What was in flight between them is lost.
            self.queue
                .retain(|w| pair(w.ends().0, w.ends().1) != pair(a, b));
        }
    }

    fn send(&mut self, wire: Wire) {
        let (from, to) = wire.ends();
        if self.up.contains(&pair(from, to)) {
            self.queue.push_back(wire);
        }
    }

    /// The time moves on a little (equal readings across devices happen).
    pub(super) fn tick(&mut self) {
        let step = self.rng.below(3);
        self.clock.fetch_add(step, Ordering::SeqCst);
    }

    /// Sends a request from `from` to `to`; the answer comes back to `from`.
    fn ask(&mut self, from: usize, to: usize, request: SyncRequest) {
        self.next_token += 1;
        self.askers.insert(self.next_token, from);
        let token = self.next_token;
        self.send(Wire::Request {
            from,
            to,
            token,
            request,
        });
    }

    fn execute(&mut self, at: usize, actions: Vec<Action<usize>>) {
        let mut pending: VecDeque<Action<usize>> = actions.into();
        while let Some(action) = pending.pop_front() {
            let store = self.nodes[at].store.clone();
            let more = match action {
                Action::Pull { peer } => {
                    let request =
                        block_on(crate::net::replica::pull_request(&store)).expect("pull");
                    self.ask(at, peer, request);
                    Vec::new()
                }
                Action::Read {
                    peer,
                    have,
                    limit,
                    theirs,
                    purpose,
                    tips,
                } => {
                    let (commits, lacking, log, ours) = block_on(crate::net::replica::read(
                        &store, have, limit, theirs, purpose, tips,
                    ))
                    .expect("read");
                    self.nodes[at]
                        .core
                        .read_done(peer, purpose, commits, lacking, log, ours)
                }
                Action::Reply { token, response } => {
                    if let Some(to) = self.askers.remove(&token) {
                        self.send(Wire::Response {
                            from: at,
                            to,
                            response,
                        });
                    }
                    Vec::new()
                }
                Action::Push {
                    peer,
                    commits,
                    members,
                } => {
                    // Half the pushes as requests, half on a live stream.
                    if self.rng.chance(50) {
                        self.send(Wire::Live {
                            from: at,
                            to: peer,
                            message: LiveMessage::Commits { commits, members },
                        });
                    } else {
                        let request = SyncRequest::Push {
                            store: store.store_id(),
                            commits,
                            members,
                        };
                        self.ask(at, peer, request);
                    }
                    Vec::new()
                }
                Action::Have { peer, have } => {
                    self.send(Wire::Live {
                        from: at,
                        to: peer,
                        message: LiveMessage::Have { have },
                    });
                    Vec::new()
                }
                Action::Ingest {
                    peer,
                    members,
                    commits,
                    arrival,
                } => {
                    let outcome = block_on(async {
                        if let Some(log) = members {
                            // A refused log is as on a device: logged, no effect.
                            if let Err(e) = Replica::merge_membership(&store, log).await {
                                if std::env::var_os("PERSIST_SIM_DEBUG").is_some() {
                                    eprintln!("{at}: membership from {peer} refused: {e}");
                                }
                            }
                        }
                        Replica::ingest(&store, commits).await
                    });
                    match outcome {
                        Ok(outcome) => self.nodes[at].core.ingested(peer, arrival, outcome),
                        Err(e) => self.nodes[at].core.ingest_failed(arrival, e.code()),
                    }
                }
                Action::Synced { .. } => Vec::new(),
            };
            pending.extend(more);
        }
    }

    fn deliver(&mut self, wire: Wire) {
        self.delivered += 1;
        let (from, to) = wire.ends();
        let member = self.is_member(to, from);
        let store = self.nodes[to].store.store_id();
        let incoming = match wire {
            Wire::Request { token, request, .. } => {
                Incoming::request(request, token).expect("the simulation sends no hello")
            }
            Wire::Response { response, .. } => match Incoming::response(response) {
                Ok(Some(message)) => message,
                Ok(None) | Err(_) => return,
            },
            // A non-member's live messages are dropped, as a node does.
            Wire::Live { message, .. } if member => Incoming::live(message, store),
            Wire::Live { .. } => return,
        };
        let actions = self.nodes[to].core.handle(from, member, store, incoming);
        self.execute(to, actions);
    }

    /// Delivers up to `count` messages in a random order, with faults
    /// unless healing.
    pub(super) fn run(&mut self, count: usize) {
        for _ in 0..count {
            if self.queue.is_empty() {
                return;
            }
            let at = self.rng.below(self.queue.len() as u64) as usize;
            let Some(wire) = self.queue.remove(at) else {
                return;
            };
            if self.faults && self.rng.chance(10) {
                continue;
            }
            if self.faults && self.rng.chance(10) {
                self.queue.push_back(wire.clone());
            }
            self.deliver(wire);
        }
    }

    /// A local write at `at`, then pushes to its peers.
    pub(super) fn write(&mut self, at: usize, key: &str, value: u64) {
        self.tick();
        let store = self.nodes[at].store.clone();
        let _ = block_on(store.kv().set(key, serde_json::json!(value)));
        self.changed(at);
    }

    /// Something changed at `at` (a commit or the membership).
    pub(super) fn changed(&mut self, at: usize) {
        let members: Vec<bool> = (0..self.nodes.len())
            .map(|p| self.is_member(at, p))
            .collect();
        let actions = self.nodes[at].core.on_local_commits(|p| members[*p]);
        self.execute(at, actions);
    }

    /// Heals: every pair reconnects (a fresh pull each way) and messages
    /// flow without faults until none is left (bounded).
    pub(super) fn heal(&mut self, rounds: usize) {
        self.faults = false;
        for _ in 0..rounds {
            let n = self.nodes.len();
            for a in 0..n {
                for b in a + 1..n {
                    self.disconnect(a, b);
                    self.connect(a, b);
                }
            }
            self.run(20_000);
            for at in 0..n {
                self.changed(at);
            }
            self.run(20_000);
        }
        self.faults = true;
    }

    pub(super) fn id(&self, at: usize) -> DeviceId {
        self.ids[at]
    }

    /// A commit of a device that is not a replica (a rogue member holding
    /// its own key), sealed under the current key of replica `at`.
    pub(super) fn forged_commit(
        &self,
        at: usize,
        author: &DeviceIdentity,
        seq: u64,
        prev: [u8; 32],
        key: &str,
        value: u64,
    ) -> crate::change::SignedCommit {
        let store = &self.nodes[at].store;
        let keyring = store.bound().sealed.as_ref().expect("encrypted").keyring();
        let (epoch, data_key) = keyring.current();
        let mut sealer = crate::crypto::Sealer::new(data_key, epoch).expect("sealer");
        crate::change::Commit::sign(
            crate::change::CommitBody {
                format: crate::change::SEALED_COMMIT_FORMAT,
                store: store.store_id(),
                author: author.device_id(),
                seq,
                prev,
                hlc: Hlc::from_millis(self.clock.load(Ordering::SeqCst)),
                ops: vec![crate::change::Op::KvSet {
                    key: key.into(),
                    value: value.to_string(),
                }],
            },
            author,
            Some(&mut sealer),
        )
        .expect("signs")
        .signed
    }

    /// A membership entry of `author` at an explicit position.
    pub(super) fn forged_entry(
        &self,
        author: &DeviceIdentity,
        seq: u64,
        prev: [u8; 32],
        change: MemberChange,
    ) -> crate::membership::SignedMemberEntry {
        MemberEntry {
            format: MEMBER_ENTRY_FORMAT,
            store: self.nodes[0].store.store_id(),
            author: author.device_id(),
            seq,
            prev,
            hlc: Hlc::from_millis(self.clock.load(Ordering::SeqCst)),
            change,
        }
        .sign(author)
        .expect("signs")
    }
}
