//! What strangers can make a `persist node` do with raw libp2p clients:
//! its meeting point lists nothing, a code's nameplate has one owner,
//! lookups and registrations are budgeted, connections are capped per
//! address, and a relayed connection is cut at its byte and time limits.

use std::time::{Duration, Instant};

use futures::{AsyncReadExt, AsyncWriteExt, StreamExt};
use libp2p::multiaddr::Protocol;
use libp2p::request_response::{self, ProtocolSupport};
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{noise, tcp, yamux, Multiaddr, PeerId, StreamProtocol, Swarm, SwarmBuilder};
use persist::net::meet::{
    pairing_key, place_of, store_key, MeetCodec, MeetRequest, MeetResponse, PlaceKind, Refusal,
    MEET_PROTOCOL,
};
use persist::net::server::{Server, ServerBehaviour, ServerOptions};
use persist::net::P2pOptions;
use persist::DeviceIdentity;

use crate::p2p::memory_store;
use crate::p2p_trust::raw_swarm;

/// A node on loopback with `options`; its TCP address with its id.
pub(crate) async fn start_node(mut options: ServerOptions) -> (Server, Multiaddr) {
    options.listen_addrs = vec!["/ip4/127.0.0.1/tcp/0".parse().expect("addr")];
    let keypair =
        persist::net::keypair(&DeviceIdentity::generate().expect("identity")).expect("keypair");
    let behaviour = ServerBehaviour::new(&keypair, &options);
    let (swarm, _) = persist::platform::server_swarm(keypair, behaviour, None).expect("swarm");
    let server = Server::start(swarm, &options).expect("node");
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(addr) = server
            .listen_addrs()
            .await
            .expect("addrs")
            .into_iter()
            .next()
        {
            return (server, addr);
        }
        assert!(Instant::now() < deadline, "the node never listened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A stranger that asks meeting points, and tries other protocols.
#[derive(NetworkBehaviour)]
struct Asker {
    meet: request_response::Behaviour<MeetCodec>,
    streams: libp2p_stream::Behaviour,
}

fn asker() -> Swarm<Asker> {
    raw_swarm(
        &DeviceIdentity::generate().expect("identity"),
        Asker {
            meet: request_response::Behaviour::new(
                [(MEET_PROTOCOL, ProtocolSupport::Outbound)],
                request_response::Config::default(),
            ),
            streams: libp2p_stream::Behaviour::new(),
        },
    )
}

/// Dials `addr`; whether a connection was established within 5 s.
async fn connects(client: &mut Swarm<Asker>, addr: &Multiaddr) -> bool {
    client.dial(addr.clone()).expect("dial");
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match client.select_next_some().await {
                SwarmEvent::ConnectionEstablished { .. } => return true,
                SwarmEvent::OutgoingConnectionError { .. } => return false,
                SwarmEvent::ConnectionClosed { .. } => return false,
                _ => {}
            }
        }
    })
    .await
    .expect("an outcome in 5 s")
}

/// Sends `request` to `node` and waits for its answer.
async fn ask(client: &mut Swarm<Asker>, node: PeerId, request: MeetRequest) -> MeetResponse {
    let id = client.behaviour_mut().meet.send_request(&node, request);
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match client.select_next_some().await {
                SwarmEvent::Behaviour(AskerEvent::Meet(request_response::Event::Message {
                    message:
                        request_response::Message::Response {
                            request_id,
                            response,
                        },
                    ..
                })) if request_id == id => return response,
                SwarmEvent::Behaviour(AskerEvent::Meet(
                    request_response::Event::OutboundFailure {
                        request_id, error, ..
                    },
                )) if request_id == id => panic!("request failed: {error}"),
                _ => {}
            }
        }
    })
    .await
    .expect("an answer in 10 s")
}

fn peer_of(addr: &Multiaddr) -> PeerId {
    match addr.iter().last() {
        Some(Protocol::P2p(peer)) => peer,
        _ => panic!("{addr} names no peer"),
    }
}

