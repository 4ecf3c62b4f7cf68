//! Pairing on both sides: the codes and invites this device offers, the
//! exchange it hosts, and this device joining another's store.

use futures::channel::oneshot;
use libp2p::request_response;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{Multiaddr, PeerId};
use zeroize::Zeroizing;

use super::{now, Node};
use crate::crypto::device_box::{open_once, seal_once};
use crate::error::{Error, Result};
use crate::net::pairing::{welcome_context, HostSession, Invite, JoinerSession, PairingCode};
use crate::net::{device_of, P2pEvent, PairRequest, PairResponse, PendingPairing};

/// How long a started pairing exchange may take.
const EXCHANGE_MS: u64 = 60_000;
/// Codes a joiner remembers having tried, at most.
pub(super) const BURNT_CODES: usize = 64;
/// Nameplates of this device's codes that expired or were tried, kept for
/// a cool-down's time, at most.
pub(super) const SPENT_CODES: usize = 64;

/// What a joiner remembers of a code it tried.
fn burn_mark(code: &PairingCode) -> [u8; 32] {
    use sha2::{Digest, Sha256};
    Sha256::new()
        .chain_update(b"persist burnt code\0")
        .chain_update(code.text().as_bytes())
        .finalize()
        .into()
}

/// A code this device offered.
pub(super) struct HostCode {
    pub(super) code: PairingCode,
    pub(super) expires_at: u64,
    /// Whether the user accepts the joiner before the welcome.
    pub(super) confirm: bool,
    pub(super) outcome: oneshot::Sender<Result<PeerId>>,
}

/// An exchange this device hosts, after the joiner's first move.
pub(super) struct Hosting {
    pub(super) session: HostSession,
    pub(super) nameplate: String,
    pub(super) label: String,
    pub(super) confirm: bool,
    pub(super) expires_at: u64,
    pub(super) outcome: oneshot::Sender<Result<PeerId>>,
}

/// The host's answer to a pairing request: now, or once the user decided.
pub(super) enum HostReply {
    Now(PairResponse),
    AskUser(super::confirm::Awaiting),
}

/// This device joining another's store.
pub(super) struct Joining {
    pub(super) code: Option<PairingCode>,
    /// The host, once known (from the address, or the first peer met).
    pub(super) host: Option<PeerId>,
    pub(super) label: String,
    pub(super) session: Option<JoinerSession>,
    pub(super) welcome_key: Option<Zeroizing<[u8; 32]>>,
    /// Set when this side found the code wrong: it tells the host (so
    /// both sides report it) before giving up.
    pub(super) failed: Option<Error>,
    /// Meeting-point lookups of the code's nameplate that found no device.
    pub(super) lookups_empty: u32,
    pub(super) expires_at: u64,
    pub(super) done: oneshot::Sender<Result<PeerId>>,
}

impl Node {
    pub(super) fn create_code(
        &mut self,
        ttl_ms: u64,
        invite: bool,
        confirm: bool,
    ) -> Result<PendingPairing> {
        let generate = if invite {
            PairingCode::generate_long
        } else {
            PairingCode::generate
        };
        // Never a live nameplate, nor one spent lately (a late joiner of the
        // old code would burn the new one).
        let mut code = generate()?;
        while self.codes.contains_key(code.nameplate())
            || self.spent.iter().any(|(n, _)| n == code.nameplate())
        {
            code = generate()?;
        }
        let expires_at = now().saturating_add(ttl_ms);
        let (outcome_tx, outcome) = oneshot::channel();
        let text = if invite {
            Invite {
                code: code.clone(),
                store: self.replica.store_id(),
                host: *self.swarm.local_peer_id(),
                addrs: self.swarm.listeners().cloned().collect(),
            }
            .to_text()?
        } else {
            code.text()
        };
        tracing::info!(nameplate = code.nameplate(), "pairing code created");
        self.codes.insert(
            code.nameplate().to_string(),
            HostCode {
                code,
                expires_at,
                confirm,
                outcome: outcome_tx,
            },
        );
        self.refresh_members();
        self.announce_codes();
        Ok(PendingPairing {
            code: text,
            expires_at_ms: expires_at,
            outcome,
        })
    }

