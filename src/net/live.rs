//! The live stream `/persist/live/2`: one long-lived stream per member and
//! direction, opened at the first push, carrying new commits as they are
//! written. Each message is framed as on `/persist/sync/2`; nothing is
//! acknowledged unless something was refused (the receiver then tells its
//! version vector). A stream costs its opening once, instead of a stream
//! (Yamux, multistream-select, Noise frames) per change.

use futures::channel::mpsc;
use futures::{AsyncWriteExt, StreamExt};
use libp2p::{PeerId, StreamProtocol};
use serde::{Deserialize, Serialize};

use super::codec::read_message;
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

/// Where readers deliver what arrives: `(peer, message)`.
pub(super) type Inbox = mpsc::UnboundedSender<(PeerId, LiveMessage)>;

/// Accepts the live streams peers open, reading each in a task of its own.
pub(super) fn accept(control: &mut libp2p_stream::Control, inbox: Inbox) -> Result<()> {
    let mut incoming = control
        .accept(LIVE_PROTOCOL)
        .map_err(|e| Error::InvalidOptions(format!("live protocol: {e}")))?;
    crate::platform::spawn(async move {
        while let Some((peer, stream)) = incoming.next().await {
            crate::platform::spawn(read(peer, stream, inbox.clone()));
        }
    });
    Ok(())
}

async fn read(peer: PeerId, mut stream: libp2p::Stream, inbox: Inbox) {
    loop {
        match read_message::<_, LiveMessage>(&mut stream).await {
            Ok(message) => {
                if inbox.unbounded_send((peer, message)).is_err() {
                    break;
                }
            }
            Err(e) => {
                tracing::debug!(%peer, %e, "live stream ended");
                break;
            }
        }
    }
}

/// Opens the live stream to `peer` in a task: frames sent to the returned
/// channel are written in order. When the stream cannot open or breaks,
/// the task reports `peer` to `failed` and ends (the channel closes).
pub(super) fn open(
    mut control: libp2p_stream::Control,
    peer: PeerId,
    failed: mpsc::UnboundedSender<PeerId>,
) -> mpsc::UnboundedSender<Vec<u8>> {
    let (frames, mut queue) = mpsc::unbounded::<Vec<u8>>();
    crate::platform::spawn(async move {
        let mut stream = match control.open_stream(peer, LIVE_PROTOCOL).await {
            Ok(stream) => stream,
            Err(e) => {
                tracing::debug!(%peer, %e, "live stream not opened");
                let _ = failed.unbounded_send(peer);
                return;
            }
        };
        while let Some(frame) = queue.next().await {
            let written = async {
                stream.write_all(&frame).await?;
                stream.flush().await
            }
            .await;
            if let Err(e) = written {
                tracing::debug!(%peer, %e, "live stream broke");
                let _ = failed.unbounded_send(peer);
                return;
            }
        }
        let _ = stream.close().await;
    });
    frames
}