fn peers(response: MeetResponse) -> Vec<PeerId> {
    match response {
        MeetResponse::Found { peers } => peers
            .iter()
            .map(|p| PeerId::from_bytes(&p.peer).expect("peer id"))
            .collect(),
        other => panic!("expected Found, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_public_node_lists_nothing_and_budgets_strangers() {
    let (server, node_addr) = start_node(ServerOptions::default()).await;
    let node = peer_of(&node_addr);

    // A device with a pending code, registered at the node.
    let store = memory_store("device").await;
    let mut options = P2pOptions::loopback();
    options.bootstrap_peers = vec![node_addr.clone()];
    let device = store.enable_p2p(options).await.expect("device");
    let pending = device.create_pairing_code().await.expect("code");
    let nameplate = pending.code().to_string()[..4].to_owned();
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.stats().await.expect("stats").directory.registrations < 2 {
        assert!(Instant::now() < deadline, "the device never registered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let mut stranger = asker();
    assert!(connects(&mut stranger, &node_addr).await);

    // No listing: the node speaks no rendezvous protocol, and a place
    // nobody registered answers nothing.
    let mut control = stranger.behaviour().streams.new_control();
    let mut opening = Box::pin(async move {
        control
            .open_stream(node, StreamProtocol::new("/rendezvous/1.0.0"))
            .await
    });
    let opened = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            tokio::select! {
                result = &mut opening => return result,
                _ = stranger.select_next_some() => {}
            }
        }
    })
    .await
    .expect("negotiated in 5 s");
    assert!(
        matches!(
            opened,
            Err(libp2p_stream::OpenStreamError::UnsupportedProtocol(_))
        ),
        "a rendezvous stream is refused: {opened:?}"
    );
    for guess in 0..10u8 {
        let place = place_of(&[guess; 32]);
        assert!(peers(ask(&mut stranger, node, MeetRequest::Lookup { place }).await).is_empty());
    }

    let mut stranger = asker();
    assert!(connects(&mut stranger, &node_addr).await);
    // The code's place finds the device (a nameplate is public); the
    // store's place needs the store id.
    let code_place = place_of(&pairing_key(&nameplate));
    let found = peers(
        ask(
            &mut stranger,
            node,
            MeetRequest::Lookup { place: code_place },
        )
        .await,
    );
    assert_eq!(found, [device.peer_id()]);
    let store_place = place_of(&store_key(&store.store_id()));
    let found = peers(
        ask(
            &mut stranger,
            node,
            MeetRequest::Lookup { place: store_place },
        )
        .await,
    );
    assert_eq!(found, [device.peer_id()]);

    // The nameplate has one owner: a stranger cannot register there.
    let squat = MeetRequest::Register {
        key: pairing_key(&nameplate),
        kind: PlaceKind::Pairing,
        addrs: vec!["/ip4/127.0.0.1/tcp/9"
            .parse::<Multiaddr>()
            .expect("addr")
            .to_vec()],
        ttl_s: 600,
    };
    assert_eq!(
        ask(&mut stranger, node, squat).await,
        MeetResponse::Refused {
            refusal: Refusal::Taken
        }
    );

    // Scanning nameplates: a burst, then refusals.
    let mut answered = 0;
    for n in 0..100u32 {
        let place = place_of(&pairing_key(&format!("{n:04}")));
        if ask(&mut stranger, node, MeetRequest::Lookup { place }).await
            != (MeetResponse::Refused {
                refusal: Refusal::Slow,
            })
        {
            answered += 1;
        }
    }
    println!("{answered} of 100 nameplate lookups answered at once");
    assert!(answered <= 22, "{answered} of 100 lookups answered at once");

    // Filling the table from one address with fresh peer ids: connections
    // stop at the per-address cap, registrations at theirs.
    let limits = ServerOptions::default();
    let mut crowd = Vec::new();
    let mut accepted = 0;
    for i in 0..24u32 {
        let mut client = asker();
        if !connects(&mut client, &node_addr).await {
            continue;
        }
        for k in 0..8u32 {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&i.to_be_bytes());
            key[4..8].copy_from_slice(&k.to_be_bytes());
            let request = MeetRequest::Register {
                key,
                kind: PlaceKind::Store,
                addrs: vec!["/ip4/127.0.0.1/tcp/9"
                    .parse::<Multiaddr>()
                    .expect("addr")
                    .to_vec()],
                ttl_s: 600,
            };
            if matches!(
                ask(&mut client, node, request).await,
                MeetResponse::Registered { .. }
            ) {
                accepted += 1;
            }
        }
        crowd.push(client);
    }
    let stats = server.stats().await.expect("stats");
    println!(
        "24 fresh peer ids from one address: {} connected, {accepted} of {} registrations accepted",
        crowd.len(),
        crowd.len() * 8
    );
    // The device and two strangers hold connections too.
    assert!(
        crowd.len() + 2 <= limits.max_connections_per_ip as usize,
        "{} connections from one address",
        crowd.len()
    );
    assert!(
        accepted + 2 <= limits.meet.per_ip,
        "{accepted} registrations"
    );
    assert!(stats.directory.registrations <= limits.meet.per_ip);
    assert!(stats.refused_requests > 0);

    // Registrations end with their device's connection.
    drop(crowd);
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.stats().await.expect("stats").directory.registrations > 2 {
        assert!(
            Instant::now() < deadline,
            "registrations outlived their devices"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    device.shutdown();
    server.shutdown().await;
}

/// A client that can reserve on a relay and be dialled through it.
#[derive(NetworkBehaviour)]
struct Relayed {
    relay: libp2p::relay::client::Behaviour,
    streams: libp2p_stream::Behaviour,
}

fn relayed() -> Swarm<Relayed> {
    let keypair =
        persist::net::keypair(&DeviceIdentity::generate().expect("identity")).expect("keypair");
    SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .expect("tcp")
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .expect("relay client")
        .with_behaviour(|_, relay| Relayed {
            relay,
            streams: libp2p_stream::Behaviour::new(),
        })
        .expect("behaviour")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(30)))
        .build()
}

