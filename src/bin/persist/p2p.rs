//! `persist pair | sync | peers | revoke`: P2P from the command line.

use std::time::{Duration, Instant};

use futures::StreamExt;
use persist::net::{device_of, with_peer, Multiaddr, P2p, P2pEvent, P2pOptions, PeerId};
use persist::Store;
use tokio::io::AsyncBufReadExt;

/// Network flags shared by the P2P commands.
#[derive(clap::Args, Clone)]
pub struct NetArgs {
    /// Address to listen on (repeatable), e.g. `/ip4/0.0.0.0/tcp/0`.
    #[arg(long = "listen")]
    pub listen: Vec<Multiaddr>,
    /// A peer to dial (`/ip4/.../tcp/.../p2p/<peer id>`), repeatable.
    #[arg(long = "peer")]
    pub peers: Vec<Multiaddr>,
    /// A bootstrap node (`persist node`) to connect through, repeatable:
    /// pairing codes are found there, and its relay makes this device
    /// reachable to browsers and to devices behind NATs.
    #[arg(long = "bootstrap")]
    pub bootstrap: Vec<Multiaddr>,
    /// A sync server (`persist node --serve`) to replicate with, its
    /// address ending with `/p2p/<peer id>`; repeatable. By default
    /// `PERSIST_SYNC_REMOTE` (addresses separated by commas).
    #[arg(long = "remote", env = "PERSIST_SYNC_REMOTE", value_delimiter = ',')]
    pub remote: Vec<Multiaddr>,
    /// Find peers on the local network with mDNS (`PERSIST_MDNS=off` turns it off).
    #[arg(long, env = "PERSIST_MDNS", default_value = "on", value_parser = on_off)]
    pub mdns: bool,
    /// Give up after this many seconds.
    #[arg(long = "for", default_value_t = 120)]
    pub seconds: u64,
}

fn on_off(text: &str) -> Result<bool, String> {
    match text {
        "on" | "1" | "true" => Ok(true),
        "off" | "0" | "false" => Ok(false),
        other => Err(format!("expected on or off, not {other:?}")),
    }
}

impl NetArgs {
    fn options(&self, listen_by_default: bool) -> P2pOptions {
        let mut listen = self.listen.clone();
        if listen.is_empty() && listen_by_default {
            listen = P2pOptions::default().listen_addrs;
        }
        P2pOptions {
            listen_addrs: listen,
            bootstrap_peers: self.peers.iter().chain(&self.bootstrap).cloned().collect(),
            mdns: self.mdns,
            dht: false,
            count_bytes: None,
            simulated_latency: None,
            message_timeout: persist::net::MESSAGE_TIMEOUT,
            sync_servers: self.remote.clone(),
        }
    }
}

