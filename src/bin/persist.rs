//! `persist`: the command-line face of the store.
//!
//! `persist demo` runs the main job (an embedded SQLite store under a data
//! folder); `get`, `put`, `delete`, `list`, `kv` and `events` work on any
//! store file. Errors print their stable code and exit with status 1.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use clap::{Parser, Subcommand};

#[path = "persist/node.rs"]
mod node;
#[path = "persist/p2p.rs"]
mod p2p;
#[path = "persist/server_demo.rs"]
mod server_demo;
use persist::{EventListOptions, ListOptions, Since, Store, StoreOptions};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(
    name = "persist",
    version,
    about = "A local-first data store: records, events and key-value data"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct StoreArgs {
    /// The store's SQLite file.
    #[arg(
        long,
        short = 'p',
        env = "PERSIST_PATH",
        default_value = "data/persist.db"
    )]
    path: PathBuf,
    /// Create the store encrypted (an existing store keeps what it has).
    #[arg(long)]
    encrypt: bool,
    /// Open an encrypted store with a key exported elsewhere (`persist key export`).
    #[arg(long, env = "PERSIST_KEY", hide_env_values = true)]
    key: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Write records, events and keys into an embedded store, read them back, and show a subscription.
    Demo {
        /// Folder for the demo's data.
        #[arg(long, default_value = "data")]
        data: PathBuf,
    },
    /// Print a record as JSON.
    Get {
        #[command(flatten)]
        store: StoreArgs,
        collection: String,
        id: String,
    },
    /// Store a record (the value is JSON text).
    Put {
        #[command(flatten)]
        store: StoreArgs,
        collection: String,
        id: String,
        value: String,
    },
    /// Delete a record.
    Delete {
        #[command(flatten)]
        store: StoreArgs,
        collection: String,
        id: String,
    },
    /// List records as JSON lines.
    List {
        #[command(flatten)]
        store: StoreArgs,
        collection: String,
        #[arg(long)]
        prefix: Option<String>,
        #[arg(long)]
        after: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
    },
    /// Key-value commands.
    Kv {
        #[command(flatten)]
        store: StoreArgs,
        #[command(subcommand)]
        action: KvAction,
    },
    /// Event log commands.
    Events {
        #[command(flatten)]
        store: StoreArgs,
        #[command(subcommand)]
        action: EventsAction,
    },
    /// Keys of an encrypted store.
    Key {
        #[command(flatten)]
        store: StoreArgs,
        #[command(subcommand)]
        action: KeyAction,
    },
    /// Pair devices: without CODE, offer a pairing code and wait for a
    /// device to use it; with CODE, join the store of the device that
    /// offered it (this store must have no writes yet).
    Pair {
        #[command(flatten)]
        store: StoreArgs,
        /// The code the other device printed (`ABCD-7KQ2`), or its invite.
        code: Option<String>,
        /// Offer an invite (`persist-invite-v1-...`: a long secret and the
        /// addresses, to copy rather than type) instead of a short code.
        #[arg(long)]
        invite: bool,
        /// Ask before welcoming the device that proved the code: its label
        /// and fingerprint are printed, answer `y` to accept (a code only).
        #[arg(long, conflicts_with = "invite")]
        confirm: bool,
        #[command(flatten)]
        net: p2p::NetArgs,
    },
    /// Replicate with the store's other devices (`--peer`), until quiet;
    /// with `--listen`, serve them until `--for` seconds pass.
    Sync {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        net: p2p::NetArgs,
    },
    /// An interactive notes device (the demo's): offer a pairing code (or
    /// join with CODE), then replicate `notes` until stopped, printing notes
    /// that arrive; each line typed on standard input becomes a note.
    Notes {
        #[command(flatten)]
        store: StoreArgs,
        /// A code another device offered, to join its store.
        code: Option<String>,
        #[command(flatten)]
        net: p2p::NetArgs,
    },
    /// List the devices trusted to sync the store, and revoked ones.
    Peers {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Remove a device from the store: its later writes are refused
    /// everywhere, and an encrypted store moves to a new key it never gets.
    Revoke {
        #[command(flatten)]
        store: StoreArgs,
        /// The device's peer id (see `persist peers`).
        peer: String,
    },
    /// Run a headless node: a bootstrap peer, circuit relay and pairing
    /// rendezvous for devices and browsers (TCP, QUIC, WebSocket and
    /// WebRTC-direct). It is a member of no store and reads nothing it relays.
    Node {
        #[command(flatten)]
        args: node::NodeArgs,
    },
    /// Benchmark helper (the `test-utils` feature): writes COUNT notes of
    /// about 100 bytes, one commit each.
    #[cfg(feature = "test-utils")]
    Fill {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        count: u32,
    },
    /// Test helper (the `test-utils` feature): writes until killed,
    /// printing each acknowledged write.
    #[cfg(feature = "test-utils")]
    CrashWriter {
        #[command(flatten)]
        store: StoreArgs,
        /// Distinguishes the ids of successive runs.
        #[arg(long)]
        round: u32,
    },
}