const ECHO: StreamProtocol = StreamProtocol::new("/test/bulk/1");

/// Bytes `sender` gets through a circuit to `receiver` (written as fast
/// as the circuit takes them, up to `offer`, or trickled one KiB a
/// second with `trickle`), and how long the circuit lasted.
async fn through_circuit(node_addr: &Multiaddr, offer: usize, trickle: bool) -> (usize, Duration) {
    let mut receiver = relayed();
    let mut sender = relayed();
    let circuit = node_addr.clone().with(Protocol::P2pCircuit);
    receiver.listen_on(circuit.clone()).expect("reserve");
    // Right after a crowd from this address, the node may still count
    // connections that are closing against its per-IP limit and refuse
    // the receiver's: the reservation is asked again until it holds.
    tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match receiver.select_next_some().await {
                SwarmEvent::Behaviour(RelayedEvent::Relay(
                    libp2p::relay::client::Event::ReservationReqAccepted { .. },
                )) => break,
                SwarmEvent::ListenerClosed { .. } => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    receiver.listen_on(circuit.clone()).expect("reserve");
                }
                _ => {}
            }
        }
    })
    .await
    .expect("a reservation in 30 s");
    let mut incoming = receiver
        .behaviour()
        .streams
        .new_control()
        .accept(ECHO)
        .expect("accept");
    let target = *receiver.local_peer_id();
    let mut control = sender.behaviour().streams.new_control();
    sender
        .dial(circuit.with(Protocol::P2p(target)))
        .expect("dial through the relay");
    let drive = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = receiver.select_next_some() => {}
                _ = sender.select_next_some() => {}
            }
        }
    });
    let write = tokio::spawn(async move {
        let Ok(mut stream) = control.open_stream(target, ECHO).await else {
            return;
        };
        let chunk = vec![7u8; 1024];
        let mut sent = 0;
        while sent < offer {
            if stream.write_all(&chunk).await.is_err() {
                return;
            }
            sent += chunk.len();
            if trickle {
                let _ = stream.flush().await;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
        let _ = stream.close().await;
    });
    let started = Instant::now();
    let (_, mut stream) = tokio::time::timeout(Duration::from_secs(10), incoming.next())
        .await
        .expect("a stream in 10 s")
        .expect("a stream");
    let mut received = 0;
    let mut buffer = vec![0u8; 16 << 10];
    let _ = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(n) = stream.read(&mut buffer).await {
            if n == 0 {
                break;
            }
            received += n;
        }
    })
    .await;
    let lasted = started.elapsed();
    write.abort();
    drive.abort();
    (received, lasted)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_connection_ends_at_its_byte_and_time_limits() {
    let options = ServerOptions {
        max_circuit_duration: Duration::from_secs(3),
        ..ServerOptions::default()
    };
    let limit = options.max_circuit_bytes as usize;
    let (server, node_addr) = start_node(options).await;
    let (received, _) = through_circuit(&node_addr, 8 << 20, false).await;
    println!("a circuit limited to {limit} bytes carried {received} bytes of 8 MiB offered");
    assert!(received > 0, "the circuit carried nothing");
    // The relay counts between the buffers it copies: a circuit may end
    // up to one buffer past its limit.
    assert!(
        received <= limit + (16 << 10),
        "{received} bytes through a circuit limited to {limit}"
    );
    let (received, lasted) = through_circuit(&node_addr, 1 << 20, true).await;
    println!("a circuit limited to 3 s carried {received} trickled bytes for {lasted:?}");
    assert!(
        received > 0 && received < 16 << 10,
        "{received} bytes trickled"
    );
    assert!(
        lasted < Duration::from_secs(8),
        "a circuit limited to 3 s lasted {lasted:?}"
    );
    server.shutdown().await;
}

