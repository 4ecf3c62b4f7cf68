//! The native transports of a P2P node: TCP, QUIC, WebSocket and
//! WebRTC-direct, Noise, Yamux, on tokio; mDNS from libp2p's tokio
//! implementation. WebRTC connections (not listeners) join the mDNS
//! multicast group on every interface (the WebRTC stack's ICE agent does):
//! tests make them only inside network namespaces.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::{AsyncRead, AsyncWrite};
use libp2p::core::muxing::StreamMuxerBox;
use libp2p::core::transport::Boxed;
use libp2p::core::{upgrade, Transport};
use libp2p::{identity, mdns, noise, tcp, yamux, Multiaddr, PeerId, Swarm, SwarmBuilder};

use crate::error::{Error, Result};
use crate::net::{Behaviour, ByteCounter, P2pOptions};

/// Native nodes answer DHT queries.
pub const KAD_MODE: libp2p::kad::Mode = libp2p::kad::Mode::Server;

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

/// A TCP stream that counts its bytes and, optionally, delivers what it
/// receives `latency` late (a simulated one-way network delay).
struct Counted<S> {
    inner: S,
    counter: ByteCounter,
    latency: Option<Duration>,
    /// Received bytes waiting for their delivery time.
    pending: VecDeque<(Instant, Vec<u8>)>,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
    eof: bool,
}

impl<S> Counted<S> {
    fn new(inner: S, counter: ByteCounter, latency: Option<Duration>) -> Counted<S> {
        Counted {
            inner,
            counter,
            latency,
            pending: VecDeque::new(),
            timer: None,
            eof: false,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Counted<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let Some(latency) = self.latency else {
            let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
            if let Poll::Ready(Ok(n)) = &polled {
                self.counter.add_read(*n);
            }
            return polled;
        };
        // Take in whatever has arrived, stamped with its delivery time.
        while !self.eof {
            let mut chunk = vec![0u8; 64 << 10];
            match Pin::new(&mut self.inner).poll_read(cx, &mut chunk) {
                Poll::Ready(Ok(0)) => self.eof = true,
                Poll::Ready(Ok(n)) => {
                    self.counter.add_read(n);
                    chunk.truncate(n);
                    self.pending.push_back((Instant::now() + latency, chunk));
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => break,
            }
        }
        let Some((due, _)) = self.pending.front() else {
            return if self.eof {
                Poll::Ready(Ok(0))
            } else {
                Poll::Pending
            };
        };
        let due = *due;
        if due > Instant::now() {
            let mut timer = Box::pin(tokio::time::sleep_until(due.into()));
            let polled = timer.as_mut().poll(cx);
            self.timer = Some(timer);
            if polled.is_pending() {
                return Poll::Pending;
            }
        }
        let Some((due, mut chunk)) = self.pending.pop_front() else {
            return Poll::Pending;
        };
        let n = chunk.len().min(buf.len());
        buf[..n].copy_from_slice(&chunk[..n]);
        if n < chunk.len() {
            self.pending.push_front((due, chunk.split_off(n)));
        }
        Poll::Ready(Ok(n))
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

/// `base` with Noise and Yamux, as `with_tcp` sets them up.
fn secured<T>(
    base: T,
    key: &identity::Keypair,
) -> std::result::Result<Boxed<(PeerId, StreamMuxerBox)>, Box<dyn std::error::Error + Send + Sync>>
where
    T: Transport + Send + Unpin + 'static,
    T::Output: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    T::Dial: Send + 'static,
    T::ListenerUpgrade: Send + 'static,
    T::Error: Send + Sync + 'static,
{
    Ok(base
        .upgrade(upgrade::Version::V1Lazy)
        .authenticate(noise::Config::new(key)?)
        .multiplex(yamux::Config::default())
        .map(|(peer, muxer), _| (peer, StreamMuxerBox::new(muxer)))
        .boxed())
}

/// The listeners browsers can dial: WebSocket (`/tcp/.../ws`, with Noise
/// and Yamux) and WebRTC-direct (`/udp/.../webrtc-direct`, authenticated by
/// `certificate`'s hash in the address).
fn browser_transports(
    key: &identity::Keypair,
    certificate: libp2p_webrtc::tokio::Certificate,
) -> std::result::Result<Boxed<(PeerId, StreamMuxerBox)>, Box<dyn std::error::Error + Send + Sync>>
{
    let websocket = secured(
        libp2p_websocket::Config::new(tcp::tokio::Transport::new(
            tcp::Config::default().nodelay(true),
        )),
        key,
    )?;
    let webrtc = libp2p_webrtc::tokio::Transport::new(key.clone(), certificate)
        .map(|(peer, conn), _| (peer, StreamMuxerBox::new(conn)));
    Ok(websocket
        .or_transport(webrtc)
        .map(|either, _| either.into_inner())
        .boxed())
}

/// A swarm with TCP, QUIC, WebSocket and WebRTC-direct transports for `behaviour` (TCP only, its
/// bytes counted and maybe delayed, for measurements). Needs a tokio runtime (the node's
/// loop runs on it).
pub fn swarm(
    keypair: identity::Keypair,
    behaviour: impl FnOnce(libp2p::relay::client::Behaviour) -> Result<Behaviour>,
    options: &P2pOptions,
) -> Result<Swarm<Behaviour>> {
    // Streams to peers name their protocol and send their first message in
    // the same round trip (multistream-select's lazy mode): every protocol
    // a node opens is one Persist nodes speak, so the confirmation need not
    // be awaited. Saves a round trip per stream (the first pull included).
    let config = |c: libp2p::swarm::Config| {
        c.with_idle_connection_timeout(Duration::from_secs(60))
            .with_substream_upgrade_protocol_override(upgrade::Version::V1Lazy)
            .with_max_negotiating_inbound_streams(crate::net::MAX_NEGOTIATING_STREAMS)
    };
    let latency = options.simulated_latency;
    let counter = match (&options.count_bytes, latency) {
        (Some(counter), _) => Some(counter.clone()),
        (None, Some(_)) => Some(ByteCounter::default()),
        (None, None) => None,
    };
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
                secured(
                    tcp::tokio::Transport::new(tcp::Config::default().nodelay(true))
                        .map(move |stream, _| Counted::new(stream, counter.clone(), latency)),
                    key,
                )
            })
            .map_err(|e| transport(&e))?
            .with_relay_client(noise::Config::new, yamux::Config::default)
            .map_err(|e| transport(&e))?
            .with_behaviour(|_, relay| behaviour(relay).map_err(Box::from))
            .map_err(|e| transport(&e))?
            .with_swarm_config(config)
            .build());
    }
    // WebRTC-direct listeners (`/udp/.../webrtc-direct`), which browsers
    // can dial without a TLS certificate: a device's certificate is made
    // at start (its peers learn the new `/certhash/` from the meeting
    // point); a `persist node` keeps its own (see `server_swarm`).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let certificate = libp2p_webrtc::tokio::Certificate::generate(&mut rand::rng())
        .map_err(|e| Error::InvalidOptions(format!("cannot make a WebRTC certificate: {e}")))?;
    Ok(SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| transport(&e))?
        .with_quic()
        .with_other_transport(|key| browser_transports(key, certificate))
        .map_err(|e| transport(&e))?
        .with_relay_client(noise::Config::new, yamux::Config::default)
        .map_err(|e| transport(&e))?
        .with_behaviour(|_, relay| behaviour(relay).map_err(Box::from))
        .map_err(|e| transport(&e))?
        .with_swarm_config(config)
        .build())
}

