//! `persist node`: a headless bootstrap, relay and meeting-point node.

use std::path::PathBuf;
use std::time::Duration;

use futures::StreamExt;
use persist::net::server::{ServeOptions, Server, ServerEvent, ServerOptions};
use persist::net::Multiaddr;
use persist::{Store, StoreOptions};
use serde::Deserialize;

/// Flags of `persist node` (each also settable in the `--config` file,
/// under the same name with `_` for `-`; flags win).
#[derive(clap::Args, Clone, Default)]
pub struct NodeArgs {
    /// Folder of the node's own data: its identity and WebRTC certificate,
    /// kept in an embedded (encrypted) SQLite store.
    #[arg(long, default_value = "persist-node")]
    pub data: PathBuf,
    /// A TOML file with any of: listen (array), max_reservations,
    /// max_circuits, max_circuits_per_peer, max_circuit_seconds,
    /// max_circuit_bytes, max_registrations, registrations_per_ip,
    /// max_connections, max_connections_per_ip, max_connections_per_subnet,
    /// log_peers, serve, storage, max_stores, store_quota_bytes, founders
    /// (array), health.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Address to listen on (repeatable). Default: TCP 4001, QUIC 4001,
    /// WebSocket 4002, WebRTC-direct 4003 on every interface.
    #[arg(long = "listen")]
    pub listen: Vec<Multiaddr>,
    /// Relay reservations held at once.
    #[arg(long)]
    pub max_reservations: Option<usize>,
    /// Relayed connections open at once.
    #[arg(long)]
    pub max_circuits: Option<usize>,
    /// Relayed connections per peer.
    #[arg(long)]
    pub max_circuits_per_peer: Option<usize>,
    /// Seconds one relayed connection may last (default 120: enough to
    /// pair and to punch a hole; relayed sync between browsers needs more).
    #[arg(long)]
    pub max_circuit_seconds: Option<u64>,
    /// Bytes one relayed connection may carry each way (default 131072).
    #[arg(long)]
    pub max_circuit_bytes: Option<u64>,
    /// Registrations (pending codes, store presences) held at once.
    #[arg(long)]
    pub max_registrations: Option<usize>,
    /// Registrations held at once from one IP address.
    #[arg(long)]
    pub registrations_per_ip: Option<usize>,
    /// Connections at most.
    #[arg(long)]
    pub max_connections: Option<u32>,
    /// Inbound connections from one IP address at most.
    #[arg(long)]
    pub max_connections_per_ip: Option<u32>,
    /// Inbound connections from one subnet (IPv4 /24, IPv6 /48) at most.
    #[arg(long)]
    pub max_connections_per_subnet: Option<u32>,
    /// Print the peer ids of reservations and relayed connections (who
    /// talks to whom). Off by default: the log says what the node did, in
    /// counts.
    #[arg(long)]
    pub log_peers: bool,
    /// Serve stores: hold the ciphertext of every store whose members
    /// sync with this node (`--remote` on their side), so devices that are
    /// never online together converge. The node holds no key.
    #[arg(long)]
    pub serve: bool,
    /// Where served stores are kept: a SQLite file (default
    /// `<data>/served.db`) or a PostgreSQL URL
    /// (`postgres://user:password@host:5432/db`).
    #[arg(long)]
    pub storage: Option<String>,
    /// Stores served at most (default 10,000).
    #[arg(long)]
    pub max_stores: Option<u64>,
    /// Bytes of commits one served store may hold (default 1 GiB).
    #[arg(long)]
    pub store_quota_bytes: Option<u64>,
    /// Serve only the stores founded by these devices (peer ids, as
    /// `persist peers` prints them; repeatable or separated by commas).
    /// Default: any store whose members sync here.
    #[arg(long = "founder", value_delimiter = ',')]
    pub founders: Vec<String>,
    /// Answer health checks over HTTP on this address (for example
    /// `127.0.0.1:9101`): any `GET` gets `200` and the node's counts as
    /// JSON, or `503` with the error code when its storage is unreachable.
    #[arg(long)]
    pub health: Option<std::net::SocketAddr>,
    /// Stop after this many seconds (default: until SIGTERM or Ctrl-C).
    #[arg(long = "for")]
    pub seconds: Option<u64>,
}

