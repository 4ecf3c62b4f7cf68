//! The demo's sync-server part: a phone and a laptop that are never online
//! at the same time converge through `persist node --serve` (run in this
//! process on loopback, its stores in SQLite), which holds only ciphertext.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use persist::net::server::{ServeOptions, Server, ServerBehaviour, ServerOptions};
use persist::net::{Multiaddr, P2p, P2pOptions};
use persist::{DeviceIdentity, Store, StoreOptions};
use serde_json::json;

fn failed(what: &str) -> persist::Error {
    persist::Error::InvalidOptions(format!("demo: {what}"))
}

async fn until(
    what: &str,
    mut check: impl AsyncFnMut() -> persist::Result<bool>,
) -> persist::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !check().await? {
        if Instant::now() > deadline {
            return Err(failed(&format!("{what} did not happen in 20 s")));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

async fn start_server(db: &Path) -> persist::Result<(Server, Multiaddr)> {
    let storage = persist::platform::SqliteHost::open(db)?;
    let options = ServerOptions {
        listen_addrs: vec!["/ip4/127.0.0.1/tcp/0"
            .parse()
            .map_err(|_| failed("address"))?],
        serve: Some(ServeOptions::new(Arc::new(storage))),
        ..ServerOptions::default()
    };
    let keypair = persist::net::keypair(&DeviceIdentity::generate()?)?;
    let behaviour = ServerBehaviour::new(&keypair, &options);
    let (swarm, _) = persist::platform::server_swarm(keypair, behaviour, None)?;
    let server = Server::start(swarm, &options)?;
    let mut addr = None;
    until("the server listening", async || {
        addr = server.listen_addrs().await?.into_iter().next();
        Ok(addr.is_some())
    })
    .await?;
    let addr = addr.ok_or_else(|| failed("no server address"))?;
    Ok((server, addr))
}

async fn held(server: &Server) -> persist::Result<u64> {
    Ok(server.stats().await?.served.map_or(0, |s| s.held.commits))
}

async fn commits(store: &Store) -> persist::Result<u64> {
    Ok(store.version_vector().await?.iter().map(|(_, n)| n).sum())
}

/// Starts `store`'s node, syncing with the server only.
async fn online(store: &Store, server: &Multiaddr) -> persist::Result<P2p> {
    store
        .enable_p2p(P2pOptions {
            sync_servers: vec![server.clone()],
            ..P2pOptions::loopback()
        })
        .await
}

/// Runs the part; its files go under `data/server`.
pub async fn run(data: &Path) -> persist::Result<()> {
    const SECRET: &str = "meet at the north gate at noon";
    println!(
        "Sync server: a phone and a laptop never online together (persist node --serve in this \
         process, SQLite, loopback):"
    );
    let dir = data.join("server");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| failed(&e.to_string()))?;
    let db = dir.join("served.db");
    let (server, addr) = start_server(&db).await?;
    println!("  server  {addr}");
    let open = |name: &str| {
        Store::open(
            StoreOptions::new(name)
                .path(dir.join(format!("{name}.db")))
                .encrypt(true),
        )
    };
    let (laptop, phone) = (open("laptop").await?, open("phone").await?);

    // Pairing needs both once.
    let laptop_node = online(&laptop, &addr).await?;
    let phone_node = online(&phone, &addr).await?;
    let pending = laptop_node.create_pairing_code().await?;
    let code = pending.code().to_string();
    let laptop_addr = laptop_node
        .listen_addrs()
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| failed("the laptop does not listen"))?;
    let laptop_addr = persist::net::with_peer(&laptop_addr, laptop_node.peer_id());
    let (joined, hosted) =
        tokio::join!(phone_node.pair(&code, Some(laptop_addr)), pending.paired());
    joined?;
    hosted?;
    println!("  paired  phone and laptop (code {code}), then the phone goes offline");
    phone_node.shutdown();

    laptop
        .records("notes")
        .put("plan", json!({ "text": SECRET }))
        .await?;
    let total = commits(&laptop).await?;
    until("the server holding the laptop's note", async || {
        Ok(held(&server).await? >= total)
    })
    .await?;
    laptop_node.shutdown();
    println!("  laptop  wrote notes/plan, the server holds it, the laptop goes offline");

    let phone_node = online(&phone, &addr).await?;
    until("the phone getting the note", async || {
        Ok(phone.records("notes").get("plan").await?.is_some())
    })
    .await?;
    let note = phone.records("notes").get("plan").await?;
    println!(
        "  phone   online alone: notes/plan = {}",
        note.map_or_else(|| "-".into(), |value| value.to_string())
    );
    phone
        .records("notes")
        .put("reply", json!({ "text": "see you there" }))
        .await?;
    let total = commits(&phone).await?;
    until("the server holding the phone's reply", async || {
        Ok(held(&server).await? >= total)
    })
    .await?;
    phone_node.shutdown();

    let laptop_node = online(&laptop, &addr).await?;
    until("the laptop getting the reply", async || {
        Ok(laptop.records("notes").get("reply").await?.is_some())
    })
    .await?;
    println!("  laptop  online alone: got notes/reply from the phone");
    laptop_node.shutdown();
    let stats = server.stats().await?;
    server.shutdown().await;

    let mut bytes = Vec::new();
    for name in ["served.db", "served.db-wal"] {
        if let Ok(more) = std::fs::read(dir.join(name)) {
            bytes.extend(more);
        }
    }
    let leaked = bytes.windows(SECRET.len()).any(|w| w == SECRET.as_bytes());
    if let Some(served) = stats.served {
        println!(
            "  server  holds {} store(s), {} commits, {} bytes; its files ({} bytes) contain the \
             note's text: {}",
            served.held.stores,
            served.held.commits,
            served.held.bytes,
            bytes.len(),
            if leaked { "YES" } else { "no" }
        );
    }
    if leaked {
        return Err(failed("the server's files hold a note's text"));
    }
    laptop.close().await?;
    phone.close().await
}