    pub(super) fn start_joining(
        &mut self,
        code: PairingCode,
        host: Option<Multiaddr>,
        label: String,
        done: oneshot::Sender<Result<PeerId>>,
    ) {
        if self.joining.is_some() {
            let _ = done.send(Err(Error::PairingFailed(
                "another pairing is in progress".into(),
            )));
            return;
        }
        // A code is tried once: a retry would give whoever answered the
        // first try (any device on the network) a fresh guess.
        if self.burnt.contains(&burn_mark(&code)) {
            let _ = done.send(Err(Error::PairingCodeInvalid(
                "this code was already tried: make a new code on the other device".into(),
            )));
            return;
        }
        let host_peer = host.as_ref().and_then(|addr| match addr.iter().last() {
            Some(libp2p::multiaddr::Protocol::P2p(peer)) => Some(peer),
            _ => None,
        });
        self.joining = Some(Joining {
            code: Some(code),
            host: host_peer,
            label,
            session: None,
            welcome_key: None,
            failed: None,
            lookups_empty: 0,
            expires_at: now().saturating_add(EXCHANGE_MS),
            done,
        });
        self.refresh_members();
        match host {
            Some(addr) => {
                // A fresh connection: one the gate is about to close (an
                // earlier attempt) would cut the exchange.
                if let Some(peer) = host_peer.filter(|p| self.swarm.is_connected(p)) {
                    let _ = self.swarm.disconnect_peer_id(peer);
                }
                let opts = match host_peer {
                    Some(peer) => DialOpts::peer_id(peer)
                        .condition(PeerCondition::Always)
                        .addresses(vec![addr.clone()])
                        .build(),
                    None => DialOpts::unknown_peer_id().address(addr.clone()).build(),
                };
                if let Err(e) = self.swarm.dial(opts) {
                    self.finish_joining(Err(Error::PairingFailed(format!(
                        "cannot dial {addr}: {e}"
                    ))));
                }
            }
            None => {
                // A bootstrap node may know who offers the code.
                self.look_up_host();
                // A peer already connected may be the host.
                let connected: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
                for peer in connected {
                    self.maybe_send_start(peer);
                }
            }
        }
    }

    /// Notes whether `peer` offers a pairing code (its identify lists the
    /// pairing protocol) and, if this device is joining, may start with it.
    pub(super) fn note_pairing_offer(&mut self, peer: PeerId, info: &libp2p::identify::Info) {
        if info.protocols.contains(&crate::net::PAIR_PROTOCOL) {
            self.offering.insert(peer);
            self.maybe_send_start(peer);
        } else {
            self.offering.remove(&peer);
        }
    }

    /// Sends the joiner's first move to `peer` if it may be the host: the
    /// peer named by the address given or found at a meeting point for
    /// the code's nameplate, or else a peer that offers a code.
    pub(super) fn maybe_send_start(&mut self, peer: PeerId) {
        if self.is_bootstrap(&peer) {
            return;
        }
        let offering = self.offering.contains(&peer);
        let me = *self.swarm.local_peer_id();
        let Some(joining) = self.joining.as_mut() else {
            return;
        };
        if joining.session.is_some()
            || joining.host.is_some_and(|h| h != peer)
            || (joining.host.is_none() && !offering)
        {
            return;
        }
        let Some(code) = joining.code.take() else {
            return;
        };
        let mark = burn_mark(&code);
        let (session, mut request) = JoinerSession::start(code, &peer.to_bytes(), &me.to_bytes());
        if let PairRequest::Start { label, .. } = &mut request {
            *label = joining.label.clone();
        }
        joining.session = Some(session);
        joining.host = Some(peer);
        if self.burnt.len() >= BURNT_CODES {
            self.burnt.pop_front();
        }
        self.burnt.push_back(mark);
        self.swarm.behaviour_mut().pair.send_request(&peer, request);
    }

    /// The host of a started exchange went away (closed the connection,
    /// or never answered).
    pub(super) fn host_left(&mut self, peer: PeerId) {
        let Some(joining) = self.joining.as_ref() else {
            return;
        };
        if joining.host != Some(peer)
            || (joining.session.is_none()
                && joining.welcome_key.is_none()
                && joining.failed.is_none())
        {
            return;
        }
        let error = if let Some(failed) = self.joining.as_mut().and_then(|j| j.failed.take()) {
            failed
        } else if self
            .joining
            .as_ref()
            .is_some_and(|j| j.welcome_key.is_none())
        {
            // Refused before any answer: the gate of a device with no
            // pending code closes the connection.
            Error::PairingCodeInvalid(
                "the other device has no pending pairing code (mistyped, used, expired or \
                 cancelled)"
                    .into(),
            )
        } else {
            Error::PairingFailed("the other device closed the connection".into())
        };
        self.finish_joining(Err(error));
    }