async fn listen_addrs(node: &P2p) -> persist::Result<Vec<Multiaddr>> {
    let started = Instant::now();
    loop {
        let addrs = node.listen_addrs().await?;
        if !addrs.is_empty() || started.elapsed() > Duration::from_secs(5) {
            return Ok(addrs);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until sync goes quiet: no commits received for `quiet` after the
/// last batch (or nothing happened at all), at most until `deadline`.
async fn until_quiet(
    events: &mut futures::channel::mpsc::Receiver<P2pEvent>,
    quiet: Duration,
    deadline: Instant,
) -> usize {
    let mut applied = 0;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(quiet.min(left), events.next()).await {
            Ok(Some(P2pEvent::Synced { applied: n, .. })) => applied += n,
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => return applied,
        }
        if Instant::now() >= deadline {
            return applied;
        }
    }
}

/// `persist pair`: offer a code and wait for a device to use it, or
/// `persist pair CODE --peer ADDR`: join the store of the device that
/// offered it.
pub async fn pair(
    store: Store,
    code: Option<String>,
    invite: bool,
    confirm: bool,
    net: NetArgs,
) -> persist::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(net.seconds);
    match code {
        None => {
            let node = store.enable_p2p(net.options(true)).await?;
            let mut events = node.events();
            for addr in listen_addrs(&node).await? {
                println!("address: {}", with_peer(&addr, node.peer_id()));
            }
            let ttl = Duration::from_secs(net.seconds).min(Duration::from_secs(600));
            let ttl = ttl.as_millis() as u64;
            let pending = if invite {
                node.create_invite(ttl).await?
            } else {
                node.create_pairing_code_with(persist::net::CodeOptions {
                    ttl_ms: ttl,
                    confirm,
                })
                .await?
            };
            println!("code: {}", pending.code());
            if invite {
                println!("waiting for a device to pair (persist pair INVITE)");
            } else {
                println!(
                    "waiting for a device to pair (persist pair {} --peer ADDRESS)",
                    pending.code()
                );
            }
            let peer = if confirm {
                let paired = pending.paired();
                tokio::pin!(paired);
                let mut answers = tokio::io::BufReader::new(tokio::io::stdin()).lines();
                loop {
                    tokio::select! {
                        outcome = &mut paired => break outcome?,
                        event = events.next() => {
                            if let Some(P2pEvent::PairingRequest { peer, label, .. }) = event {
                                println!(
                                    "join request: {label:?}, fingerprint {} ({peer}): accept? [y/N]",
                                    persist::net::pairing::fingerprint(&peer)
                                );
                                let answer = answers.next_line().await.map_err(|e| {
                                    persist::Error::InvalidOptions(format!("cannot read the answer: {e}"))
                                })?;
                                let accept = answer.is_some_and(|a| a.trim().eq_ignore_ascii_case("y"));
                                node.confirm_pairing(peer, accept).await?;
                            }
                        }
                    }
                }
            } else {
                pending.paired().await?
            };
            println!("paired: {peer}");
            // Serve the new device's first sync until it leaves.
            while Instant::now() < deadline {
                let left = deadline.saturating_duration_since(Instant::now());
                match tokio::time::timeout(left, events.next()).await {
                    Ok(Some(P2pEvent::PeerDisconnected(p))) if p == peer => break,
                    Ok(Some(P2pEvent::Synced { applied, peer, .. })) if applied > 0 => {
                        println!("received: {applied} from {peer}");
                    }
                    Ok(Some(_)) => {}
                    Ok(None) | Err(_) => break,
                }
            }
            node.shutdown();
        }
        Some(code) => {
            // The host is dialled by the pairing itself.
            let mut options = net.options(false);
            options.bootstrap_peers = net.bootstrap.clone();
            let node = store.enable_p2p(options).await?;
            let mut events = node.events();
            // What the other device shows its user if it asks to confirm.
            println!("this device: fingerprint {}", node.fingerprint());
            let host = net.peers.first().cloned();
            let peer = if code.starts_with(persist::net::pairing::INVITE_PREFIX) {
                node.accept_invite(&code).await?
            } else {
                node.pair(&code, host).await?
            };
            println!(
                "paired with {peer}: this device joined store {}",
                store.store_id()
            );
            let applied = until_quiet(&mut events, Duration::from_secs(1), deadline).await;
            println!("synced: {applied} commit(s) received");
            node.shutdown();
        }
    }
    store.close().await
}

/// `persist sync`: connect to peers (and/or listen), replicate until quiet.
pub async fn sync(store: Store, net: NetArgs) -> persist::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(net.seconds);
    let serving = !net.listen.is_empty();
    let node = store.enable_p2p(net.options(false)).await?;
    let mut events = node.events();
    for addr in listen_addrs(&node).await? {
        println!("address: {}", with_peer(&addr, node.peer_id()));
    }
    let applied = if serving {
        // Serve until the deadline.
        let mut applied = 0;
        while let Ok(Some(event)) = tokio::time::timeout(
            deadline.saturating_duration_since(Instant::now()),
            events.next(),
        )
        .await
        {
            match event {
                P2pEvent::Synced {
                    applied: n, peer, ..
                } => {
                    applied += n;
                    if n > 0 {
                        println!("received: {n} from {peer}");
                    }
                }
                P2pEvent::PeerConnected(peer) => println!("connected: {peer}"),
                P2pEvent::PeerDisconnected(peer) => println!("disconnected: {peer}"),
                P2pEvent::MemberRemoved(peer) => println!("removed: {peer}"),
                _ => {}
            }
        }
        applied
    } else {
        until_quiet(&mut events, Duration::from_secs(1), deadline).await
    };
    println!("synced: {applied} commit(s) received");
    node.shutdown();
    store.close().await
}

/// `persist peers`: the store's membership.
pub async fn peers(store: Store) -> persist::Result<()> {
    let members = store.members();
    let me = store.device_id();
    for (device, label) in &members.current {
        let peer = persist::net::peer_id_of(device)?;
        let mine = if *device == me { " (this device)" } else { "" };
        let label = if label.is_empty() { "(founder)" } else { label };
        println!("trusted  {peer}  {label}{mine}");
    }
    for device in members.removed.keys() {
        println!("revoked  {}", persist::net::peer_id_of(device)?);
    }
    store.close().await
}