/// Peak resident memory of process `pid` so far, in KiB (Linux's VmHWM).
pub(crate) fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

/// The bound on what a crowd of strangers may add to a node's peak memory.
const CROWD_RSS_BOUND_KIB: u64 = 32 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crowd_of_strangers_costs_a_node_process_bounded_memory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (mut child, lines) = crate::cli::spawn_persist(
        &[
            "node",
            "--data",
            "node",
            "--for",
            "120",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ],
        dir.path(),
    );
    let node_addr: Multiaddr = tokio::task::spawn_blocking(move || {
        lines
            .map_while(Result::ok)
            .find_map(|l| l.strip_prefix("listening: ").map(str::to_owned))
            .expect("a listen address")
    })
    .await
    .expect("task")
    .parse()
    .expect("multiaddr");
    let node = peer_of(&node_addr);
    // Idle, after a first connection and its protocols have run once.
    let mut first = asker();
    assert!(connects(&mut first, &node_addr).await);
    ask(&mut first, node, MeetRequest::Lookup { place: [0; 32] }).await;
    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let idle = peak_rss_kib(child.id());

    // Three waves of 24 fresh peer ids from one address, each registering
    // 8 places and scanning 30 nameplates, then leaving; and four relayed
    // connections offered 8 MiB each.
    let (mut connected, mut asked) = (0, 0);
    for wave in 0..3u32 {
        let mut crowd = Vec::new();
        for i in 0..24u32 {
            let mut client = asker();
            if !connects(&mut client, &node_addr).await {
                continue;
            }
            connected += 1;
            for k in 0..8u32 {
                let mut key = [0u8; 32];
                key[..4].copy_from_slice(&(wave * 100 + i).to_be_bytes());
                key[4..8].copy_from_slice(&k.to_be_bytes());
                let request = MeetRequest::Register {
                    key,
                    kind: PlaceKind::Store,
                    addrs: vec!["/ip4/127.0.0.1/tcp/9"
                        .parse::<Multiaddr>()
                        .expect("addr")
                        .to_vec()],
                    ttl_s: 600,
                };
                ask(&mut client, node, request).await;
                asked += 1;
            }
            for n in 0..30u32 {
                let place = place_of(&pairing_key(&format!("{:04}", i * 30 + n)));
                ask(&mut client, node, MeetRequest::Lookup { place }).await;
                asked += 1;
            }
            crowd.push(client);
        }
        drop(crowd);
    }
    for _ in 0..4 {
        through_circuit(&node_addr, 8 << 20, false).await;
    }
    let peak = peak_rss_kib(child.id());
    println!(
        "persist node: peak RSS {idle} KiB idle, {peak} KiB after 72 strangers from one \
         address ({connected} admitted, {asked} registrations and lookups answered) and 4 \
         relayed connections offered 8 MiB each (bound: {CROWD_RSS_BOUND_KIB} KiB more)"
    );
    assert!(
        peak.saturating_sub(idle) <= CROWD_RSS_BOUND_KIB,
        "the crowd grew the node's peak memory by {} KiB",
        peak - idle
    );
    // SAFETY: a plain kill(2) on a child process this test started.
    let pid = i32::try_from(child.id()).expect("pid");
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    assert!(child.wait().expect("exits").success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_logs_what_it_did_in_counts_never_who_talked_to_whom() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().expect("temp dir");
    let errors = dir.path().join("stderr.log");
    // As an operator runs it: the default log level, no --log-peers.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_persist"))
        .args([
            "node",
            "--data",
            "node",
            "--for",
            "60",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
        ])
        .env("PERSIST_MDNS", "off")
        .env_remove("PERSIST_LOG")
        .current_dir(dir.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&errors).expect("stderr file"))
        .spawn()
        .expect("runs persist");
    let stdout = child.stdout.take().expect("stdout");
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if lines_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut printed = Vec::new();
    let node_addr: Multiaddr = loop {
        let line = lines_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("a listen address within 30 s");
        let addr = line.strip_prefix("listening: ").map(str::to_owned);
        printed.push(line);
        if let Some(addr) = addr {
            break addr.parse().expect("multiaddr");
        }
    };
    let node = peer_of(&node_addr);

    // Someone looks a place up, two peers talk through the relay.
    let mut client = asker();
    assert!(connects(&mut client, &node_addr).await);
    ask(&mut client, node, MeetRequest::Lookup { place: [1; 32] }).await;
    let (received, _) = through_circuit(&node_addr, 16 << 10, false).await;
    assert!(received > 0, "nothing crossed the relay");
    drop(client);

    // SAFETY: a plain kill(2) on a child process this test started.
    let pid = i32::try_from(child.id()).expect("pid");
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    assert!(child.wait().expect("exits").success());
    printed.extend(lines_rx.try_iter());
    let logged = std::fs::read_to_string(&errors).expect("stderr");

    // It says what it did, in counts...
    let summary = printed
        .iter()
        .find(|l| l.starts_with("stopping: "))
        .unwrap_or_else(|| panic!("no summary in {printed:?}"));
    let counts: Vec<u64> = summary
        .split(' ')
        .filter_map(|word| word.trim_start_matches('(').parse().ok())
        .collect();
    assert!(
        counts.len() == 3 && counts[0] >= 1 && counts[1] >= 1,
        "{summary}"
    );
    println!("{summary}");
    // ...and names no peer but itself, on stdout or in its log.
    let own = node.to_string();
    for text in printed.iter().map(String::as_str).chain([logged.as_str()]) {
        for (at, _) in text.match_indices("12D3KooW") {
            let id: String = text[at..]
                .chars()
                .take_while(char::is_ascii_alphanumeric)
                .collect();
            assert_eq!(id, own, "a peer named in the node's output: {text}");
        }
    }
}