    pub(super) fn finish_joining(&mut self, result: Result<PeerId>) {
        if let Some(joining) = self.joining.take() {
            match &result {
                Ok(peer) => self.emit(P2pEvent::Paired(*peer)),
                Err(e) => {
                    tracing::warn!(code = e.code(), %e, "pairing failed");
                    self.emit(P2pEvent::PairingFailed(e.code()));
                }
            }
            let _ = joining.done.send(result);
            // Meet the store's devices (under its new id after a join).
            self.announce_presence();
        }
        self.refresh_members();
    }

    /// Remembers, for a cool-down's time, the nameplate of a code that
    /// expired or was tried (at most [`SPENT_CODES`]).
    fn spend(&mut self, nameplate: &str) {
        if self.spent.len() >= SPENT_CODES {
            self.spent.pop_front();
        }
        self.spent.push_back((
            nameplate.to_string(),
            now().saturating_add(super::confirm::COOL_DOWN_MS),
        ));
    }

    /// Ends codes and exchanges past their time.
    pub(super) fn expire(&mut self) {
        let now = now();
        let expired: Vec<String> = self
            .codes
            .iter()
            .filter(|(_, c)| c.expires_at <= now)
            .map(|(n, _)| n.clone())
            .collect();
        let mut changed = !expired.is_empty();
        for nameplate in expired {
            self.withdraw_code(&nameplate);
            self.spend(&nameplate);
            if let Some(code) = self.codes.remove(&nameplate) {
                tracing::info!(nameplate = code.code.nameplate(), "pairing code expired");
                let _ = code.outcome.send(Err(Error::PairingCodeExpired));
            }
        }
        self.expire_awaiting();
        let stale: Vec<PeerId> = self
            .hosting
            .iter()
            .filter(|(_, h)| h.expires_at <= now)
            .map(|(p, _)| *p)
            .collect();
        changed |= !stale.is_empty();
        for peer in stale {
            if let Some(hosting) = self.hosting.remove(&peer) {
                let _ = hosting.outcome.send(Err(Error::PairingFailed(
                    "the other device did not finish the exchange".into(),
                )));
            }
        }
        if self.joining.as_ref().is_some_and(|j| j.expires_at <= now) {
            self.finish_joining(Err(Error::PairingFailed(
                "no device answered with this code in time".into(),
            )));
        } else if changed {
            self.refresh_members();
        }
    }

    pub(super) async fn pair_event(
        &mut self,
        event: request_response::Event<PairRequest, PairResponse>,
    ) {
        use request_response::{Event, Message};
        match event {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => {
                match self.host_request(peer, request).await {
                    HostReply::Now(response) => {
                        let _ = self
                            .swarm
                            .behaviour_mut()
                            .pair
                            .send_response(channel, response);
                    }
                    HostReply::AskUser(mut awaiting) => {
                        awaiting.channel = Some(channel);
                        self.ask_user(peer, awaiting);
                    }
                }
                // The gate follows once the answer is sent (closing the
                // connection now could lose it).
            }
            Event::Message {
                peer,
                message: Message::Response { response, .. },
                ..
            } => self.joiner_response(peer, response).await,
            Event::OutboundFailure {
                peer,
                error: request_response::OutboundFailure::UnsupportedProtocols,
                ..
            } if self.joining.as_ref().is_some_and(|j| j.host == Some(peer)) => {
                self.finish_joining(Err(Error::PairingFailed(format!(
                    "the other device speaks another version of the pairing protocol (this one \
                     speaks {}): update the older one",
                    crate::net::PAIR_PROTOCOL
                ))));
            }
            Event::OutboundFailure { peer, error, .. } => {
                tracing::debug!(%peer, %error, "pairing request failed");
                self.host_left(peer);
            }
            Event::InboundFailure { .. } | Event::ResponseSent { .. } => {
                self.refresh_members_after_answer()
            }
        }
    }