#[derive(Subcommand)]
enum KeyAction {
    /// Print the store's current key (`persist-key-v1-...`): whoever has it can read the store.
    Export,
    /// Start a new key epoch and re-encrypt the stored data under it, printing progress.
    Rotate,
    /// Finish a rotation that was interrupted.
    Resume,
}

#[derive(Subcommand)]
enum KvAction {
    /// Print a key's value.
    Get { key: String },
    /// Set a key (the value is JSON text).
    Set { key: String, value: String },
    /// Delete a key.
    Delete { key: String },
}

#[derive(Subcommand)]
enum EventsAction {
    /// Append an event (JSON text); prints its id.
    Append { log: String, value: String },
    /// List events as JSON lines.
    List {
        log: String,
        /// An event id or a number of milliseconds.
        #[arg(long)]
        since: Option<String>,
        #[arg(long)]
        limit: Option<usize>,
    },
}

fn parse_json(text: &str) -> persist::Result<Value> {
    serde_json::from_str(text).map_err(|e| persist::Error::InvalidValue(format!("not JSON: {e}")))
}

async fn open(args: &StoreArgs) -> persist::Result<Store> {
    let name = args
        .path
        .file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| persist::names::check_name(persist::NameKind::Store, s).is_ok())
        .unwrap_or("persist")
        .to_owned();
    let mut options = StoreOptions::new(name)
        .path(&args.path)
        .encrypt(args.encrypt);
    if let Some(key) = &args.key {
        options = options.key(key.clone());
    }
    Store::open(options).await
}

fn print_progress(progress: &persist::RotationProgress) {
    println!(
        "epoch {} resealed {} scanned {}{}",
        progress.epoch,
        progress.resealed,
        progress.scanned,
        if progress.done { " done" } else { "" }
    );
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PERSIST_LOG")
                .unwrap_or_else(|_| "warn,libp2p_kad=error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Err(e) = run(cli.command).await {
        eprintln!("error[{}]: {e}", e.code());
        std::process::exit(1);
    }
}