/// `persist revoke PEER_ID`: remove a device (replicates at the next sync).
pub async fn revoke(store: Store, peer: String) -> persist::Result<()> {
    let peer: PeerId = peer
        .parse()
        .map_err(|e| persist::Error::InvalidOptions(format!("not a peer id: {e}")))?;
    let device = device_of(&peer).ok_or_else(|| {
        persist::Error::NotTrusted(format!("{peer} is not the peer id of a Persist device"))
    })?;
    store.revoke(device).await?;
    println!("revoked {peer}: its later writes are refused; the other members learn it at their next sync");
    if store.crypto().is_encrypted() {
        println!(
            "the store moved to key epoch {}: the revoked device cannot read what is written from now on",
            store.crypto().epoch()?
        );
    }
    store.close().await
}

/// `persist notes`: an interactive notes device. It offers a pairing code
/// (or, given one, joins the device that offered it), then replicates with
/// the store's devices until stopped: notes that arrive are printed, and
/// each line typed on standard input becomes a note.
pub async fn notes(store: Store, code: Option<String>, net: NetArgs) -> persist::Result<()> {
    let node = store.enable_p2p(net.options(true)).await?;
    let mut events = node.events();
    println!("device: {}", node.peer_id());
    for addr in listen_addrs(&node).await? {
        println!("address: {}", with_peer(&addr, node.peer_id()));
    }
    let notes = store.records("notes");
    let _subscription = notes.subscribe(|changes| {
        for change in changes {
            if change.origin != persist::Origin::Remote {
                continue;
            }
            match &change.value {
                Some(value) => {
                    let title = value
                        .get("title")
                        .and_then(|t| t.as_str())
                        .unwrap_or("(untitled)");
                    println!("note received: {title}");
                }
                None => println!("note deleted: {}", change.id),
            }
        }
    })?;
    let mut pending = None;
    match code {
        Some(code) => {
            let host = net.peers.first().cloned();
            let peer = node.pair(&code, host).await?;
            println!("paired: joined the store of {peer}");
        }
        None => {
            let offered = node
                .create_pairing_code_valid_for(
                    Duration::from_secs(net.seconds.min(3600)).as_millis() as u64,
                )
                .await?;
            println!("code: {}", offered.code());
            pending = Some(Box::pin(offered.paired()));
        }
    }
    let deadline = tokio::time::sleep(Duration::from_secs(net.seconds));
    tokio::pin!(deadline);
    // Signal streams made once keep a signal that arrives while the loop
    // is busy (a future made per turn would miss it).
    let signal = |kind| {
        tokio::signal::unix::signal(kind)
            .map_err(|e| persist::Error::InvalidOptions(format!("cannot watch signals: {e}")))
    };
    let mut term = signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut interrupt = signal(tokio::signal::unix::SignalKind::interrupt())?;
    // Standard input on a thread of its own: a read in tokio's blocking
    // pool would keep the process alive after Ctrl-C until the next line.
    let (line_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::stdin().lines() {
            if line
                .map(|l| line_tx.send(l))
                .map_or(true, |sent| sent.is_err())
            {
                break;
            }
        }
    });
    let mut stdin_open = true;
    loop {
        tokio::select! {
            _ = &mut deadline => break,
            _ = term.recv() => break,
            _ = interrupt.recv() => break,
            outcome = async {
                match pending.as_mut() {
                    Some(paired) => paired.await,
                    None => std::future::pending().await,
                }
            }, if pending.is_some() => {
                pending = None;
                match outcome {
                    Ok(peer) => println!("paired: {peer} joined"),
                    Err(e) => println!("pairing failed: {} ({e})", e.code()),
                }
            }
            line = lines.recv(), if stdin_open => match line {
                Some(text) if !text.trim().is_empty() => {
                    let id = format!("{:013}-{}", persist::platform::now_ms(), store.device_id().short());
                    notes.put(&id, serde_json::json!({ "title": text.trim(), "at": persist::platform::now_ms() })).await?;
                    println!("note written: {}", text.trim());
                }
                Some(_) => {}
                None => stdin_open = false,
            },
            event = events.next() => match event {
                Some(P2pEvent::PeerConnected(peer)) => println!("connected: {peer}"),
                Some(P2pEvent::PeerDisconnected(peer)) => println!("disconnected: {peer}"),
                Some(P2pEvent::Synced { applied, remaining, peer, .. }) if applied > 0 => {
                    println!("received: {applied} from {peer} ({remaining} to go)");
                }
                Some(_) => {}
                None => break,
            },
        }
    }
    node.shutdown();
    store.close().await
}