    /// The host's side of `/persist/pair/2`.
    pub(super) async fn host_request(&mut self, peer: PeerId, request: PairRequest) -> HostReply {
        let refuse = |e: &Error| {
            HostReply::Now(PairResponse::Refused {
                code: e.code().to_string(),
                reason: e.to_string(),
            })
        };
        match request {
            PairRequest::Start {
                nameplate,
                pake,
                label,
            } => {
                // A source whose last exchange did not end in a welcome
                // waits, and its request burns nothing.
                if self.cooling_down(&peer) {
                    tracing::warn!(%peer, "pairing refused: a recent failed attempt from this source");
                    return refuse(&Error::PairingFailed(
                        "a recent attempt from this device or its address failed: try again \
                         in a few minutes"
                            .into(),
                    ));
                }
                // A code this device made that expired or was tried
                // lately: refused, at no cost (it guards nothing now, and
                // the user who typed it late need not wait).
                let now_ms = now();
                self.spent.retain(|(_, until)| *until > now_ms);
                if !self.codes.contains_key(&nameplate)
                    && self.spent.iter().any(|(spent, _)| *spent == nameplate)
                {
                    return refuse(&Error::PairingCodeInvalid(
                        "this code expired or was already used: make a new code".into(),
                    ));
                }
                // Every other start makes its source wait until a welcome
                // lifts it: a wrong guess, a dropped exchange and a
                // nameplate that names no code all cost the same.
                self.cool(peer);
                // Burnt by the first try, right or wrong.
                self.withdraw_code(&nameplate);
                let Some(offered) = self.codes.remove(&nameplate) else {
                    return refuse(&Error::PairingCodeInvalid(
                        "no pending code with this nameplate (mistyped, used or expired)".into(),
                    ));
                };
                self.spend(&nameplate);
                let result = if offered.expires_at <= now() {
                    Err(Error::PairingCodeExpired)
                } else if device_of(&peer)
                    .is_none_or(|d| self.replica.members().removed.contains_key(&d))
                {
                    Err(Error::NotTrusted(
                        "this device was removed from the store".into(),
                    ))
                } else {
                    let me = self.swarm.local_peer_id().to_bytes();
                    HostSession::respond(&offered.code, &me, &peer.to_bytes(), &pake)
                };
                match result {
                    Ok((session, pake, confirm)) => {
                        self.hosting.insert(
                            peer,
                            Hosting {
                                session,
                                nameplate,
                                label,
                                confirm: offered.confirm,
                                expires_at: now().saturating_add(EXCHANGE_MS),
                                outcome: offered.outcome,
                            },
                        );
                        HostReply::Now(PairResponse::Challenge { pake, confirm })
                    }
                    Err(e) => {
                        // This side's code ran out: not the joiner's doing.
                        if matches!(e, Error::PairingCodeExpired) {
                            self.forgive(&peer);
                        }
                        tracing::warn!(%peer, code = e.code(), "pairing refused");
                        self.emit(P2pEvent::PairingFailed(e.code()));
                        let response = refuse(&e);
                        let _ = offered.outcome.send(Err(e));
                        response
                    }
                }
            }
            PairRequest::Finish { confirm } => {
                let Some(hosting) = self.hosting.remove(&peer) else {
                    return refuse(&Error::PairingFailed("no exchange in progress".into()));
                };
                let key = match hosting.session.finish(&confirm) {
                    Ok(key) => key,
                    Err(e) => {
                        // (Cooling since its start already; again from now.)
                        self.cool(peer);
                        return self.host_failed(peer, hosting.outcome, e);
                    }
                };
                if hosting.confirm {
                    return HostReply::AskUser(super::confirm::Awaiting {
                        channel: None,
                        key,
                        nameplate: hosting.nameplate,
                        label: hosting.label,
                        outcome: hosting.outcome,
                        expires_at: now().saturating_add(crate::net::CONFIRM_MS),
                    });
                }
                match self.welcome(peer, &hosting.label, &key).await {
                    Ok(sealed) => {
                        tracing::info!(%peer, "device paired");
                        self.forgive(&peer);
                        self.emit(P2pEvent::Paired(peer));
                        let _ = hosting.outcome.send(Ok(peer));
                        HostReply::Now(PairResponse::Welcome { sealed })
                    }
                    Err(e) => {
                        self.forgive(&peer);
                        self.host_failed(peer, hosting.outcome, e)
                    }
                }
            }
            PairRequest::Abort => {
                if let Some(hosting) = self.hosting.remove(&peer) {
                    self.cool(peer);
                    let e = Error::PairingCodeInvalid("the other device typed another code".into());
                    tracing::warn!(%peer, code = e.code(), "pairing aborted by the other device");
                    self.emit(P2pEvent::PairingFailed(e.code()));
                    let _ = hosting.outcome.send(Err(e));
                }
                HostReply::Now(PairResponse::Aborted)
            }
        }
    }