/// The `--config` file.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    listen: Option<Vec<String>>,
    max_reservations: Option<usize>,
    max_circuits: Option<usize>,
    max_circuits_per_peer: Option<usize>,
    max_circuit_seconds: Option<u64>,
    max_circuit_bytes: Option<u64>,
    max_registrations: Option<usize>,
    registrations_per_ip: Option<usize>,
    max_connections: Option<u32>,
    max_connections_per_ip: Option<u32>,
    max_connections_per_subnet: Option<u32>,
    log_peers: Option<bool>,
    serve: Option<bool>,
    storage: Option<String>,
    max_stores: Option<u64>,
    store_quota_bytes: Option<u64>,
    founders: Option<Vec<String>>,
    health: Option<String>,
}

/// What the node runs besides its options.
struct Extras {
    log_peers: bool,
    health: Option<std::net::SocketAddr>,
}

fn invalid(message: String) -> persist::Error {
    persist::Error::InvalidOptions(message)
}

impl NodeArgs {
    /// The options (defaults, then the file, then the flags), whether to
    /// log peer ids and where to answer health checks.
    async fn options(&self) -> persist::Result<(ServerOptions, Extras)> {
        let file = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
                toml::from_str::<ConfigFile>(&text)
                    .map_err(|e| invalid(format!("{}: {e}", path.display())))?
            }
            None => ConfigFile::default(),
        };
        let mut options = ServerOptions::default();
        if let Some(listen) = file.listen {
            options.listen_addrs = listen
                .iter()
                .map(|a| {
                    a.parse()
                        .map_err(|e| invalid(format!("listen address {a:?}: {e}")))
                })
                .collect::<persist::Result<_>>()?;
        }
        if !self.listen.is_empty() {
            options.listen_addrs = self.listen.clone();
        }
        let pick = |flag: Option<usize>, file: Option<usize>, default: usize| {
            flag.or(file).unwrap_or(default)
        };
        options.max_reservations = pick(
            self.max_reservations,
            file.max_reservations,
            options.max_reservations,
        );
        options.max_circuits = pick(self.max_circuits, file.max_circuits, options.max_circuits);
        options.max_circuits_per_peer = pick(
            self.max_circuits_per_peer,
            file.max_circuits_per_peer,
            options.max_circuits_per_peer,
        );
        options.meet.max_registrations = pick(
            self.max_registrations,
            file.max_registrations,
            options.meet.max_registrations,
        );
        options.meet.per_ip = pick(
            self.registrations_per_ip,
            file.registrations_per_ip,
            options.meet.per_ip,
        );
        if let Some(seconds) = self.max_circuit_seconds.or(file.max_circuit_seconds) {
            options.max_circuit_duration = Duration::from_secs(seconds);
        }
        if let Some(bytes) = self.max_circuit_bytes.or(file.max_circuit_bytes) {
            options.max_circuit_bytes = bytes;
        }
        if let Some(n) = self.max_connections.or(file.max_connections) {
            options.max_connections = n;
        }
        if let Some(n) = self.max_connections_per_ip.or(file.max_connections_per_ip) {
            options.max_connections_per_ip = n;
        }
        if let Some(n) = self
            .max_connections_per_subnet
            .or(file.max_connections_per_subnet)
        {
            options.max_connections_per_subnet = n;
        }
        let log_peers = self.log_peers || file.log_peers.unwrap_or(false);
        let health = match (self.health, &file.health) {
            (Some(addr), _) => Some(addr),
            (None, Some(text)) => Some(
                text.parse()
                    .map_err(|e| invalid(format!("health address {text:?}: {e}")))?,
            ),
            (None, None) => None,
        };
        if self.serve || file.serve.unwrap_or(false) {
            let spec = match self.storage.clone().or(file.storage) {
                Some(spec) => spec,
                None => {
                    std::fs::create_dir_all(&self.data).map_err(|e| {
                        invalid(format!("cannot create {}: {e}", self.data.display()))
                    })?;
                    self.data.join("served.db").display().to_string()
                }
            };
            let storage = persist::platform::open_host_storage(&spec).await?;
            let mut serve = ServeOptions::new(storage);
            if let Some(n) = self.max_stores.or(file.max_stores) {
                serve.max_stores = n;
            }
            if let Some(n) = self.store_quota_bytes.or(file.store_quota_bytes) {
                serve.quota.max_bytes = n;
            }
            let founders = if self.founders.is_empty() {
                file.founders.clone().unwrap_or_default()
            } else {
                self.founders.clone()
            };
            serve.founders = founders
                .iter()
                .map(|text| {
                    text.trim()
                        .parse::<persist::net::PeerId>()
                        .ok()
                        .and_then(|peer| persist::net::device_of(&peer))
                        .ok_or_else(|| {
                            invalid(format!(
                                "founder {text:?} is not a device's peer id (12D3Koo...)"
                            ))
                        })
                })
                .collect::<persist::Result<_>>()?;
            options.serve = Some(serve);
        }
        Ok((options, Extras { log_peers, health }))
    }
}