async fn run(command: Command) -> persist::Result<()> {
    match command {
        Command::Demo { data } => demo(data).await,
        Command::Get {
            store,
            collection,
            id,
        } => {
            let store = open(&store).await?;
            let value = store.records(&collection).get(&id).await?;
            store.close().await?;
            match value {
                Some(value) => println!("{value}"),
                None => {
                    eprintln!("not found: {collection}/{id}");
                    std::process::exit(3);
                }
            }
            Ok(())
        }
        Command::Put {
            store,
            collection,
            id,
            value,
        } => {
            let value = parse_json(&value)?;
            let store = open(&store).await?;
            let receipt = store.records(&collection).put(&id, value).await?;
            store.close().await?;
            println!(
                "{}",
                json!({ "ok": true, "seq": receipt.seq, "hlc": receipt.hlc.to_string() })
            );
            Ok(())
        }
        Command::Delete {
            store,
            collection,
            id,
        } => {
            let store = open(&store).await?;
            store.records(&collection).delete(&id).await?;
            store.close().await
        }
        Command::List {
            store,
            collection,
            prefix,
            after,
            limit,
        } => {
            let store = open(&store).await?;
            let records = store
                .records(&collection)
                .list(ListOptions {
                    prefix,
                    after,
                    limit,
                })
                .await?;
            store.close().await?;
            for record in records {
                println!("{}", json!({ "id": record.id, "value": record.value }));
            }
            Ok(())
        }
        Command::Kv { store, action } => {
            let store = open(&store).await?;
            let kv = store.kv();
            match action {
                KvAction::Get { key } => println!("{}", kv.get(&key).await?.unwrap_or(Value::Null)),
                KvAction::Set { key, value } => {
                    kv.set(&key, parse_json(&value)?).await?;
                }
                KvAction::Delete { key } => {
                    kv.delete(&key).await?;
                }
            }
            store.close().await
        }
        Command::Events { store, action } => {
            let store = open(&store).await?;
            match action {
                EventsAction::Append { log, value } => {
                    let event = store.events(&log).append(parse_json(&value)?).await?;
                    println!("{}", json!({ "id": event.id, "at": event.at }));
                }
                EventsAction::List { log, since, limit } => {
                    let since =
                        since.map(|s| s.parse::<u64>().map(Since::Millis).unwrap_or(Since::Id(s)));
                    for event in store
                        .events(&log)
                        .list(EventListOptions { since, limit })
                        .await?
                    {
                        println!(
                            "{}",
                            json!({ "id": event.id, "at": event.at, "value": event.value })
                        );
                    }
                }
            }
            store.close().await
        }
        Command::Key { store, action } => {
            let store = open(&store).await?;
            let crypto = store.crypto();
            match action {
                KeyAction::Export => println!("{}", crypto.export_key()?.as_str()),
                KeyAction::Rotate => {
                    crypto.rotate_key(print_progress).await?;
                }
                KeyAction::Resume => match crypto.resume_rotation(print_progress).await? {
                    Some(_) => {}
                    None => println!("no rotation to resume"),
                },
            }
            store.close().await
        }
        Command::Pair {
            store,
            code,
            invite,
            confirm,
            net,
        } => p2p::pair(open(&store).await?, code, invite, confirm, net).await,
        Command::Sync { store, net } => p2p::sync(open(&store).await?, net).await,
        Command::Node { args } => node::run(args).await,
        Command::Notes { store, code, net } => p2p::notes(open(&store).await?, code, net).await,
        Command::Peers { store } => p2p::peers(open(&store).await?).await,
        Command::Revoke { store, peer } => p2p::revoke(open(&store).await?, peer).await,
        #[cfg(feature = "test-utils")]
        Command::CrashWriter { store, round } => crash_writer(store, round).await,
        #[cfg(feature = "test-utils")]
        Command::Fill { store, count } => fill(store, count).await,
    }
}

#[cfg(feature = "test-utils")]
async fn fill(store: StoreArgs, count: u32) -> persist::Result<()> {
    let store = open(&store).await?;
    let notes = store.records("notes");
    for i in 0..count {
        let note = serde_json::json!({ "title": format!("note {i:06}"), "body": "x".repeat(64) });
        notes.put(&format!("fill-{i:06}"), note).await?;
    }
    println!("filled: {count}");
    store.close().await
}