/// A headless node's swarm: TCP, QUIC, WebSocket and WebRTC-direct
/// listeners, Noise and Yamux. `certificate` is the WebRTC certificate as
/// PEM (kept so the `/certhash/` in its addresses survives restarts);
/// `None` makes a new one. Returns the swarm and the certificate's PEM.
pub fn server_swarm(
    keypair: identity::Keypair,
    behaviour: crate::net::server::ServerBehaviour,
    certificate: Option<&str>,
) -> Result<(Swarm<crate::net::server::ServerBehaviour>, String)> {
    use libp2p_webrtc::tokio as webrtc;
    // WebRTC's DTLS needs rustls' process-wide provider (a second
    // installation is refused, harmlessly).
    let _ = rustls::crypto::ring::default_provider().install_default();
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(Error::InvalidOptions(
            "a node needs a tokio runtime natively".into(),
        ));
    }
    let certificate = match certificate {
        Some(pem) => webrtc::Certificate::from_pem(pem)
            .map_err(|e| Error::KeyInvalid(format!("the WebRTC certificate is damaged: {e}")))?,
        None => webrtc::Certificate::generate(&mut rand::rng())
            .map_err(|e| Error::InvalidOptions(format!("cannot make a WebRTC certificate: {e}")))?,
    };
    let pem = certificate.serialize_pem();
    let transport = |e: &dyn std::fmt::Display| Error::InvalidOptions(format!("transport: {e}"));
    let swarm = SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_tcp(
            tcp::Config::default().nodelay(true),
            noise::Config::new,
            yamux::Config::default,
        )
        .map_err(|e| transport(&e))?
        .with_quic()
        .with_other_transport(|key| browser_transports(key, certificate))
        .map_err(|e| transport(&e))?
        .with_behaviour(|_| behaviour)
        .map_err(|e| transport(&e))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(120)))
        .build();
    Ok((swarm, pem))
}