/// A health check's answer: status line and JSON body.
async fn health_answer(node: &Server) -> (&'static str, serde_json::Value) {
    match node.stats().await {
        Ok(stats) => {
            let mut body = serde_json::json!({ "status": "ok", "peers": stats.peers });
            if let Some(served) = stats.served {
                body["stores"] = served.held.stores.into();
                body["commits"] = served.held.commits.into();
                body["bytes"] = served.held.bytes.into();
            }
            ("200 OK", body)
        }
        Err(e) => (
            "503 Service Unavailable",
            serde_json::json!({ "status": "unavailable", "code": e.code(), "error": e.to_string() }),
        ),
    }
}

/// Answers health checks on `addr`, one connection at a time: whatever
/// the request (at most 4 KiB, within 5 s), the node's state.
async fn serve_health(listener: tokio::net::TcpListener, node: Server) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let mut socket = match listener.accept().await {
            Ok((socket, _)) => socket,
            Err(e) => {
                // Out of descriptors, say: wait rather than spin.
                tracing::warn!(%e, "cannot accept a health check");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let answered = tokio::time::timeout(Duration::from_secs(5), async {
            let mut request = Vec::with_capacity(512);
            let mut buf = [0u8; 512];
            while request.len() < 4096 && !request.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = socket.read(&mut buf).await?;
                if n == 0 {
                    break;
                }
                request.extend_from_slice(&buf[..n]);
            }
            let (status, body) = health_answer(&node).await;
            let body = body.to_string();
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                 connection: close\r\n\r\n{body}",
                body.len()
            );
            socket.write_all(response.as_bytes()).await?;
            socket.shutdown().await
        })
        .await;
        if let Ok(Err(e)) = answered {
            tracing::debug!(%e, "a health check went unanswered");
        }
    }
}

/// Prints a line; a closed standard output (a supervisor that stopped
/// reading) must not stop the node.
fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let _ = writeln!(std::io::stdout(), "{line}");
}

/// Where the node keeps its WebRTC certificate (in its own store).
const CERTIFICATE_KEY: &str = "webrtc-certificate";

/// Relay activity since the last stats line.
#[derive(Default)]
struct Tally {
    reservations: u64,
    circuits: u64,
    open: u64,
}