async fn demo(data: PathBuf) -> persist::Result<()> {
    let path = data.join("demo.db");
    println!("Persist demo: embedded SQLite store at {}", path.display());
    let store = Store::open(StoreOptions::new("demo").path(&path)).await?;
    println!("  store id  {}", store.store_id());
    println!("  device    {}", store.device_id());

    let notes = store.records("notes");
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = seen.clone();
    let subscription = notes.subscribe(move |changes| {
        for change in changes {
            let what = if change.value.is_some() {
                "put"
            } else {
                "delete"
            };
            let line = format!(
                "  subscription fired: {what} notes/{} ({:?})",
                change.id, change.origin
            );
            println!("{line}");
            if let Ok(mut seen) = sink.lock() {
                seen.push(line);
            }
        }
    })?;

    let run = persist::platform::now_ms();
    notes
        .put(
            "welcome",
            json!({ "title": "Welcome", "body": "Written by persist demo", "run": run }),
        )
        .await?;
    notes
        .put_many((1..=3).map(|i| {
            (
                format!("todo-{i}"),
                json!({ "title": format!("Task {i}"), "done": i == 1 }),
            )
        }))
        .await?;
    notes.delete("todo-3").await?;
    let event = store
        .events("audit")
        .append(json!({ "action": "demo-run", "at": run }))
        .await?;
    store.kv().set("theme", "dark").await?;
    let mut tx = store.transaction();
    tx.put(
        "notes",
        "todo-2",
        json!({ "title": "Task 2", "done": true }),
    )?;
    tx.append("audit", json!({ "action": "completed", "id": "todo-2" }))?;
    let receipt = tx.commit().await?;
    println!(
        "  wrote 4 commits and a transaction (commit #{} of this device)",
        receipt.seq
    );

    println!("Reading back:");
    for record in notes.list(ListOptions::default()).await? {
        println!("  notes/{:<8} {}", record.id, record.value);
    }
    println!(
        "  kv theme       {}",
        store.kv().get("theme").await?.unwrap_or(Value::Null)
    );
    let events = store
        .events("audit")
        .list(EventListOptions::default())
        .await?;
    println!(
        "  audit events   {} in total; newest id {}",
        events.len(),
        events.last().map_or("-", |e| &e.id)
    );
    println!("  first event of this run: {} at {}", event.id, event.at);
    let vv = store.version_vector().await?;
    println!(
        "  change log     {} commit(s) by {} device(s)",
        vv.iter().map(|(_, s)| s).sum::<u64>(),
        vv.len()
    );
    drop(subscription);
    store.close().await?;
    let fired = seen.lock().map(|s| s.len()).unwrap_or(0);
    println!("  {fired} subscription callbacks");
    encrypted_demo(&data).await?;
    p2p_demo(&data).await?;
    server_demo::run(&data).await?;
    println!("Done: run it again and the data is still there.");
    println!("Try: persist list --path {} notes", path.display());
    Ok(())
}

