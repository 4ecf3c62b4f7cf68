//! The native transports of a P2P node: TCP and QUIC, Noise, Yamux, on
//! tokio; mDNS from libp2p's tokio implementation.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::{AsyncRead, AsyncWrite};
use libp2p::core::{upgrade, Transport};
use libp2p::{identity, mdns, noise, tcp, yamux, Multiaddr, PeerId, Swarm, SwarmBuilder};

use crate::error::{Error, Result};
use crate::net::{Behaviour, ByteCounter};

/// mDNS discovery natively.
pub type Mdns = mdns::tokio::Behaviour;

/// An mDNS behaviour for `peer_id`.
pub fn mdns(peer_id: PeerId) -> Result<Mdns> {
    mdns::tokio::Behaviour::new(mdns::Config::default(), peer_id)
        .map_err(|e| Error::InvalidOptions(format!("mDNS unavailable: {e}")))
}

/// Addresses mDNS found, to dial.
pub fn mdns_discovered(event: mdns::Event) -> Vec<Multiaddr> {
    match event {
        mdns::Event::Discovered(found) => found.into_iter().map(|(_, addr)| addr).collect(),
        mdns::Event::Expired(_) => Vec::new(),
    }
}

/// A TCP stream that counts its bytes.
struct Counted<S> {
    inner: S,
    counter: ByteCounter,
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            self.counter.add_read(*n);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Counted<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &polled {
            self.counter.add_written(*n);
        }
        polled
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// A swarm with TCP and QUIC transports for `behaviour` (TCP only, its
/// bytes counted, with a `counter`). Needs a tokio runtime (the node's
/// loop runs on it).
pub fn swarm(
    keypair: identity::Keypair,
    behaviour: Behaviour,
    counter: Option<ByteCounter>,
) -> Result<Swarm<Behaviour>> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(Error::InvalidOptions(
            "P2P needs a tokio runtime natively".into(),
        ));
    }
    let transport = |e: &dyn std::fmt::Display| Error::InvalidOptions(format!("transport: {e}"));
    if let Some(counter) = counter {
        return Ok(SwarmBuilder::with_existing_identity(keypair)
            .with_tokio()
            .with_other_transport(|key| {
                let noise = noise::Config::new(key)?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                    tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                        .map(move |stream, _| Counted {
                            inner: stream,
                            counter: counter.clone(),
                        })
                        .upgrade(upgrade::Version::V1Lazy)
                        .authenticate(noise)
                        .multiplex(yamux::Config::default()),
                )
            })
            .map_err(|e| transport(&e))?
            .with_behaviour(|_| behaviour)
            .map_err(|e| transport(&e))?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
            .build());
    }
    Ok(SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| transport(&e))?
        .with_quic()
        .with_behaviour(|_| behaviour)
        .map_err(|e| transport(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(60)))
        .build())
}