/// Runs the node until SIGTERM, Ctrl-C or `--for` seconds.
pub async fn run(args: NodeArgs) -> persist::Result<()> {
    // Signals first: a SIGTERM that arrives while the node starts still
    // stops it cleanly.
    let signal = |kind| {
        tokio::signal::unix::signal(kind).map_err(|e| invalid(format!("cannot watch signals: {e}")))
    };
    let mut term = signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut interrupt = signal(tokio::signal::unix::SignalKind::interrupt())?;
    let (options, extras) = args.options().await?;
    let log_peers = extras.log_peers;
    std::fs::create_dir_all(&args.data).map_err(|e| {
        invalid(format!(
            "cannot create the data folder {}: {e}",
            args.data.display()
        ))
    })?;
    // The node's identity and certificate live in its own encrypted store:
    // the identity sealed by the device key (keychain or 0600 keyfile), the
    // certificate under the store's key.
    let store = Store::open(
        StoreOptions::new("node")
            .path(args.data.join("node.db"))
            .encrypt(true),
    )
    .await?;
    let keypair = store.p2p_keypair()?;
    let certificate = store
        .kv()
        .get(CERTIFICATE_KEY)
        .await?
        .and_then(|v| v.as_str().map(str::to_owned));
    let behaviour = persist::net::server::ServerBehaviour::new(&keypair, &options);
    let (swarm, pem) = persist::platform::server_swarm(keypair, behaviour, certificate.as_deref())?;
    if certificate.as_deref() != Some(pem.as_str()) {
        store
            .kv()
            .set(CERTIFICATE_KEY, serde_json::Value::String(pem))
            .await?;
    }
    let node = Server::start(swarm, &options)?;
    let mut events = node.events();
    say(format_args!("node: {}", node.peer_id()));
    let started = std::time::Instant::now();
    let mut addrs = node.listen_addrs().await?;
    while addrs.len() < options.listen_addrs.len() && started.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        addrs = node.listen_addrs().await?;
    }
    for addr in &addrs {
        say(format_args!("listening: {addr}"));
    }
    if let Some(serve) = &options.serve {
        say(format_args!(
            "serving stores from {}",
            serve.storage.describe()
        ));
        if !serve.founders.is_empty() {
            say(format_args!(
                "serving only the stores of {} listed founder(s)",
                serve.founders.len()
            ));
        }
    }
    if let Some(addr) = extras.health {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| invalid(format!("cannot answer health checks on {addr}: {e}")))?;
        let bound = listener.local_addr().unwrap_or(addr);
        say(format_args!("health: http://{bound}/"));
        tokio::spawn(serve_health(listener, node.clone()));
    }
    let seconds = args.seconds.unwrap_or(u64::MAX / 4);
    let deadline = tokio::time::sleep(Duration::from_secs(seconds));
    tokio::pin!(deadline);
    // Once a minute, what the node did, in counts.
    let mut minute = tokio::time::interval(Duration::from_secs(60));
    minute.tick().await;
    let mut tally = Tally::default();
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = interrupt.recv() => break,
            _ = &mut deadline => break,
            _ = minute.tick() => {
                let stats = match node.stats().await {
                    Ok(stats) => stats,
                    // A database away for a while stops nothing.
                    Err(e) if e.code().starts_with("STORAGE_") => {
                        say(format_args!("stats: storage unavailable ({}): {e}", e.code()));
                        continue;
                    }
                    Err(e) => return Err(e),
                };
                say(format_args!(
                    "stats: {} peers, {} registrations in {} places, {} refused requests, \
                     {} reservations and {} relayed connections in the last minute ({} open)",
                    stats.peers,
                    stats.directory.registrations,
                    stats.directory.places,
                    stats.refused_requests,
                    std::mem::take(&mut tally.reservations),
                    std::mem::take(&mut tally.circuits),
                    tally.open,
                ));
                if let Some(served) = stats.served {
                    say(format_args!(
                        "served: {} stores, {} commits, {} bytes held; {} greetings, {} \
                         refusals, {} commits stored since start",
                        served.held.stores,
                        served.held.commits,
                        served.held.bytes,
                        served.counters.greeted,
                        served.counters.refused,
                        served.counters.commits_in,
                    ));
                }
            }
            event = events.next() => match event {
                Some(ServerEvent::Listening(addr)) if !addrs.contains(&addr) => {
                    say(format_args!("listening: {addr}"));
                    addrs.push(addr);
                }
                Some(ServerEvent::Reserved(peer)) => {
                    tally.reservations += 1;
                    if log_peers {
                        say(format_args!("reserved: {peer}"));
                    }
                }
                Some(ServerEvent::CircuitOpened { from, to }) => {
                    tally.circuits += 1;
                    tally.open += 1;
                    if log_peers {
                        say(format_args!("circuit: {from} -> {to}"));
                    }
                }
                Some(ServerEvent::CircuitClosed { .. }) => tally.open = tally.open.saturating_sub(1),
                Some(_) => {}
                None => break,
            },
        }
    }
    // What it did since the last stats line, in counts (never who).
    say(format_args!(
        "stopping: {} reservations and {} relayed connections since the last stats line \
         ({} open)",
        tally.reservations, tally.circuits, tally.open
    ));
    node.shutdown().await;
    store.close().await?;
    say(format_args!("stopped"));
    Ok(())
}