/// Two devices pair with a code and replicate over loopback TCP: two
/// `persist pair` processes, then both stores in this process, live.
async fn p2p_demo(data: &std::path::Path) -> persist::Result<()> {
    use std::io::BufRead;
    use std::process::{Command as Process, Stdio};

    use persist::net::P2pOptions;
    println!("P2P: two devices pair with a code, then replicate over loopback TCP (libp2p, Noise, Yamux; mDNS off):");
    let io = |e: std::io::Error| persist::Error::InvalidOptions(format!("demo: {e}"));
    let dir = data.join("p2p");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(io)?;
    let (laptop_db, phone_db) = (dir.join("laptop.db"), dir.join("phone.db"));
    let laptop = Store::open(StoreOptions::new("laptop").path(&laptop_db)).await?;
    laptop
        .records("notes")
        .put(
            "from-laptop",
            json!({ "text": "written on the laptop before pairing" }),
        )
        .await?;
    laptop.close().await?;

    // Two processes: the laptop offers a code, the phone types it.
    let exe = std::env::current_exe().map_err(io)?;
    let mut host = Process::new(&exe)
        .args([
            "pair",
            "--listen",
            "/ip4/127.0.0.1/tcp/0",
            "--for",
            "30",
            "--path",
        ])
        .arg(&laptop_db)
        .env("PERSIST_MDNS", "off")
        .stdout(Stdio::piped())
        .spawn()
        .map_err(io)?;
    let (mut code, mut addr) = (None, None);
    let mut host_output = None;
    if let Some(out) = host.stdout.take() {
        let mut lines = std::io::BufReader::new(out).lines();
        for line in lines.by_ref() {
            let line = line.map_err(io)?;
            if let Some(text) = line.strip_prefix("code: ") {
                code = Some(text.to_string());
            } else if let Some(text) = line.strip_prefix("address: ") {
                addr.get_or_insert(text.to_string());
            }
            if code.is_some() && addr.is_some() {
                break;
            }
        }
        // The rest of what the laptop prints, shown once it exits.
        host_output = Some(std::thread::spawn(move || {
            lines.map_while(Result::ok).collect::<Vec<String>>()
        }));
    }
    let (Some(code), Some(addr)) = (code, addr) else {
        let _ = host.kill();
        return Err(persist::Error::PairingFailed(
            "the laptop process printed no code".into(),
        ));
    };
    println!(
        "  laptop  `persist pair` (pid {}) offers code {code} at {addr}",
        host.id()
    );
    println!("  phone   `persist pair {code} --peer {addr}`");
    let joined = Process::new(&exe)
        .args(["pair", &code, "--peer", &addr, "--for", "20", "--path"])
        .arg(&phone_db)
        .env("PERSIST_MDNS", "off")
        .output()
        .map_err(io)?;
    for line in String::from_utf8_lossy(&joined.stdout).lines() {
        println!("          {line}");
    }
    let _ = host.wait();
    for line in host_output
        .and_then(|t| t.join().ok())
        .unwrap_or_default()
        .iter()
        .filter(|l| l.starts_with("paired"))
    {
        println!("  laptop  {line}");
    }
    if !joined.status.success() {
        return Err(persist::Error::PairingFailed(
            String::from_utf8_lossy(&joined.stderr).trim().to_string(),
        ));
    }

    // Both devices again, in this process: the phone holds the laptop's
    // history, and a new write travels live.
    let laptop = Store::open(StoreOptions::new("laptop").path(&laptop_db)).await?;
    let phone = Store::open(StoreOptions::new("phone").path(&phone_db)).await?;
    println!(
        "  phone   notes/from-laptop = {} (store {} on both)",
        phone
            .records("notes")
            .get("from-laptop")
            .await?
            .unwrap_or(Value::Null),
        phone.store_id()
    );
    let bad_address = |_| persist::Error::InvalidOptions("bad address".into());
    let loopback = P2pOptions::loopback;
    let laptop_node = laptop.enable_p2p(loopback()).await?;
    let mut addrs = laptop_node.listen_addrs().await?;
    let started = std::time::Instant::now();
    while addrs.is_empty() && started.elapsed() < std::time::Duration::from_secs(5) {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        addrs = laptop_node.listen_addrs().await?;
    }
    let addr: persist::net::Multiaddr = format!(
        "{}/p2p/{}",
        addrs
            .first()
            .ok_or_else(|| persist::Error::InvalidOptions("the laptop never listened".into()))?,
        laptop_node.peer_id()
    )
    .parse()
    .map_err(bad_address)?;
    let mut options = loopback();
    options.bootstrap_peers = vec![addr.clone()];
    let phone_node = phone.enable_p2p(options).await?;
    phone
        .records("notes")
        .put(
            "from-phone",
            json!({ "text": "written on the phone, pushed live" }),
        )
        .await?;
    let started = std::time::Instant::now();
    while started.elapsed() < std::time::Duration::from_secs(10) {
        if let Some(value) = laptop.records("notes").get("from-phone").await? {
            println!(
                "  laptop  notes/from-phone  = {value} ({} ms after the write)",
                started.elapsed().as_millis()
            );
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    // A device that never paired is refused right after the handshake.
    let stranger =
        Store::open(StoreOptions::new("stranger").adapter(persist::Adapter::Memory)).await?;
    let mut options = loopback();
    options.bootstrap_peers = vec![addr];
    let stranger_node = stranger.enable_p2p(options).await?;
    let started = std::time::Instant::now();
    while laptop_node.refused_connections() == 0
        && started.elapsed() < std::time::Duration::from_secs(5)
    {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    println!(
        "  a stranger dialled the laptop: {} connection(s) refused, {} record(s) received",
        laptop_node.refused_connections(),
        stranger
            .records("notes")
            .list(ListOptions::default())
            .await?
            .len()
    );
    for (device, label) in &laptop.members().current {
        let label = if label.is_empty() {
            "laptop (founder)"
        } else {
            label
        };
        println!("  trusted {} {label}", persist::net::peer_id_of(device)?);
    }
    for node in [laptop_node, phone_node, stranger_node] {
        node.shutdown();
    }
    for store in [laptop, phone, stranger] {
        store.close().await?;
    }
    Ok(())
}

/// The demo's encrypted store: writes, a look at the raw file, a key rotation.
async fn encrypted_demo(data: &std::path::Path) -> persist::Result<()> {
    let path = data.join("vault.db");
    println!("Encrypted store at {} (encrypt: true):", path.display());
    let store = Store::open(StoreOptions::new("vault").path(&path).encrypt(true)).await?;
    let secrets = store.records("secrets");
    let marker = "demo-secret-value";
    secrets.put("wifi", json!({ "password": marker })).await?;
    let crypto = store.crypto();
    let key = crypto.export_key()?;
    println!(
        "  exported key   {}... ({} characters; it opens a copy of this file elsewhere)",
        key.get(..23).unwrap_or_default(),
        key.len()
    );
    let done = crypto.rotate_key(|_| {}).await?;
    println!(
        "  rotated key    to epoch {}, {} stored rows re-encrypted",
        done.epoch, done.resealed
    );
    println!(
        "  read back      {}",
        secrets.get("wifi").await?.unwrap_or(Value::Null)
    );
    store.close().await?;
    // The database and its write-ahead log (gone once checkpointed): a
    // file that cannot be read fails the demo rather than pass the scan.
    let read = |path: &std::path::Path| match std::fs::read(path) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(persist::Error::InvalidOptions(format!(
            "demo: cannot read {}: {e}",
            path.display()
        ))),
    };
    let mut bytes = read(&path)?;
    if bytes.is_empty() {
        return Err(persist::Error::InvalidOptions(format!(
            "demo: {} is empty or missing",
            path.display()
        )));
    }
    let mut wal = path.clone().into_os_string();
    wal.push("-wal");
    bytes.extend(read(std::path::Path::new(&wal))?);
    let found = bytes.windows(marker.len()).any(|w| w == marker.as_bytes());
    println!(
        "  raw file scan  {} bytes, \"{marker}\" {}",
        bytes.len(),
        if found {
            "FOUND (a bug)"
        } else {
            "not found: stored sealed"
        }
    );
    Ok(())
}

/// Writes single puts, transactions and concurrent puts until killed,
/// printing `ack <collection> <id> <n>` after each acknowledged write.
#[cfg(feature = "test-utils")]
async fn crash_writer(args: StoreArgs, round: u32) -> persist::Result<()> {
    use std::io::Write;
    let store = open(&args).await?;
    let stdout = Arc::new(Mutex::new(std::io::stdout()));
    let ack = |ids: &[String]| {
        if let Ok(mut out) = stdout.lock() {
            for id in ids {
                let _ = writeln!(out, "ack {id}");
            }
            let _ = out.flush();
        }
    };
    for n in 0u64.. {
        let id = |k: u64| format!("r{round:04}-{n:06}-{k}");
        match n % 3 {
            0 => {
                store
                    .records("crash")
                    .put(&id(0), json!({ "round": round, "n": n }))
                    .await?;
                ack(&[id(0)]);
            }
            1 => {
                let ids: Vec<String> = (0..20).map(id).collect();
                store
                    .records("crash")
                    .put_many(
                        ids.iter()
                            .map(|i| (i.clone(), json!({ "round": round, "n": n }))),
                    )
                    .await?;
                ack(&ids);
            }
            _ => {
                let writes = (0..8).map(|k| {
                    let records = store.records("crash");
                    let id = id(k);
                    async move {
                        records
                            .put(&id, json!({ "round": round, "n": n }))
                            .await
                            .map(|_| id)
                    }
                });
                let mut handles = Vec::new();
                for write in writes {
                    handles.push(tokio::spawn(write));
                }
                for handle in handles {
                    let id = handle
                        .await
                        .map_err(|e| persist::Error::InvalidValue(e.to_string()))??;
                    ack(&[id]);
                }
            }
        }
    }
    Ok(())
}
