//! The host's checks around a pairing exchange: the user's confirmation
//! of a joiner that proved the code (when the code asked for it), and a
//! cool-down for sources that started an exchange which did not end in a
//! welcome (a wrong guess, a dropped or abandoned exchange, a nameplate
//! that names no code).

use std::net::IpAddr;

use futures::channel::oneshot;
use libp2p::request_response::ResponseChannel;
use libp2p::PeerId;
use zeroize::Zeroizing;

use super::{now, Node};
use crate::error::{Error, Result};
use crate::net::{P2pEvent, PairResponse};

/// How long a source whose exchange did not end in a welcome waits before
/// it may start another (the default lifetime of a code).
pub(super) const COOL_DOWN_MS: u64 = crate::net::pairing::DEFAULT_CODE_TTL_MS;
/// Sources remembered at once, at most (the oldest is forgotten first).
pub(super) const COOLING_SOURCES: usize = 256;

/// Where a failed attempt came from: the peer id, and its IP address when
/// it connected directly from another machine (a relayed or loopback
/// connection has no address of its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Source {
    Peer(PeerId),
    Ip(IpAddr),
}

/// A source made to wait: until when, and the peer whose `Start` put it
/// there (a welcome to that peer lifts what its own `Start` set).
#[derive(Debug, Clone, Copy)]
pub(super) struct Cooling {
    source: Source,
    until: u64,
    by: PeerId,
}

/// A joiner that proved the code, waiting for the user's answer.
pub(super) struct Awaiting {
    /// Where the welcome or refusal goes (set once the request's channel
    /// is at hand).
    pub(super) channel: Option<ResponseChannel<PairResponse>>,
    pub(super) key: Zeroizing<[u8; 32]>,
    pub(super) nameplate: String,
    pub(super) label: String,
    pub(super) outcome: oneshot::Sender<Result<PeerId>>,
    pub(super) expires_at: u64,
}

impl Node {
    fn sources(&self, peer: &PeerId) -> Vec<Source> {
        let mut sources = vec![Source::Peer(*peer)];
        sources.extend(self.peer_ips.get(peer).map(|ip| Source::Ip(*ip)));
        sources
    }

    /// True when `peer`, or its address, started an exchange lately that
    /// did not end in a welcome (or is still under way).
    pub(super) fn cooling_down(&mut self, peer: &PeerId) -> bool {
        let now = now();
        self.cooling.retain(|c| c.until > now);
        let sources = self.sources(peer);
        self.cooling.iter().any(|c| sources.contains(&c.source))
    }

    /// Makes `peer` and its address wait before their next attempt. Set
    /// when a `Start` is taken, before its outcome is known: a source that
    /// reads the host's challenge (and so learns whether its guess was
    /// right) and then drops the exchange has paid the same as one that
    /// guessed wrong.
    pub(super) fn cool(&mut self, peer: PeerId) {
        let until = now().saturating_add(COOL_DOWN_MS);
        for source in self.sources(&peer) {
            if self.cooling.len() >= COOLING_SOURCES {
                self.cooling.pop_front();
            }
            self.cooling.push_back(Cooling {
                source,
                until,
                by: peer,
            });
        }
    }

    /// Lifts what `peer`'s own starts set, once it is welcomed or its
    /// exchange failed on this side (an expired code, a welcome that could
    /// not be made, a user who did not answer): another device behind the
    /// same address may pair next, and so may it.
    pub(super) fn forgive(&mut self, peer: &PeerId) {
        self.cooling.retain(|c| c.by != *peer);
    }

    /// Holds a proven joiner until the user answers, and tells the user.
    pub(super) fn ask_user(&mut self, peer: PeerId, awaiting: Awaiting) {
        tracing::info!(%peer, nameplate = %awaiting.nameplate, "a device proved the code: waiting for the user");
        self.emit(P2pEvent::PairingRequest {
            peer,
            label: awaiting.label.clone(),
            nameplate: awaiting.nameplate.clone(),
        });
        self.awaiting.insert(peer, awaiting);
    }

    /// The user's answer about `peer`.
    pub(super) async fn confirm(
        &mut self,
        peer: PeerId,
        accept: bool,
        reply: oneshot::Sender<Result<()>>,
    ) {
        let Some(awaiting) = self.awaiting.remove(&peer) else {
            let _ = reply.send(Err(Error::PairingFailed(
                "no device with this peer id waits for confirmation".into(),
            )));
            return;
        };
        let result = if accept {
            self.welcome(peer, &awaiting.label, &awaiting.key).await
        } else {
            self.cool(peer);
            Err(Error::PairingFailed(
                "the user of the other device refused this device".into(),
            ))
        };
        match result {
            Ok(sealed) => {
                let _ = reply.send(Ok(()));
                self.answer(peer, awaiting, Ok(sealed));
            }
            // Accepted, but the welcome could not be made: the caller gets
            // the cause, the joiner a failure.
            Err(e) if accept => {
                self.forgive(&peer);
                let told = Error::PairingFailed(e.to_string());
                let _ = reply.send(Err(e));
                self.answer(peer, awaiting, Err(told));
            }
            Err(e) => {
                let _ = reply.send(Ok(()));
                self.answer(peer, awaiting, Err(e));
            }
        }
    }

    /// Sends the joiner the welcome or the refusal, and reports.
    fn answer(&mut self, peer: PeerId, awaiting: Awaiting, result: Result<Vec<u8>>) {
        let response = match result {
            Ok(sealed) => {
                tracing::info!(%peer, "device paired (confirmed)");
                self.forgive(&peer);
                self.emit(P2pEvent::Paired(peer));
                let _ = awaiting.outcome.send(Ok(peer));
                PairResponse::Welcome { sealed }
            }
            Err(error) => match self.host_failed(peer, awaiting.outcome, error) {
                super::pairing::HostReply::Now(response) => response,
                super::pairing::HostReply::AskUser(_) => return,
            },
        };
        // The gate follows once the answer is sent.
        let sent = awaiting.channel.is_some_and(|channel| {
            self.swarm
                .behaviour_mut()
                .pair
                .send_response(channel, response)
                .is_ok()
        });
        if !sent {
            self.refresh_members();
        }
    }

    /// Refuses joiners the user did not answer in time.
    pub(super) fn expire_awaiting(&mut self) {
        let now = now();
        let late: Vec<PeerId> = self
            .awaiting
            .iter()
            .filter(|(_, a)| a.expires_at <= now)
            .map(|(p, _)| *p)
            .collect();
        for peer in late {
            if let Some(awaiting) = self.awaiting.remove(&peer) {
                self.forgive(&peer);
                let error = Error::PairingFailed(
                    "the user of the other device did not answer in time".into(),
                );
                self.answer(peer, awaiting, Err(error));
            }
        }
    }

    /// A joiner waiting for confirmation disconnected.
    pub(super) fn joiner_left(&mut self, peer: PeerId) {
        if let Some(awaiting) = self.awaiting.remove(&peer) {
            let _ = awaiting.outcome.send(Err(Error::PairingFailed(
                "the other device left before it was confirmed".into(),
            )));
        }
    }
}