    /// Ends a hosted exchange with `error`: reported here, answered there.
    pub(super) fn host_failed(
        &mut self,
        peer: PeerId,
        outcome: oneshot::Sender<Result<PeerId>>,
        error: Error,
    ) -> HostReply {
        tracing::warn!(%peer, code = error.code(), "pairing failed");
        self.emit(P2pEvent::PairingFailed(error.code()));
        let response = PairResponse::Refused {
            code: error.code().to_string(),
            reason: error.to_string(),
        };
        let _ = outcome.send(Err(error));
        HostReply::Now(response)
    }

    /// Adds the joiner and seals its welcome.
    pub(super) async fn welcome(
        &mut self,
        peer: PeerId,
        label: &str,
        key: &[u8; 32],
    ) -> Result<Vec<u8>> {
        let device = device_of(&peer)
            .ok_or_else(|| Error::PairingFailed("the peer id is not an Ed25519 key".into()))?;
        let plain = Zeroizing::new(self.replica.admit(device, label.to_string()).await?);
        self.refresh_members();
        let context = welcome_context(&self.swarm.local_peer_id().to_bytes(), &peer.to_bytes());
        Ok(seal_once(key, &context, &plain)?)
    }

    /// The joiner's side of `/persist/pair/2`.
    pub(super) async fn joiner_response(&mut self, peer: PeerId, response: PairResponse) {
        let me = self.swarm.local_peer_id().to_bytes();
        let Some(joining) = self.joining.as_mut() else {
            return;
        };
        if joining.host != Some(peer) {
            return;
        }
        match response {
            PairResponse::Challenge { pake, confirm } => {
                let Some(session) = joining.session.take() else {
                    return;
                };
                match session.confirm(&pake, &confirm) {
                    Ok((proof, key)) => {
                        joining.welcome_key = Some(key);
                        self.swarm
                            .behaviour_mut()
                            .pair
                            .send_request(&peer, PairRequest::Finish { confirm: proof });
                    }
                    Err(e) => {
                        // Tell the host, then report (on its answer).
                        joining.failed = Some(e);
                        self.swarm
                            .behaviour_mut()
                            .pair
                            .send_request(&peer, PairRequest::Abort);
                    }
                }
            }
            PairResponse::Welcome { sealed } => {
                let result = match joining.welcome_key.take() {
                    Some(key) => self.adopt(peer, &me, &key, &sealed).await,
                    None => Err(Error::PairingFailed("a welcome out of turn".into())),
                };
                let ok = result.is_ok();
                self.finish_joining(result.map(|()| peer));
                if ok {
                    self.pull(peer);
                }
            }
            PairResponse::Refused { code, reason } => {
                let e = match code.as_str() {
                    "PAIRING_CODE_INVALID" => Error::PairingCodeInvalid(reason),
                    "PAIRING_CODE_EXPIRED" => Error::PairingCodeExpired,
                    "NOT_TRUSTED" => Error::NotTrusted(reason),
                    _ => Error::PairingFailed(reason),
                };
                self.finish_joining(Err(e));
            }
            PairResponse::Aborted => {
                let error = joining
                    .failed
                    .take()
                    .unwrap_or_else(|| Error::PairingFailed("aborted".into()));
                self.finish_joining(Err(error));
            }
        }
    }

    pub(super) async fn adopt(
        &mut self,
        host: PeerId,
        me: &[u8],
        key: &[u8; 32],
        sealed: &[u8],
    ) -> Result<()> {
        let plain = open_once(key, &welcome_context(&host.to_bytes(), me), sealed)?;
        self.replica.join(plain.to_vec()).await
    }
}
