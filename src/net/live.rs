//! The live stream `/persist/live/2`: one long-lived stream per member and
//! direction, opened at the first push, carrying new commits as they are
//! written. Each message is framed as on `/persist/sync/2`; nothing is
//! acknowledged unless something was refused (the receiver then tells its
//! version vector). A stream costs its opening once, instead of a stream
//! (Yamux, multistream-select, Noise frames) per change.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::channel::mpsc;
use futures::{AsyncReadExt, AsyncWriteExt, FutureExt, SinkExt, StreamExt};
use libp2p::{PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};

use super::codec::read_message_from;
use crate::change::SignedCommit;
use crate::error::{Error, Result};
use crate::identity::DeviceId;
use crate::membership::MembershipWire;

/// The live protocol's name and version.
pub const LIVE_PROTOCOL: StreamProtocol = StreamProtocol::new("/persist/live/2");

/// A message of the live stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum LiveMessage {
    /// Commits the receiver lacks (and the membership log when the
    /// receiver's differs).
    Commits {
        /// Signed commits, in per-author order.
        #[serde(deserialize_with = "super::codec::at_most_a_page")]
        commits: Vec<SignedCommit>,
        /// The sender's membership log, when it changed for the receiver.
        members: Option<MembershipWire>,
    },
    /// The sender's version vector, after it refused some commits.
    Have {
        /// Highest sequence number stored per author.
        have: Vec<(DeviceId, u64)>,
    },
}

impl super::codec::Bounded for LiveMessage {
    fn max_bytes(tag: u8) -> usize {
        match tag {
            0 => super::MAX_MESSAGE_BYTES, // Commits
            1 => super::MAX_VECTOR_BYTES,  // Have
            _ => 0,
        }
    }

    fn check_head(head: &[u8]) -> Result<(), String> {
        super::codec::page_after::<()>(head, 0) // Commits
    }
}

/// Received messages waiting for the loop, at most (readers then wait,
/// and the transport's flow control slows the senders down).
pub(super) const LIVE_QUEUE: usize = 16;
/// Frames waiting to be written on one live stream, at most (a peer that
/// reads slower than this device writes gets its pushes as requests).
pub(super) const LIVE_FRAMES: usize = 8;
/// Inbound live streams per peer at once, at most (one per connection is
/// all a node opens; a reconnection may briefly overlap).
pub(super) const LIVE_STREAMS_PER_PEER: usize = 2;

/// Where readers deliver what arrives: `(peer, message)`.
pub(super) type Inbox = mpsc::Sender<(PeerId, LiveMessage)>;

/// Accepts the live streams peers open (the gate lets only members open
/// them), reading each in a task of its own.
pub(super) fn accept(
    control: &mut libp2p_stream::Control,
    inbox: Inbox,
    timeout: std::time::Duration,
) -> Result<()> {
    let mut incoming = control
        .accept(LIVE_PROTOCOL)
        .map_err(|e| Error::InvalidOptions(format!("live protocol: {e}")))?;
    let open = Arc::new(Mutex::new(HashMap::new()));
    crate::platform::spawn(async move {
        while let Some((peer, stream)) = incoming.next().await {
            let Some(slot) = Slot::take(&open, peer) else {
                tracing::info!(%peer, "live stream refused: too many from this peer");
                continue;
            };
            crate::platform::spawn(read(peer, stream, inbox.clone(), slot, timeout));
        }
    });
    Ok(())
}

/// One of a peer's inbound live streams, counted while it is read.
struct Slot {
    open: Arc<Mutex<HashMap<PeerId, usize>>>,
    peer: PeerId,
}

impl Slot {
    fn take(open: &Arc<Mutex<HashMap<PeerId, usize>>>, peer: PeerId) -> Option<Slot> {
        let mut counts = open.lock().unwrap_or_else(|p| p.into_inner());
        let count = counts.entry(peer).or_insert(0);
        if *count >= LIVE_STREAMS_PER_PEER {
            return None;
        }
        *count += 1;
        Some(Slot {
            open: open.clone(),
            peer,
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = counts.get_mut(&self.peer) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.peer);
            }
        }
    }
}

/// Reads a live stream: it may stay idle between messages, but a message
/// once begun must arrive whole within `timeout` (a peer that trickles
/// bytes is cut off).
async fn read(
    peer: PeerId,
    mut stream: libp2p::Stream,
    mut inbox: Inbox,
    _slot: Slot,
    timeout: std::time::Duration,
) {
    let deadline_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    loop {
        let mut first = [0u8; 1];
        if let Err(e) = stream.read_exact(&mut first).await {
            tracing::debug!(%peer, %e, "live stream ended");
            break;
        }
        let message = futures::select! {
            message = read_message_from::<_, LiveMessage>(first[0], &mut stream).fuse() => message,
            _ = crate::platform::sleep_ms(deadline_ms).fuse() => {
                tracing::info!(%peer, "live stream cut: a message did not arrive in time");
                break;
            }
        };
        match message {
            Ok(message) => {
                if inbox.send((peer, message)).await.is_err() {
                    break;
                }
            }
            Err(e) => {
                tracing::info!(%peer, %e, "live stream cut: a message was refused");
                break;
            }
        }
    }
}

/// Opens the live stream to `peer` in a task: frames sent to the returned
/// channel (at most [`LIVE_FRAMES`] waiting) are written in order. When
/// the stream cannot open or breaks, the task reports `peer` to `failed`
/// (once: its own sender's slot always has room) and ends (the channel
/// closes).
///
/// The receiver never writes on a live stream, so anything the read half
/// sees (its end, a reset) means the receiver is gone: a peer that drops a
/// stream it could not take at once (its accept queue was full) resets
/// it, and the frames already written were lost with it. That too is
/// reported, so pushes restart, as requests, from what the peer confirmed.
pub(super) fn open(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    mut failed: mpsc::Sender<PeerId>,
) -> mpsc::Sender<Vec<u8>> {
    let (frames, mut queue) = mpsc::channel::<Vec<u8>>(LIVE_FRAMES);
    crate::platform::spawn(async move {
        let stream = match control.open_stream(peer, LIVE_PROTOCOL).await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::debug!(%peer, %e, "live stream not opened");
                let _ = failed.try_send(peer);
                return;
            }
        };
        let (mut reader, mut writer) = stream.split();
        let mut gone = Box::pin(
            async move {
                let mut byte = [0u8; 1];
                reader.read(&mut byte).await
            }
            .fuse(),
        );
        loop {
            let frame = futures::select! {
                frame = queue.next() => frame,
                read = gone.as_mut() => {
                    tracing::debug!(%peer, ?read, "live stream closed by the receiver");
                    let _ = failed.try_send(peer);
                    return;
                }
            };
            let Some(frame) = frame else { break };
            let written = async {
                writer.write_all(&frame).await?;
                writer.flush().await
            }
            .await;
            if let Err(e) = written {
                tracing::debug!(%peer, %e, "live stream broke");
                let _ = failed.try_send(peer);
                return;
            }
        }
        let _ = writer.close().await;
    });
    frames
}
